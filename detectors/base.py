"""The contract between the dataflow and the detectors.

The flow closes one event-time window at a time. For each campaign it hands the detectors
the counts of every series of that campaign in that window (segment ``all`` plus every
segment value seen, zeros included, so silence is visible) and gets back the alarms.

>>> w = Window(start=0, end=300)
>>> Counts(impressions=1000, clicks=20).ctr
0.02
>>> Counts(0, 0).ctr
0.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

ALL = "all"

SEVERITIES = ("info", "warning", "critical")

#: What an alarm says broke. ``suspected_cause`` in a Verdict is one of these.
CAUSES = (
    "click_tracking",      # clicks vanish, impressions normal
    "impression_logging",  # impressions double/vanish at normal clicks (CTR halves / jumps)
    "bot_clicks",          # clicks surge, and the clicks themselves show bots (few users,
                           # many clicks each, no matching impression)
    "behaviour_change",    # a real CTR change in users' behaviour (a rise over as many
                           # users as ever: a creative that works)
    "segment_break",       # one segment's CTR falls while its siblings hold
    "drift",               # gradual change (creative fatigue)
    "silence",             # the series went silent
    "ingestion_stall",     # a source stalled for most campaigns at once (one pipeline
                           # incident, flows/stall.py)
    "volume_change",       # traffic volume changed, CTR did not
)


@dataclass(frozen=True, slots=True)
class Window:
    """A closed tumbling window, epoch seconds UTC, ``[start, end)``."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Counts:
    """Counts of one series in one window."""

    impressions: int
    clicks: int

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """One alarm raised by a detector for one series in one window."""

    segment: str
    detector: str
    kind: str                  # e.g. "ctr_drop", "ctr_spike", "click_outage", "silence", "drift"
    severity: str              # one of SEVERITIES
    quarantine: bool           # True: the window's figure must be held back
    score: float               # the detector's statistic (units documented per detector)
    confidence: float          # 0..1, how sure we are
    baseline_ctr: float        # expected CTR for this window
    ctr_low: float             # interval of the expected CTR (e.g. 99%)
    ctr_high: float
    expected_clicks: float
    expected_impressions: float
    suspected_cause: str       # one of CAUSES
    #: Groups the verdicts of one incident of a campaign (across series and windows), so a
    #: sink can keep one escalation per incident; "" when the detector does not group.
    incident: str = ""


class CampaignMonitor(Protocol):
    """All detector state of one campaign. Pure, picklable, no I/O."""

    def update(self, window: Window, counts: dict[str, Counts]) -> list[Verdict]:
        """Feed one closed window (every series of the campaign); return the alarms."""
        ...

"""Output records: window figures and alerts, as published to Kafka, files and sinks.

>>> a = make_alert_id("c1", "all", 1767225600, "binomial_cusum", "ctr_drop")
>>> a == make_alert_id("c1", "all", 1767225600, "binomial_cusum", "ctr_drop"), len(a)
(True, 20)
>>> series_key("c1", "device=mobile")
'c1|device=mobile'
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

STATUS_OK = "ok"
STATUS_QUARANTINED = "quarantined"


def make_alert_id(campaign_id: str, segment: str, window_start: int, detector: str,
                  kind: str) -> str:
    """Deterministic id: the same alarm on a re-run (restart, replay) gets the same id."""
    digest = hashlib.blake2b(
        f"{campaign_id}\x1f{segment}\x1f{window_start}\x1f{detector}\x1f{kind}".encode(),
        digest_size=10,
    ).hexdigest()
    return digest


def series_key(campaign_id: str, segment: str) -> str:
    return f"{campaign_id}|{segment}"


@dataclass(frozen=True, slots=True)
class Alert:
    """An escalation: one detector's alarm on one series in one window."""

    alert_id: str
    campaign_id: str
    segment: str
    window_start: str          # ISO-8601 UTC
    window_end: str
    window_start_s: int        # epoch seconds, for keys and arithmetic
    impressions: int
    clicks: int
    ctr: float
    kind: str
    severity: str
    detector: str
    baseline_ctr: float
    score: float
    confidence: float
    ctr_low: float
    ctr_high: float
    expected_clicks: float
    expected_impressions: float
    suspected_cause: str
    quarantine: bool
    #: Id grouping the alerts of one incident of the campaign ("" if the detector has none).
    incident: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Figure:
    """The CTR figure of one series in one closed window, with its status."""

    campaign_id: str
    segment: str
    window_start: str
    window_end: str
    window_start_s: int
    impressions: int
    clicks: int
    ctr: float
    status: str                # STATUS_OK | STATUS_QUARANTINED
    alert_ids: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["alert_ids"] = list(self.alert_ids)
        return d


@dataclass(frozen=True, slots=True)
class WindowDecision:
    """Everything decided when one campaign's window closed: its figures and alerts.

    Sinks write the quarantine flags of ``alerts`` and the "checked through" watermark
    **before** they publish ``figures``.
    """

    campaign_id: str
    window_start_s: int
    window_end_s: int
    figures: tuple[Figure, ...]
    alerts: tuple[Alert, ...]

"""Incidents, not alerts: group a campaign's alerts into one incident and track its life.

Pure (no I/O, no wall clock): :class:`IncidentTracker` takes :class:`~ctrguard.records.Alert`
records and event-time ticks and returns :class:`IncidentUpdate` records (``open``,
``update``, ``resolve``), each carrying a full :class:`Incident` snapshot and an idempotency
key, so a sink can deliver them at least once without posting twice.

Rules
-----
* Alerts of one campaign whose windows are at most ``gap_windows`` windows apart belong to
  one incident. Once ``gap_windows`` windows have closed after the last alerted window
  without a new alert, the incident is resolved.
* Re-delivered alerts (same ``alert_id``) change nothing. Alerts older than what the
  tracker still remembers (an already resolved stretch, or beyond ``keep_windows`` of an
  open incident) are *stale*: ignored and counted.
* One consistent block of numbers (:class:`SeriesTotals`): the *block series* is the
  alerting series (``all`` or a segment) with the largest summed ``|observed - expected|``
  clicks (ties: ``all``), and its observed clicks and impressions, expected clicks and
  impressions and the click difference are all summed over the same windows, those in
  which that series alerted. Segments of different dimensions overlap, so series are never
  summed with each other. ``Incident.clicks_delta`` is that block's ``clicks -
  expected_clicks`` (negative: clicks lost).
* The driving segment is the non-``all`` segment with the largest summed
  ``|observed - expected|`` clicks (``all`` when no other segment alerted).
* Evidence: the largest likelihood-ratio score (nats) of the incident's alerts, stated as
  how rarely chance alone produces it (:func:`chance_days`).
* The suspected cause is the cause with the largest summed ``|observed - expected|`` over
  the series that gave each window its impact.

>>> from ctrguard.records import Alert
>>> def alert(ws, segment="all", clicks=5, expected=20.0, severity="warning"):
...     return Alert(alert_id=f"{segment}{ws}", campaign_id="c1", segment=segment,
...         window_start=iso(ws), window_end=iso(ws + 300), window_start_s=ws,
...         impressions=1000, clicks=clicks, ctr=clicks / 1000, kind="ctr_drop",
...         severity=severity, detector="d", baseline_ctr=0.02, score=5.0, confidence=0.99,
...         ctr_low=0.015, ctr_high=0.025, expected_clicks=expected,
...         expected_impressions=1000.0, suspected_cause="click_tracking", quarantine=True)
>>> t = IncidentTracker(window_s=300, gap_windows=3)
>>> [u.kind for u in t.observe([alert(0), alert(0, "device=mobile", 2, 15.0)])]
['open']
>>> [u.kind for u in t.observe([alert(0)])]           # re-delivered: nothing changes
[]
>>> u, = t.observe([alert(300, severity="critical")])
>>> u.kind, u.revision, u.changes, u.incident.clicks_delta
('update', 2, (('severity', 'critical'),), -30.0)
>>> b = u.incident.totals                              # segment all, both windows
>>> b.segment, b.windows, b.clicks, b.impressions, b.expected_clicks, b.clicks_delta
('all', 2, 10, 2000, 40.0, -30.0)
>>> t.advance(600 + 2 * 300)                           # two quiet windows: still open
[]
>>> u, = t.advance(600 + 3 * 300)
>>> u.kind, u.incident.status, u.incident.duration_s, u.incident.driving_segment
('resolve', 'resolved', 600, 'device=mobile')
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ctrguard.records import Alert

__all__ = [
    "Incident",
    "IncidentTracker",
    "IncidentUpdate",
    "SeriesFigure",
    "SeriesTotals",
    "SEVERITY_RANK",
    "chance_days",
    "iso",
    "make_incident_id",
    "update_from_json",
    "update_to_json",
]

ALL = "all"
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
STATE_VERSION = 2
#: Two-sided 99% normal quantile (the detectors' intervals are 99%).
Z99 = 2.5758293035489
#: Detectors whose ``score`` is a sequential log-likelihood ratio (nats) of one series,
#: checked every window against the threshold the false-alarm budget sets.
SEQUENTIAL_DETECTORS = frozenset({"binomial_cusum", "poisson_cusum", "silence",
                                  "drift_cusum"})
#: Detectors whose ``score`` is a log-likelihood ratio (nats) of a one-off test, run only
#: after a sequential test found a volume jump (impression logging vs real traffic).
FOLLOW_UP_DETECTORS = frozenset({"volume_ctr_test"})
_DAY = 86_400


def iso(epoch_s: int) -> str:
    """ISO-8601 UTC of epoch seconds, as the records write it.

    >>> iso(0)
    '1970-01-01T00:00:00Z'
    """
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_incident_id(campaign_id: str, opened_window_start_s: int) -> str:
    """Deterministic: the same first alert window gives the same incident on a replay."""
    return hashlib.blake2b(f"incident\x1f{campaign_id}\x1f{opened_window_start_s}".encode(),
                           digest_size=10).hexdigest()


def chance_days(score_nats: float, *, window_s: int, n_series: int,
                budget: float | None = None, follow_up: bool = False) -> float:
    """How many days pass, on average, before chance alone gives a campaign this evidence.

    The detectors' tests are CUSUMs of log-likelihood ratios (nats). Under "nothing is
    wrong" the likelihood ratio of each is a non-negative martingale, so by Ville's
    inequality one test crosses a level ``s`` with probability at most ``exp(-s)`` per
    restart, and a CUSUM (restarted every window) at most ``exp(-s)`` times per window
    (Lorden 1971: its average run length to a false alarm is at least ``exp(s)``
    windows). A campaign runs one test per series (``n_series``: the detectors count the
    ratios of one series as one test, they watch the same counts) in ``W = 86400 /
    window_s`` windows a day, so chance reaches ``s`` at most ``W * n_series * exp(-s)``
    times a day::

        N = exp(s) / (W * n_series)          days between chance occurrences

    The threshold is set from the false-alarm budget ``B``
    (``detectors.false_alarms_per_campaign_day``) as ``h = log(W * n_series / B)``, so
    at the threshold ``N = 1 / B`` (50 days at the default 0.02), and each nat beyond
    it multiplies ``N`` by ``e``: ``N = exp(s - h) / B``. The score depends on the
    counts, so the same CTR change is far stronger evidence on a large campaign than on
    a small one: ``N`` is "at this campaign's volume".

    ``follow_up``: a one-off test run only after a sequential test found a volume jump
    (``volume_ctr_test``). Chance gives such a jump at most ``B`` times a campaign-day and
    the follow-up then passes ``s`` with probability at most ``exp(-s)``: ``N =
    exp(s) / B`` (needs ``budget``).

    Parameters
    ----------
    score_nats
        The detector's score (log-likelihood ratio, nats).
    window_s
        Window length in seconds.
    n_series
        Series the campaign's detectors test (``all`` plus its segments).
    budget
        False alarms per campaign-day (only for ``follow_up``).

    Examples
    --------
    5-minute windows (288 a day), ``all`` and 7 segments, at the threshold of the default
    budget 0.02 (``h = log(288 * 8 / 0.02) = 11.65`` nats), then 3 nats beyond it:

    >>> h = math.log(288 * 8 / 0.02)
    >>> round(h, 2)
    11.65
    >>> round(chance_days(h, window_s=300, n_series=8))
    50
    >>> round(chance_days(h + 3.0, window_s=300, n_series=8))
    1004
    >>> round(chance_days(h / 2, window_s=300, n_series=8, budget=0.02, follow_up=True))
    16971
    """
    if n_series < 1 or window_s <= 0:
        raise ValueError("n_series and window_s must be positive")
    log_n = min(float(score_nats), 700.0)      # beyond e**700 days nothing changes
    if follow_up:
        if budget is None or budget <= 0:
            raise ValueError("a follow-up test needs the false-alarm budget")
        return math.exp(log_n) / budget
    per_day = max(_DAY / window_s, 1.0) * n_series
    return math.exp(log_n) / per_day


def _rank(severity: str) -> int:
    return SEVERITY_RANK.get(severity, 0)


@dataclass(frozen=True, slots=True)
class SeriesFigure:
    """The latest alerted figure of one series (campaign segment) in an incident."""

    segment: str
    window_start: str
    window_end: str
    impressions: int
    clicks: int
    ctr: float
    baseline_ctr: float
    ctr_low: float
    ctr_high: float
    expected_clicks: float
    confidence: float
    kind: str
    severity: str

    @classmethod
    def of(cls, a: Alert) -> SeriesFigure:
        return cls(segment=a.segment, window_start=a.window_start, window_end=a.window_end,
                   impressions=a.impressions, clicks=a.clicks, ctr=a.ctr,
                   baseline_ctr=a.baseline_ctr, ctr_low=a.ctr_low, ctr_high=a.ctr_high,
                   expected_clicks=a.expected_clicks, confidence=a.confidence, kind=a.kind,
                   severity=a.severity)


@dataclass(frozen=True, slots=True)
class SeriesTotals:
    """One series of an incident, summed over the windows in which it alerted.

    Every number a message shows comes from here, so they describe the same series and
    windows: ``clicks_delta == clicks - expected_clicks`` and ``ctr == clicks /
    impressions`` hold exactly.
    """

    segment: str
    windows: int
    impressions: int
    clicks: int
    #: The detectors' expected impressions (their volume baseline).
    expected_impressions: float
    #: Expected clicks: the expected CTR times the observed impressions of each window (the
    #: expected impressions for a window that had none: a silent window's lost clicks).
    expected_clicks: float
    #: The impressions the expected clicks were computed at (see ``expected_clicks``).
    expected_basis: float
    #: Standard deviation of the clicks about ``expected_clicks`` (the detectors' 99%
    #: intervals, window by window, combined as independent).
    clicks_sd: float

    @property
    def clicks_delta(self) -> float:
        return self.clicks - self.expected_clicks

    @property
    def ctr(self) -> float | None:
        return self.clicks / self.impressions if self.impressions > 0 else None

    @property
    def expected_ctr(self) -> float | None:
        return self.expected_clicks / self.expected_basis if self.expected_basis > 0 else None

    def clicks_range(self, z: float = Z99) -> tuple[float, float]:
        """99% range of the clicks if nothing were wrong."""
        half = z * self.clicks_sd
        return max(self.expected_clicks - half, 0.0), self.expected_clicks + half


@dataclass(frozen=True, slots=True)
class Incident:
    """A snapshot of one incident, everything a message needs."""

    incident_id: str
    campaign_id: str
    status: str                      # "open" | "resolved"
    revision: int
    severity: str                    # the maximum seen
    suspected_cause: str
    driving_segment: str
    segments: tuple[str, ...]        # every segment that alerted, sorted
    kinds: tuple[str, ...]
    detectors: tuple[str, ...]
    alert_count: int
    first_window_start: str
    last_window_end: str
    first_window_start_s: int
    last_window_end_s: int
    #: Observed - expected clicks over the incident (negative: clicks lost).
    clicks_delta: float
    #: ``clicks_delta * value_per_click`` when configured.
    revenue_delta: float | None
    #: Latest figure of segment ``all`` if it alerted, else of the driving segment.
    headline: SeriesFigure
    resolved_at: str | None = None
    #: Alerting span, first window start to last window end.
    duration_s: int = 0
    #: The numbers to show, all of one series over the same windows (see the module rules).
    totals: SeriesTotals | None = None
    #: Largest likelihood-ratio score (nats) of the incident's alerts, None if no alert
    #: had one, and how many days chance alone needs, on average, to give it.
    evidence_nats: float | None = None
    chance_days: float | None = None
    #: Series the campaign's detectors test (for ``chance_days``).
    n_series: int = 0
    #: ``campaign`` (one campaign's incident) or ``pipeline`` (a stalled source).
    scope: str = "campaign"
    #: For a pipeline incident: the Kafka topic that stalled, and its source name.
    topic: str = ""
    source: str = ""
    #: For a pipeline incident: campaigns whose windows it covers.
    campaigns_affected: int = 0


@dataclass(frozen=True, slots=True)
class IncidentUpdate:
    """One change to deliver: ``open``, ``update`` or ``resolve``.

    ``changes`` lists notable changes as ``(what, value)`` pairs (``severity``, ``cause``,
    ``driving_segment``, ``segments_added``); values may be untrusted text.
    """

    kind: str
    incident: Incident
    changes: tuple[tuple[str, str], ...] = ()

    @property
    def revision(self) -> int:
        return self.incident.revision

    @property
    def idempotency_key(self) -> str:
        return f"{self.incident.incident_id}:{self.incident.revision}"

    @property
    def event_time_s(self) -> int:
        """Event time of the update (for mutes): the end of the last window it covers."""
        if self.kind == "resolve" and self.incident.resolved_at is not None:
            return int(datetime.fromisoformat(self.incident.resolved_at).timestamp())
        return self.incident.last_window_end_s


@dataclass
class _Open:
    """Running state of an open incident (JSON-serialisable through ``to_json``)."""

    incident_id: str
    revision: int
    first_s: int
    last_s: int                      # window start of the last alerted window
    last_end_s: int
    first_window_start: str
    last_window_end: str
    severity: str
    alert_count: int = 0
    #: window start -> {segment: [clicks, impressions, expected clicks, expected
    #: impressions, clicks variance, cause, expected basis]}; recent windows only.
    windows: dict[int, dict[str, list[Any]]] = field(default_factory=dict)
    #: window start -> alert ids seen; recent windows only.
    seen: dict[int, list[str]] = field(default_factory=dict)
    #: Sums over windows no longer kept in ``windows``: segment -> [clicks, impressions,
    #: expected clicks, expected impressions, clicks variance, windows, |delta| summed,
    #: expected basis].
    closed: dict[str, list[float]] = field(default_factory=dict)
    cause_weight: dict[str, float] = field(default_factory=dict)
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)   # segment -> figure
    kinds: list[str] = field(default_factory=list)
    detectors: list[str] = field(default_factory=list)
    #: The last values announced, to tell notable changes.
    announced: dict[str, Any] = field(default_factory=dict)
    #: Largest likelihood-ratio evidence seen, as ``[nats, follow_up]``, or None.
    evidence: list[Any] | None = None
    #: Most series the campaign had in an alerted window (0: not known).
    n_series: int = 0

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["windows"] = {str(k): v for k, v in self.windows.items()}
        d["seen"] = {str(k): v for k, v in self.seen.items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], version: int = STATE_VERSION) -> _Open:
        d = dict(d)
        if version == 1:
            # Version 1 kept only [delta, cause] per series and window: the counts of those
            # windows are unknown, so the numbers shown start with the next window.
            for key in ("closed_delta", "closed_seg_abs"):
                d.pop(key, None)
            d["windows"] = {}
        d["windows"] = {int(k): v for k, v in d["windows"].items()}
        d["seen"] = {int(k): v for k, v in d["seen"].items()}
        return cls(**d)


@dataclass
class _Campaign:
    campaign_id: str
    #: Alerts of windows starting before this, with no open incident, are stale.
    floor_s: int = -(2**62)
    open: _Open | None = None
    #: Last resolved incident id, for the record (and tests).
    last_resolved: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"v": STATE_VERSION, "campaign_id": self.campaign_id, "floor_s": self.floor_s,
                "open": None if self.open is None else self.open.to_json(),
                "last_resolved": self.last_resolved}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> _Campaign:
        version = d.get("v")
        if version not in (1, STATE_VERSION):
            raise ValueError(f"unsupported incident state version {version!r}")
        return cls(campaign_id=d["campaign_id"], floor_s=d["floor_s"],
                   open=None if d["open"] is None else _Open.from_json(d["open"], version),
                   last_resolved=d.get("last_resolved"))


class IncidentTracker:
    """Groups alerts into incidents per campaign. Pure; the state pickles and serialises.

    Parameters
    ----------
    window_s
        Window length in seconds (``windows.length``).
    gap_windows
        Alerts at most this many windows apart join one incident; this many quiet windows
        after the last alert resolve it.
    value_per_click
        Revenue per click, for ``Incident.revenue_delta`` (None: not computed).
    keep_windows
        How many recent windows of an open incident keep their alert ids (for de-duplication
        of re-delivered alerts) and per-segment figures; older windows are folded into sums.
    false_alarm_budget
        ``detectors.false_alarms_per_campaign_day``, for the evidence of follow-up tests
        (:func:`chance_days`).
    """

    def __init__(self, window_s: int = 300, gap_windows: int = 3,
                 value_per_click: float | None = None, keep_windows: int = 12,
                 false_alarm_budget: float = 0.02):
        if window_s <= 0 or gap_windows < 1 or keep_windows < 1 or not false_alarm_budget > 0:
            raise ValueError("window_s, gap_windows, keep_windows and false_alarm_budget "
                             "must be positive")
        self.window_s = window_s
        self.gap_windows = gap_windows
        self.value_per_click = value_per_click
        self.keep_windows = max(keep_windows, gap_windows + 1)
        self.false_alarm_budget = false_alarm_budget
        self._campaigns: dict[str, _Campaign] = {}
        self._stale = 0
        #: ``(alert, incident_id)`` of every alert this tracker put in an incident, for the
        #: quarantine flags (:meth:`ctrguard.sinks.quarantine.QuarantineStore.link`).
        self.assigned: list[tuple[Alert, str]] = []

    # ------------------------------------------------------------------ state

    @property
    def stale_alerts(self) -> int:
        """Alerts ignored because they were older than what the tracker remembers."""
        return self._stale

    def campaigns(self) -> list[str]:
        return sorted(self._campaigns)

    def export_state(self, campaign_id: str) -> dict[str, Any] | None:
        """JSON-ready state of one campaign (None if the tracker knows nothing of it)."""
        c = self._campaigns.get(campaign_id)
        return None if c is None else c.to_json()

    def import_state(self, campaign_id: str, state: dict[str, Any] | None) -> None:
        """Replace one campaign's state by what :meth:`export_state` returned."""
        if state is None:
            self._campaigns.pop(campaign_id, None)
        else:
            c = _Campaign.from_json(state)
            if c.campaign_id != campaign_id:
                raise ValueError("incident state belongs to another campaign")
            self._campaigns[campaign_id] = c

    def forget(self, campaign_id: str) -> None:
        self._campaigns.pop(campaign_id, None)

    def open_incidents(self) -> list[Incident]:
        return [self._snapshot(c, "open") for _, c in sorted(self._campaigns.items())
                if c.open is not None]

    def open_campaigns(self) -> dict[str, int]:
        """Campaign id -> end of its open incident's last alerted window."""
        return {cid: c.open.last_end_s for cid, c in self._campaigns.items()
                if c.open is not None}

    def resolve_due_s(self, last_end_s: int) -> int:
        """The event time at which an incident whose last alert window ended then resolves."""
        return last_end_s + self.gap_windows * self.window_s

    # ------------------------------------------------------------------ updates

    def observe(self, alerts: Iterable[Alert],
                series_counts: Mapping[tuple[str, int], int] | None = None
                ) -> list[IncidentUpdate]:
        """Feed alerts (any order, any campaigns); return at most one update per incident.

        An alert too far after its campaign's open incident first resolves that incident
        (``resolve`` update) and then opens a new one. ``series_counts`` maps ``(campaign,
        window_start_s)`` to the number of series of that campaign-window (the figures of
        its decision), for the evidence statement; without it the incident's own segments
        are counted.
        """
        by_campaign: dict[str, list[Alert]] = {}
        for a in alerts:
            by_campaign.setdefault(a.campaign_id, []).append(a)
        updates: list[IncidentUpdate] = []
        for cid in sorted(by_campaign):
            batch = sorted(by_campaign[cid], key=lambda a: (a.window_start_s, a.alert_id))
            updates.extend(self._observe_campaign(cid, batch, series_counts or {}))
        return updates

    def advance(self, clock_end_s: int,
                campaign_ids: Iterable[str] | None = None) -> list[IncidentUpdate]:
        """Event time reached ``clock_end_s`` (end of the latest closed window): resolve
        the open incidents (of ``campaign_ids``, or all) that have been quiet long enough."""
        ids = sorted(self._campaigns) if campaign_ids is None else sorted(set(campaign_ids))
        updates = []
        for cid in ids:
            c = self._campaigns.get(cid)
            if c is not None and c.open is not None \
                    and clock_end_s >= self.resolve_due_s(c.open.last_end_s):
                updates.append(self._resolve(c))
        return updates

    def _observe_campaign(self, cid: str, batch: list[Alert],
                          series_counts: Mapping[tuple[str, int], int]) -> list[IncidentUpdate]:
        c = self._campaigns.setdefault(cid, _Campaign(campaign_id=cid))
        updates: list[IncidentUpdate] = []
        opened = False
        changed = False
        before: dict[str, Any] = {}
        for a in batch:
            o = c.open
            if o is not None and a.window_start_s >= self.resolve_due_s(o.last_end_s):
                # A new alert after the quiet gap: the old incident is over.
                if changed or opened:
                    updates.append(self._emit(c, opened, before))
                    opened = changed = False
                updates.append(self._resolve(c))
                o = None
            if o is None:
                if a.window_start_s < c.floor_s:
                    self._stale += 1
                    continue
                o = c.open = _Open(
                    incident_id=make_incident_id(cid, a.window_start_s), revision=0,
                    first_s=a.window_start_s, last_s=a.window_start_s,
                    last_end_s=_end_s(a), first_window_start=a.window_start,
                    last_window_end=a.window_end, severity=a.severity)
                opened = True
                before = {}
            elif not changed and not opened:
                before = dict(o.announced)
            if self._add(o, a, series_counts.get((cid, a.window_start_s), 0)):
                changed = True
        if c.open is not None and (opened or changed):
            updates.append(self._emit(c, opened, before))
        return updates

    def _add(self, o: _Open, a: Alert, n_series: int = 0) -> bool:
        """Fold one alert into an open incident; False if it was already there or stale."""
        ws = a.window_start_s
        if ws < self._keep_floor(o):
            self._stale += 1
            return False
        ids = o.seen.setdefault(ws, [])
        if a.alert_id in ids:
            return False
        ids.append(a.alert_id)
        ids.sort()
        self.assigned.append((a, o.incident_id))
        o.alert_count += 1
        delta = float(a.clicks) - float(a.expected_clicks)
        segs = o.windows.setdefault(ws, {})
        # Several detectors on one series and window see the same counts; keep the largest.
        prev_w = segs.get(a.segment)
        if prev_w is None or abs(delta) > abs(prev_w[0] - prev_w[2]):
            segs[a.segment] = _window_entry(a)
        o.n_series = max(o.n_series, n_series)
        if a.detector in SEQUENTIAL_DETECTORS or a.detector in FOLLOW_UP_DETECTORS:
            follow_up = a.detector in FOLLOW_UP_DETECTORS
            if math.isfinite(a.score) and (o.evidence is None or self._chance(
                    a.score, follow_up, 1) > self._chance(o.evidence[0], o.evidence[1], 1)):
                o.evidence = [float(a.score), follow_up]
        if _rank(a.severity) > _rank(o.severity):
            o.severity = a.severity
        prev = o.latest.get(a.segment)
        if prev is None or (ws, a.alert_id) >= (prev["_ws"], prev["_id"]):
            fig = _figure_json(SeriesFigure.of(a))
            fig["_ws"], fig["_id"] = ws, a.alert_id
            o.latest[a.segment] = fig
        if a.kind not in o.kinds:
            o.kinds.append(a.kind)
            o.kinds.sort()
        if a.detector not in o.detectors:
            o.detectors.append(a.detector)
            o.detectors.sort()
        if ws < o.first_s:
            o.first_s, o.first_window_start = ws, a.window_start
        if ws > o.last_s:
            o.last_s = ws
        if _end_s(a) > o.last_end_s:
            o.last_end_s, o.last_window_end = _end_s(a), a.window_end
        self._prune(o)
        return True

    def _keep_floor(self, o: _Open) -> int:
        return o.last_s - (self.keep_windows - 1) * self.window_s

    def _prune(self, o: _Open) -> None:
        floor = self._keep_floor(o)
        for ws in [w for w in o.windows if w < floor]:
            segs = o.windows.pop(ws)
            _, entry = _impact_series(segs)
            d, cause = entry[0] - entry[2], entry[5]
            o.cause_weight[cause] = o.cause_weight.get(cause, 0.0) + abs(d)
            for seg, e in segs.items():
                _fold(o.closed.setdefault(seg, [0.0] * 8), e)
        for ws in [w for w in o.seen if w < floor]:
            del o.seen[ws]

    def _chance(self, score: float, follow_up: bool, n_series: int) -> float:
        return chance_days(score, window_s=self.window_s, n_series=max(n_series, 1),
                           budget=self.false_alarm_budget, follow_up=follow_up)

    def _resolve(self, c: _Campaign) -> IncidentUpdate:
        o = c.open
        assert o is not None
        o.revision += 1
        due = self.resolve_due_s(o.last_end_s)
        snap = self._snapshot(c, "resolved", resolved_at=iso(due))
        c.open = None
        c.floor_s = due
        c.last_resolved = o.incident_id
        return IncidentUpdate("resolve", snap)

    def _emit(self, c: _Campaign, opened: bool, before: dict[str, Any]) -> IncidentUpdate:
        o = c.open
        assert o is not None
        o.revision += 1
        snap = self._snapshot(c, "open")
        now = {"severity": snap.severity, "cause": snap.suspected_cause,
               "driving_segment": snap.driving_segment, "segments": list(snap.segments)}
        changes: list[tuple[str, str]] = []
        if not opened:
            if _rank(now["severity"]) > _rank(before.get("severity", "info")):
                changes.append(("severity", now["severity"]))
            if now["cause"] != before.get("cause"):
                changes.append(("cause", now["cause"]))
            if now["driving_segment"] != before.get("driving_segment"):
                changes.append(("driving_segment", now["driving_segment"]))
            added = sorted(set(now["segments"]) - set(before.get("segments", [])))
            if added:
                changes.append(("segments_added", ", ".join(added)))
        o.announced = now
        return IncidentUpdate("open" if opened else "update", snap, tuple(changes))

    def _snapshot(self, c: _Campaign, status: str, resolved_at: str | None = None) -> Incident:
        o = c.open
        assert o is not None
        sums = {seg: list(v) for seg, v in o.closed.items()}
        cause_weight = dict(o.cause_weight)
        for segs in o.windows.values():
            _, entry = _impact_series(segs)
            d, cause = entry[0] - entry[2], entry[5]
            cause_weight[cause] = cause_weight.get(cause, 0.0) + abs(d)
            for seg, e in segs.items():
                _fold(sums.setdefault(seg, [0.0] * 8), e)
        seg_abs = {seg: v[6] for seg, v in sums.items()}
        segments = tuple(sorted(set(seg_abs) | set(o.latest)))
        candidates = {s: v for s, v in seg_abs.items() if s != ALL} or seg_abs
        driving = min(candidates, key=lambda s: (-candidates[s], s)) if candidates else ALL
        cause = min(cause_weight, key=lambda k: (-cause_weight[k], k)) \
            if cause_weight else "unknown"
        head_seg = ALL if ALL in o.latest else driving
        head = o.latest.get(head_seg) or next(iter(o.latest.values()))
        headline = SeriesFigure(**{k: v for k, v in head.items() if not k.startswith("_")})
        totals = None
        if sums:
            block = min(sums, key=lambda s: (-round(sums[s][6], 9), s != ALL, s))
            k, n, e, m, var, w, _, basis = sums[block]
            totals = SeriesTotals(segment=block, windows=int(w), impressions=int(n),
                                  clicks=int(k), expected_impressions=round(m, 6),
                                  expected_clicks=round(e, 6),
                                  expected_basis=round(basis, 6),
                                  clicks_sd=round(math.sqrt(max(var, 0.0)), 6))
        delta = 0.0 if totals is None else round(totals.clicks - totals.expected_clicks, 6)
        revenue = None if self.value_per_click is None \
            else round(delta * self.value_per_click, 2)
        n_series = max(o.n_series, len(segments), 1)
        evidence = chance = None
        if o.evidence is not None:
            evidence = round(float(o.evidence[0]), 4)
            chance = self._chance(evidence, bool(o.evidence[1]), n_series)
        return Incident(
            incident_id=o.incident_id, campaign_id=c.campaign_id, status=status,
            revision=o.revision, severity=o.severity, suspected_cause=cause,
            driving_segment=driving, segments=segments, kinds=tuple(o.kinds),
            detectors=tuple(o.detectors), alert_count=o.alert_count,
            first_window_start=o.first_window_start, last_window_end=o.last_window_end,
            first_window_start_s=o.first_s, last_window_end_s=o.last_end_s,
            clicks_delta=delta, revenue_delta=revenue, headline=headline,
            resolved_at=resolved_at, duration_s=o.last_end_s - o.first_s, totals=totals,
            evidence_nats=evidence, chance_days=chance, n_series=n_series)


def _end_s(a: Alert) -> int:
    # The length from the two ISO stamps, so a stamp without offset cannot shift the result.
    try:
        length = datetime.fromisoformat(a.window_end) - datetime.fromisoformat(a.window_start)
    except (TypeError, ValueError):
        return a.window_start_s
    return a.window_start_s + int(length.total_seconds())


def _window_entry(a: Alert) -> list[Any]:
    """What an incident keeps of one series-window: ``[clicks, impressions, expected clicks,
    expected impressions, clicks variance, cause, expected basis]``.

    The detectors compute expected clicks at the observed impressions, or at the expected
    ones when a window had none (``basis``), and give a 99% interval of the expected CTR at
    that basis; its half-width in clicks over ``Z99`` is the clicks' standard deviation.
    """
    basis = a.impressions if a.impressions > 0 else max(a.expected_impressions, 0.0)
    p = a.baseline_ctr
    half = max(a.ctr_high - p, p - a.ctr_low, 0.0) if math.isfinite(a.ctr_high + a.ctr_low) \
        else 0.0
    sd = half / Z99 * basis
    return [int(a.clicks), int(a.impressions), float(a.expected_clicks),
            float(a.expected_impressions), sd * sd, a.suspected_cause, float(basis)]


def _fold(acc: list[float], e: list[Any]) -> None:
    """Add one window entry to a segment's sums (see ``_Open.closed``)."""
    acc[0] += e[0]
    acc[1] += e[1]
    acc[2] += e[2]
    acc[3] += e[3]
    acc[4] += e[4]
    acc[5] += 1
    acc[6] += abs(e[0] - e[2])
    acc[7] += e[6]


def _impact_series(segs: dict[str, list[Any]]) -> tuple[str, list[Any]]:
    """The series that names a window's cause: ``all``, else the largest deviation."""
    if ALL in segs:
        return ALL, segs[ALL]
    if not segs:
        return ALL, [0, 0, 0.0, 0.0, 0.0, "unknown", 0.0]
    seg = min(segs, key=lambda s: (-abs(segs[s][0] - segs[s][2]), s))
    return seg, segs[seg]


def _figure_json(f: SeriesFigure | SeriesTotals) -> dict[str, Any]:
    return {k: getattr(f, k) for k in f.__slots__}


def update_to_json(update: IncidentUpdate) -> dict[str, Any]:
    """JSON-ready form of an update (for the outbox)."""
    inc = update.incident
    d = {k: getattr(inc, k) for k in inc.__slots__}
    d["headline"] = _figure_json(inc.headline)
    d["totals"] = None if inc.totals is None else _figure_json(inc.totals)
    d["segments"], d["kinds"], d["detectors"] = list(inc.segments), list(inc.kinds), \
        list(inc.detectors)
    return {"kind": update.kind, "incident": d, "changes": [list(c) for c in update.changes]}


def update_from_json(data: dict[str, Any]) -> IncidentUpdate:
    """Inverse of :func:`update_to_json`.

    >>> t = IncidentTracker()
    >>> from ctrguard.records import Alert
    >>> a = Alert("a1", "c", "all", iso(0), iso(300), 0, 100, 1, 0.01, "ctr_drop", "warning",
    ...           "d", 0.02, 3.0, 0.9, 0.015, 0.025, 2.0, 100.0, "click_tracking", False)
    >>> u, = t.observe([a])
    >>> update_from_json(update_to_json(u)) == u
    True
    """
    d = dict(data["incident"])
    d["headline"] = SeriesFigure(**d["headline"])
    if d.get("totals") is not None:
        d["totals"] = SeriesTotals(**d["totals"])
    d["segments"], d["kinds"], d["detectors"] = tuple(d["segments"]), tuple(d["kinds"]), \
        tuple(d["detectors"])
    return IncidentUpdate(kind=data["kind"], incident=Incident(**d),
                          changes=tuple((str(k), str(v)) for k, v in data["changes"]))

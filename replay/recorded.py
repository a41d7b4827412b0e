"""Decode and window a stream once, then run only the detectors, as often as needed.

:func:`record` replays two files through the same preparation and windowing as
:func:`ctrguard.replay.run.run_replay`, with a recorder in place of each campaign's monitor: it keeps
the ``(window, counts)`` of every call the detectors would have had, in order. Those calls
are the whole input of the detectors, so :func:`detect` feeds them to fresh monitors of any
detector settings and gets exactly the verdicts a full replay with those settings gives
(``tests/test_tune.py`` checks alerts and figures line for line), at a fraction of the cost:
no reading, decoding, de-duplication or windowing. ``ctrguard tune`` and ``ctrguard diff``
are built on it. Settings outside ``detectors`` (windows, segments, exclusions) change the
counts themselves and need a new recording.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctrguard.config import Settings
from ctrguard.errors import CtrGuardError
from ctrguard.records import (
    STATUS_QUARANTINED,
    Alert,
    WindowDecision,
    encode_lines,
    encode_pretty,
    encode_record,
)

__all__ = ["RecordedStream", "Detection", "record", "detect", "write_run", "WINDOWING"]

#: Sections of the configuration that shape the counts: equal in two configurations, one
#: recording serves both.
WINDOWING = ("windows", "segments", "exclusions", "max_event_bytes")


class _Recorder:
    """Stands in for a campaign's monitor: notes each call, decides nothing."""

    __slots__ = ("calls", "order", "note")

    def __init__(self, order: list[tuple[_Recorder, int]],
                 note: Any = None):
        self.calls: list[tuple[Any, dict[str, Any]]] = []
        self.order = order
        self.note = note  # called with each window start: notes the window's context

    def update(self, window: Any, counts: dict[str, Any]) -> list[Any]:
        self.calls.append((window, counts))
        self.order.append((self, window.start))
        if self.note is not None:
            self.note(window.start)
        return []


@dataclass
class RecordedStream:
    """The detectors' input of one stream: per monitor (one per campaign, or more when a
    campaign was forgotten and came back), its campaign and its calls in order."""

    window_s: int
    campaigns: list[tuple[str, list[tuple[Any, dict[str, Any]]]]]
    summary: dict[str, Any]
    deadletter: bytes = b""
    _index: Any = field(default=None, repr=False)
    #: Per window start, what its decisions take besides the verdicts
    #: (:meth:`ctrguard.flows.engine.ShardState.closing_context`: stall, drain, click evidence).
    contexts: dict[int, tuple] = field(default_factory=dict)

    def figure_index(self) -> Any:
        """The figures' counts as :class:`ctrguard.replay.evaluate.FigureIndex` (for evaluation)."""
        if self._index is None:
            from ctrguard.replay.evaluate import FigureIndex

            index = FigureIndex()
            for cid, calls in self.campaigns:
                for window, counts in calls:
                    for seg, c in counts.items():
                        if c.impressions or c.clicks:
                            index.add(cid, seg, window.start, c.impressions, c.clicks)
            self._index = index
        return self._index

    @property
    def windows(self) -> int:
        return sum(len(calls) for _, calls in self.campaigns)


def record(impressions: str | Path, clicks: str | Path, settings: Settings, *,
           progress: bool = False) -> RecordedStream:
    """Replay the two files with recorders in place of the detectors."""
    from ctrguard.replay.run import run_replay

    order: list[tuple[_Recorder, int]] = []
    recorders: list[_Recorder] = []
    named: dict[int, str] = {}
    contexts: dict[int, tuple] = {}
    shard: list[Any] = []

    def note(start: int) -> None:
        if start not in contexts:
            contexts[start] = shard[0].closing_context()

    def factory() -> _Recorder:
        rec = _Recorder(order, note)
        recorders.append(rec)
        return rec

    with tempfile.TemporaryDirectory(prefix="ctrguard-record-") as tmp:
        result = run_replay(impressions, clicks, settings, tmp, progress=progress,
                            monitor_factory=factory, decisions=_Namer(order, named),
                            on_state=shard.append)
        deadletter = Path(result.deadletter_path).read_bytes()
    campaigns = []
    for rec in recorders:
        cid = named.get(id(rec))
        if cid is None:  # created, never called: a campaign whose first window never closed
            continue
        campaigns.append((cid, rec.calls))
    summary = {k: v for k, v in result.summary.items()
               if k not in ("windows", "quarantined_windows", "alerts", "baseline_alerts")}
    return RecordedStream(settings.windows.length, campaigns, summary, deadletter,
                          contexts=contexts)


class _Namer:
    """Names each recorder after the campaign of the decision its call produced (the engine
    returns one :class:`WindowDecision` per monitor call, in call order)."""

    def __init__(self, order: list[tuple[_Recorder, int]], named: dict[int, str]):
        self.order = order
        self.named = named

    def __call__(self, items: list[Any]) -> None:
        order = self.order
        i = 0
        for d in items:
            if not isinstance(d, WindowDecision):
                continue
            if i >= len(order) or order[i][1] != d.window_start_s:
                raise CtrGuardError(f"record: decision {d.campaign_id}@{d.window_start_s} "
                                   "does not match its monitor call")
            self.named.setdefault(id(order[i][0]), d.campaign_id)
            i += 1
        if i != len(order):
            raise CtrGuardError(f"record: {len(order) - i} monitor calls without a decision")
        order.clear()


@dataclass
class Detection:
    """What the detectors decided over a recorded stream."""

    alerts: list[Alert]
    decisions: list[WindowDecision] | None     # with ``keep_decisions``
    bands: list[bytes] | None                  # ``bands.jsonl`` lines, with ``bands``

    def alert_dicts(self) -> list[dict[str, Any]]:
        return [a.to_dict() for a in self.alerts]

    def quarantined(self) -> set[tuple[str, str, int]]:
        """``(campaign, segment, window_start_s)`` of every quarantined figure."""
        return {(a.campaign_id, a.segment, a.window_start_s) for a in self.alerts
                if a.quarantine}


def detect(stream: RecordedStream, settings: Settings, *, keep_decisions: bool = False,
           bands: bool = False) -> Detection:
    """Run fresh monitors of ``settings.detectors`` over the recorded calls."""
    from ctrguard.detectors.monitor import build_monitor
    from ctrguard.flows.engine import ShardState

    # The engine's own decision code turns verdicts into alerts and figures, so the ids,
    # figures and statuses are the replay's.
    state = ShardState(settings, [], lambda: None)
    det = settings.detectors
    alerts: list[Alert] = []
    decisions: list[WindowDecision] | None = [] if keep_decisions else None
    band_lines: list[bytes] | None = [] if bands else None
    for cid, calls in stream.campaigns:
        monitor = build_monitor(det)
        for window, counts in calls:
            if band_lines is not None:
                expected = monitor.expectations(window, counts)
                if expected:
                    band_lines.append(encode_record({"campaign_id": cid,
                                                     "window_start_s": window.start,
                                                     "series": expected}))
            verdicts = monitor.update(window, counts)
            if verdicts:
                verdicts = _in_context(monitor, cid, verdicts, stream.contexts.get(window.start))
            if not verdicts and decisions is None:
                continue
            when = (window, state._window_iso(window.start), state._window_iso(window.end))
            if verdicts:
                d = state._decide_verdicts(cid, counts, verdicts, when)
                alerts.extend(d.alerts)
            else:
                d = _quiet_decision(cid, counts, when)
            if decisions is not None:
                decisions.append(d)
    return Detection(alerts, decisions, band_lines)


def _in_context(monitor: Any, cid: str, verdicts: list[Any], context: tuple | None
                ) -> list[Any]:
    """The verdicts as the engine scoped and revised them when the window closed: stall and
    drain (:func:`ctrguard.flows.stall.scope_verdicts`), the cause of a CTR rise from the clicks'
    evidence (:meth:`ctrguard.detectors.monitor.CampaignMonitor.revise`)."""
    if context is None:
        return verdicts
    from ctrguard.flows.stall import scope_verdicts

    stalled, draining, evidence = context
    if draining or stalled != (None, None, False, False):
        verdicts = scope_verdicts(verdicts, stalled, draining)
    got = evidence.get(cid)
    if got is not None and any(v.suspected_cause in ("bot_clicks", "behaviour_change")
                               for v in verdicts):
        verdicts = monitor.revise(verdicts, got)
    return verdicts


def _quiet_decision(cid: str, counts: dict[str, Any], when: tuple[Any, str, str]
                    ) -> WindowDecision:
    """A decision without verdicts: an ok figure per series with traffic (as the engine)."""
    from ctrguard.records import STATUS_OK, Figure

    window, start_iso, end_iso = when
    figures = tuple(
        Figure(cid, seg, start_iso, end_iso, window.start, c.impressions, c.clicks,
               c.clicks / c.impressions if c.impressions > 0 else 0.0, STATUS_OK, ())
        for seg, c in counts.items() if c.impressions or c.clicks)
    return WindowDecision(cid, window.start, window.end, figures, ())


def write_run(stream: RecordedStream, settings: Settings, out_dir: str | Path, *,
              bands: bool = True) -> dict[str, Any]:
    """Write a replay output directory (alerts, figures, dead letters, summary, bands) for
    ``settings`` from a recording; returns the summary. Lines are in campaign order, not
    in the order a replay closes windows; their content is the replay's."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = detect(stream, settings, keep_decisions=True, bands=bands)
    assert d.decisions is not None
    n_figures = n_quarantined = 0
    with open(out / "figures.jsonl", "wb") as figs, open(out / "alerts.jsonl", "wb") as al:
        for dec in d.decisions:
            if dec.figures:
                figs.write(encode_lines(dec.figures))
                n_figures += len(dec.figures)
                n_quarantined += sum(f.status == STATUS_QUARANTINED for f in dec.figures)
            if dec.alerts:
                al.write(encode_lines(dec.alerts))
    (out / "deadletter.jsonl").write_bytes(stream.deadletter)
    if d.bands is not None:
        (out / "bands.jsonl").write_bytes(b"\n".join(d.bands) + b"\n" if d.bands else b"")
    summary = dict(stream.summary)
    summary.update(windows=n_figures, quarantined_windows=n_quarantined,
                   alerts=len(d.alerts), baseline_alerts={})
    (out / "summary.json").write_bytes(encode_pretty(summary))
    return summary

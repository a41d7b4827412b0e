"""The pure core shared by the live flow and replay: prepare batches, window, dedup, detect.

No I/O happens here. The live flow (``flows/ctr_flow.py``) and replay (``replay/run.py``)
both push the same :class:`Chunk` objects through :class:`ShardState`, so they produce the
same figures and alerts for the same input order.

Event time and watermarks
-------------------------
Every input source (a Kafka topic partition, or a replay file) reports a *frontier*: the
largest plausible event time it has delivered. A shard's watermark is the minimum frontier
over the sources that are not idle (a source is idle when it has been read to its end), less
the allowed lateness. A window closes when the watermark passes its end. Taking the minimum
is what keeps a click partition that runs ahead of the impression partition from closing
windows early; treating caught-up sources as idle is what lets windows close during a click
tracking outage, when the click topic is silent.

>>> from ctrguard.config import Settings
>>> settings = Settings()
>>> prep = EventPreparer(settings)
>>> raw = [b'{"event_id":"i1","ts":1767225600000,"campaign_id":"c1","device":"mobile"}',
...        b'{"event_id":"i1","ts":1767225601000,"campaign_id":"c1","device":"mobile"}',
...        b'not json']
>>> batch = prep.prepare(RawBatch("imp", 0, IMPRESSION, raw, list(range(3))))
>>> len(batch.dead_letters), batch.dead_letters[0].reason[:14], batch.frontier_ms
(1, 'not valid JSON', 1767225601000)
"""

from __future__ import annotations

import math
import operator
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ctrguard.config import Settings
from ctrguard.errors import EventError
from ctrguard.events import CLICK, IMPRESSION, decode_event, ms_to_iso
from ctrguard.records import (
    STATUS_OK,
    STATUS_QUARANTINED,
    Alert,
    Figure,
    WindowDecision,
    make_alert_id,
)
from detectors.base import ALL, Counts, Verdict, Window

__all__ = [
    "CLICK", "IMPRESSION", "RawBatch", "Prepared", "Chunk", "DeadLetter", "PreparedBatch",
    "EventPreparer", "ShardState", "ShardStats", "shard_of",
]


class RawBatch(NamedTuple):
    """Raw messages read from one source (topic partition or file) in one go.

    ``idle`` marks a source that has been read to its end: it holds back no watermark.
    """

    topic: str
    partition: int
    kind: int
    values: Sequence[bytes]
    offsets: Sequence[int]
    idle: bool = False

    @property
    def source(self) -> str:
        return f"{self.topic}:{self.partition}"


class Prepared(NamedTuple):
    """A valid, included event, reduced to what windowing and detection need."""

    ts_ms: int
    kind: int
    event_id: str
    campaign_id: str
    dims: tuple[str | None, ...]
    raw: bytes
    offset: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be used, with why. ``raw`` is the original bytes."""

    stage: str            # "parse" | "future" | "past" | "late"
    reason: str
    topic: str
    partition: int
    offset: int
    raw: bytes


@dataclass(slots=True)
class Chunk:
    """What one shard receives from one raw batch: its events plus the source's progress."""

    source: str
    frontier_ms: int | None
    idle: bool
    events: list[Prepared] = field(default_factory=list)


@dataclass(slots=True)
class PreparedBatch:
    """Result of preparing one raw batch: per-shard chunks, dead letters and counters."""

    source: str
    frontier_ms: int | None
    idle: bool
    by_shard: dict[int, list[Prepared]]
    dead_letters: list[DeadLetter]
    excluded: Counter
    read: int


def shard_of(campaign_id: str, shards: int) -> int:
    """Stable shard of a campaign (same in every process, unlike ``hash``).

    >>> shard_of("c1", 16) == shard_of("c1", 16), 0 <= shard_of("c1", 16) < 16
    (True, True)
    """
    return zlib.crc32(campaign_id.encode("utf-8", "surrogatepass")) % shards


def _no_dims(ev: object) -> tuple[()]:
    return ()


def _dims_getter(dims: tuple[str, ...]) -> Callable[[Any], tuple]:
    """A fast getter of the segment dimension values of a decoded event, as a tuple."""
    if not dims:
        return _no_dims
    getter = operator.attrgetter(*dims)
    if len(dims) > 1:
        return getter
    return lambda ev: (getter(ev),)


class EventPreparer:
    """Parse, validate, exclude and route one raw batch. Pure; one per worker."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._dims = tuple(settings.segments.dimensions)
        self._shards = settings.windows.shards
        self._future_ms = settings.windows.future_tolerance * 1000
        self._max_bytes = settings.max_event_bytes
        patterns = settings.exclusions.bot_user_agents
        self._bot_re = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None
        self._exclude_internal = settings.exclusions.internal
        self._shard_cache: dict[str, int] = {}
        self._ua_cache: dict[str, bool] = {}
        self._dim_getter = _dims_getter(self._dims)

    def prepare(self, batch: RawBatch, now_ms: int | None = None) -> PreparedBatch:
        """Parse one raw batch. ``now_ms`` (wall clock) bounds plausible event times."""
        dead: list[DeadLetter] = []
        excluded: Counter = Counter()
        valid: list[Prepared] = []
        dim_getter = self._dim_getter
        bot_re = self._bot_re
        kind = batch.kind
        max_bytes = self._max_bytes
        exclude_internal = self._exclude_internal
        ua_cache = self._ua_cache
        new_tuple = tuple.__new__
        for raw, offset in zip(batch.values, batch.offsets, strict=True):
            try:
                ev = decode_event(raw, max_bytes=max_bytes)
            except EventError as exc:
                dead.append(DeadLetter("parse", exc.reason, batch.topic, batch.partition,
                                       offset, raw if raw is not None else b""))
                continue
            if ev.is_internal and exclude_internal:
                excluded["internal"] += 1
                continue
            ua = ev.user_agent
            if ua is not None and bot_re is not None:
                is_bot = ua_cache.get(ua)
                if is_bot is None:
                    if len(ua_cache) > 100_000:
                        ua_cache.clear()
                    is_bot = ua_cache[ua] = bot_re.search(ua) is not None
                if is_bot:
                    excluded["bot_user_agent"] += 1
                    continue
            # tuple.__new__ skips NamedTuple's Python-level constructor (hot path).
            valid.append(new_tuple(Prepared, (ev.ts, kind, ev.event_id, ev.campaign_id,
                                              dim_getter(ev), raw, offset)))
        frontier = None
        if valid:
            if now_ms is not None:
                # An event time beyond the present is impossible; letting it through would
                # push the watermark ahead and close every window early.
                limit = now_ms + self._future_ms
                if any(p.ts_ms > limit for p in valid):
                    kept = []
                    for p in valid:
                        if p.ts_ms > limit:
                            dead.append(DeadLetter(
                                "future", f"event time {ms_to_iso(p.ts_ms)} is more than "
                                f"{self._future_ms // 1000}s in the future",
                                batch.topic, batch.partition, p.offset, p.raw))
                        else:
                            kept.append(p)
                    valid = kept
            if valid:
                frontier = max(p.ts_ms for p in valid)
        by_shard: dict[int, list[Prepared]] = {}
        cache = self._shard_cache
        for p in valid:
            s = cache.get(p.campaign_id)
            if s is None:
                if len(cache) > 1_000_000:
                    cache.clear()
                s = cache[p.campaign_id] = shard_of(p.campaign_id, self._shards)
            lst = by_shard.get(s)
            if lst is None:
                by_shard[s] = [p]
            else:
                lst.append(p)
        return PreparedBatch(batch.source, frontier, batch.idle, by_shard, dead, excluded,
                             len(batch.values))

    def chunks(self, prepared: PreparedBatch) -> list[tuple[int, Chunk]]:
        """One chunk for *every* shard, so every shard learns the source's progress."""
        return [
            (s, Chunk(prepared.source, prepared.frontier_ms, prepared.idle,
                      prepared.by_shard.get(s, [])))
            for s in range(self._shards)
        ]


# --------------------------------------------------------------------------- shard state


@dataclass(slots=True)
class ShardStats:
    events: int = 0
    duplicates: int = 0
    late: int = 0
    windows: int = 0          # series-windows closed (figures decided)
    alerts: int = 0
    quarantined: int = 0      # figures published as quarantined
    evicted_campaigns: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class _WindowAcc:
    __slots__ = ("ids", "counts")

    def __init__(self) -> None:
        self.ids: tuple[set[str], set[str]] = (set(), set())
        self.counts: dict[str, list[int]] = {}


class _Campaign:
    __slots__ = ("windows", "monitor", "segments", "seg_cache", "dim_values", "first_wid",
                 "last_event_wid", "closed_ids")

    def __init__(self, monitor: Any, first_wid: int):
        self.windows: dict[int, _WindowAcc] = {}
        self.monitor = monitor
        self.segments: dict[str, None] = {ALL: None}      # ordered set of series seen
        self.seg_cache: dict[tuple, tuple[str, ...]] = {}
        self.dim_values: dict[str, set[str]] = {}
        self.first_wid = first_wid
        self.last_event_wid = first_wid
        self.closed_ids: dict[int, tuple[set[str], set[str]]] = {}


class ShardState:
    """Windowing, de-duplication and detection for the campaigns of one shard.

    ``ingest(chunk)`` returns what became final: :class:`WindowDecision` objects (one per
    campaign and closed window, in window order) and :class:`DeadLetter` objects (late events).
    The whole object pickles; a restored copy continues identically.
    """

    def __init__(self, settings: Settings, sources: Iterable[str],
                 monitor_factory: Callable[[], Any]):
        self.settings = settings
        self._length_ms = settings.windows.length * 1000
        self._lateness_ms = settings.windows.allowed_lateness * 1000
        self._ttl_windows = max(1, math.ceil(settings.windows.series_ttl / settings.windows.length))
        self._dims = tuple(settings.segments.dimensions)
        self._max_values = settings.segments.max_values_per_dimension
        self._grace_windows = max(1, math.ceil(settings.windows.allowed_lateness
                                               / settings.windows.length))
        self._monitor_factory = monitor_factory
        self._frontiers: dict[str, int | None] = {s: None for s in sources}
        self._idle: set[str] = set()
        self._campaigns: dict[str, _Campaign] = {}
        self._next_close: int | None = None     # first window id not closed yet
        self.stats = ShardStats()

    # -- watermark ---------------------------------------------------------------------

    def watermark_ms(self) -> int | None:
        """Event time up to which every window is final (frontier minimum less lateness)."""
        active = [f for s, f in self._frontiers.items() if s not in self._idle]
        if active:
            if any(f is None for f in active):
                return None  # a source that has delivered nothing yet may hold old events
            low = min(active)  # type: ignore[type-var]
        else:
            known = [f for f in self._frontiers.values() if f is not None]
            if not known:
                return None
            low = max(known)
        return low - self._lateness_ms

    # -- ingest ------------------------------------------------------------------------

    def ingest(self, chunk: Chunk) -> list[WindowDecision | DeadLetter]:
        out: list[WindowDecision | DeadLetter] = []
        source = chunk.source
        if chunk.frontier_ms is not None:
            prev = self._frontiers.get(source)
            if prev is None or chunk.frontier_ms > prev:
                self._frontiers[source] = chunk.frontier_ms
        elif source not in self._frontiers:
            self._frontiers[source] = None
        if chunk.idle:
            self._idle.add(source)
        elif chunk.events or chunk.frontier_ms is not None:
            self._idle.discard(source)
        if chunk.events:
            self._add_events(chunk.events, source, out)
        wm = self.watermark_ms()
        if wm is not None:
            self._close_through(wm // self._length_ms, out)
        return out

    def flush(self) -> list[WindowDecision | DeadLetter]:
        """Close every open window (end of a drained stream)."""
        out: list[WindowDecision | DeadLetter] = []
        last = max((max(c.windows) for c in self._campaigns.values() if c.windows), default=None)
        if last is not None:
            self._close_through(last + 1, out)
        return out

    def _add_events(self, events: list[Prepared], source: str, out: list) -> None:
        topic, _, part = source.rpartition(":")
        partition = int(part) if part.lstrip("-").isdigit() else -1
        length = self._length_ms
        next_close = self._next_close
        campaigns = self._campaigns
        stats = self.stats
        for p in events:
            wid = p.ts_ms // length
            camp = campaigns.get(p.campaign_id)
            if next_close is not None and wid < next_close:
                closed = camp.closed_ids.get(wid) if camp is not None else None
                if closed is not None and p.event_id in closed[p.kind]:
                    stats.duplicates += 1
                else:
                    stats.late += 1
                    out.append(DeadLetter(
                        "late", f"window {ms_to_iso(wid * length)} already closed "
                        f"(allowed lateness {self._lateness_ms // 1000}s)",
                        topic, partition, p.offset, p.raw))
                continue
            if camp is None:
                camp = campaigns[p.campaign_id] = _Campaign(self._monitor_factory(), wid)
            win = camp.windows.get(wid)
            if win is None:
                win = camp.windows[wid] = _WindowAcc()
                if wid < camp.first_wid:
                    camp.first_wid = wid
            ids = win.ids[p.kind]
            if p.event_id in ids:
                stats.duplicates += 1
                continue
            ids.add(p.event_id)
            stats.events += 1
            if wid > camp.last_event_wid:
                camp.last_event_wid = wid
            segs = camp.seg_cache.get(p.dims)
            if segs is None:
                segs = self._segments_for(camp, p.dims)
            counts = win.counts
            kind = p.kind
            for seg in segs:
                c = counts.get(seg)
                if c is None:
                    c = counts[seg] = [0, 0]
                c[kind] += 1

    def _segments_for(self, camp: _Campaign, dims: tuple[str | None, ...]) -> tuple[str, ...]:
        segs = [ALL]
        for name, value in zip(self._dims, dims, strict=True):
            if value is None:
                continue
            seen = camp.dim_values.setdefault(name, set())
            if value not in seen:
                if len(seen) >= self._max_values:
                    value = "other"
                else:
                    seen.add(value)
            seg = f"{name}={value}"
            segs.append(seg)
            camp.segments.setdefault(seg, None)
        result = tuple(segs)
        if len(camp.seg_cache) < 4096:
            camp.seg_cache[dims] = result
        return result

    # -- closing -----------------------------------------------------------------------

    def _close_through(self, end_wid: int, out: list) -> None:
        """Close every window with id < end_wid."""
        if self._next_close is None:
            starts = [min(c.windows) for c in self._campaigns.values() if c.windows]
            if not starts:
                return
            self._next_close = max(min(starts), end_wid - self._ttl_windows)
        length_s = self.settings.windows.length
        while self._next_close < end_wid:
            wid = self._next_close
            self._next_close = wid + 1
            evict = []
            for cid, camp in self._campaigns.items():
                if wid < camp.first_wid:
                    continue
                win = camp.windows.pop(wid, None)
                if win is None and wid - camp.last_event_wid > self._ttl_windows:
                    if not camp.windows:
                        evict.append(cid)
                    continue
                out.append(self._decide(cid, camp, wid, win, length_s))
                if win is not None:
                    camp.closed_ids[wid] = win.ids
                stale = wid - self._grace_windows
                for old in [w for w in camp.closed_ids if w <= stale]:
                    del camp.closed_ids[old]
            for cid in evict:
                del self._campaigns[cid]
                self.stats.evicted_campaigns += 1

    def _decide(self, cid: str, camp: _Campaign, wid: int, win: _WindowAcc | None,
                length_s: int) -> WindowDecision:
        start_s = wid * length_s
        end_s = start_s + length_s
        counts_map = win.counts if win is not None else {}
        counts = {}
        for seg in camp.segments:
            c = counts_map.get(seg)
            counts[seg] = Counts(c[0], c[1]) if c is not None else Counts(0, 0)
        verdicts: list[Verdict] = camp.monitor.update(Window(start_s, end_s), counts)
        start_iso, end_iso = ms_to_iso(start_s * 1000), ms_to_iso(end_s * 1000)
        alerts_by_seg: dict[str, list[Alert]] = {}
        alerts: list[Alert] = []
        for v in verdicts:
            c = counts.get(v.segment, Counts(0, 0))
            alert = Alert(
                alert_id=make_alert_id(cid, v.segment, start_s, v.detector, v.kind),
                campaign_id=cid, segment=v.segment, window_start=start_iso, window_end=end_iso,
                window_start_s=start_s, impressions=c.impressions, clicks=c.clicks, ctr=c.ctr,
                kind=v.kind, severity=v.severity, detector=v.detector,
                baseline_ctr=v.baseline_ctr, score=v.score, confidence=v.confidence,
                ctr_low=v.ctr_low, ctr_high=v.ctr_high, expected_clicks=v.expected_clicks,
                expected_impressions=v.expected_impressions, suspected_cause=v.suspected_cause,
                quarantine=v.quarantine, incident=v.incident,
            )
            alerts.append(alert)
            alerts_by_seg.setdefault(v.segment, []).append(alert)
        figures = []
        for seg, c in counts.items():
            seg_alerts = alerts_by_seg.get(seg, ())
            if c.impressions == 0 and c.clicks == 0 and not seg_alerts:
                continue
            quarantined = any(a.quarantine for a in seg_alerts)
            figures.append(Figure(
                campaign_id=cid, segment=seg, window_start=start_iso, window_end=end_iso,
                window_start_s=start_s, impressions=c.impressions, clicks=c.clicks, ctr=c.ctr,
                status=STATUS_QUARANTINED if quarantined else STATUS_OK,
                alert_ids=tuple(a.alert_id for a in seg_alerts),
            ))
            self.stats.windows += 1
            if quarantined:
                self.stats.quarantined += 1
        self.stats.alerts += len(alerts)
        return WindowDecision(cid, start_s, end_s, tuple(figures), tuple(alerts))

    # -- introspection -----------------------------------------------------------------

    @property
    def campaigns(self) -> int:
        return len(self._campaigns)

    def series(self) -> int:
        return sum(len(c.segments) for c in self._campaigns.values())


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

Cost
----
Everything per event is done in bulk: a batch is decoded with one C call per message and its
times parsed with numpy (:func:`ctrguard.events.decode_batch`); chunks carry columns (numpy
times, tuples of ids), not one object per event; a shard's inner loop is a dict lookup, a set
membership test and a counter increment per event, counting per combination of dimension
values (segments are expanded when the window closes). Anything unusual (a malformed or late
event, a new window or campaign) leaves that loop for a slower, careful path.
"""

from __future__ import annotations

import gc
import math
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

import numpy as np

from ctrguard.config import Settings
from ctrguard.events import CLICK, IMPRESSION, decode_batch, ms_to_iso
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
    "EventPreparer", "ShardState", "ShardStats", "shard_of", "tune_gc",
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
    """A valid, included event, reduced to what windowing and detection need.

    The flow moves events in columns (:class:`Chunk`); this row form is for tests and tools.
    """

    ts_ms: int
    kind: int
    event_id: str
    campaign_id: str
    dims: tuple[str | None, ...]
    raw: bytes
    offset: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be used, with why. ``raw`` is the original bytes; ``None``
    for a late event whose chunk crossed processes without them (:class:`Chunk`): the
    dead-letter sink reads them back from the source partition at ``offset``."""

    stage: str            # "parse" | "future" | "past" | "late"
    reason: str
    topic: str
    partition: int
    offset: int
    raw: bytes | None


_NO_TIMES = np.empty(0, dtype=np.int64)
_NO_TIMES.flags.writeable = False


def _no_times() -> np.ndarray:
    return _NO_TIMES


def dims_key(dims: Sequence[str | None]) -> Any:
    """How a chunk stores one event's dimension values: the value itself for one dimension
    (no tuple per event), ``None`` for none, the tuple for several."""
    if len(dims) == 1:
        return dims[0]
    return None if not dims else tuple(dims)


def _dims_tuple(key: Any, n: int) -> tuple[str | None, ...]:
    if n == 1:
        return (key,)
    return () if n == 0 else key


@dataclass(slots=True)
class Chunk:
    """What one shard receives from one raw batch: its events (one kind, in columns, in
    arrival order) plus the source's progress.

    Pickled (only when it crosses to another process) without the raw message bytes, which
    are half its size and needed only for the rare late event: ``raws`` is then ``None``.
    """

    source: str
    frontier_ms: int | None
    idle: bool
    kind: int = IMPRESSION
    ts_ms: np.ndarray = field(default_factory=_no_times)
    campaign_ids: Sequence[str] = ()
    event_ids: Sequence[str] = ()
    dims: Sequence[Any] = ()          # per event: :func:`dims_key` of its dimension values
    offsets: Sequence[int] = ()
    raws: Sequence[bytes] | None = ()

    def __len__(self) -> int:
        return len(self.campaign_ids)

    def __getstate__(self) -> tuple:
        return (self.source, self.frontier_ms, self.idle, self.kind, self.ts_ms,
                self.campaign_ids, self.event_ids, self.dims, self.offsets)

    def __setstate__(self, state: tuple) -> None:
        (self.source, self.frontier_ms, self.idle, self.kind, self.ts_ms, self.campaign_ids,
         self.event_ids, self.dims, self.offsets) = state
        self.raws = None  # type: ignore[assignment]

    @classmethod
    def of(cls, source: str, frontier_ms: int | None, idle: bool,
           events: Sequence[Prepared]) -> Chunk:
        """A chunk from rows (all of one kind)."""
        kinds = {p.kind for p in events}
        if len(kinds) > 1:
            raise ValueError("a chunk holds events of one kind")
        return cls(source, frontier_ms, idle, kinds.pop() if kinds else IMPRESSION,
                   np.array([p.ts_ms for p in events], dtype=np.int64),
                   [p.campaign_id for p in events], [p.event_id for p in events],
                   [dims_key(p.dims) for p in events], [p.offset for p in events],
                   [p.raw for p in events])

    def rows(self, n_dims: int) -> list[Prepared]:
        """The events as :class:`Prepared` rows (``n_dims``: dimensions configured)."""
        raws = self.raws if self.raws is not None else [None] * len(self)
        return [Prepared(ts, self.kind, eid, cid, _dims_tuple(dk, n_dims), raw, off)
                for ts, eid, cid, dk, raw, off in zip(
                    self.ts_ms.tolist(), self.event_ids, self.campaign_ids, self.dims,
                    raws, self.offsets, strict=True)]


@dataclass(slots=True)
class PreparedBatch:
    """Result of preparing one raw batch: per-shard chunks, dead letters and counters."""

    source: str
    frontier_ms: int | None
    idle: bool
    chunks: dict[int, Chunk]     # shards with events only
    dead_letters: list[DeadLetter]
    excluded: Counter
    read: int
    n_dims: int = 0

    @property
    def by_shard(self) -> dict[int, list[Prepared]]:
        """The kept events per shard as rows (tests and tools; the flow uses ``chunks``)."""
        return {s: c.rows(self.n_dims) for s, c in self.chunks.items()}


def shard_of(campaign_id: str, shards: int) -> int:
    """Stable shard of a campaign (same in every process, unlike ``hash``).

    >>> shard_of("c1", 16) == shard_of("c1", 16), 0 <= shard_of("c1", 16) < 16
    (True, True)
    """
    return zlib.crc32(campaign_id.encode("utf-8", "surrogatepass")) % shards


#: CPython collects its youngest generation every 700 net allocations of container objects.
#: A flow allocates and frees tens of thousands per batch (window accumulators, figures,
#: decisions), so with the default it spends a large share of its time walking a heap that
#: is mostly long-lived detector state. Collections stay on, only rarer.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Make this process's cyclic garbage collection rarer (see :data:`GC_THRESHOLDS`)."""
    if gc.get_threshold()[0] < GC_THRESHOLDS[0]:
        gc.set_threshold(*GC_THRESHOLDS)


_CAMPAIGN = attrgetter("campaign_id")
_EVENT_ID = attrgetter("event_id")
_INTERNAL = attrgetter("is_internal")
_USER_AGENT = attrgetter("user_agent")


def _take(columns: Sequence[Sequence[Any]], idx: list[int]) -> list[tuple[Any, ...]]:
    """The rows ``idx`` of each column (C-speed gather)."""
    if len(idx) == 1:
        i = idx[0]
        return [(col[i],) for col in columns]
    get = itemgetter(*idx)
    return [get(col) for col in columns]


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
        self._dim_getters = [attrgetter(d) for d in self._dims]

    def _is_bot(self, ua: str) -> bool:
        is_bot = self._ua_cache.get(ua)
        if is_bot is None:
            if len(self._ua_cache) > 100_000:
                self._ua_cache.clear()
            is_bot = self._ua_cache[ua] = self._bot_re.search(ua) is not None  # type: ignore[union-attr]
        return is_bot

    def _excluded(self, events: list[Any], excluded: Counter) -> set[int]:
        """Positions of internal and bot traffic (counted in ``excluded`` by reason)."""
        drop: set[int] = set()
        if self._exclude_internal:
            internal = list(map(_INTERNAL, events))
            if any(internal):
                drop = {j for j, flag in enumerate(internal) if flag}
                excluded["internal"] += len(drop)
        if self._bot_re is not None:
            agents = list(map(_USER_AGENT, events))
            seen = set(agents)
            seen.discard(None)
            bots = {ua for ua in seen if self._is_bot(ua)}
            if bots:
                hits = {j for j, ua in enumerate(agents) if ua in bots} - drop
                if hits:
                    excluded["bot_user_agent"] += len(hits)
                    drop |= hits
        return drop

    def prepare(self, batch: RawBatch, now_ms: int | None = None) -> PreparedBatch:
        """Parse one raw batch. ``now_ms`` (wall clock) bounds plausible event times."""
        values, offsets = batch.values, batch.offsets
        topic, partition = batch.topic, batch.partition
        decoded = decode_batch(values, max_bytes=self._max_bytes)
        dead = [DeadLetter("parse", exc.reason, topic, partition, offsets[i],
                           values[i] if values[i] is not None else b"")
                for i, exc in decoded.errors]
        events, ts, pos = decoded.events, decoded.ts_ms, decoded.positions
        excluded: Counter = Counter()
        keep: list[int] | None = None
        if events:
            drop = self._excluded(events, excluded)
            if drop:
                keep = [j for j in range(len(events)) if j not in drop]
        if now_ms is not None and ts.size:
            # An event time beyond the present is impossible; letting it through would
            # push the watermark ahead and close every window early.
            limit = now_ms + self._future_ms
            if ts.max() > limit:
                kept = keep if keep is not None else range(len(events))
                future = [j for j in kept if ts[j] > limit]
                for j in future:
                    i = pos[j] if pos is not None else j
                    dead.append(DeadLetter(
                        "future", f"event time {ms_to_iso(int(ts[j]))} is more than "
                        f"{self._future_ms // 1000}s in the future",
                        topic, partition, offsets[i], values[i]))  # type: ignore[arg-type]
                gone = set(future)
                keep = [j for j in kept if j not in gone]
        if keep is not None:
            events = [events[j] for j in keep]
            ts = ts[keep] if keep else _NO_TIMES
            pos = [pos[j] for j in keep] if pos is not None else keep
        frontier = int(ts.max()) if ts.size else None
        cids = list(map(_CAMPAIGN, events))
        eids = list(map(_EVENT_ID, events))
        if not self._dims:
            dks: list[Any] = [None] * len(events)
        elif len(self._dims) == 1:
            dks = list(map(self._dim_getters[0], events))
        else:
            dks = list(zip(*[list(map(g, events)) for g in self._dim_getters], strict=True))
        if pos is None:
            raws, offs = values, offsets
        else:
            raws = [values[i] for i in pos]
            offs = [offsets[i] for i in pos]
        chunks: dict[int, Chunk] = {}
        if events:
            for s, (t, cols) in self._route(cids, ts, (cids, eids, dks, offs, raws)).items():
                chunks[s] = Chunk(batch.source, frontier, batch.idle, batch.kind, t, *cols)
        return PreparedBatch(batch.source, frontier, batch.idle, chunks, dead, excluded,
                             len(values), len(self._dims))

    def _route(self, cids: list[str], ts: np.ndarray, columns: tuple
               ) -> dict[int, tuple[np.ndarray, Sequence[Sequence[Any]]]]:
        """Split columns by shard, keeping arrival order within each shard."""
        if self._shards == 1:
            return {0: (ts, columns)}
        cache = self._shard_cache
        try:
            shards = [cache[c] for c in cids]
        except KeyError:
            if len(cache) > 1_000_000:
                cache.clear()
            for c in set(cids).difference(cache):
                cache[c] = shard_of(c, self._shards)
            shards = [cache[c] for c in cids]
        first = shards[0]
        if shards.count(first) == len(shards):
            return {first: (ts, columns)}
        arr = np.array(shards, dtype=np.intp)
        order = np.argsort(arr, kind="stable")
        counts = np.bincount(arr, minlength=self._shards).tolist()
        out = {}
        start = 0
        for s, n in enumerate(counts):
            if n:
                idx = order[start:start + n]
                out[s] = (ts[idx], _take(columns, idx.tolist()))
                start += n
        return out

    def chunks(self, prepared: PreparedBatch) -> list[tuple[int, Chunk]]:
        """One chunk for *every* shard, so every shard learns the source's progress."""
        empty = None
        out = []
        for s in range(self._shards):
            chunk = prepared.chunks.get(s)
            if chunk is None:
                if empty is None:
                    empty = Chunk(prepared.source, prepared.frontier_ms, prepared.idle)
                chunk = empty
            out.append((s, chunk))
        return out

    def merged(self, prepared: PreparedBatch, kind: int) -> Chunk:
        """All shards' events in one chunk, in shard order (as the shards of the flow see
        them), for a single state holding every campaign (replay)."""
        parts = [prepared.chunks[s] for s in sorted(prepared.chunks)]
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return Chunk(prepared.source, prepared.frontier_ms, prepared.idle, kind)
        return Chunk(prepared.source, prepared.frontier_ms, prepared.idle, kind,
                     np.concatenate([p.ts_ms for p in parts]),
                     *[list(chain.from_iterable(getattr(p, name) for p in parts))
                       for name in ("campaign_ids", "event_ids", "dims", "offsets", "raws")])


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
    """One open window of a campaign: per kind, the ids seen and the counts per
    combination of dimension values (:func:`dims_key`)."""

    __slots__ = ("ids", "counts")

    def __init__(self) -> None:
        self.ids: tuple[set[str], set[str]] = (set(), set())
        self.counts: tuple[dict[Any, int], dict[Any, int]] = ({}, {})

    def __getstate__(self):
        return self.ids, self.counts

    def __setstate__(self, state):
        self.ids, self.counts = state


class _Campaign:
    __slots__ = ("windows", "monitor", "segments", "seg_cache", "dim_values", "first_wid",
                 "last_event_wid", "closed_ids")

    def __init__(self, monitor: Any, first_wid: int):
        self.windows: dict[int, _WindowAcc] = {}
        self.monitor = monitor
        self.segments: dict[str, None] = {ALL: None}      # ordered set of series seen
        self.seg_cache: dict[Any, tuple[str, ...]] = {}   # dims key -> its series
        self.dim_values: dict[str, set[str]] = {}
        self.first_wid = first_wid
        self.last_event_wid = first_wid
        self.closed_ids: dict[int, tuple[set[str], set[str]]] = {}

    def __getstate__(self):
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state):
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)


def _slot_constructor(cls: type) -> Callable[..., Any]:
    """A positional constructor for a frozen, slotted dataclass that sets the slots through
    their descriptors: a third of the cost of the generated ``__init__`` (which goes through
    ``object.__setattr__`` by name), for classes built thousands of times per second.

    Only for dataclasses without defaults logic or ``__post_init__``; every field is given.

    >>> make = _slot_constructor(Counts)
    >>> make(10, 1) == Counts(10, 1), make(10, 1).ctr
    (True, 0.1)
    """
    names = [f.name for f in fields(cls)]
    if getattr(cls, "__slots__", None) is None or hasattr(cls, "__post_init__") \
            or tuple(names) != tuple(cls.__slots__):
        return cls
    args = ", ".join(f"v{i}" for i in range(len(names)))
    body = "".join(f"    s{i}(o, v{i})\n" for i in range(len(names)))
    env: dict[str, Any] = {"new": object.__new__, "cls": cls}
    env.update({f"s{i}": cls.__dict__[name].__set__ for i, name in enumerate(names)})
    exec(f"def make({args}):\n    o = new(cls)\n{body}    return o\n", env)  # noqa: S102
    make = env["make"]
    make.__qualname__ = make.__name__ = f"make_{cls.__name__}"
    return make


_counts = _slot_constructor(Counts)
_figure = _slot_constructor(Figure)
_decision = _slot_constructor(WindowDecision)
_window = _slot_constructor(Window)
#: Shared immutable Counts for the small values most series-windows have.
_SMALL_COUNTS = [[_counts(n, k) for k in range(16)] for n in range(128)]
_ZERO = _SMALL_COUNTS[0][0]


def _counts_of(n: int, k: int) -> Counts:
    if n < 128 and k < 16:
        return _SMALL_COUNTS[n][k]
    return _counts(n, k)
_STATE_VERSION = 2


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
        self._index_windows()

    def _index_windows(self) -> None:
        # Per kind, window id -> campaign -> (ids, counts) of the open window: the inner
        # loop's lookup. Derived state, rebuilt after unpickling.
        self._open: tuple[dict[int, dict], dict[int, dict]] = ({}, {})
        for cid, camp in self._campaigns.items():
            for wid, win in camp.windows.items():
                for kind in (IMPRESSION, CLICK):
                    self._open[kind].setdefault(wid, {})[cid] = (win.ids[kind],
                                                                 win.counts[kind])
        self._iso: dict[int, str] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_open", "_iso")}
        state["_version"] = _STATE_VERSION
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.pop("_version", None) != _STATE_VERSION:
            raise ValueError("snapshot from an incompatible ctrguard version: start the flow "
                             "with a fresh recovery directory")
        self.__dict__.update(state)
        self._index_windows()

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
        has_events = len(chunk.campaign_ids) > 0
        if chunk.idle:
            self._idle.add(source)
        elif has_events or chunk.frontier_ms is not None:
            self._idle.discard(source)
        if has_events:
            self._add_events(chunk, out)
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

    def _add_events(self, chunk: Chunk, out: list) -> None:
        kind = chunk.kind
        wids = (chunk.ts_ms // self._length_ms).tolist()
        cids, eids, dks = chunk.campaign_ids, chunk.event_ids, chunk.dims
        next_close = self._next_close
        stats = self.stats
        if next_close is not None and min(wids) < next_close:
            self._closed_window_events(chunk, wids, next_close, out)
            keep = [i for i, w in enumerate(wids) if w >= next_close]
            if not keep:
                return
            wids = [wids[i] for i in keep]
            cids, eids, dks = _take((cids, eids, dks), keep)
        opened = self._open[kind]
        current = None
        lookup = None
        duplicates = 0
        for cid, wid, eid, dk in zip(cids, wids, eids, dks, strict=True):
            if wid != current:  # events of a chunk mostly share one or two windows
                by_campaign = opened.get(wid)
                if by_campaign is None:
                    by_campaign = opened[wid] = {}
                lookup = by_campaign.get
                current = wid
            acc = lookup(cid)  # type: ignore[misc]
            if acc is None:
                acc = self._open_window(cid, wid)[kind]
            ids, counts = acc
            if eid in ids:
                duplicates += 1
                continue
            ids.add(eid)
            n = counts.get(dk)
            if n is None:
                counts[dk] = 1
                camp = self._campaigns[cid]
                if dk not in camp.seg_cache:
                    self._segments_for(camp, dk)
            else:
                counts[dk] = n + 1
        stats.duplicates += duplicates
        stats.events += len(wids) - duplicates

    def _closed_window_events(self, chunk: Chunk, wids: list[int], next_close: int,
                              out: list) -> None:
        """Events of windows already closed: repeats of counted events, or late."""
        topic, _, part = chunk.source.rpartition(":")
        partition = int(part) if part.lstrip("-").isdigit() else -1
        length = self._length_ms
        kind = chunk.kind
        stats = self.stats
        for i, wid in enumerate(wids):
            if wid >= next_close:
                continue
            camp = self._campaigns.get(chunk.campaign_ids[i])
            closed = camp.closed_ids.get(wid) if camp is not None else None
            if closed is not None and chunk.event_ids[i] in closed[kind]:
                stats.duplicates += 1
                continue
            stats.late += 1
            out.append(DeadLetter(
                "late", f"window {ms_to_iso(wid * length)} already closed "
                f"(allowed lateness {self._lateness_ms // 1000}s)",
                topic, partition, chunk.offsets[i],
                chunk.raws[i] if chunk.raws is not None else None))

    def _open_window(self, cid: str, wid: int) -> tuple[tuple, tuple]:
        camp = self._campaigns.get(cid)
        if camp is None:
            camp = self._campaigns[cid] = _Campaign(self._monitor_factory(), wid)
        win = camp.windows.get(wid)
        if win is None:
            win = camp.windows[wid] = _WindowAcc()
            if wid < camp.first_wid:
                camp.first_wid = wid
            # The first event of a window is always counted (its id set is empty).
            if wid > camp.last_event_wid:
                camp.last_event_wid = wid
        pairs = ((win.ids[IMPRESSION], win.counts[IMPRESSION]),
                 (win.ids[CLICK], win.counts[CLICK]))
        for kind in (IMPRESSION, CLICK):
            by_campaign = self._open[kind].get(wid)
            if by_campaign is None:
                by_campaign = self._open[kind][wid] = {}
            by_campaign[cid] = pairs[kind]
        return pairs

    def _segments_for(self, camp: _Campaign, dk: Any) -> tuple[str, ...]:
        segs = [ALL]
        for name, value in zip(self._dims, _dims_tuple(dk, len(self._dims)), strict=True):
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
            camp.seg_cache[dk] = result
        return result

    # -- closing -----------------------------------------------------------------------

    def _close_through(self, end_wid: int, out: list) -> None:
        """Close every window with id < end_wid."""
        if self._next_close is None:
            starts = [min(c.windows) for c in self._campaigns.values() if c.windows]
            # Nothing to close yet while the watermark is below the first open window (one
            # source may be far ahead of the others): windows up to there are not late.
            if not starts or min(starts) >= end_wid:
                return
            self._next_close = max(min(starts), end_wid - self._ttl_windows)
        length_s = self.settings.windows.length
        while self._next_close < end_wid:
            wid = self._next_close
            self._next_close = wid + 1
            for opened in self._open:
                opened.pop(wid, None)
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
                closed = camp.closed_ids
                if len(closed) > 1 or (closed and wid not in closed):
                    stale = wid - self._grace_windows
                    for old in [w for w in closed if w <= stale]:
                        del closed[old]
            for cid in evict:
                del self._campaigns[cid]
                self.stats.evicted_campaigns += 1

    def _window_iso(self, start_s: int) -> str:
        text = self._iso.get(start_s)
        if text is None:
            if len(self._iso) > 4096:
                self._iso.clear()
            text = self._iso[start_s] = ms_to_iso(start_s * 1000)
        return text

    def _series_counts(self, camp: _Campaign, win: _WindowAcc | None) -> dict[str, Counts]:
        """Counts of every series of the campaign in one window (zeros included)."""
        if win is None:
            return dict.fromkeys(camp.segments, _ZERO)
        sums: dict[str, list[int]] = {}
        for kind in (IMPRESSION, CLICK):
            for dk, n in win.counts[kind].items():
                segs = camp.seg_cache.get(dk)
                if segs is None:
                    segs = self._segments_for(camp, dk)
                for seg in segs:
                    c = sums.get(seg)
                    if c is None:
                        c = sums[seg] = [0, 0]
                    c[kind] += n
        return {seg: _counts_of(c[0], c[1]) if (c := sums.get(seg)) is not None else _ZERO
                for seg in camp.segments}

    def _decide(self, cid: str, camp: _Campaign, wid: int, win: _WindowAcc | None,
                length_s: int) -> WindowDecision:
        start_s = wid * length_s
        end_s = start_s + length_s
        counts = self._series_counts(camp, win)
        verdicts: list[Verdict] = camp.monitor.update(_window(start_s, end_s), counts)
        start_iso, end_iso = self._window_iso(start_s), self._window_iso(end_s)
        stats = self.stats
        if not verdicts:  # the common case: every series with traffic has an ok figure
            # (a series with events has a count above zero; only the shared zero is empty)
            figures = tuple([
                _figure(cid, seg, start_iso, end_iso, start_s, c.impressions, c.clicks,
                        c.clicks / c.impressions if c.impressions > 0 else 0.0, STATUS_OK, ())
                for seg, c in counts.items() if c is not _ZERO])
            stats.windows += len(figures)
            return _decision(cid, start_s, end_s, figures, ())
        alerts_by_seg: dict[str, list[Alert]] = {}
        alerts: list[Alert] = []
        for v in verdicts:
            c = counts.get(v.segment, _ZERO)
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
            seg_alerts = alerts_by_seg.get(seg)
            if seg_alerts is None:
                if c is _ZERO or (c.impressions == 0 and c.clicks == 0):
                    continue
                figures.append(_figure(cid, seg, start_iso, end_iso, start_s, c.impressions,
                                       c.clicks, c.ctr, STATUS_OK, ()))
                continue
            quarantined = any(a.quarantine for a in seg_alerts)
            figures.append(Figure(
                campaign_id=cid, segment=seg, window_start=start_iso, window_end=end_iso,
                window_start_s=start_s, impressions=c.impressions, clicks=c.clicks, ctr=c.ctr,
                status=STATUS_QUARANTINED if quarantined else STATUS_OK,
                alert_ids=tuple(a.alert_id for a in seg_alerts),
            ))
            if quarantined:
                stats.quarantined += 1
        stats.windows += len(figures)
        stats.alerts += len(alerts)
        return _decision(cid, start_s, end_s, tuple(figures), tuple(alerts))

    # -- introspection -----------------------------------------------------------------

    @property
    def campaigns(self) -> int:
        return len(self._campaigns)

    def series(self) -> int:
        return sum(len(c.segments) for c in self._campaigns.values())

"""The pure core shared by the live flow and replay: prepare batches, window, dedup, detect.

No I/O happens here. The live flow (``flows/ctr_flow.py``) and replay (``replay/run.py``)
both push the same :class:`Chunk` objects through :class:`ShardState`, so they produce the
same figures and alerts for the same input order.

Event time and watermarks
-------------------------
Every input source (a Kafka topic partition, or a replay file) reports a *frontier*: the
``event_time.frontier_quorum``-th largest event time it has delivered, so that fewer events
than that far ahead of their stream cannot move it (they are counted in their windows when
the stream gets there). A shard's watermark is the minimum frontier over the sources that
are not idle, less the allowed lateness. A window closes when the watermark passes its end.
Taking the minimum is what keeps a click partition that runs ahead of the impression
partition from closing windows early; honouring idle claims is what lets windows close
during a click tracking outage, when the click topic is silent. A claim is evidence that a
source has nothing unread: a file at its end, or a partition at its log end for an idle
timeout (``flows/source.py``); a live claim counts only while fresh
(:meth:`ShardState.idle_sources`), so a pause cannot turn a backlog into late events, and
it lets the watermark go no further than the other sources had delivered when it was made
(:meth:`ShardState._cap_at`), so events written to an idle source since cannot be late.
Every event read ends in a window, an exclusion, a duplicate or a dead letter; each shard
keeps the per-source account (:attr:`ShardState.tally`, :func:`conservation`).

>>> from ctrguard.config import Settings
>>> settings = Settings()
>>> prep = EventPreparer(settings)
>>> raw = [b'{"event_id":"i1","ts":1767225600000,"campaign_id":"c1","device":"mobile"}',
...        b'{"event_id":"i1","ts":1767225601000,"campaign_id":"c1","device":"mobile"}',
...        b'not json']
>>> batch = prep.prepare(RawBatch("imp", 0, IMPRESSION, raw, list(range(3))))
>>> len(batch.dead_letters), batch.dead_letters[0].reason[:14]
(1, 'not valid JSON')
>>> batch.frontier_ms, batch.recent  # two events, fewer than the quorum (3): no frontier yet
(None, (1767225600000, 1767225601000))

Cost
----
Everything per event is done in bulk: a batch of plain, valid messages (the common case) is
scanned in one C call into columns with its de-duplication keys
(:func:`ctrguard.events.scan_batch`); any other batch is decoded with one msgspec call per
message and its times parsed with numpy (:func:`ctrguard.events.decode_batch`), its keys
hashed with numpy (:func:`dedup_keys`); chunks carry columns (numpy times and keys, tuples of
ids), not one object per event; a shard de-duplicates a chunk with a few numpy operations
(:class:`_Seen`), and its inner loop is two dict lookups and a counter increment per event,
counting per combination of dimension values (segments are expanded when the window
closes). Anything unusual (a malformed or late event, a new window or campaign) leaves that
loop for a slower, careful path. Closing a window is one C call for all of a shard's
campaigns (series counts, the monitor, the figures); only a campaign with verdicts comes
back to Python for its alerts.

Memory
------
A shard holds many campaigns, so what it keeps per campaign is small (see
:class:`ShardState`): 8 bytes per counted event of the open window and of the closed windows
still within the allowed lateness, one counts dict per campaign and open window, a
:class:`_Campaign` with its monitor, and references to series names, series tuples and
dimension-value sets shared with the shard's other campaigns.
"""

from __future__ import annotations

import gc
import io
import math
import pickle
import re
import zlib
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from itertools import chain, repeat
from operator import attrgetter, itemgetter
from time import perf_counter
from typing import Any, NamedTuple

import numpy as np

from ctrguard import native
from ctrguard.config import Settings
from ctrguard.detectors.base import ALL, Counts, Verdict, Window
from ctrguard.events import CLICK, IMPRESSION, DeadLetter, decode_batch, ms_to_iso, scan_batch
from ctrguard.flows.clicklog import ClickLog
from ctrguard.flows.stall import StallWatch, scope_verdicts
from ctrguard.records import (
    STATUS_OK,
    STATUS_QUARANTINED,
    Alert,
    Figure,
    WindowDecision,
    make_alert_id,
)

__all__ = [
    "CLICK", "IMPRESSION", "RawBatch", "Prepared", "Chunk", "DeadLetter", "PreparedBatch",
    "EventPreparer", "ShardState", "ShardStats", "dedup_keys", "load_snapshot", "shard_of",
    "tune_gc",
    "TALLY_COLUMNS", "conservation", "conservation_line", "format_conservation",
    "sum_tallies",
]


class RawBatch(NamedTuple):
    """Raw messages read from one source (topic partition or file) in one go.

    ``idle`` is a claim that the source has nothing unread: it then holds back no
    watermark. Without ``polled_ms`` the claim is for good (a file at its end, a drained
    partition); with it, the claim was made at that wall-clock time and holds only while
    fresh (see :meth:`ShardState.watermark_ms`). ``polled_ms`` is the wall-clock time of
    the poll (``None`` in replay: no wall clock there).
    """

    topic: str
    partition: int
    kind: int
    values: Sequence[bytes]
    offsets: Sequence[int]
    idle: bool = False
    polled_ms: int | None = None

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


_NO_TIMES = np.empty(0, dtype=np.int64)
_NO_TIMES.flags.writeable = False


def _no_times() -> np.ndarray:
    return _NO_TIMES


_NO_KEYS = np.empty(0, dtype=np.uint64)
_NO_KEYS.flags.writeable = False


def _no_keys() -> np.ndarray:
    return _NO_KEYS


# XXH64's primes; the mixing below is XXH64's round for an 8-byte lane and its avalanche.
_K1 = np.uint64(0x9E3779B185EBCA87)
_K2 = np.uint64(0xC2B2AE3D27D4EB4F)
_K3 = np.uint64(0x165667B19E3779F9)
_K4 = np.uint64(0x85EBCA77C2B2AE63)
_K5 = np.uint64(0x27D4EB2F165667C5)
_S27, _S29, _S31, _S32, _S33, _S37 = (np.uint64(n) for n in (27, 29, 31, 32, 33, 37))


def _utf8_words(texts: Sequence[str]) -> np.ndarray:
    """The UTF-8 bytes of each text as little-endian 64-bit words, zero-padded to the longest:
    an array of shape (words, len(texts)), one row per word position."""
    width = max(8, max(map(len, texts)))
    try:  # ASCII (the common case): numpy encodes in C
        arr = np.array(texts, dtype=f"S{width + -width % 8}")
    except UnicodeEncodeError:
        encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
        width = max(8, max(map(len, encoded)))
        arr = np.array(encoded, dtype=f"S{width + -width % 8}")
    return arr.view("<u8").reshape(len(texts), -1).T


def _absorb(h: np.ndarray, words: np.ndarray) -> np.ndarray:
    for w in words:
        k = w * _K2
        k = (k << _S31) | (k >> _S33)
        k *= _K1
        k ^= h
        k = (k << _S27) | (k >> _S37)
        k *= _K1
        k += _K4
        # A word of zeros is padding (ids hold no NUL): it leaves the hash as it is, so a
        # text hashes the same whatever the longest text of its batch.
        h = k if w.all() else np.where(w != 0, k, h)
    return h


def dedup_keys(campaign_ids: Sequence[str], event_ids: Sequence[str]) -> np.ndarray:
    """64-bit de-duplication keys of (campaign, event id) pairs, in bulk (a few numpy
    operations per 8 bytes of id, for a whole batch).

    A shard remembers these keys, 8 bytes per event, instead of the event ids (a ``str`` of
    50-300 bytes plus a set slot each). The function is fixed, not salted per process as
    ``hash(str)`` is: snapshots hold keys, and a restored shard must find the same ones.
    It is XXH64's lane round over the UTF-8 bytes of the campaign id, then a separator
    round, then the event id, then XXH64's avalanche (equal-length words; all-zero padding
    words are skipped: ids contain no NUL, so a text's words identify it).

    False duplicates: an event is dropped wrongly only if its key equals the key of another
    (campaign, id) pair already seen in the same window and kind of its shard. Taking the
    keys as uniformly random 64-bit values, with ``n`` distinct events in one window, kind
    and shard the expected number of such drops is n(n-1)/2 / 2**64 ~ n**2 / 2**65:
    2.7e-10 for n = 10**5, 2.7e-8 for n = 10**6, 2.7e-6 for n = 10**7 events per window.
    At 10**6 events per 5-minute window on each of 16 shards that is one wrongly dropped
    event in about 22 years (16 * 105,120 windows a year * 2.7e-8 = 0.046 a year). The keys
    are not keyed against an adversary who chooses event ids; such a party can send
    fabricated events anyway.

    >>> dedup_keys(["c1", "c1", "c2"], ["e1", "e1", "e1"]).tolist()
    [5767203523887850677, 5767203523887850677, 1716630578210285550]
    >>> int(dedup_keys(["c1"], ["é" * 40])[0]) == int(dedup_keys(["c1", "x" * 99],
    ...                                                          ["é" * 40, "y"])[0])
    True
    """
    n = len(event_ids)
    if n == 0:
        return _NO_KEYS
    h = _absorb(np.full(n, _K5, dtype=np.uint64), _utf8_words(campaign_ids))
    h = (h << _S27) | (h >> _S37)  # separator: campaign "ab" + id "c" is not "a" + "bc"
    h *= _K1
    h += _K3
    h = _absorb(h, _utf8_words(event_ids))
    h ^= h >> _S33
    h *= _K2
    h ^= h >> _S29
    h *= _K3
    h ^= h >> _S32
    return h


def ref_keys(campaign_ids: Sequence[str], values: Sequence[str | None]) -> np.ndarray:
    """The keys of a reference field of clicks (``user_id``, ``impression_id``): the value
    hashed with its campaign id as :func:`dedup_keys` hashes event ids, so that a click's
    ``impression_id`` finds its impression's de-duplication key; 0 where the value is
    absent, null or empty. The scanner computes the same in C.

    >>> k = ref_keys(["c1", "c1"], ["e1", None]).tolist()
    >>> k[0] == int(dedup_keys(["c1"], ["e1"])[0]), k[1]
    (True, 0)
    """
    present = [bool(v) for v in values]
    if all(present):
        return dedup_keys(campaign_ids, values)  # type: ignore[arg-type]
    out = np.zeros(len(values), dtype=np.uint64)
    idx = [i for i, ok in enumerate(present) if ok]
    if idx:
        out[idx] = dedup_keys(*_take((campaign_ids, values), idx))
    return out


def dims_key(dims: Sequence[str | None]) -> Any:
    """How a chunk stores one event's dimension values: the value itself for one dimension
    (no tuple per event), ``None`` for none, the tuple for several."""
    if len(dims) == 1:
        return dims[0]
    return None if not dims else tuple(dims)


def _dims_keys(columns: Sequence[Sequence[str | None]], n: int) -> Sequence[Any]:
    """Per event, :func:`dims_key` of its values, from one column per dimension (``n``
    events).

    >>> _dims_keys([], 2), _dims_keys([["a", None]], 2), _dims_keys([["a", "b"], ["x", "y"]], 2)
    ([None, None], ['a', None], [('a', 'x'), ('b', 'y')])
    """
    if not columns:
        return [None] * n
    if len(columns) == 1:
        return columns[0]
    return list(zip(*columns, strict=True))


def _dims_tuple(key: Any, n: int) -> tuple[str | None, ...]:
    if n == 1:
        return (key,)
    return () if n == 0 else key


@dataclass(slots=True)
class Chunk:
    """What one shard receives from one raw batch: its events (one kind, in columns, in
    arrival order) plus the source's progress.

    Event ids, offsets and raw bytes are needed only for the rare late event (and tests),
    so a chunk made from a batch shares the batch's columns of them: with ``at`` set, event
    i of the chunk is ``event_ids[at[i]]`` (offsets, raws alike); :meth:`row_columns` gives
    the chunk's own. Pickled (only when it crosses to another process) with its own columns
    and without the raw message bytes, which are half its size: ``raws`` is then ``None``.

    Every shard's chunk of a batch also carries the whole batch's volume (``volume``,
    ``spread``): an ingestion stall is a fault of the pipeline, judged by every shard alike
    from what all of them received (:mod:`ctrguard.flows.stall`), not from its own share.
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
    keys: np.ndarray = field(default_factory=_no_keys)  # :func:`dedup_keys`; empty: not yet
    at: np.ndarray | None = None      # positions in event_ids/offsets/raws; None: i is i
    polled_ms: int | None = None      # the batch's RawBatch.polled_ms
    recent: tuple[int, ...] = ()      # a batch too small for a frontier: its times (sorted)
    ledger: tuple[int, int, int] | None = None  # (read, excluded, dead-lettered) of its batch
    #: Clicks only (empty otherwise, or when not known): :func:`ref_keys` of each event's
    #: ``user_id`` and ``impression_id``, the evidence of bot clicks (flows/clicklog.py).
    users: np.ndarray = field(default_factory=_no_keys)
    refs: np.ndarray = field(default_factory=_no_keys)
    #: The whole batch's events per window, ``((window id, events), ...)``
    #: (:func:`window_volume`), and their campaigns (:func:`spread_of`); ``None``: not
    #: given, the chunk's own events stand for the batch (a chunk made by hand).
    volume: tuple[tuple[int, int], ...] | None = None
    spread: bool | str | None = None

    def __len__(self) -> int:
        return len(self.campaign_ids)

    def __getstate__(self) -> tuple:
        eids, offsets, _ = self.row_columns(raws=False)
        return (self.source, self.frontier_ms, self.idle, self.kind, self.ts_ms,
                self.campaign_ids, eids, self.dims, offsets, self.keys, self.polled_ms,
                self.recent, self.ledger, self.users, self.refs, self.volume, self.spread)

    def __setstate__(self, state: tuple) -> None:
        (self.source, self.frontier_ms, self.idle, self.kind, self.ts_ms, self.campaign_ids,
         self.event_ids, self.dims, self.offsets, self.keys, self.polled_ms, self.recent,
         self.ledger) = state[:13]
        self.users, self.refs = state[13:15] if len(state) > 13 else (_NO_KEYS, _NO_KEYS)
        self.volume, self.spread = state[15:17] if len(state) > 15 else (None, None)
        self.raws = None  # type: ignore[assignment]
        self.at = None

    def row_columns(self, raws: bool = True) -> tuple[Sequence[str], Sequence[int],
                                                      Sequence[bytes] | None]:
        """The event ids, offsets and (with ``raws``, if held) raw bytes of this chunk's
        events, in its order."""
        if self.at is None:
            return self.event_ids, self.offsets, self.raws if raws else None
        idx = self.at.tolist()
        eids, offsets = _take((self.event_ids, self.offsets), idx)
        got = _take((self.raws,), idx)[0] if raws and self.raws is not None else None
        return eids, offsets, got

    def source_of(self, i: int) -> tuple[int, bytes | None]:
        """Offset and raw bytes (``None`` if not held) of event ``i``."""
        j = i if self.at is None else int(self.at[i])
        return self.offsets[j], self.raws[j] if self.raws is not None else None

    @classmethod
    def of(cls, source: str, frontier_ms: int | None, idle: bool,
           events: Sequence[Prepared]) -> Chunk:
        """A chunk from rows (all of one kind)."""
        kinds = {p.kind for p in events}
        if len(kinds) > 1:
            raise ValueError("a chunk holds events of one kind")
        cids, eids = [p.campaign_id for p in events], [p.event_id for p in events]
        return cls(source, frontier_ms, idle, kinds.pop() if kinds else IMPRESSION,
                   np.array([p.ts_ms for p in events], dtype=np.int64), cids, eids,
                   [dims_key(p.dims) for p in events], [p.offset for p in events],
                   [p.raw for p in events], dedup_keys(cids, eids))

    def rows(self, n_dims: int) -> list[Prepared]:
        """The events as :class:`Prepared` rows (``n_dims``: dimensions configured)."""
        eids, offsets, raws = self.row_columns()
        if raws is None:
            raws = [None] * len(self)  # type: ignore[list-item]
        return [Prepared(ts, self.kind, eid, cid, _dims_tuple(dk, n_dims), raw, off)
                for ts, eid, cid, dk, raw, off in zip(
                    self.ts_ms.tolist(), eids, self.campaign_ids, self.dims,
                    raws, offsets, strict=True)]


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
    polled_ms: int | None = None
    recent: tuple[int, ...] = ()
    #: Its kept events per window and their campaigns (:class:`Chunk`).
    volume: tuple[tuple[int, int], ...] = ()
    spread: bool | str | None = None
    kind: int = IMPRESSION

    @property
    def ledger(self) -> tuple[int, int, int]:
        """(read, excluded, dead-lettered) of this batch: what it adds to its source's
        conservation account besides its events (:class:`ShardState`, ``tally``)."""
        return self.read, sum(self.excluded.values()), len(self.dead_letters)

    @property
    def by_shard(self) -> dict[int, list[Prepared]]:
        """The kept events per shard as rows (tests and tools; the flow uses ``chunks``)."""
        return {s: c.rows(self.n_dims) for s, c in self.chunks.items()}


def window_volume(ts_ms: np.ndarray, length_ms: int) -> tuple[tuple[int, int], ...]:
    """Events per window of a batch's times: ``((window id, events), ...)``, in order.

    >>> window_volume(np.array([0, 299_999, 300_000, 10**15], dtype=np.int64), 300_000)
    ((0, 2), (1, 1), (3333333333, 1))
    """
    if not len(ts_ms):
        return ()
    wids = ts_ms // length_ms
    lo, hi = int(wids.min()), int(wids.max())
    if lo == hi:  # the common case
        return ((lo, len(wids)),)
    if hi - lo <= 4096:
        counts = np.bincount(wids - lo)
        at = np.flatnonzero(counts)
        return tuple(zip((at + lo).tolist(), counts[at].tolist(), strict=True))
    got, counts = np.unique(wids, return_counts=True)  # (times years apart)
    return tuple(zip(got.tolist(), counts.tolist(), strict=True))


def spread_of(cids: Sequence[str]) -> bool | str | None:
    """The campaigns of ``cids``: ``True`` for two or more, else the one campaign (``None``
    for none). Batches of one campaign each (a partition per campaign) add up to a spread.

    >>> spread_of(["a", "a"]), spread_of(["a", "b", "a"]), spread_of([])
    ('a', True, None)
    """
    if not cids:
        return None
    first = cids[0]
    if cids[-1] != first or cids.count(first) != len(cids):
        return True
    return first


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
_USER_ID = attrgetter("user_id")
_IMPRESSION_ID = attrgetter("impression_id")


#: The compiled loops of routing and counting (``ctrguard/_shard.c``), or ``None``: the Python
#: reference code runs.
_SHARD = native.load_extension("ctrguard._shard")


def _take(columns: Sequence[Sequence[Any]], idx: list[int]) -> list[tuple[Any, ...]]:
    """The rows ``idx`` of each column (C-speed gather)."""
    if len(idx) <= 1:
        return [tuple([col[i] for i in idx]) for col in columns]
    get = itemgetter(*idx)
    return [get(col) for col in columns]


class _Columns(NamedTuple):
    """A batch's valid events as columns, before exclusions (:meth:`EventPreparer._columns`)."""

    campaign_ids: Sequence[str]
    event_ids: Sequence[str]
    dims: Sequence[Any]                     # per event: :func:`dims_key`
    ts_ms: np.ndarray
    user_agents: Sequence[str | None] | None  # only when bot patterns are configured
    internal: Sequence[int]                 # positions flagged is_internal (msgspec path:
                                            # only when internal traffic is excluded)
    positions: Sequence[int] | None         # index in the batch of each; None: all, in order
    keys: np.ndarray | None                 # dedup keys, when the scanner made them
    dead: list[DeadLetter]
    users: np.ndarray | None = None         # clicks: :func:`ref_keys` of user_id
    refs: np.ndarray | None = None          # clicks: :func:`ref_keys` of impression_id


class EventPreparer:
    """Parse, validate, exclude and route one raw batch. Pure; one per worker."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._dims = tuple(settings.segments.dimensions)
        self._shards = settings.windows.shards
        self._length_ms = settings.windows.length * 1000
        self._future_ms = settings.windows.future_tolerance * 1000
        self._quorum = settings.event_time.frontier_quorum
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

    def _excluded(self, agents: Sequence[str | None] | None, internal: Sequence[int],
                  excluded: Counter) -> set[int]:
        """Positions of internal and bot traffic (counted in ``excluded`` by reason), from
        the user-agent column and the positions flagged ``is_internal``."""
        drop: set[int] = set()
        if self._exclude_internal and internal:
            drop = set(internal)
            excluded["internal"] += len(drop)
        if self._bot_re is not None and agents is not None:
            seen = set(agents)
            seen.discard(None)
            bots = {ua for ua in seen if self._is_bot(ua)}  # type: ignore[arg-type]
            if bots:
                flags = np.fromiter(map(bots.__contains__, agents), dtype=bool,
                                    count=len(agents))
                hits = set(np.flatnonzero(flags).tolist()) - drop
                if hits:
                    excluded["bot_user_agent"] += len(hits)
                    drop |= hits
        return drop

    def _columns(self, values: Sequence[bytes], topic: str, partition: int,
                 offsets: Sequence[int], kind: int = IMPRESSION) -> _Columns:
        """The batch as columns: in C when every message is valid and plain
        (:func:`~ctrguard.events.scan_batch`), else decoded message by message, each
        rejected one a dead letter with its reason. Clicks also get the keys of their
        ``user_id`` and ``impression_id`` (the evidence of bot clicks)."""
        clicks = kind == CLICK
        scanned = scan_batch(values, self._dims, user_agents=self._bot_re is not None,
                             max_bytes=self._max_bytes, refs=clicks)
        if scanned is not None:
            return _Columns(scanned.campaign_ids, scanned.event_ids,
                            _dims_keys(scanned.dims, len(scanned.campaign_ids)),
                            scanned.ts_ms, scanned.user_agents, scanned.internal, None,
                            scanned.keys, [], scanned.users, scanned.refs)
        decoded = decode_batch(values, max_bytes=self._max_bytes)
        dead = [DeadLetter("parse", exc.reason, topic, partition, offsets[i],
                           values[i] if values[i] is not None else b"", exc.code)
                for i, exc in decoded.errors]
        events = decoded.events
        dks = _dims_keys([list(map(g, events)) for g in self._dim_getters], len(events))
        internal: list[int] = []
        if self._exclude_internal:
            flags = list(map(_INTERNAL, events))
            if any(flags):
                internal = np.flatnonzero(np.array(flags, dtype=bool)).tolist()
        cids = list(map(_CAMPAIGN, events))
        users = refs = None
        if clicks:
            users = ref_keys(cids, list(map(_USER_ID, events)))
            refs = ref_keys(cids, list(map(_IMPRESSION_ID, events)))
        return _Columns(cids, list(map(_EVENT_ID, events)), dks,
                        decoded.ts_ms,
                        list(map(_USER_AGENT, events)) if self._bot_re is not None else None,
                        internal, decoded.positions, None, dead, users, refs)

    def prepare(self, batch: RawBatch, now_ms: int | None = None) -> PreparedBatch:
        """Parse one raw batch. ``now_ms`` (wall clock) bounds plausible event times."""
        values, offsets = batch.values, batch.offsets
        topic, partition = batch.topic, batch.partition
        cols = self._columns(values, topic, partition, offsets, batch.kind)
        cids, eids, ts, pos = cols.campaign_ids, cols.event_ids, cols.ts_ms, cols.positions
        dead = cols.dead
        n = len(cids)
        excluded: Counter = Counter()
        drop: set[int] = set()
        if n:
            drop = self._excluded(cols.user_agents, cols.internal, excluded)
        if now_ms is not None and ts.size:
            # An event time beyond the present is impossible; letting it through would
            # push the watermark ahead and close every window early.
            limit = now_ms + self._future_ms
            if ts.max() > limit:
                for j in np.flatnonzero(ts > limit).tolist():
                    if j in drop:
                        continue
                    i = pos[j] if pos is not None else j
                    dead.append(DeadLetter(
                        "future", f"event time {ms_to_iso(int(ts[j]))} is more than "
                        f"{self._future_ms // 1000}s in the future",
                        topic, partition, offsets[i], values[i]))  # type: ignore[arg-type]
                    drop.add(j)
        chunks: dict[int, Chunk] = {}
        frontier = None
        recent: tuple[int, ...] = ()
        polled = batch.polled_ms
        volume: tuple[tuple[int, int], ...] = ()
        spread: bool | str | None = None
        if len(drop) < n:
            if drop:
                mask = np.ones(n, dtype=bool)
                mask[list(drop)] = False
                kept_ts = ts[mask]
                kept = np.flatnonzero(mask).tolist()
                spread = spread_of(_take((cids,), kept)[0])
            else:
                kept_ts = ts
                spread = spread_of(cids)
            frontier, recent = self._frontier(kept_ts)
            volume = window_volume(kept_ts, self._length_ms)
            keys = cols.keys if cols.keys is not None else dedup_keys(cids, eids)
            # Event ids, offsets and raw bytes, aligned with the valid events: needed only
            # for the rare late event (and tests), so chunks point into them (Chunk.at).
            if pos is None:
                rows = (eids, offsets, values)
            else:
                rows = (eids, *_take((offsets, values), list(pos)))
            order, routed = self._route(cids, cols.dims, drop)
            users, refs = cols.users, cols.refs
            if order is None:  # one shard, every event
                (s, (_, _, columns)), = routed.items()
                chunks[s] = Chunk(batch.source, frontier, batch.idle, batch.kind, ts,
                                  columns[0], rows[0], columns[1], rows[1], rows[2], keys,
                                  None, polled, recent, volume=volume, spread=spread)
                if users is not None and refs is not None:
                    chunks[s].users, chunks[s].refs = users, refs
            else:
                # One gather for every shard (a numpy call costs a microsecond or two however
                # small the array): each shard's times and keys are a slice of these.
                ts_by, keys_by = ts[order], keys[order]
                users_by = refs_by = None
                if users is not None and refs is not None:  # (clicks)
                    users_by, refs_by = users[order], refs[order]
                for s, (start, stop, columns) in routed.items():
                    chunks[s] = Chunk(batch.source, frontier, batch.idle, batch.kind,
                                      ts_by[start:stop], columns[0], rows[0], columns[1],
                                      rows[1], rows[2], keys_by[start:stop], order[start:stop],
                                      polled, recent, volume=volume, spread=spread)
                    if users_by is not None and refs_by is not None:
                        chunks[s].users = users_by[start:stop]
                        chunks[s].refs = refs_by[start:stop]
        return PreparedBatch(batch.source, frontier, batch.idle, chunks, dead, excluded,
                             len(values), len(self._dims), polled, recent, volume, spread,
                             batch.kind)

    def _frontier(self, ts: np.ndarray) -> tuple[int | None, tuple[int, ...]]:
        """A batch's contribution to its source's frontier: ``(frontier, recent)``. The
        frontier is the ``frontier_quorum``-th largest time of the batch (the largest with a
        quorum of 1): fewer events than that far ahead of the rest do not move it. A batch
        with fewer events gives ``(None, its times sorted)``: the shard combines them with
        the source's earlier small batches (:meth:`ShardState._note_recent`).

        >>> prep = EventPreparer(Settings())
        >>> prep._frontier(np.array([5, 9_000, 7, 6], dtype=np.int64))
        (6, ())
        >>> prep._frontier(np.array([9_000, 5], dtype=np.int64))
        (None, (5, 9000))
        """
        k = self._quorum
        n = len(ts)
        if k == 1:
            return int(ts.max()), ()
        if n < k:
            return None, tuple(sorted(ts.tolist()))
        return int(np.partition(ts, n - k)[n - k]), ()

    def _route(self, cids: Sequence[str], dks: Sequence[Any], drop: set[int]
               ) -> tuple[np.ndarray | None,
                          dict[int, tuple[int, int, tuple[Sequence[str], Sequence[Any]]]]]:
        """Split the kept events by shard, keeping arrival order within each shard:
        ``(order, routed)``. ``order``: the positions in the batch of shard 0's events, then
        shard 1's, ... (``None``: one shard has every event, in order); ``routed``: per shard
        with events, where its positions are in ``order`` (start, stop) and its campaign
        ids and dims keys. ``drop``: positions of events to leave out."""
        n_shards = self._shards
        shard = _SHARD
        first = -1  # the shard of every event, if they share one
        if n_shards == 1:
            arr = np.zeros(len(cids), dtype=np.intp)
            first = 0
        elif shard is not None:  # the lookups in C (ctrguard/_shard.c), and `first` with them
            got = shard.shard_ids(self._shard_cache, cids)
            if got is None:
                self._cache_shards(cids)
                got = shard.shard_ids(self._shard_cache, cids)
            arr = np.frombuffer(got[0], dtype=np.intp)
            first = got[1]
        else:
            cache = self._shard_cache
            try:
                arr = np.fromiter(map(cache.__getitem__, cids), dtype=np.intp, count=len(cids))
            except KeyError:
                self._cache_shards(cids)
                arr = np.fromiter(map(cache.__getitem__, cids), dtype=np.intp, count=len(cids))
            if (arr == arr[0]).all():
                first = int(arr[0])
        if not drop:
            if first >= 0:
                return None, {first: (0, len(cids), (cids, dks))}
        else:
            arr[list(drop)] = n_shards  # one more shard: the events left out
        if shard is not None:
            # One pass in C (ctrguard/_shard.c) over the list columns.
            buf, counts, parts = shard.split(n_shards + 1, arr, (cids, dks))
            order = np.frombuffer(buf, dtype=np.intp)
        else:
            order = np.argsort(arr, kind="stable")
            counts = np.bincount(arr, minlength=n_shards + 1).tolist()
            parts = None
        out = {}
        start = 0
        for s, n in enumerate(counts[:n_shards]):
            if n:
                out[s] = (start, start + n, parts[s] if parts is not None
                          else tuple(_take((cids, dks), order[start:start + n].tolist())))
                start += n
        return order, out

    def _cache_shards(self, cids: Sequence[str]) -> None:
        """Put the shards of the campaigns of ``cids`` not in the shard cache into it."""
        cache = self._shard_cache
        if len(cache) > 1_000_000:
            cache.clear()
        for c in set(cids).difference(cache):
            cache[c] = shard_of(c, self._shards)

    def chunks(self, prepared: PreparedBatch) -> list[tuple[int, Chunk]]:
        """One chunk for *every* shard, so every shard learns the source's progress."""
        empty = None
        out = []
        for s in range(self._shards):
            chunk = prepared.chunks.get(s)
            if chunk is None:
                if empty is None or s == 0:
                    # (of the batch's kind: its volume is counted as that kind's)
                    empty = Chunk(prepared.source, prepared.frontier_ms, prepared.idle,
                                  prepared.kind, polled_ms=prepared.polled_ms,
                                  recent=prepared.recent, volume=prepared.volume,
                                  spread=prepared.spread)
                chunk = empty
            if s == 0:  # shard 0 keeps the batch's account (consumed, excluded, dead)
                chunk.ledger = prepared.ledger
                empty = None
            out.append((s, chunk))
        return out

    def merged(self, prepared: PreparedBatch, kind: int) -> Chunk:
        """All shards' events in one chunk, in shard order (as the shards of the flow see
        them), for a single state holding every campaign (replay)."""
        merged = self._merged(prepared, kind)
        merged.ledger = prepared.ledger
        merged.volume, merged.spread = prepared.volume, prepared.spread
        return merged

    def _merged(self, prepared: PreparedBatch, kind: int) -> Chunk:
        parts = [prepared.chunks[s] for s in sorted(prepared.chunks)]
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return Chunk(prepared.source, prepared.frontier_ms, prepared.idle, kind,
                         polled_ms=prepared.polled_ms, recent=prepared.recent)
        ts = np.concatenate([p.ts_ms for p in parts])
        cids, dks = (list(chain.from_iterable(getattr(p, name) for p in parts))
                     for name in ("campaign_ids", "dims"))
        keys = np.concatenate([_keys_of(p) for p in parts])
        first = parts[0]
        if all(p.at is not None and p.event_ids is first.event_ids for p in parts):
            # Parts of one batch: the merged chunk points into the same columns.
            out = Chunk(prepared.source, prepared.frontier_ms, prepared.idle, kind, ts, cids,
                        first.event_ids, dks, first.offsets, first.raws, keys,
                        np.concatenate([p.at for p in parts]),  # type: ignore[misc]
                        prepared.polled_ms, prepared.recent)
        else:
            rows = [p.row_columns() for p in parts]
            eids, offsets = (list(chain.from_iterable(r[i] for r in rows)) for i in (0, 1))
            raws = None if any(r[2] is None for r in rows) else \
                list(chain.from_iterable(r[2] for r in rows))  # type: ignore[misc]
            out = Chunk(prepared.source, prepared.frontier_ms, prepared.idle, kind, ts, cids,
                        eids, dks, offsets, raws, keys, None, prepared.polled_ms,
                        prepared.recent)
        if all(len(p.users) == len(p) for p in parts):  # (clicks with their evidence)
            out.users = np.concatenate([p.users for p in parts])
            out.refs = np.concatenate([p.refs for p in parts])
        return out


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


_INCOMPATIBLE = ("snapshot from an incompatible ctrguard version: start the flow with a fresh "
                 "recovery directory")


class _Seen:
    """The de-duplication keys (:func:`dedup_keys`) of one window and kind of a shard.

    Sorted runs of distinct keys, each run more than twice as long as the next (a small
    log-structured merge): an inserted key is copied O(log n) times in all; 8 bytes per key,
    no per-key object. Binary searches in runs larger than the CPU caches cost a cache miss
    per step, so while the window is open a bit map of 8-16 bits per key (a one-hash Bloom
    filter on the key's top bits: 1-2 bytes per key) says which keys may be present: only
    those (the repeats, and 6-12 % of new keys) are searched in the runs. A closed window
    drops its map and keeps one run (its keys are only looked up for the rare late event).
    """

    __slots__ = ("runs", "marks", "shift", "size")

    def __init__(self, runs: list[np.ndarray] | None = None) -> None:
        self.runs: list[np.ndarray] = runs if runs is not None else []
        self.marks: np.ndarray | None = None   # uint8 bit map, built on first use (not pickled)
        self.shift = _S33
        self.size = sum(map(len, self.runs))   # keys held (not pickled)

    def __getstate__(self) -> list[np.ndarray]:
        return self.runs

    def __setstate__(self, runs: list[np.ndarray]) -> None:
        self.runs = runs
        self.marks = None
        self.shift = _S33
        self.size = sum(map(len, runs))

    def __len__(self) -> int:
        return self.size

    def __contains__(self, key: Any) -> bool:
        for run in self.runs:
            i = run.searchsorted(key)
            if i < len(run) and run[i] == key:
                return True
        return False

    def _remap(self, extra: int) -> None:
        """A bit map with room for the keys held and ``extra`` more (8-16 bits per key)."""
        bits = max(15, (8 * (self.size + extra)).bit_length())
        self.marks = np.zeros(1 << (bits - 3), dtype=np.uint8)
        self.shift = np.uint64(64 - bits)
        for run in self.runs:
            self._mark(run)

    def _mark(self, keys: np.ndarray) -> None:
        slot = keys >> self.shift
        np.bitwise_or.at(self.marks, slot >> _U3, _BIT[slot & _U7])

    def _marked(self, keys: np.ndarray) -> np.ndarray:
        slot = keys >> self.shift
        return (self.marks[slot >> _U3] & _BIT[slot & _U7]) != 0  # type: ignore[index]

    def admit(self, keys: np.ndarray) -> np.ndarray | None:
        """Record ``keys`` (one per event, in arrival order). Returns the ascending positions
        of the events to count (the first arrival of each key not seen before), or ``None``
        when that is all of them (the common case)."""
        marks = self.marks
        if marks is None or self.size + len(keys) > len(marks):  # < 8 bits per key
            self._remap(len(keys))
        shard = _SHARD
        if shard is not None:  # the same in C (ctrguard/_shard.c), marks included
            fresh, pos = shard.admit(np.ascontiguousarray(keys), self.marks, int(self.shift),
                                     self.runs)
            self._add(np.frombuffer(fresh, dtype=np.uint64), marked=True)
            if pos is None:
                return None
            return np.frombuffer(pos, dtype=np.intp) if pos else _NO_POSITIONS
        if len(keys) == 1:
            if self._marked(keys)[0] and keys[0] in self:
                return _NO_POSITIONS
            self._add(keys.copy())
            return None
        order = keys.argsort(kind="stable")  # equal keys: the first arrival first
        ordered = keys[order]
        new = np.empty(len(keys), dtype=bool)
        new[0] = True
        np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
        if self.runs:
            maybe = np.flatnonzero(self._marked(ordered) & new)
            if maybe.size:
                probe = ordered[maybe]
                found = np.zeros(len(maybe), dtype=bool)
                for run in self.runs:
                    pos = run.searchsorted(probe)
                    np.minimum(pos, len(run) - 1, out=pos)
                    found |= run[pos] == probe
                new[maybe[found]] = False
        if new.all():
            self._add(ordered)
            return None
        self._add(ordered[new])
        return np.sort(order[new])

    def _add(self, fresh: np.ndarray, marked: bool = False) -> None:
        if not len(fresh):
            return
        if self.marks is not None and not marked:
            self._mark(fresh)
        self.size += len(fresh)
        runs = self.runs
        runs.append(fresh)
        shard = _SHARD
        while len(runs) > 1 and len(runs[-2]) <= 2 * len(runs[-1]):
            last = runs.pop()
            if shard is not None:  # one call, not numpy's two (ctrguard/_shard.c)
                merged = np.frombuffer(shard.merge(runs[-1], last), dtype=np.uint64)
            else:
                merged = np.concatenate((runs[-1], last))
                merged.sort(kind="stable")  # two sorted runs: a linear merge
            runs[-1] = merged

    def compact(self) -> None:
        """One run and no map (the window is closed: keys are only looked up from now on)."""
        self.marks = None
        runs = self.runs
        if len(runs) > 1:
            shard = _SHARD
            if shard is not None:
                # The runs are sorted, and each is more than twice the next: merged from
                # the smallest up, every key is copied about twice (a sort of all of them
                # was a few per cent of a dense stream's time).
                merged = runs[-1]
                for run in reversed(runs[:-1]):
                    merged = shard.merge(run, merged)
                self.runs = [np.frombuffer(merged, dtype=np.uint64)]
                return
            merged = np.concatenate(runs)
            merged.sort()
            self.runs = [merged]



_NO_POSITIONS = np.empty(0, dtype=np.intp)
#: Suspected causes of a CTR rise that the clicks' evidence decides between.
_RISE_CAUSES = ("bot_clicks", "behaviour_change")
_U3, _U7 = np.uint64(3), np.uint64(7)
_BIT = np.array([1 << i for i in range(8)], dtype=np.uint8)


def _keys_of(chunk: Chunk) -> np.ndarray:
    keys = chunk.keys
    if len(keys) != len(chunk.campaign_ids):  # built without keys
        keys = dedup_keys(chunk.campaign_ids, chunk.row_columns(raws=False)[0])
    return keys


class _Dims:
    """Which dimension values a campaign has taken in as series of its own (the first
    ``max_values_per_dimension`` of each dimension; later ones fold into ``<dim>=other``).

    Immutable but for the ``segs`` cache, and shared by every campaign of the shard with the
    same values (interned per shard): per campaign only a reference is stored. ``segs``, the
    series of each dims key (:func:`dims_key`), depends only on ``values`` and ``folded``.
    """

    __slots__ = ("values", "folded", "segs")

    def __init__(self, values: tuple[frozenset[str], ...], folded: tuple[bool, ...]):
        self.values = values          # per dimension: the values with a series of their own
        self.folded = folded          # per dimension: some value went to "other"
        self.segs: dict[Any, tuple[str, ...]] = {}

    def __getstate__(self) -> tuple:
        return self.values, self.folded

    def __setstate__(self, state: tuple) -> None:
        self.values, self.folded = state
        self.segs = {}


class _Campaign:
    __slots__ = ("monitor", "series", "dims", "first_wid", "last_event_wid")

    def __init__(self, monitor: Any, first_wid: int, series: tuple[str, ...], dims: _Dims):
        self.monitor = monitor
        self.series = series          # its series in order of appearance (interned tuple)
        self.dims = dims              # shared (interned) :class:`_Dims`
        self.first_wid = first_wid
        self.last_event_wid = first_wid

    def __getstate__(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple) -> None:
        if len(state) != len(self.__slots__):
            raise ValueError(_INCOMPATIBLE)
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)


class _WindowAcc:
    """Gone with snapshot version 3; here so that a version-2 snapshot, which holds these,
    is refused with :data:`_INCOMPATIBLE` rather than a missing-attribute error."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise ValueError(_INCOMPATIBLE)


def _slot_constructor(cls: type) -> Callable[..., Any]:
    """A positional constructor for a frozen, slotted dataclass that sets the slots through
    their descriptors: a third of the cost of the generated ``__init__`` (which goes through
    ``object.__setattr__`` by name), for classes built thousands of times per second.

    Only for dataclasses without defaults logic or ``__post_init__``; every field is given.
    Where built, the same is done in C (``ctrguard/_shard.c``: the slots are set at their
    offsets, as their descriptors set them), a third of the cost again.

    >>> make = _slot_constructor(Counts)
    >>> make(10, 1) == Counts(10, 1), make(10, 1).ctr
    (True, 0.1)
    """
    if not is_dataclass(cls):   # (a msgspec Struct builds as fast itself)
        return cls
    names = [f.name for f in fields(cls)]
    if getattr(cls, "__slots__", None) is None or hasattr(cls, "__post_init__") \
            or tuple(names) != tuple(cls.__slots__):
        return cls
    if _SHARD is not None:
        return _SHARD.slot_maker(cls, tuple(names))
    return _slot_constructor_py(cls, names)


def _slot_constructor_py(cls: type, names: list[str]) -> Callable[..., Any]:
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
#: A window without events (its volume row: impressions, clicks, spread of each).
_NO_VOLUME = (0, 0, None, None)


def _counts_of(n: int, k: int) -> Counts:
    if n < 128 and k < 16:
        return _SMALL_COUNTS[n][k]
    return _counts(n, k)
#: Version 3: de-duplication keys (:func:`dedup_keys`) per shard, window and kind instead of
#: event ids per campaign; window counts per shard; shared :class:`_Dims`.
_STATE_VERSION = 3


class _Marks:
    """A source's frontier over the wall-clock time of the polls that moved it, for the
    last seconds (:meth:`ShardState._cap_at`): what the source had delivered by a given
    poll time, whatever order the chunks reach the shard in.

    >>> m = _Marks()
    >>> for t, f in ((100, 5), (200, 9), (300, 12)):
    ...     m.add(t, f, horizon=0)
    >>> m.at(50), m.at(100), m.at(250), m.at(10**9)
    (None, 5, 9, 12)
    """

    __slots__ = ("base", "times", "values")

    #: Entries kept before the ones older than the horizon are folded into ``base``.
    KEEP = 64

    def __init__(self) -> None:
        self.base: int | None = None  # the frontier before the first entry
        self.times: list[int] = []
        self.values: list[int] = []

    def add(self, polled_ms: int, frontier: int, horizon: int) -> None:
        times = self.times
        if times and polled_ms < times[-1]:
            polled_ms = times[-1]  # a clock step back: kept in order
        times.append(polled_ms)
        self.values.append(frontier)
        if len(times) > self.KEEP:
            k = bisect_left(times, horizon, hi=len(times) - 1)
            if k:
                self.base = self.values[k - 1]
                del times[:k], self.values[:k]

    def at(self, polled_ms: int) -> int | None:
        k = bisect_right(self.times, polled_ms)
        return self.values[k - 1] if k else self.base


def _unbound_monitor_factory() -> Any:
    raise RuntimeError("a ShardState restored from a snapshot needs bind(settings, "
                       "monitor_factory) before it meets a new campaign")


#: Where the modules of a snapshot written before the ``ctrguard`` namespace now are
#: (``flows.engine`` was a top-level package then).
_MOVED_MODULES = (("flows._shard", "ctrguard._shard"), ("detectors.native", "ctrguard.native"),
                  ("flows.", "ctrguard.flows."), ("detectors.", "ctrguard.detectors."),
                  ("sinks.", "ctrguard.sinks."), ("replay.", "ctrguard.replay."))


class _SnapshotUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        for old, new in _MOVED_MODULES:
            if module == old or (old.endswith(".") and module.startswith(old)):
                module = new + module[len(old):] if old.endswith(".") else new
                break
        return super().find_class(module, name)


def load_snapshot(data: bytes) -> ShardState:
    """A shard's state from its snapshot (``pickle.dumps(state)``), also one written
    before the packages moved under ``ctrguard`` (``flows.engine.ShardState`` is
    ``ctrguard.flows.engine.ShardState`` now): an upgrade resumes from its recovery store.
    Bind it to the running process's settings before use (:meth:`ShardState.bind`)."""
    state = _SnapshotUnpickler(io.BytesIO(data)).load()
    if not isinstance(state, ShardState):
        raise ValueError(f"not a shard snapshot: {type(state).__name__}")
    return state


def _restore_shard_state(version: int) -> ShardState:
    """Unpickling starts here, before the rest of the snapshot is read: a snapshot of another
    version is refused before any of its objects is rebuilt."""
    if version != _STATE_VERSION:
        raise ValueError(_INCOMPATIBLE)
    return ShardState.__new__(ShardState)


class ShardState:
    """Windowing, de-duplication and detection for the campaigns of one shard.

    ``ingest(chunk)`` returns what became final: :class:`WindowDecision` objects (one per
    campaign and closed window, in window order) and :class:`DeadLetter` objects (late events).
    The state pickles; a restored copy, given the running process's settings with
    :meth:`bind`, continues identically. Snapshots hold state, not settings (the settings
    carry the Slack token and the Redis password): see :meth:`bind`.

    Memory per campaign is kept small because a shard holds many: the event ids of a
    window are remembered as 8-byte keys in one :class:`_Seen` per window and kind (not as
    strings in per-campaign sets), a campaign's open window is one dict (dims key ->
    impressions, ``(dims key,)`` -> clicks), and the series names, series tuples and
    :class:`_Dims` are interned per shard, so that campaigns with the same segments share
    them.
    """

    def __init__(self, settings: Settings, sources: Iterable[str],
                 monitor_factory: Callable[[], Any]):
        # The window length and the dimensions shape the state: kept in it (bind checks).
        self._length_ms = settings.windows.length * 1000
        self._dims = tuple(settings.segments.dimensions)
        self._configure(settings, monitor_factory)
        self._frontiers: dict[str, int | None] = {s: None for s in sources}
        self._init_event_time()
        self._campaigns: dict[str, _Campaign] = {}
        # Open windows: window id -> campaign -> counts (dims key -> impressions,
        # (dims key,) -> clicks; a 1-tuple is never a dims key).
        self._open: dict[int, dict[str, dict[Any, int]]] = {}
        # Per kind, window id -> keys of the events counted, for open windows and for closed
        # ones still within the allowed lateness (a repeat then is a duplicate, not late).
        self._seen: tuple[dict[int, _Seen], dict[int, _Seen]] = ({}, {})
        self._next_close: int | None = None     # first window id not closed yet
        self.stats = ShardStats()
        self._derived()

    _DERIVED = ("_iso", "_click_keys", "_interned", "_dim_states", "_root_series", "_root_dims",
                "window_timer")

    def _derived(self) -> None:
        """Caches and interning tables: not pickled, rebuilt after unpickling."""
        self._iso: dict[int, str] = {}
        #: Called with the seconds each window took to close (metrics); not pickled.
        self.window_timer: Callable[[float], None] | None = None
        self._click_keys: dict[Any, tuple] = {}
        self._interned: dict[Any, Any] = {}
        self._dim_states: dict[tuple, _Dims] = {}
        for camp in self._campaigns.values():  # restored campaigns keep sharing
            self._interned.setdefault(camp.series, camp.series)
            for name in camp.series:
                self._interned.setdefault(name, name)
            self._dim_states.setdefault((camp.dims.values, camp.dims.folded), camp.dims)
        self._root_series = self._intern((ALL,))
        self._root_dims = self._dims_state(tuple(frozenset() for _ in self._dims),
                                           (False,) * len(self._dims))

    #: The settings and what is made of them: not state, never pickled (the settings hold
    #: the Slack token and the Redis password; Bytewax writes snapshots to disk). A
    #: restored shard gets the running process's from :meth:`bind`.
    _NOT_STATE = ("settings", "_monitor_factory")

    def _configure(self, settings: Settings, monitor_factory: Callable[[], Any]) -> None:
        self.settings = settings
        self._monitor_factory = monitor_factory
        self._lateness_ms = settings.windows.allowed_lateness * 1000
        self._ttl_windows = max(1, math.ceil(settings.windows.series_ttl / settings.windows.length))
        self._max_values = settings.segments.max_values_per_dimension
        self._grace_windows = max(1, math.ceil(settings.windows.allowed_lateness
                                               / settings.windows.length))
        self._quarantine_causes = dict(settings.quarantine.causes)
        # A live idle claim counts while at most half an idle_timeout old (idle_sources).
        self._claim_ttl_ms = settings.event_time.idle_timeout * 500
        self._quorum = settings.event_time.frontier_quorum

    def bind(self, settings: Settings, monitor_factory: Callable[[], Any]) -> ShardState:
        """Give a restored shard the running process's settings and monitor factory (a
        snapshot holds neither); returns the shard. Settings that only tune it (allowed
        lateness, series TTL, values per dimension, the detectors of new campaigns) take
        effect; the window length and the segment dimensions shape the state, and a
        snapshot taken with others is refused (:class:`~ctrguard.errors.ConfigError`, at
        the setting's line) rather than misread.

        Snapshots written before settings were left out (they still hold them) load too:
        their settings are dropped and replaced by the running process's.
        """
        length_ms = settings.windows.length * 1000
        dims = tuple(settings.segments.dimensions)
        if (length_ms, dims) != (self._length_ms, self._dims):
            from ctrguard.config import issue_at
            from ctrguard.errors import ConfigError

            field = ("windows", "length") if length_ms != self._length_ms else \
                ("segments", "dimensions")
            raise ConfigError([issue_at(
                settings, field,
                f"the snapshot was taken with windows.length {self._length_ms // 1000}s and "
                f"segments.dimensions {list(self._dims)}; the configuration says "
                f"{length_ms // 1000}s and {list(dims)}. These shape the saved state: run "
                "with the snapshot's values, or start with a fresh recovery directory")])
        self._configure(settings, monitor_factory)
        return self

    def __reduce__(self) -> tuple:
        skip = self._DERIVED + self._NOT_STATE
        state = {k: v for k, v in self.__dict__.items() if k not in skip}
        return _restore_shard_state, (_STATE_VERSION,), state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.pop("_version", _STATE_VERSION) != _STATE_VERSION:  # version 2 kept it here
            raise ValueError(_INCOMPATIBLE)
        for name in self._NOT_STATE:  # snapshots written before they were left out
            state.pop(name, None)
        self.__dict__.update(state)
        self.settings = None
        self._monitor_factory = _unbound_monitor_factory
        if "_claims" not in state:  # a snapshot from before idle claims: claims dropped
            self.__dict__.pop("_idle", None)  # (fails safe: a source holds back until it
            self._init_event_time()          # claims again)
        elif "_caps" not in state:  # a snapshot from before capped claims: claims dropped
            self._claims.clear()
            self._init_caps()
        self._derived()

    def _init_event_time(self) -> None:
        """Idle claims, the shard's clock, small batches' times and the sources' accounts."""
        # Source -> wall-clock time of its idle claim (None: for good). See watermark_ms.
        self._claims: dict[str, int | None] = {}
        self._init_caps()
        self._clock_ms: int | None = None  # the newest poll time seen from any source
        # Source -> the largest times of its small batches (fewer than the quorum each).
        self._recent: dict[str, list[int]] = {}
        # Source -> [read, excluded, dead-lettered before the shards, counted, duplicates,
        # late]: each event of the source ends in exactly one (see conservation()).
        self.tally: dict[str, list[int]] = {}

    def _init_caps(self) -> None:
        # Source -> how far its live idle claim lets the watermark go (_cap_at), and
        # source -> its frontier over poll time (_Marks), for live sources.
        self._caps: dict[str, int | None] = {}
        self._marks: dict[str, _Marks] = {}

    def _intern(self, obj: Any) -> Any:
        table = self._interned
        if len(table) > 200_000:  # bounded; what campaigns hold stays shared
            table.clear()
        return table.setdefault(obj, obj)

    def _dims_state(self, values: tuple[frozenset[str], ...], folded: tuple[bool, ...]) -> _Dims:
        key = (values, folded)
        dims = self._dim_states.get(key)
        if dims is None:
            if len(self._dim_states) > 100_000:
                self._dim_states.clear()
            dims = self._dim_states[key] = _Dims(values, folded)
        return dims

    # -- watermark ---------------------------------------------------------------------

    def idle_sources(self) -> set[str]:
        """The sources whose idle claim the shard honours: claims for good (a finished
        source), and claims made at most half an ``idle_timeout`` before the newest poll
        the shard has seen from any source. A claim older than that (the process or its
        sink was paused, another worker is slow) no longer counts: the source holds the
        watermark at its frontier again until it renews the claim."""
        claims = self._claims
        if not claims:
            return set()
        clock = self._clock_ms
        if clock is None:
            return set(claims)
        oldest = clock - self._claim_ttl_ms
        return {s for s, t in claims.items() if t is None or t >= oldest}

    def watermark_ms(self) -> int | None:
        """Event time up to which every window is final (frontier minimum less lateness).

        A source idle for good holds nothing back. A live idle claim lets the source's
        frontier go only as far as its cap (:meth:`_cap_at`): what the other sources had
        delivered when the claim was made. Events produced to the idle source after that
        come with times past the cap, so they cannot be late, however long it takes the
        claim to be withdrawn (a busy machine, a slow fetch, a paused sink)."""
        claims = self._claims
        idle = self.idle_sources() if claims else ()
        lows: list[int | None] = []
        for s, f in self._frontiers.items():
            if s in idle:
                if claims[s] is None:
                    continue
                cap = self._caps.get(s)
                if cap is not None and (f is None or cap > f):
                    f = cap
            lows.append(f)
        if lows:
            if None in lows:
                return None  # a source that has delivered nothing yet may hold old events
            low = min(lows)  # type: ignore[type-var]
        else:
            known = [f for f in self._frontiers.values() if f is not None]
            if not known:
                return None
            low = max(known)
        return low - self._lateness_ms

    def _cap_at(self, source: str, polled_ms: int) -> int | None:
        """How far a live idle claim of ``source``, made at ``polled_ms`` (wall clock),
        lets the watermark go: the least frontier the other sources that are not idle had
        reached by then, or, when every other source is idle, the largest. ``None`` (no
        further than the source's own frontier) while one of them had none.

        What another source delivered after the claim was made (its chunk may reach the
        shard first) does not count: the idle source may have been written to since."""
        idle = self.idle_sources()
        marks = self._marks
        lows: list[int | None] = []
        known: list[int] = []
        for s in self._frontiers:
            if s == source or self._claims.get(s, 0) is None:
                continue
            m = marks.get(s)
            f = m.at(polled_ms) if m is not None else self._frontiers[s]
            if s in idle:
                if f is not None:
                    known.append(f)
            else:
                lows.append(f)
        if lows:
            return None if None in lows else min(lows)  # type: ignore[type-var]
        return max(known) if known else None

    # -- ingest ------------------------------------------------------------------------

    def ingest(self, chunk: Chunk) -> list[WindowDecision | DeadLetter]:
        out: list[WindowDecision | DeadLetter] = []
        source = chunk.source
        frontier = chunk.frontier_ms
        if frontier is None and chunk.recent:
            frontier = self._note_recent(source, chunk.recent)
        if frontier is not None:
            prev = self._frontiers.get(source)
            if prev is None or frontier > prev:
                self._frontiers[source] = frontier
        elif source not in self._frontiers:
            self._frontiers[source] = None
        polled = chunk.polled_ms
        if polled is not None:
            if self._clock_ms is None or polled > self._clock_ms:
                self._clock_ms = polled
            now = self._frontiers[source]
            if now is not None:
                m = self._marks.get(source)
                if m is None:
                    m = self._marks[source] = _Marks()
                if not m.values or now != m.values[-1]:
                    m.add(polled, now, self._clock_ms - 2 * self._claim_ttl_ms)
        if chunk.idle:
            self._claims[source] = polled
            if polled is not None:
                self._caps[source] = self._cap_at(source, polled)
        elif self._claims:  # a message was read (or the claim withdrawn): not idle
            self._claims.pop(source, None)
            self._caps.pop(source, None)
        if chunk.ledger is not None:
            self._account(source, chunk.ledger)
        self._note_volume(chunk)
        if len(chunk.campaign_ids) > 0:
            self._add_events(chunk, out)
            if chunk.kind == CLICK and len(chunk.users):
                self._log_clicks(chunk)
        wm = self.watermark_ms()
        if wm is not None:
            self._close_through(wm // self._length_ms, out)
        return out

    #: Set while :meth:`flush` closes windows: they are partial (see :meth:`_scope`).
    _draining = False
    #: Ingestion stalls (:mod:`ctrguard.flows.stall`); made on first use.
    _stalls: StallWatch | None = None
    #: Per open window id, the events the whole pipeline received in it per kind and their
    #: campaigns per kind (:func:`spread_of`; from every batch's volume, which every shard
    #: receives): what stalls are judged by. Made on first use.
    _volume: dict[int, list] | None = None

    def _note_volume(self, chunk: Chunk) -> None:
        """Add a batch's volume (carried by each of its chunks) to the open windows'."""
        volume, spread = chunk.volume, chunk.spread
        if volume is None:  # a chunk made by hand: its own events stand for the batch
            if not len(chunk.campaign_ids):
                return
            volume = window_volume(chunk.ts_ms, self._length_ms)
            spread = spread_of(chunk.campaign_ids)
        if not volume:
            return
        table = self._volume
        if table is None:
            table = self._volume = {}
        kind = 0 if chunk.kind == IMPRESSION else 1
        first = self._next_close
        for wid, n in volume:
            if first is not None and wid < first:
                continue  # closed: its events are late
            row = table.get(wid)
            if row is None:
                row = table[wid] = [0, 0, None, None]
            row[kind] += n
            got = row[2 + kind]
            if got is not True and spread is not None and got != spread:
                row[2 + kind] = spread if got is None else True
    #: The clicks of the open windows, with their users and impressions (the evidence of
    #: bot clicks, :mod:`ctrguard.flows.clicklog`); made on first use.
    _clicks: ClickLog | None = None

    def _log_clicks(self, chunk: Chunk) -> None:
        """Keep a chunk's clicks (columns, in bulk) for the evidence of bot clicks."""
        log = self._clicks
        if log is None:
            log = self._clicks = ClickLog()
        log.add(chunk.ts_ms // self._length_ms, chunk.campaign_ids, chunk.dims,
                _keys_of(chunk), chunk.users, chunk.refs, self._next_close)

    def _close_clicks(self, wid: int) -> None:
        """Match window ``wid``'s clicks against the impressions of this window and the one
        before, while the shard still holds their keys (:meth:`ClickLog.close`)."""
        log = self._clicks
        if log is None:
            return
        shown = []
        for w in (wid - 1, wid):
            ks = self._seen[IMPRESSION].get(w)
            if ks is not None:
                shown.extend(ks.runs)
        log.closing = log.close(wid, shown)

    def _revise(self, cid: str, verdicts: list[Verdict]) -> list[Verdict]:
        """A CTR rise's cause from the evidence of the campaign's clicks in this window
        (:meth:`ctrguard.detectors.monitor.CampaignMonitor.revise`); unchanged without evidence."""
        log = self._clicks
        if log is None or log.closing is None or not any(
                v.suspected_cause in _RISE_CAUSES for v in verdicts):
            return verdicts
        camp = self._campaigns[cid]
        revise = getattr(camp.monitor, "revise", None)
        if revise is None:
            return verdicts
        evidence = log.closing.evidence(cid, lambda dk: self._segments_for(camp, dk))
        return verdicts if evidence is None else revise(verdicts, evidence)

    def _note_recent(self, source: str, times: tuple[int, ...]) -> int | None:
        """The frontier a small batch (fewer events than the quorum) allows, from the
        largest times of the source's small batches so far: their ``quorum``-th largest,
        or ``None`` while there are fewer. (Batches of the quorum or more report their own
        quorum-th largest instead; this list may then be behind, which only delays.)"""
        kept = self._recent.get(source)
        kept = sorted((kept or []) + list(times))[-self._quorum:]
        self._recent[source] = kept
        return kept[0] if len(kept) == self._quorum else None

    def _account(self, source: str, ledger: tuple[int, int, int]) -> None:
        """Add a batch's read, excluded and dead-lettered counts to its source's account."""
        row = self.tally.get(source)
        if row is None:
            row = self.tally[source] = [0] * 6
        row[0] += ledger[0]
        row[1] += ledger[1]
        row[2] += ledger[2]

    def _tally_events(self, source: str, counted: int, duplicates: int, late: int) -> None:
        row = self.tally.get(source)
        if row is None:
            row = self.tally[source] = [0] * 6
        row[3] += counted
        row[4] += duplicates
        row[5] += late

    def flush(self) -> list[WindowDecision | DeadLetter]:
        """Close every open window (end of a drained stream): up to the largest frontier as
        the watermark would, then the windows beyond every frontier (events ahead of their
        stream, fewer than the quorum) alone: only their own campaigns are decided there,
        rather than every campaign in every window up to them (a day of empty windows
        after the end, or years).

        The windows the watermark had not passed are partial (the clicks that follow the
        last impressions open one more window, with no impressions at all): they are not
        judged for silence, nor for an ingestion stall."""
        out: list[WindowDecision | DeadLetter] = []
        if self._open:
            self._draining = True
            try:
                known = [f for f in self._frontiers.values() if f is not None]
                end = max(self._open) + 1
                if known:
                    end = min(end, max(known) // self._length_ms + 1)
                self._close_through(end, out)
                if self._open:
                    if self._next_close is None:
                        self._next_close = min(self._open)
                    self._close_through(max(self._open) + 1, out, alone=True)
            finally:
                del self._draining
        return out

    def _add_events(self, chunk: Chunk, out: list) -> None:
        """De-duplicate a chunk's events and count them in their open windows (events of
        closed windows: :meth:`_closed_window_events`). With the compiled loops, the windows
        are found in C (:meth:`_add_events_c`); this is the reference."""
        if _SHARD is not None:
            self._add_events_c(_SHARD, chunk, out)
            return
        kind = chunk.kind
        wids = chunk.ts_ms // self._length_ms
        keys = _keys_of(chunk)
        cids, dks = chunk.campaign_ids, chunk.dims
        n = len(cids)
        lo, hi = int(wids.min()), int(wids.max())
        next_close = self._next_close
        if next_close is not None and lo < next_close:
            closed = wids < next_close
            self._closed_window_events(chunk, wids, keys, closed, out)
            keep = np.flatnonzero(~closed)
            if not keep.size:
                return
            wids, keys = wids[keep], keys[keep]
            cids, dks = _take((cids, dks), keep.tolist())
            n = len(keep)
            lo = int(wids.min())
        if lo == hi:  # the common case: the whole chunk in one window
            counted = self._count_in_window(kind, lo, keys, cids, dks)
        else:
            parts = []
            for wid in np.unique(wids).tolist():
                idx = np.flatnonzero(wids == wid)
                pos = self._window_keys(kind, wid).admit(keys[idx])
                parts.append(idx if pos is None else idx[pos])
            keep = np.sort(np.concatenate(parts))
            if len(keep) < n:
                cids, dks = _take((cids, dks), keep.tolist())
            self._count_windows(kind, wids[keep].tolist(), cids, dks)
            counted = len(cids)
        self.stats.duplicates += n - counted
        self.stats.events += counted
        self._tally_events(chunk.source, counted, n - counted, 0)

    def _window_keys(self, kind: int, wid: int) -> _Seen:
        """The de-duplication keys of window ``wid`` for events of ``kind``, made when
        missing."""
        seen = self._seen[kind]
        ks = seen.get(wid)
        if ks is None:
            ks = seen[wid] = _Seen()
        return ks

    def _count_in_window(self, kind: int, wid: int, keys: np.ndarray, cids: Sequence[str],
                         dks: Sequence[Any]) -> int:
        """De-duplicate events that all fall in window ``wid`` and count the new ones;
        returns how many were counted."""
        pos = self._window_keys(kind, wid).admit(keys)
        if pos is not None:
            if not pos.size:
                return 0
            cids, dks = _take((cids, dks), pos.tolist())
        self._count_windows(kind, wid, cids, dks)
        return len(cids)

    def _add_events_c(self, shard: Any, chunk: Chunk, out: list) -> None:
        """:meth:`_add_events` with the windows found in C (``span``, ``group``): a numpy
        call costs a microsecond or more however small its array, and a chunk holds a few
        hundred events. Same admissions, counts and order as the reference."""
        kind = chunk.kind
        ts = chunk.ts_ms
        step = self._length_ms      # ts / step: window ids (step 1: ts are window ids)
        try:
            lo, hi = shard.span(ts, step)
        except (BufferError, TypeError, ValueError):  # not a contiguous native int64 array
            ts = np.ascontiguousarray(ts, dtype=np.int64)
            lo, hi = shard.span(ts, step)
        keys = _keys_of(chunk)
        cids, dks = chunk.campaign_ids, chunk.dims
        n = len(cids)
        next_close = self._next_close
        if next_close is not None and lo < next_close:
            wids = ts // step
            closed = wids < next_close
            self._closed_window_events(chunk, wids, keys, closed, out)
            keep = np.flatnonzero(~closed)
            if not keep.size:
                return
            ts, keys, step = wids[keep], keys[keep], 1
            cids, dks = _take((cids, dks), keep.tolist())
            n = len(keep)
            lo = int(ts.min())
        if lo == hi:  # the common case: the whole chunk in one window
            counted = self._count_in_window(kind, lo, keys, cids, dks)
        else:
            if hi - lo >= 1024:  # times far apart: numpy's way
                wids = ts // step
                order = np.argsort(wids, kind="stable")
                uniq, counts = np.unique(wids, return_counts=True)
                windows = zip(uniq.tolist(), counts.tolist(), strict=True)
            else:
                wid_buf, order_buf, counts = shard.group(ts, step, lo, hi - lo + 1)
                wids = np.frombuffer(wid_buf, dtype=np.int64)
                order = np.frombuffer(order_buf, dtype=np.intp)
                windows = ((lo + i, m) for i, m in enumerate(counts) if m)
            # Each window's keys are a slice of one gather; windows in ascending order, as
            # the reference admits them.
            keys = keys[order]
            parts = []
            every = True
            start = 0
            for wid, m in windows:
                pos = self._window_keys(kind, wid).admit(keys[start:start + m])
                idx = order[start:start + m]
                if pos is not None:
                    every = False
                    idx = idx[pos]
                parts.append(idx)
                start += m
            if not every:
                keep = np.sort(np.concatenate(parts))
                cids, dks = _take((cids, dks), keep.tolist())
                wids = wids[keep]
            self._count_windows(kind, wids, cids, dks)
            counted = len(cids)
        self.stats.duplicates += n - counted
        self.stats.events += counted
        self._tally_events(chunk.source, counted, n - counted, 0)

    def _click_key_cache(self) -> dict[Any, tuple]:
        """Dims key -> its shared 1-tuple (a click's counts dict key); bounded."""
        cache = self._click_keys
        if len(cache) > 100_000:
            cache.clear()
        return cache

    def _count_keys(self, kind: int, dks: Sequence[Any]) -> Sequence[Any]:
        """The counts dict keys of ``dks``: the dims keys themselves for impressions, shared
        1-tuples of them for clicks."""
        if kind == IMPRESSION:
            return dks
        cache = self._click_key_cache()
        return [cache.get(dk) or cache.setdefault(dk, (dk,)) for dk in dks]

    def _count_windows(self, kind: int, wids: int | Sequence[int], cids: Sequence[str],
                       dks: Sequence[Any]) -> None:
        """Count events (de-duplicated already) into their open windows: all in window
        ``wids`` (an int), or event i in ``wids[i]`` (a list, or in C an int64 array too).
        The inner loop, in C where built (``ctrguard/_shard.c``); :meth:`_count_windows_py`
        is the reference."""
        shard = _SHARD
        if shard is None:
            self._count_windows_py(kind, wids, cids, dks)
            return
        wrap = None if kind == IMPRESSION else self._click_key_cache()
        shard.count(self._open, self._campaigns, wids, cids, dks, wrap, self._open_window,
                     self._new_key)

    def _new_key(self, cid: str, dk: Any) -> None:
        """A dims key the campaign does not know yet (the C loop looked in ``dims.segs``):
        take it in."""
        self._segments_for(self._campaigns[cid], dk)

    def _count_windows_py(self, kind: int, wids: int | Sequence[int], cids: Sequence[str],
                          dks: Sequence[Any]) -> None:
        if isinstance(wids, int):
            wids = repeat(wids, len(cids))  # type: ignore[assignment]
        current = None
        lookup = by_campaign = None
        campaigns = self._campaigns
        for cid, wid, key in zip(cids, wids, self._count_keys(kind, dks), strict=True):
            if wid != current:
                by_campaign = self._open.get(wid)
                if by_campaign is None:
                    by_campaign = self._open[wid] = {}
                lookup = by_campaign.get
                current = wid
            counts = lookup(cid)  # type: ignore[misc]
            if counts is None:
                counts = self._open_window(cid, wid, by_campaign)  # type: ignore[arg-type]
            n = counts.get(key)
            if n is None:  # first of its dims key in the campaign's window: new series?
                counts[key] = 1
                if (key if kind == IMPRESSION else key[0]) not in campaigns[cid].dims.segs:
                    self._segments_for(campaigns[cid], key if kind == IMPRESSION else key[0])
            else:
                counts[key] = n + 1

    def _closed_window_events(self, chunk: Chunk, wids: np.ndarray, keys: np.ndarray,
                              closed: np.ndarray, out: list) -> None:
        """Events of windows already closed: repeats of counted events, or late."""
        topic, _, part = chunk.source.rpartition(":")
        partition = int(part) if part.lstrip("-").isdigit() else -1
        length = self._length_ms
        seen = self._seen[chunk.kind]
        stats = self.stats
        for i in np.flatnonzero(closed).tolist():
            wid = int(wids[i])
            ks = seen.get(wid)
            if (ks is not None and chunk.campaign_ids[i] in self._campaigns
                    and keys[i] in ks):
                stats.duplicates += 1
                self._tally_events(chunk.source, 0, 1, 0)
                continue
            stats.late += 1
            self._tally_events(chunk.source, 0, 0, 1)
            offset, raw = chunk.source_of(i)
            out.append(DeadLetter(
                "late", f"window {ms_to_iso(wid * length)} already closed "
                f"(allowed lateness {self._lateness_ms // 1000}s)",
                topic, partition, offset, raw))

    def _open_window(self, cid: str, wid: int, by_campaign: dict[str, dict]) -> dict[Any, int]:
        # (The compiled count loop does the same itself for a campaign in _campaigns:
        # ctrguard/_shard.c, open_known. Keep the two alike.)
        camp = self._campaigns.get(cid)
        if camp is None:
            camp = self._campaigns[cid] = _Campaign(self._monitor_factory(), wid,
                                                    self._root_series, self._root_dims)
        elif wid < camp.first_wid:
            camp.first_wid = wid
        # last_event_wid is the last closed window with events (set when it closes), or
        # the first window while none has closed: never a window ahead of the stream.
        if wid < camp.last_event_wid:
            camp.last_event_wid = wid
        counts = by_campaign[cid] = {}
        return counts

    def _segments_for(self, camp: _Campaign, dk: Any) -> tuple[str, ...]:
        """The series of dims key ``dk`` in ``camp``; takes new values in (or folds them into
        ``other``) and adds new series to the campaign."""
        dims = camp.dims
        segs = dims.segs.get(dk)
        if segs is not None:
            return segs
        values, folded = list(dims.values), list(dims.folded)
        changed = False
        names = [ALL]
        for i, (name, value) in enumerate(zip(self._dims, _dims_tuple(dk, len(self._dims)),
                                              strict=True)):
            if value is None:
                continue
            seen = values[i]
            if value not in seen:
                if len(seen) >= self._max_values:
                    value = "other"
                    if not folded[i]:
                        folded[i] = changed = True
                else:
                    values[i] = seen | {value}
                    changed = True
            names.append(self._intern(f"{name}={value}"))
        segs = self._intern(tuple(names))
        if changed:
            dims = camp.dims = self._dims_state(tuple(values), tuple(folded))
            series = camp.series
            added = tuple(seg for seg in segs if seg not in series)
            if added:
                camp.series = self._intern(series + added)
        if len(dims.segs) < 4096:
            dims.segs[dk] = segs
        return segs

    # -- closing -----------------------------------------------------------------------

    def _close_through(self, end_wid: int, out: list, alone: bool = False) -> None:
        """Close every window with id < end_wid. Per window, the campaign loop runs in C
        where built: in Python, the calls, attribute loads and tuples around each monitor
        call were about 8% of the engine's instructions. The Python loop is its reference."""
        if self._next_close is None:
            # Nothing to close yet while the watermark is below the first open window (one
            # source may be far ahead of the others): windows up to there are not late.
            if not self._open or min(self._open) >= end_wid:
                return
            # From the first open window, however old: its events were counted, and
            # starting later would leave them in no window and no dead letter.
            self._next_close = min(self._open)
        length_s = self._length_ms // 1000
        while self._next_close < end_wid:
            wid = self._next_close
            if wid not in self._open and (alone or self._nothing_at(wid)):
                # No campaign has events or a decision due here: jump to the next window
                # with events (a stream may span years between two of its windows).
                self._next_close = min((w for w in self._open if w > wid), default=end_wid)
                self._next_close = min(self._next_close, end_wid)
                continue
            self._next_close = wid + 1
            start_s = wid * length_s
            end_s = start_s + length_s
            # One Window (immutable) and one pair of ISO texts for every campaign's decision.
            when = (_window(start_s, end_s), self._window_iso(start_s), self._window_iso(end_s))
            started = perf_counter()
            by_campaign = self._open.pop(wid, None) or {}
            self._close_clicks(wid)
            self._observe_stall(wid, start_s)
            stale = wid - self._grace_windows
            for seen in self._seen:
                ks = seen.get(wid)
                if ks is not None:
                    ks.compact()
                for old in [w for w in seen if w <= stale]:
                    del seen[old]
            evict: list[str] = []
            campaigns = self._campaigns
            if alone:  # (flush: windows beyond the end of the stream)
                campaigns = {cid: campaigns[cid] for cid in by_campaign if cid in campaigns}
            shard = _SHARD
            if shard is not None:
                # The same loop in C (ctrguard/_shard.c), the monitors called from there: back
                # in Python only for a campaign with verdicts (_decide_verdicts).
                shard.close_window(campaigns, by_campaign, wid, self._ttl_windows, when,
                                   out, evict, self.stats, self._segments_for, _SMALL_COUNTS,
                                   _counts, _ZERO, STATUS_OK, _figure, _decision,
                                   self._decide_verdicts)
            else:
                for cid, camp in campaigns.items():
                    if wid < camp.first_wid:
                        continue
                    counts = by_campaign.get(cid)
                    if counts is None:
                        if wid - camp.last_event_wid > self._ttl_windows:
                            evict.append(cid)
                            continue
                    else:
                        camp.last_event_wid = wid
                    out.append(self._decide(cid, camp, counts, when))
            for cid in evict:
                del self._campaigns[cid]
                self.stats.evicted_campaigns += 1
            if evict and self._open:
                self._note_evicted(evict)
            if self.window_timer is not None:
                self.window_timer(perf_counter() - started)

    def _nothing_at(self, wid: int) -> bool:
        """Whether no campaign of the shard is due a decision in window ``wid`` (which
        has no events): every campaign starts later. (Campaigns without events are evicted
        after ``series_ttl``, so a gap in the stream is crossed in at most that many
        windows.)"""
        return all(camp.first_wid > wid for camp in self._campaigns.values())

    def _note_evicted(self, evicted: list[str]) -> None:
        """Campaigns evicted while they have counts in open windows (events far ahead of
        the stream) are made again at once, as their first event after the eviction
        would make them: a new monitor, first window the earliest of those windows."""
        for wid in sorted(self._open):
            by_campaign = self._open[wid]
            for cid in evicted:
                if cid in by_campaign and cid not in self._campaigns:
                    self._campaigns[cid] = camp = _Campaign(
                        self._monitor_factory(), wid, self._root_series, self._root_dims)
                    for dk in by_campaign[cid]:
                        self._segments_for(camp, dk[0] if dk.__class__ is tuple
                                           and len(dk) == 1 else dk)

    def _observe_stall(self, wid: int, start_s: int) -> None:
        """Judge whether window ``wid`` belongs to an ingestion stall, from the events of each
        kind the whole pipeline received in it and whether two campaigns or more had any
        (:class:`ctrguard.flows.stall.StallWatch`): every shard, and a replay, judge alike,
        however the campaigns are sharded. A window a drain closes is not judged. Per
        window, not per event."""
        watch = self._stalls
        if watch is None:
            watch = self._stalls = StallWatch()
        table = self._volume
        row = None
        if table is not None:
            row = table.pop(wid, None)
            if table and min(table) < wid:  # (windows crossed without closing: a gap)
                for old in [w for w in table if w < wid]:
                    del table[old]
        if self._draining:
            watch.current = (None, None, False, False)
            return
        if row is None:
            row = _NO_VOLUME
        watch.current = watch.observe(start_s, (row[0], row[1]),
                                      (2 if row[2] is True else 1, 2 if row[3] is True else 1))

    def _scope(self, verdicts: list[Verdict]) -> list[Verdict]:
        """A campaign-window's verdicts in their scope: a drained window's silences go, a
        stall's become one pipeline-wide ``ingestion_stall`` (:func:`ctrguard.flows.stall.scope_verdicts`)."""
        watch = self._stalls
        stalled = watch.current if watch is not None else (None, None, False, False)
        if not self._draining and stalled == (None, None, False, False):
            return verdicts
        return scope_verdicts(verdicts, stalled, self._draining)

    def closing_context(self) -> tuple[tuple, bool, dict[str, dict[str, tuple[float, int]]]]:
        """What the decisions of the window being closed take besides its monitors'
        verdicts (for a recording of the detectors' input, ``replay/recorded.py``): the
        stall judgement (:meth:`StallWatch.observe`), whether a drain closes it, and the
        click evidence of every campaign with clicks in it (:meth:`WindowClicks.evidence`).
        Per window and campaign with clicks: not for the running flow."""
        watch = self._stalls
        stalled = watch.current if watch is not None else (None, None, False, False)
        evidence: dict[str, dict[str, tuple[float, int]]] = {}
        log = self._clicks
        if log is not None and log.closing is not None:
            for cid in sorted(set(log.closing.cids.tolist())):
                camp = self._campaigns.get(cid)
                if camp is None:
                    continue
                got = log.closing.evidence(
                    cid, lambda dk, camp=camp: self._segments_for(camp, dk))  # type: ignore[misc]
                if got is not None:
                    evidence[cid] = got
        return stalled, self._draining, evidence

    def _quarantines(self, v: Verdict) -> bool:
        """Whether an alert of ``v`` holds its figure back: ``quarantine.causes`` by suspected
        cause, the detector's own call for a cause not listed."""
        return self._quarantine_causes.get(v.suspected_cause, v.quarantine)

    def _window_iso(self, start_s: int) -> str:
        text = self._iso.get(start_s)
        if text is None:
            if len(self._iso) > 4096:
                self._iso.clear()
            text = self._iso[start_s] = ms_to_iso(start_s * 1000)
        return text

    def _series_counts(self, camp: _Campaign, counts: dict[Any, int] | None
                       ) -> dict[str, Counts]:
        """Counts of every series of the campaign in one window (zeros included)."""
        if counts is None:
            return dict.fromkeys(camp.series, _ZERO)
        shard = _SHARD
        if shard is not None:  # the same in C (ctrguard/_shard.c)
            return shard.series_counts(camp, counts, self._segments_for, _SMALL_COUNTS, _counts)
        imps: dict[str, int] = {}
        clicks: dict[str, int] = {}
        cached = camp.dims.segs
        for key, n in counts.items():
            if key.__class__ is tuple and len(key) == 1:
                dk, sums = key[0], clicks
            else:
                dk, sums = key, imps
            segs = cached.get(dk)
            if segs is None:
                segs = self._segments_for(camp, dk)
                cached = camp.dims.segs
            get = sums.get
            for seg in segs:
                sums[seg] = get(seg, 0) + n
        # A series without events gets the shared zero (_counts_of(0, 0) is _ZERO).
        iget, cget = imps.get, clicks.get
        return {seg: _counts_of(iget(seg, 0), cget(seg, 0)) for seg in camp.series}

    def _decide(self, cid: str, camp: _Campaign, win: dict[Any, int] | None,
                when: tuple[Window, str, str]) -> WindowDecision:
        """One campaign-window's decision: the reference of the C ``close_window``, which
        runs instead where built (and calls :meth:`_decide_verdicts` itself)."""
        window, start_iso, end_iso = when
        start_s, end_s = window.start, window.end
        counts = self._series_counts(camp, win)
        verdicts: list[Verdict] = camp.monitor.update(window, counts)
        if not verdicts:  # the common case: every series with traffic has an ok figure
            # (a series with events has a count above zero; only the shared zero is empty)
            figures = tuple([
                _figure(cid, seg, start_iso, end_iso, start_s, c.impressions, c.clicks,
                        c.clicks / c.impressions if c.impressions > 0 else 0.0, STATUS_OK, ())
                for seg, c in counts.items() if c is not _ZERO])
            self.stats.windows += len(figures)
            return _decision(cid, start_s, end_s, figures, ())
        return self._decide_verdicts(cid, counts, verdicts, when)

    def _decide_verdicts(self, cid: str, counts: dict[str, Counts], verdicts: list[Verdict],
                         when: tuple[Window, str, str]) -> WindowDecision:
        """The decision of a campaign-window with verdicts: alerts, and figures that carry
        their ids (quarantined when an alert says so)."""
        window, start_iso, end_iso = when
        start_s, end_s = window.start, window.end
        stats = self.stats
        alerts_by_seg: dict[str, list[Alert]] = {}
        alerts: list[Alert] = []
        verdicts = self._revise(cid, self._scope(verdicts))
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
                quarantine=self._quarantines(v), incident=v.incident,
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
        return sum(len(c.series) for c in self._campaigns.values())


#: The columns of a source's account (:attr:`ShardState.tally`), in order.
TALLY_COLUMNS = ("consumed", "excluded", "dead_lettered_early", "counted", "duplicates", "late")


def sum_tallies(tallies: Iterable[dict[str, Sequence[int]]]) -> dict[str, list[int]]:
    """Add the per-source accounts of several shards (or deltas of them).

    >>> sum_tallies([{"a": [3, 1, 0, 2, 0, 0]}, {"a": [0, 0, 0, 0, 0, 0], "b": [1] * 6}])
    {'a': [3, 1, 0, 2, 0, 0], 'b': [1, 1, 1, 1, 1, 1]}
    """
    total: dict[str, list[int]] = {}
    for tally in tallies:
        for source, row in tally.items():
            have = total.get(source)
            if have is None:
                total[source] = list(row)
            else:
                for i, n in enumerate(row):
                    have[i] += n
    return total


def conservation(tally: dict[str, Sequence[int]]) -> dict[str, dict[str, Any]]:
    """Per source: consumed = counted + excluded + duplicates + dead-lettered, where
    dead-lettered is what preparation refused (parse, ``future``) plus what the shards
    found ``late``. Every message read ends in exactly one of these; ``balanced`` says
    whether the figures add up (they do once every event read has reached its shard: at
    the end of a replay or a drained run).

    >>> conservation({"imp:0": [10, 1, 2, 5, 1, 1]})["imp:0"]
    {'consumed': 10, 'counted': 5, 'excluded': 1, 'duplicates': 1, 'dead_lettered': 3, 'balanced': True}
    """
    out = {}
    for source in sorted(tally):
        consumed, excluded, early, counted, duplicates, late = tally[source]
        dead = early + late
        out[source] = {"consumed": consumed, "counted": counted, "excluded": excluded,
                       "duplicates": duplicates, "dead_lettered": dead,
                       "balanced": consumed == counted + excluded + duplicates + dead}
    return out


def conservation_line(tally: dict[str, Sequence[int]]) -> str:
    """One log line: every source's balance.

    >>> conservation_line({"imp:0": [10, 1, 2, 5, 1, 1]})
    'conservation balanced: imp:0 consumed 10 = counted 5 + excluded 1 + duplicates 1 + dead-lettered 3'
    """
    return format_conservation(conservation(tally))


def format_conservation(rows: dict[str, dict[str, Any]]) -> str:
    """:func:`conservation_line` from :func:`conservation`'s rows (as a replay's
    summary.json holds them)."""
    ok = all(r["balanced"] for r in rows.values())
    parts = [f"{s} consumed {r['consumed']} = counted {r['counted']} + excluded "
             f"{r['excluded']} + duplicates {r['duplicates']} + dead-lettered "
             f"{r['dead_lettered']}" + ("" if r["balanced"] else " (UNBALANCED)")
             for s, r in rows.items()]
    return f"conservation {'balanced' if ok else 'UNBALANCED'}: " + "; ".join(parts)

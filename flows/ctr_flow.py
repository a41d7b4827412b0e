"""The live dataflow. Only wiring: the logic is in ``flows/engine.py`` and ``detectors/``.

::

    kafka_in (RawBatch per partition poll)
      -> prepare      parse, validate, exclude, route to shards (dead letters split off)
      -> detect       per shard: dedup, event-time windows, detectors  (stateful, snapshotted)
      -> release      Redis flags + watermark, THEN figures/alerts to Kafka
      -> slack        incidents to Slack (non-blocking outbox)
      -> deadletter   rejected and late events with the reason, original bytes kept
      -> conservation the shards' per-partition accounts, added up and logged (every read
                      event counted, excluded, a duplicate or dead-lettered)

Run with ``ctrguard run --config PATH`` or
``python -m bytewax.run "ctrguard.flows.ctr_flow:get_flow()"`` (config from ``CTRGUARD_CONFIG``).
"""

from __future__ import annotations

import logging
import os
import pickle
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from ctrguard import metrics, probes, stopping
from ctrguard.config import Settings, load_config
from ctrguard.flows.engine import (
    CLICK,
    Chunk,
    DeadLetter,
    EventPreparer,
    PreparedBatch,
    RawBatch,
    ShardState,
    conservation_line,
    load_snapshot,
    sum_tallies,
    tune_gc,
)
from ctrguard.flows.source import KafkaBatchSource, list_partitions, source_id
from ctrguard.records import WindowDecision
from ctrguard.sinks.kafka_out import DeadLetterSink
from ctrguard.sinks.release import ReleaseSink

log = logging.getLogger(__name__)

DEAD = "__dead__"
STATS_LOG_INTERVAL_S = 30.0


# ---------------------------------------------------------------------- shard keys
#
# Bytewax 0.21 sends a stateful step's key to worker ``h & (workers - 1)`` when the worker
# count is a power of two (``h % workers`` otherwise), ``h`` being Rust's DefaultHasher
# (SipHash-1-3, zero keys) of the key string. Keys "0".."15" happen to put 10 of 16 shards
# on one of two workers; keys chosen so that ``h``'s low bits equal the shard number put
# the same number of shards on every worker for any power-of-two worker count that divides
# the shard count. Checked against Bytewax itself in tests/test_fast_path.py.

_MASK64 = (1 << 64) - 1
#: Low bits of the hash matched to the shard number (up to 64 workers balanced exactly).
_ROUTE_BITS = 6


def _sip_round(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _MASK64
    v1 = ((v1 << 13) | (v1 >> 51)) & _MASK64 ^ v0
    v0 = ((v0 << 32) | (v0 >> 32)) & _MASK64
    v2 = (v2 + v3) & _MASK64
    v3 = ((v3 << 16) | (v3 >> 48)) & _MASK64 ^ v2
    v0 = (v0 + v3) & _MASK64
    v3 = ((v3 << 21) | (v3 >> 43)) & _MASK64 ^ v0
    v2 = (v2 + v1) & _MASK64
    v1 = ((v1 << 17) | (v1 >> 47)) & _MASK64 ^ v2
    v2 = ((v2 << 32) | (v2 >> 32)) & _MASK64
    return v0, v1, v2, v3


def bytewax_route_hash(key: str) -> int:
    """The 64-bit hash Bytewax routes a stateful key by (SipHash-1-3 of the string as Rust
    hashes a ``str``: its bytes, then 0xff).

    >>> [bytewax_route_hash(str(i)) & 1 for i in range(8)]
    [1, 1, 1, 1, 0, 0, 1, 1]
    """
    data = key.encode("utf-8") + b"\xff"
    v0, v1 = 0x736F6D6570736575, 0x646F72616E646F6D
    v2, v3 = 0x6C7967656E657261, 0x7465646279746573
    end = len(data) - len(data) % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
        v0 ^= m
    b = ((len(data) & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= b
    v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


@lru_cache(maxsize=8)
def shard_keys(shards: int) -> tuple[str, ...]:
    """The Bytewax key of each shard: ``"<n>"`` or ``"<n>~<salt>"``, the first whose route
    hash has the shard number in its low bits, so shards spread evenly over workers.

    >>> keys = shard_keys(16)
    >>> [bytewax_route_hash(k) % 16 for k in keys] == list(range(16))
    True
    """
    # Beyond a few hundred shards random hashing balances well enough, and the search
    # would cost seconds at start-up.
    bits = min(_ROUTE_BITS, shards.bit_length() - 1) if shards <= 256 else 0
    mask = (1 << bits) - 1
    keys = []
    for n in range(shards):
        key, salt = str(n), 0
        while bytewax_route_hash(key) & mask != n & mask:
            salt += 1
            key = f"{n}~{salt}"
        keys.append(key)
    return tuple(keys)


class PrepareStep:
    """Stateless: one RawBatch in, one chunk per shard plus dead letters out.

    The last line of defence against a poison message: decoding turns every malformed
    message into a dead letter, but should preparing a batch still raise (a bug that some
    input reaches), the batch is split in halves and each half prepared again, down to
    single messages: only the messages that make it raise are dead-lettered, with reason
    code ``crash`` and the exception's type in the reason (:func:`bisect_batch`). A batch
    of at least :data:`SYSTEMIC_CRASH_MIN` messages that raises on every one of them alone is
    not poison but a fault of the step: the exception is raised again and stops the flow.

    A smaller batch (a quiet partition in tail mode polls a few messages at a time) cannot
    tell alone. So the step keeps a *canary*: one message of the last batch it prepared
    without a dead letter. When every message of a small batch raises, the canary is
    prepared again (nothing of it is kept or counted): if it raises too, the step broke,
    not the messages, and the flow stops instead of dead-lettering valid events batch
    after batch. Before any batch went through (a bad deploy starting on quiet
    partitions), a made-up valid event of the batch's kind stands in for the canary
    (:func:`synthetic_canary`).
    """

    def __init__(self, settings: Settings):
        self._preparer = EventPreparer(settings)
        self._keys = shard_keys(settings.windows.shards)
        self.excluded: dict[str, int] = {}
        #: One message that prepared cleanly (a batch of one), or None before any did.
        self._canary: RawBatch | None = None

    def __call__(self, batch: RawBatch) -> list[tuple[str, Any]]:
        now_ms = int(time.time() * 1000)
        try:
            return self._items(batch, now_ms)
        except Exception as exc:  # noqa: BLE001 - isolated below, or raised again
            log.warning("preparing %d messages of %s raised %s: %s; splitting the batch to "
                        "dead-letter only the messages that cause it", len(batch.values),
                        batch.source, type(exc).__name__, exc, exc_info=True)
            items = bisect_batch(batch, partial(self._items, now_ms=now_ms), exc,
                                 broken=partial(self._canary_fails, batch, now_ms))
            crashed = [d for key, d in items if key == DEAD and d.stage == "crash"]
            metrics.prepared(batch.kind, batch.topic, batch.partition, len(crashed), {},
                             crashed, None)
            if crashed:  # into the source's account (shard 0 keeps the batches' share)
                items.append((self._keys[0], Chunk(batch.source, None, False,
                                                   polled_ms=batch.polled_ms,
                                                   ledger=(len(crashed), 0, len(crashed)))))
            return items

    def _canary_fails(self, batch: RawBatch, now_ms: int) -> bool:
        """Whether the canary (see the class) raises when prepared again now; before there
        is one, a made-up event of ``batch``'s kind."""
        canary = self._canary
        if canary is None:
            canary = synthetic_canary(batch, now_ms)
        try:
            self._prepare(canary, now_ms)
        except Exception:  # noqa: BLE001 - the answer, not an error
            return True
        return False

    def _prepare(self, batch: RawBatch, now_ms: int,
                 ) -> tuple[PreparedBatch, list[tuple[int, Chunk]]]:
        """The step's work on a batch, nothing kept or counted: the prepared batch and its
        chunks per shard (a batch and its canary take the same path)."""
        probes.batch(batch.values)
        prepared = self._preparer.prepare(batch, now_ms=now_ms)
        return prepared, self._preparer.chunks(prepared)

    def _items(self, batch: RawBatch, now_ms: int) -> list[tuple[str, Any]]:
        prepared, chunks = self._prepare(batch, now_ms)
        if not prepared.dead_letters and batch.values:
            self._canary = batch._replace(values=batch.values[:1], offsets=batch.offsets[:1],
                                          idle=False)
        items: list[tuple[str, Any]] = [(DEAD, d) for d in prepared.dead_letters]
        keys = self._keys
        items.extend((keys[shard], chunk) for shard, chunk in chunks)
        # Counted once the batch is through: a batch tried again is not counted twice.
        for reason, n in prepared.excluded.items():
            self.excluded[reason] = self.excluded.get(reason, 0) + n
        metrics.prepared(batch.kind, batch.topic, batch.partition, len(batch.values),
                         prepared.excluded, prepared.dead_letters, prepared.frontier_ms)
        return items


#: See :class:`PrepareStep`.
SYSTEMIC_CRASH_MIN = 16


def synthetic_canary(batch: RawBatch, now_ms: int) -> RawBatch:
    """A batch of one valid made-up event of ``batch``'s kind, stamped a minute before
    ``now_ms`` (the canary :class:`PrepareStep` prepares before a real batch went through).

    >>> from ctrguard.flows.engine import CLICK
    >>> b = synthetic_canary(RawBatch("ctr.clicks", 2, CLICK, [b"x"], [7]), 1767225660000)
    >>> b.values[0]
    b'{"event_id":"ctrguard-canary","ts":1767225600000,"campaign_id":"ctrguard-canary","impression_id":"ctrguard-canary"}'
    >>> (b.topic, b.partition, b.kind == CLICK, b.offsets, b.idle)
    ('ctr.clicks', 2, True, [-1], False)
    """
    ref = ',"impression_id":"ctrguard-canary"' if batch.kind == CLICK else ""
    value = (f'{{"event_id":"ctrguard-canary","ts":{now_ms - 60_000},'
             f'"campaign_id":"ctrguard-canary"{ref}}}').encode()
    return RawBatch(batch.topic, batch.partition, batch.kind, [value], [-1])


def bisect_batch(batch: RawBatch, step: Callable[[RawBatch], list[tuple[str, Any]]],
                 exc: Exception, broken: Callable[[], bool] | None = None,
                 ) -> list[tuple[str, Any]]:
    """``step`` over ``batch`` that raised ``exc``, run again on halves of it down to single
    messages; a message that raises alone becomes a ``crash`` dead letter. Parts keep the
    batch's order; only the last part carries the batch's ``idle`` flag.

    When every message raised alone, the step is at fault, not the messages, and ``exc``
    is raised again: for a batch of :data:`SYSTEMIC_CRASH_MIN` or more, or when
    ``broken()`` says so (:class:`PrepareStep`'s canary, asked for smaller batches)."""
    n = len(batch.values)
    if n == 0:
        raise exc  # nothing to isolate: the step itself fails
    crashed = 0

    def isolate(lo: int, hi: int, err: Exception) -> list[tuple[str, Any]]:
        nonlocal crashed
        if hi - lo == 1:
            crashed += 1
            raw = batch.values[lo]
            return [(DEAD, DeadLetter(
                "crash", f"prepare raised {type(err).__name__}: {str(err)[:300]}",
                batch.topic, batch.partition, batch.offsets[lo],
                raw if raw is not None else b"", "crash"))]
        out: list[tuple[str, Any]] = []
        mid = (lo + hi) // 2
        for a, b in ((lo, mid), (mid, hi)):
            part = batch._replace(values=batch.values[a:b], offsets=batch.offsets[a:b],
                                  idle=batch.idle and b == n)
            try:
                out.extend(step(part))
            except Exception as sub:  # noqa: BLE001 - isolated further
                out.extend(isolate(a, b, sub))
        return out

    out = isolate(0, n, exc)
    if crashed == n:
        if n >= SYSTEMIC_CRASH_MIN:
            raise exc
        if broken is not None and broken():
            log.error("a message that prepared before raises now too: the step is broken, "
                      "not %d poison messages of %s; stopping", n, batch.source)
            raise exc
    log.error("dead-lettered %d of %d messages of %s as 'crash' (%s)", crashed, n,
              batch.source, type(exc).__name__)
    return out


def is_dead(item: tuple[str, Any]) -> bool:
    return item[0] == DEAD


def unwrap(item: tuple[str, Any]) -> Any:
    return item[1]


class DecisionBatch(tuple):
    """The window decisions one shard made in one activation, travelling as one item.

    A window's close yields a decision per campaign (2,000 in the latency benchmark); as
    single items they reached the release sink in Timely containers of 1,024, and the sink
    paid a Redis transaction and a Kafka flush (a broker round trip with acks=all) per
    container. As one item per shard, a window is released in one transaction and one flush.
    """

    __slots__ = ()


def is_decision(item: Any) -> bool:
    return isinstance(item, DecisionBatch)


def decisions_of(batch: DecisionBatch) -> DecisionBatch:
    return batch


def _pack(out: list[Any]) -> list[Any]:
    """Late events' dead letters stay single items; the decisions become one batch."""
    if not out:
        return out
    decisions = DecisionBatch(x for x in out if type(x) is WindowDecision)
    if not decisions:
        return out
    emit: list[Any] = [x for x in out if type(x) is not WindowDecision] \
        if len(decisions) < len(out) else []
    emit.append(decisions)
    return emit


class TallyReport(NamedTuple):
    """A shard's conservation account so far (cumulative: a repeat after a restart
    replaces the earlier report), for the ``conservation`` step."""

    shard: str
    tally: dict[str, list[int]]
    final: bool = False   # sent at the end of the input
    shards: int = 0       # how many shards report


def is_tally(item: Any) -> bool:
    return isinstance(item, TallyReport)


def tally_key(_report: TallyReport) -> str:
    return "all"


class ConservationLogic(StatefulBatchLogic[TallyReport, Any, dict]):
    """Adds up the shards' accounts; logs the balance per source every
    ``STATS_LOG_INTERVAL_S`` while it changes (events still in flight between the steps
    then) and once at the end of the input, when it must balance."""

    def __init__(self, resume: dict | None):
        self.latest: dict[str, dict[str, list[int]]] = resume or {}
        self._final: set[str] = set()
        self._last_log = 0.0
        self._ended = False

    def on_batch(self, values: list[TallyReport]) -> tuple[list[Any], bool]:
        shards = 0
        for report in values:
            self.latest[report.shard] = report.tally
            if report.final:
                self._final.add(report.shard)
                shards = report.shards
        if shards and len(self._final) >= shards:
            # (Bytewax may not call on_eof of a logic made in the activation of the end)
            self._end()
            return [], StatefulBatchLogic.RETAIN
        now = time.monotonic()
        if now - self._last_log > STATS_LOG_INTERVAL_S:
            self._last_log = now
            log.info("so far (in flight not included): %s",
                     conservation_line(sum_tallies(self.latest.values())))
        return [], StatefulBatchLogic.RETAIN

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        line = conservation_line(sum_tallies(self.latest.values()))
        (log.info if line.startswith("conservation balanced") else log.error)(
            "end of input: %s", line)

    def on_eof(self) -> tuple[list[Any], bool]:
        if stopping.requested():  # stopped, not drained: events may be in flight
            log.info("stopped; so far (in flight not included): %s",
                     conservation_line(sum_tallies(self.latest.values())))
        else:
            self._end()
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> dict:
        return self.latest


def build_conservation(resume: dict | None) -> ConservationLogic:
    return ConservationLogic(resume)


class ShardLogic(StatefulBatchLogic[Chunk, Any, bytes | None]):
    """Bytewax adapter around :class:`ShardState`: snapshots are the pickled state.

    Bytewax asks every shard for a snapshot at every epoch end also when it runs without
    recovery, and then drops it; pickling 2,000 campaigns' state stops the worker for
    0.3-1 s (16 shards). With ``snapshots=False`` (no recovery directory) the snapshot is
    ``None`` and costs nothing.
    """

    def __init__(self, state: ShardState, snapshots: bool = True, shards: int = 0):
        self.state = state
        self._snapshots = snapshots
        self._shards = shards
        self._last_log = time.monotonic()
        # Counts per batch and source for Prometheus (never per event).
        self._meter = metrics.ShardMeter()
        state.window_timer = metrics.window_closed
        if not getattr(state, "ledger_id", None):  # names its reports (kept in snapshots)
            state.ledger_id = uuid.uuid4().hex  # type: ignore[attr-defined]

    def _report(self, final: bool = False) -> TallyReport:
        return TallyReport(self.state.ledger_id,  # type: ignore[attr-defined]
                           {s: list(row) for s, row in self.state.tally.items()},
                           final, self._shards)

    def on_batch(self, values: list[Chunk]) -> tuple[list[Any], bool]:
        out: list[Any] = []
        ingest = self._meter.ingest
        for chunk in values:
            out.extend(ingest(self.state, chunk))
        self._meter.batch_done(self.state)
        now = time.monotonic()
        if now - self._last_log > STATS_LOG_INTERVAL_S:
            self._last_log = now
            log.info("shard: %s, %d campaigns", self.state.stats.as_dict(),
                     self.state.campaigns)
            out = self._packed(out)
            out.append(self._report())
            return out, StatefulBatchLogic.RETAIN
        return self._packed(out), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Any], bool]:
        if stopping.requested():
            # Stopped, not drained: the open windows stay open in the snapshot and close
            # when the flow runs again and event time gets there.
            log.info("shard stopped: %s, %d campaigns", self.state.stats.as_dict(),
                     self.state.campaigns)
            return [self._report()], StatefulBatchLogic.RETAIN
        out = self.state.flush()
        log.info("shard drained: %s", self.state.stats.as_dict())
        packed = self._packed(out)
        packed.append(self._report(final=True))
        return packed, StatefulBatchLogic.RETAIN

    def _packed(self, out: list[Any]) -> list[Any]:
        packed = _pack(out)
        if packed and type(packed[-1]) is DecisionBatch:
            self._meter.windows_closed(len(packed[-1]))
        return packed

    def snapshot(self) -> bytes | None:
        if not self._snapshots:
            return None
        started = time.perf_counter()
        blob = pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)
        metrics.SNAPSHOT_SECONDS.observe(time.perf_counter() - started)
        return blob


class StoppableSource(FixedPartitionedSource[RawBatch, Any]):
    """The flow's input, ended at a batch boundary once a stop is requested
    (:mod:`ctrguard.stopping`): each partition raises StopIteration at its next poll, after
    the batches it already returned."""

    def __init__(self, inner: FixedPartitionedSource[RawBatch, Any]):
        self.inner = inner

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any
                   ) -> _StoppablePartition:
        return _StoppablePartition(self.inner.build_part(step_id, for_part, resume_state))


class _StoppablePartition(StatefulSourcePartition[RawBatch, Any]):
    def __init__(self, inner: StatefulSourcePartition[RawBatch, Any]):
        self._inner = inner

    def next_batch(self) -> list[RawBatch]:
        if stopping.requested():
            raise StopIteration()
        return self._inner.next_batch()

    def next_awake(self) -> datetime | None:
        return None if stopping.requested() else self._inner.next_awake()

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


# ---------------------------------------------------------------------- sinks
#
# The sinks (sinks/) are plain classes, one per worker: ``write_batch(items)`` with the
# whole batch, ``close()`` at the end of the input. They keep no state to snapshot: what
# they wrote is in Redis and Kafka, and a batch written again after a restart writes the
# same keys (at-least-once output, idempotent sinks). Bytewax sees them through this
# adapter only.


class BatchSink(Protocol):
    def write_batch(self, items: list[Any]) -> None: ...

    def close(self) -> None: ...


class WorkerSink(DynamicSink[Any]):
    """Bytewax sink: ``make()`` builds one of our sinks on each worker, which all write
    concurrently (a ``DynamicSink``)."""

    def __init__(self, make: Callable[[], BatchSink]):
        self.make = make

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _WorkerSinkPartition:
        return _WorkerSinkPartition(self.make())


class _WorkerSinkPartition(StatelessSinkPartition[Any]):
    def __init__(self, sink: BatchSink):
        self.sink = sink

    def write_batch(self, items: list[Any]) -> None:
        self.sink.write_batch(items)

    def close(self) -> None:
        self.sink.close()


def build_monitor_for(settings: Settings) -> Any:
    from ctrguard.detectors.monitor import build_monitor

    return build_monitor(settings.detectors)


def build_shard(settings: Settings, sources: list[str], resume: bytes | None, *,
                snapshots: bool = True) -> ShardLogic:
    factory = partial(build_monitor_for, settings)
    if resume is not None:
        # A snapshot holds state, not settings: the running process's are bound to it.
        state = load_snapshot(resume).bind(settings, factory)
    else:
        state = ShardState(settings, sources, factory)
    return ShardLogic(state, snapshots, settings.windows.shards)


def get_flow(settings: Settings | None = None, *, slack: bool = True,
             partitions: list[tuple[str, int]] | None = None,
             snapshots: bool = True) -> Dataflow:
    """Build the live dataflow from validated settings (or ``$CTRGUARD_CONFIG``).

    ``snapshots=False`` is for runs without a recovery directory only: the shards then
    hand Bytewax no state at epoch ends (it would be discarded anyway).
    """
    if settings is None:
        settings = load_config(os.environ.get("CTRGUARD_CONFIG") or None)
    tune_gc()
    if partitions is None:
        partitions = list_partitions(settings.kafka)
    sources = [source_id(t, p) for t, p in partitions]
    metrics.FLOW.reset()

    flow = Dataflow("ctrguard")
    raw = op.input("kafka_in", flow, StoppableSource(
        KafkaBatchSource(settings.kafka, partitions, settings.event_time.idle_timeout)))
    prepared = op.flat_map("prepare", raw, PrepareStep(settings))
    split = op.branch("split_invalid", prepared, is_dead)
    invalid = op.map("invalid", split.trues, unwrap)
    decided = op.stateful_batch("detect", split.falses,
                                partial(build_shard, settings, sources, snapshots=snapshots))
    results = op.map("results", decided, unwrap)
    tallies = op.branch("split_tally", results, is_tally)
    # Every event read ends in a window, an exclusion, a duplicate or a dead letter: the
    # shards' accounts, added up and logged (README, "Nothing vanishes").
    op.stateful_batch("conservation", op.key_on("tally_key", tallies.trues, tally_key),
                      build_conservation)
    by_type = op.branch("split_late", tallies.falses, is_decision)
    batches = by_type.trues
    late = by_type.falses
    # One item per shard and activation: a closed window is released in one Redis
    # transaction and one Kafka flush, not one per 1,024 decisions.
    op.output("release", batches, WorkerSink(partial(ReleaseSink, settings)))
    if slack:
        from ctrguard.sinks.slack import SlackSink

        # Whole decisions, not just alerts: quiet windows are what resolve incidents.
        decisions = op.flat_map("decisions", batches, decisions_of)
        op.output("slack", decisions, WorkerSink(partial(SlackSink, settings)))
    dead = op.merge("dead_letters", invalid, late)
    op.output("deadletter", dead, WorkerSink(partial(DeadLetterSink, settings.kafka)))
    return flow


def run(flow: Dataflow, *, workers: int = 1, process_id: int | None = None,
        addresses: list[str] | None = None, snapshot_interval_s: float = 10.0,
        recovery_dir: Path | None = None, backup_interval_s: float = 30.0) -> None:
    """Run ``flow`` in this process as Bytewax's ``python -m bytewax.run`` does: ``workers``
    threads, one process of a cluster when ``process_id`` and ``addresses`` (every
    process's ``host:port``) are given. With ``recovery_dir`` (initialised once with
    ``python -m bytewax.recovery DIR N``) state is snapshotted every
    ``snapshot_interval_s`` and snapshots are kept ``backup_interval_s``, and a run resumes
    from the last one. Returns at the end of the input; what a step raised comes out as
    Bytewax's ``BytewaxRuntimeError`` with the original as its cause.
    """
    from bytewax.recovery import RecoveryConfig
    from bytewax.run import cli_main

    recovery = None
    if recovery_dir is not None:
        recovery = RecoveryConfig(str(recovery_dir),
                                  backup_interval=timedelta(seconds=backup_interval_s))
    cli_main(flow, workers_per_process=workers, process_id=process_id, addresses=addresses,
             epoch_interval=timedelta(seconds=snapshot_interval_s), recovery_config=recovery)


__all__ = ["get_flow", "run"]

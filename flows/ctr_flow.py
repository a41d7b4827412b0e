"""The live dataflow. Only wiring: the logic is in ``flows/engine.py`` and ``detectors/``.

::

    kafka_in (RawBatch per partition poll)
      -> prepare      parse, validate, exclude, route to shards (dead letters split off)
      -> detect       per shard: dedup, event-time windows, detectors  (stateful, snapshotted)
      -> release      Redis flags + watermark, THEN figures/alerts to Kafka
      -> slack        incidents to Slack (non-blocking outbox)
      -> deadletter   rejected and late events with the reason, original bytes kept

Run with ``ctrguard run --config PATH`` or
``python -m bytewax.run "flows.ctr_flow:get_flow()"`` (config from ``CTRGUARD_CONFIG``).
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from functools import partial
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from ctrguard.config import Settings, load_config
from ctrguard.records import WindowDecision
from flows.engine import Chunk, EventPreparer, RawBatch, ShardState, tune_gc
from flows.source import KafkaBatchSource, list_partitions, source_id
from sinks.kafka_out import DeadLetterSink
from sinks.release import ReleaseSink

log = logging.getLogger(__name__)

DEAD = "__dead__"
STATS_LOG_INTERVAL_S = 30.0


class PrepareStep:
    """Stateless: one RawBatch in, one chunk per shard plus dead letters out."""

    def __init__(self, settings: Settings):
        self._preparer = EventPreparer(settings)
        self._keys = [str(s) for s in range(settings.windows.shards)]
        self.excluded: dict[str, int] = {}

    def __call__(self, batch: RawBatch) -> list[tuple[str, Any]]:
        prepared = self._preparer.prepare(batch, now_ms=int(time.time() * 1000))
        for reason, n in prepared.excluded.items():
            self.excluded[reason] = self.excluded.get(reason, 0) + n
        items: list[tuple[str, Any]] = [(DEAD, d) for d in prepared.dead_letters]
        keys = self._keys
        items.extend((keys[shard], chunk) for shard, chunk in self._preparer.chunks(prepared))
        return items


def is_dead(item: tuple[str, Any]) -> bool:
    return item[0] == DEAD


def unwrap(item: tuple[str, Any]) -> Any:
    return item[1]


def is_decision(item: Any) -> bool:
    return isinstance(item, WindowDecision)


class ShardLogic(StatefulBatchLogic[Chunk, Any, bytes]):
    """Bytewax adapter around :class:`ShardState`: snapshots are the pickled state."""

    def __init__(self, state: ShardState):
        self.state = state
        self._last_log = time.monotonic()

    def on_batch(self, values: list[Chunk]) -> tuple[list[Any], bool]:
        out: list[Any] = []
        for chunk in values:
            out.extend(self.state.ingest(chunk))
        now = time.monotonic()
        if now - self._last_log > STATS_LOG_INTERVAL_S:
            self._last_log = now
            log.info("shard: %s, %d campaigns", self.state.stats.as_dict(),
                     self.state.campaigns)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Any], bool]:
        out = self.state.flush()
        log.info("shard drained: %s", self.state.stats.as_dict())
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)


def build_monitor_for(settings: Settings) -> Any:
    from detectors.monitor import build_monitor

    return build_monitor(settings.detectors)


def build_shard(settings: Settings, sources: list[str], resume: bytes | None) -> ShardLogic:
    if resume is not None:
        state = pickle.loads(resume)
    else:
        state = ShardState(settings, sources, partial(build_monitor_for, settings))
    return ShardLogic(state)


def get_flow(settings: Settings | None = None, *, slack: bool = True,
             partitions: list[tuple[str, int]] | None = None) -> Dataflow:
    """Build the live dataflow from validated settings (or ``$CTRGUARD_CONFIG``)."""
    if settings is None:
        settings = load_config(os.environ.get("CTRGUARD_CONFIG") or None)
    tune_gc()
    if partitions is None:
        partitions = list_partitions(settings.kafka)
    sources = [source_id(t, p) for t, p in partitions]

    flow = Dataflow("ctrguard")
    raw = op.input("kafka_in", flow, KafkaBatchSource(settings.kafka, partitions))
    prepared = op.flat_map("prepare", raw, PrepareStep(settings))
    split = op.branch("split_invalid", prepared, is_dead)
    invalid = op.map("invalid", split.trues, unwrap)
    decided = op.stateful_batch("detect", split.falses, partial(build_shard, settings, sources))
    results = op.map("results", decided, unwrap)
    by_type = op.branch("split_late", results, is_decision)
    decisions = by_type.trues
    late = by_type.falses
    op.output("release", decisions, ReleaseSink(settings))
    if slack:
        from sinks.slack import SlackSink

        # Whole decisions, not just alerts: quiet windows are what resolve incidents.
        op.output("slack", decisions, SlackSink(settings))
    dead = op.merge("dead_letters", invalid, late)
    op.output("deadletter", dead, DeadLetterSink(settings.kafka))
    return flow


__all__ = ["get_flow"]

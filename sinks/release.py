"""The ordered release: quarantine flags reach Redis before figures reach Kafka.

For every batch of window decisions the sink first writes, in one Redis transaction, the
flags of the quarantined series and the "checked through" watermark of each campaign; only
after Redis confirmed does it publish the figures (with their status) to the figures topic
and the alerts to the alerts topic. If Redis cannot be written the sink retries with back-off
and publishes nothing meanwhile (fail closed): the dataflow waits, the backlog is logged, and
``ctrguard_figures_held_back`` (:mod:`ctrguard.metrics`) says how many figures wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ctrguard import metrics, probes
from ctrguard.config import Settings
from ctrguard.errors import RedisUnavailable
from ctrguard.records import WindowDecision, decision_records
from ctrguard.sinks.kafka_out import (
    DeliveryTracker,
    flush_or_raise,
    make_producer,
    produce_json,
    produce_many,
)

log = logging.getLogger(__name__)

class ReleaseGate:
    """Writes flags, then figures. Pure orchestration over two injected writers.

    ``record(decisions)`` must be durable when it returns (raises RedisUnavailable if not);
    ``publish(decisions)`` sends figures and alerts.
    """

    def __init__(self, record: Callable[[list[WindowDecision]], None],
                 publish: Callable[[list[WindowDecision]], None], *,
                 backoff_s: float = 0.5, backoff_max_s: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep,
                 max_wait_s: float | None = None):
        self._record = record
        self._publish = publish
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._sleep = sleep
        self._max_wait_s = max_wait_s
        self.backlog = 0
        self.redis_failures = 0

    def release(self, decisions: list[WindowDecision]) -> None:
        if not decisions:
            return
        self.backlog = len(decisions)
        delay = self._backoff_s
        waited = 0.0
        while True:
            try:
                self._record(decisions)
                break
            except RedisUnavailable as exc:
                self.redis_failures += 1
                if self._max_wait_s is not None and waited >= self._max_wait_s:
                    raise
                log.warning("redis unavailable, %d window decisions held back (not published): %s;"
                            " retrying in %.1fs", len(decisions), exc, delay)
                self._sleep(delay)
                waited += delay
                delay = min(delay * 2, self._backoff_max_s)
        if self.redis_failures:
            log.info("redis is back; releasing %d held window decisions", len(decisions))
            self.redis_failures = 0
        self._publish(decisions)
        self.backlog = 0


class ReleaseSink:
    """One worker's release: Redis flags and watermarks first, then figures and alerts to
    Kafka. Stateless between batches (Redis and the topics hold what was released, and a
    repeated batch writes the same keys), so it has nothing to snapshot; the flow wraps it
    in a Bytewax sink (:mod:`ctrguard.flows.ctr_flow`).
    """

    _expected: Any = None   # the planned changes (sinks/annotations.py), set in __init__
    _releasing: Any = ()    # the decisions being released (metrics: held back)

    def __init__(self, settings: Settings):
        from ctrguard.sinks.annotations import AnnotationCache
        from ctrguard.sinks.quarantine import QuarantineStore
        from ctrguard.sinks.redis_client import make_redis

        self._store = QuarantineStore(make_redis(settings.redis), settings.quarantine,
                                      settings.redis.key_prefix,
                                      window_length_s=settings.windows.length)
        from ctrguard.kafka_admin import message_limit

        self._figures = settings.kafka.topics.figures
        self._alerts = settings.kafka.topics.alerts
        self._tracker = DeliveryTracker()
        self._producer = make_producer(
            settings.kafka, self._tracker,
            max_message_bytes=message_limit(settings.kafka, [self._figures, self._alerts]))
        # Planned changes: expected alerts do not quarantine (read at a bounded rate).
        self._expected = AnnotationCache(settings, self._store.client)
        self._gate = ReleaseGate(self._record, self._publish,
                                 backoff_s=settings.redis.retry_backoff_s,
                                 backoff_max_s=settings.redis.retry_backoff_max_s)
        self._releasing: list[WindowDecision] = []
        metrics.track_release(self)

    def _record(self, decisions: list[WindowDecision]) -> None:
        try:
            self._store.record(decisions)
        except RedisUnavailable:
            metrics.REDIS_FAILURES.inc()
            raise

    def held_back(self) -> int:
        """Figures of the batch waiting for Redis (0 unless a write has failed); read by
        the metrics collector, from another thread, only when scraped."""
        gate = self._gate
        if gate is None or not gate.redis_failures:
            return 0
        return sum(len(d.figures) for d in list(self._releasing))

    def _publish(self, decisions: list[WindowDecision]) -> None:
        probes.point("release.after_redis")
        # Keys identify the record, so a replayed batch after a restart overwrites
        # (compacted topics) or is recognisable as a repeat, never a new figure.
        values, keys = decision_records(decisions)
        produce_many(self._producer, self._figures, values, keys)
        # Few decisions have alerts: find them without a loop body run for every decision.
        flagged = [d for d in decisions if d.alerts]
        for alert in [a for d in flagged for a in d.alerts]:
            produce_json(self._producer, self._alerts, alert.alert_id, alert)
        flush_or_raise(self._producer, self._tracker)
        probes.point("release.after_publish")
        metrics.released(len(values), flagged)

    def write_batch(self, items: list[Any]) -> None:
        """Items are window decisions or batches of them (the live flow sends one batch per
        shard and activation): all of them are released together, one Redis transaction
        and one Kafka flush for the call."""
        decisions: list[WindowDecision] = []
        for item in items:
            if type(item) is WindowDecision:
                decisions.append(item)
            else:
                decisions.extend(item)
        if self._expected is not None:
            decisions = self._expected.apply(decisions)
        self._releasing = decisions
        started = time.perf_counter()
        self._gate.release(decisions)
        metrics.RELEASE_SECONDS.observe(time.perf_counter() - started)
        self._releasing = []

    def close(self) -> None:
        self._producer.flush(30)
        # The gate holds this sink's bound methods (a reference cycle): without it,
        # the producer would live on until a garbage collection, reconnecting to a broker
        # that may be gone (librdkafka logs each attempt).
        self._gate = None  # type: ignore[assignment]


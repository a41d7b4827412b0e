"""What a running flow measures: Prometheus metrics, and the figures of the heartbeat line.

Every metric is updated per batch, per window, per snapshot or per release, never per event:
the counts come from what the steps already know about a whole batch (its length, the
excluded and dead-letter counts, the shard's counters before and after), and gauges are
read from the flow's objects only when Prometheus scrapes. The process's metrics live in
``prometheus_client``'s default registry (Bytewax's own ``/metrics`` reads the same one),
served by :mod:`ctrguard.health`.

Names follow Prometheus' advice: a ``ctrguard_`` prefix, the unit in the name
(``_seconds``, ``_messages``), ``_total`` on counters, base units (seconds since the epoch
for event times). ``source`` is the input (``impressions``, ``clicks``); ``topic`` and
``partition`` name a Kafka partition.

=============================================  =========  ==================================
metric                                         type       what
=============================================  =========  ==================================
ctrguard_events_total{source,outcome}          counter    consumed, counted, excluded,
                                                          duplicate, dead_lettered
ctrguard_events_excluded_total{source,reason}  counter    internal, bot_user_agent
ctrguard_events_dead_lettered_total            counter    by reason code (ctrguard.reasons)
{source,reason}
ctrguard_windows_closed_total                  counter    campaign windows decided
ctrguard_figures_published_total{status}       counter    figure records sent to Kafka
ctrguard_alerts_published_total{severity}      counter    alert records sent to Kafka
ctrguard_release_redis_failures_total          counter    failed flag writes (figures wait)
ctrguard_offset_commits_total{outcome}         counter    consumer-group commits (ok/failed)
ctrguard_slack_updates_total{outcome}          counter    submitted, delivered, duplicate,
                                                          failed (Slack outbox)
ctrguard_slack_retries_total{reason}           counter    error, rate_limited
ctrguard_watermark_seconds                     gauge      event time up to which every
                                                          window is final (lowest shard)
ctrguard_source_event_time_seconds             gauge      frontier of each input partition
{topic,partition}                                         (event_time.frontier_quorum-th
                                                          latest time of its batches)
ctrguard_event_time_lag_seconds                gauge      wall clock minus that, at scrape
{topic,partition}
ctrguard_consumer_lag_messages                 gauge      high watermark minus position
{topic,partition}
ctrguard_figures_held_back                     gauge      figures waiting for Redis
ctrguard_incidents_open                        gauge      open Slack incidents (Redis)
ctrguard_quarantined_windows                   gauge      flags in state quarantined (Redis)
ctrguard_slack_outbox_messages                 gauge      Slack updates waiting (Redis)
ctrguard_slack_deadletter_messages             gauge      Slack updates given up (Redis)
ctrguard_redis_up, ctrguard_kafka_up           gauge      last probe reached it (1) or not
ctrguard_snapshot_duration_seconds             histogram  pickling one shard's state
ctrguard_window_close_duration_seconds         histogram  closing one window in one shard:
                                                          series counts, detectors, figures
ctrguard_release_duration_seconds              histogram  one release: flags to Redis, then
                                                          figures and alerts to Kafka
ctrguard_build_info{version,detector_core}     gauge      1
=============================================  =========  ==================================

The Redis-side gauges (incidents, quarantined windows, Slack outbox) describe the whole
deployment: every process reports the same value, so aggregate them with ``max``.

>>> before = REGISTRY.get_sample_value("ctrguard_events_total",
...                                    {"source": "clicks", "outcome": "consumed"})
>>> prepared(CLICK, "ctr.clicks", 0, 500, {}, [], 1767225600000)
>>> REGISTRY.get_sample_value("ctrguard_events_total",
...                           {"source": "clicks", "outcome": "consumed"}) - before
500.0
>>> FLOW.frontiers[("ctr.clicks", 0)] >= 1767225600000, consumed_total() >= 500
(True, True)
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram, Info, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ctrguard.events import CLICK, IMPRESSION
from ctrguard.reasons import LATE, REASON_CODES, reason_code

# A ``_created`` series per counter doubles the output and no dashboard here reads it.
disable_created_metrics()

#: ``source`` label of each kind of input.
SOURCES = {IMPRESSION: "impressions", CLICK: "clicks"}
OUTCOMES = ("consumed", "counted", "excluded", "duplicate", "dead_lettered")
EXCLUSION_REASONS = ("internal", "bot_user_agent")

EVENTS = Counter("ctrguard_events_total", "Input events by source and outcome: consumed "
                 "from Kafka, then counted, excluded, duplicate or dead-lettered.",
                 ["source", "outcome"])
EXCLUDED = Counter("ctrguard_events_excluded_total",
                   "Events excluded from the counts (internal, bot traffic).",
                   ["source", "reason"])
DEAD_LETTERED = Counter("ctrguard_events_dead_lettered_total",
                        "Events sent to the dead-letter topic, by reason code (the "
                        "ctrguard-reason-code header).", ["source", "reason"])
WINDOWS_CLOSED = Counter("ctrguard_windows_closed_total",
                         "Campaign windows closed and decided (one per campaign and window).")
FIGURES = Counter("ctrguard_figures_published_total",
                  "Figure records published to Kafka, by status.", ["status"])
ALERTS = Counter("ctrguard_alerts_published_total",
                 "Alert records published to Kafka, by severity.", ["severity"])
REDIS_FAILURES = Counter("ctrguard_release_redis_failures_total",
                         "Failed attempts to write quarantine flags (figures wait meanwhile).")
COMMITS = Counter("ctrguard_offset_commits_total",
                  "Offset commits of the consumer group, by outcome.", ["outcome"])
SNAPSHOT_SECONDS = Histogram(
    "ctrguard_snapshot_duration_seconds", "Time to snapshot (pickle) one shard's state.",
    buckets=(0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
WINDOW_CLOSE_SECONDS = Histogram(
    "ctrguard_window_close_duration_seconds",
    "Time to close one event-time window in one shard: series counts, detectors, decisions.",
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
RELEASE_SECONDS = Histogram(
    "ctrguard_release_duration_seconds",
    "Time to release one batch of decisions: flags to Redis, then records to Kafka "
    "(including any wait for Redis).",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
BUILD = Info("ctrguard_build", "ctrguard version and detector core of this process.")

# Every series a dashboard or an alert asks for exists from the start, at 0.
for _src in SOURCES.values():
    for _o in OUTCOMES:
        EVENTS.labels(_src, _o)
    for _r in EXCLUSION_REASONS:
        EXCLUDED.labels(_src, _r)
    for _r in REASON_CODES:
        DEAD_LETTERED.labels(_src, _r)
for _s in ("ok", "quarantined"):
    FIGURES.labels(_s)
for _s in ("info", "warning", "critical"):
    ALERTS.labels(_s)
for _s in ("ok", "failed"):
    COMMITS.labels(_s)


class FlowState:
    """What this process's flow knows now, read by the collector, ``/readyz`` and the
    heartbeat. Written by the Bytewax worker threads (each to its own keys) and by the
    probe thread; plain assignments, atomic under the GIL."""

    def __init__(self) -> None:
        self.notifier_stats: list[Any] = []     # SlackNotifier.stats, kept for the totals
        self.releases: weakref.WeakSet[Any] = weakref.WeakSet()
        self.sources: weakref.WeakSet[SourceMeter] = weakref.WeakSet()
        self.probe: dict[str, Any] = {}
        #: Latest offset of each input partition, as the probe last asked the cluster.
        self.latest: dict[tuple[str, int], int] = {}
        self.reset()

    def reset(self) -> None:
        """Forget the gauges of an earlier flow in this process (counters stay)."""
        self.watermarks: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self.frontiers: dict[tuple[str, int], int] = {}
        self.latest.clear()
        now = time.monotonic()
        self.last_event = 0.0        # monotonic time of the last batch with events
        self.last_move = now         # ... of the last advance of a shard's watermark

    def held_back(self) -> int:
        """Figures waiting in release sinks because Redis cannot be written."""
        return sum(part.held_back() for part in list(self.releases))

    def lags(self) -> dict[tuple[str, int], int]:
        """Consumer lag of every input partition this process reads (and knows)."""
        out = {}
        for meter in list(self.sources):
            lag = meter.lag()
            if lag is not None:
                out[meter.key] = lag
        return out

    def summary(self) -> dict[str, Any]:
        wms = list(self.watermarks.values())  # one per live shard
        fronts = list(self.frontiers.values())
        lags = self.lags()
        return {"consumed": consumed_total(),
                "watermark_ms": min(wms) if wms else None,
                "frontier_ms": min(fronts) if fronts else None,
                "consumer_lag": sum(lags.values()) if lags else None,
                "held_back": self.held_back(),
                "slack_outbox": self.probe.get("slack_outbox_messages"),
                "incidents_open": self.probe.get("incidents_open"),
                "quarantined_windows": self.probe.get("quarantined_windows")}


FLOW = FlowState()


# --------------------------------------------------------------------------- hooks


def prepared(source: int, topic: str, partition: int, n: int, excluded: dict[str, int],
             dead: Iterable[Any], frontier_ms: int | None) -> None:
    """One raw batch parsed: ``n`` messages consumed, of which ``excluded`` (by reason) and
    ``dead`` (dead letters) will not be counted."""
    src = SOURCES.get(source, "impressions")
    if n:
        EVENTS.labels(src, "consumed").inc(n)
        FLOW.last_event = time.monotonic()
    if excluded:
        total = 0
        for reason, k in excluded.items():
            EXCLUDED.labels(src, reason).inc(k)
            total += k
        EVENTS.labels(src, "excluded").inc(total)
    if dead:
        by_reason: dict[str, int] = {}
        for d in dead:
            reason = reason_code(d.stage, d.code)
            by_reason[reason] = by_reason.get(reason, 0) + 1
        for reason, k in by_reason.items():
            DEAD_LETTERED.labels(src, reason).inc(k)
        EVENTS.labels(src, "dead_lettered").inc(sum(by_reason.values()))
    if frontier_ms is not None:
        key = (topic, partition)
        if frontier_ms > FLOW.frontiers.get(key, -1):
            FLOW.frontiers[key] = frontier_ms


def consumed_total() -> int:
    """Events consumed by this process so far (every source)."""
    return int(sum(sample.value for family in EVENTS.collect() for sample in family.samples
                   if sample.labels.get("outcome") == "consumed"))


class ShardMeter:
    """Counts of one shard, taken from its :class:`~ctrguard.flows.engine.ShardStats` before and
    after each chunk (so they can be told apart by source) and pushed once per batch."""

    __slots__ = ("_pending", "_counted", "_duplicate", "_late", "_late_all", "__weakref__")

    def __init__(self) -> None:
        self._pending = [0, 0, 0, 0, 0, 0]  # counted, duplicate, late: impressions, clicks
        kinds = (IMPRESSION, CLICK)  # the order of _pending's halves
        self._counted = [EVENTS.labels(SOURCES[k], "counted") for k in kinds]
        self._duplicate = [EVENTS.labels(SOURCES[k], "duplicate") for k in kinds]
        self._late = [DEAD_LETTERED.labels(SOURCES[k], LATE) for k in kinds]
        self._late_all = [EVENTS.labels(SOURCES[k], "dead_lettered") for k in kinds]

    def ingest(self, state: Any, chunk: Any) -> list[Any]:
        """``state.ingest(chunk)``, noting what it counted, found duplicate or late."""
        stats = state.stats
        counted, dup, late = stats.events, stats.duplicates, stats.late
        out = state.ingest(chunk)
        if stats.events != counted or stats.duplicates != dup or stats.late != late:
            i = 3 if chunk.kind == CLICK else 0
            p = self._pending
            p[i] += stats.events - counted
            p[i + 1] += stats.duplicates - dup
            p[i + 2] += stats.late - late
        return out

    def batch_done(self, state: Any) -> None:
        """Push the batch's counts and the shard's watermark."""
        p = self._pending
        if any(p):
            for k in (0, 1):
                counted, dup, late = p[3 * k:3 * k + 3]
                if counted:
                    self._counted[k].inc(counted)
                if dup:
                    self._duplicate[k].inc(dup)
                if late:
                    self._late[k].inc(late)
                    self._late_all[k].inc(late)
            p[:] = [0, 0, 0, 0, 0, 0]
        wm = state.watermark_ms()
        if wm is not None and wm > FLOW.watermarks.get(self, wm - 1):
            FLOW.watermarks[self] = wm
            FLOW.last_move = time.monotonic()

    def windows_closed(self, n: int) -> None:
        if n:
            WINDOWS_CLOSED.inc(n)


def window_closed(seconds: float) -> None:
    """A shard closed one window in ``seconds`` (the engine's ``window_timer``)."""
    WINDOW_CLOSE_SECONDS.observe(seconds)


def released(figures: int, flagged: Iterable[Any], seconds: float | None = None) -> None:
    """A release published ``figures`` figure records; ``flagged``: its decisions that
    have alerts (the only ones with quarantined figures)."""
    quarantined = 0
    for d in flagged:
        for a in d.alerts:
            ALERTS.labels(a.severity).inc()
        quarantined += sum(1 for f in d.figures if f.status == "quarantined")
    if quarantined:
        FIGURES.labels("quarantined").inc(quarantined)
    if figures > quarantined:
        FIGURES.labels("ok").inc(figures - quarantined)
    if seconds is not None:
        RELEASE_SECONDS.observe(seconds)


#: librdkafka's logical offset "the end of the partition" (confluent_kafka.OFFSET_END).
_OFFSET_END = -1


class SourceMeter:
    """Consumer lag of one input partition, from offsets: the high watermark minus the next
    offset to read, computed when Prometheus scrapes (so it keeps growing while a worker
    waits, e.g. for Redis, and does not poll). The high watermark is the larger of the
    consumer's cached one (from its last fetch, no request) and the one the health probe
    asked the cluster for (``FLOW.latest``).

    tansu (the development broker) reports a high watermark up to a producer batch short
    of the log's end, so against it the lag can read low, never high; it is clamped at 0.
    """

    __slots__ = ("_consumer", "_tp", "key", "offset", "_final", "__weakref__")

    def __init__(self, consumer: Any, topic: str, partition: int):
        from confluent_kafka import TopicPartition

        self._consumer = consumer
        self._tp = TopicPartition(topic, partition)
        self.key = (topic, partition)
        self.offset = -1
        self._final: int | None = None
        FLOW.sources.add(self)

    def poll(self, offset: int, final: bool = False) -> None:
        """Called on every poll with the next offset to read (negative: none read yet), and
        with ``final`` when the partition closes (its consumer is not asked again)."""
        self.offset = offset
        if final:
            self._final = self.lag()
            self._consumer = None

    def lag(self) -> int | None:
        consumer = self._consumer
        if consumer is None:
            return self._final
        offset = start = self.offset
        try:
            low, high = consumer.get_watermark_offsets(self._tp, cached=True)
            if offset < 0:
                offset = consumer.position([self._tp])[0].offset
        except Exception:  # noqa: BLE001 - closed meanwhile, or the broker is gone
            return None
        high = max(high, FLOW.latest.get(self.key, -1))
        if high < 0:
            return None
        if offset < 0:
            # Nothing read yet (a partition that has had no message, or not polled since
            # a restart): from its start, what it holds is unread; from its end, nothing.
            if start == _OFFSET_END:
                return 0
            if low < 0:
                low = 0 if high == 0 else -1
            if low < 0:
                return None
            offset = low
        return max(0, high - offset)


def on_commit(err: Any, partitions: list[Any]) -> None:
    """librdkafka's ``on_commit`` callback: count offset commits by outcome."""
    failed = err is not None or any(p.error is not None for p in partitions or ())
    COMMITS.labels("failed" if failed else "ok").inc()


def track_release(part: Any) -> None:
    """Report ``part.held_back()`` (figures waiting for Redis) while ``part`` lives."""
    FLOW.releases.add(part)


def track_slack(stats: Any) -> None:
    """Report a :class:`~ctrguard.sinks.slack.NotifierStats` in the Slack counters (for good: the
    counters must not go down when a notifier is closed)."""
    FLOW.notifier_stats.append(stats)


# --------------------------------------------------------------------------- collector


class _FlowCollector:
    """Gauges read at scrape time from :data:`FLOW`, and the Slack counters summed over
    every notifier of the process."""

    _lock = threading.Lock()

    def describe(self) -> Iterator[Any]:
        return iter(self._families())

    def collect(self) -> Iterator[Any]:
        with self._lock:
            return iter(self._families(fill=True))

    def _families(self, fill: bool = False) -> list[Any]:
        wm = GaugeMetricFamily("ctrguard_watermark_seconds", "Event time (seconds since "
                               "the epoch) up to which every window of this process's "
                               "shards is final (the lowest shard watermark).")
        front = GaugeMetricFamily("ctrguard_source_event_time_seconds", "Frontier of the "
                                  "input partition: the frontier_quorum-th latest event "
                                  "time of a batch read (seconds since the epoch).",
                                  labels=["topic", "partition"])
        lag_t = GaugeMetricFamily("ctrguard_event_time_lag_seconds", "Wall clock minus "
                                  "the input partition's frontier.",
                                  labels=["topic", "partition"])
        lag_m = GaugeMetricFamily("ctrguard_consumer_lag_messages", "High watermark minus "
                                  "the next offset to read, per input partition.",
                                  labels=["topic", "partition"])
        held = GaugeMetricFamily("ctrguard_figures_held_back",
                                 "Figures waiting to be released while Redis cannot be "
                                 "written.")
        probe = {name: GaugeMetricFamily(name, text) for name, text in (
            ("ctrguard_incidents_open", "Open Slack incidents (whole deployment, Redis)."),
            ("ctrguard_quarantined_windows",
             "Series-windows whose flag is quarantined (whole deployment, Redis)."),
            ("ctrguard_slack_outbox_messages", "Slack updates waiting in the outbox."),
            ("ctrguard_slack_deadletter_messages",
             "Slack updates given up after retries (kept in Redis)."),
            ("ctrguard_redis_up", "1 if the last probe reached Redis."),
            ("ctrguard_kafka_up", "1 if the last probe reached the Kafka cluster."))}
        updates = CounterMetricFamily("ctrguard_slack_updates", "Slack incident updates "
                                      "by outcome.", labels=["outcome"])
        retries = CounterMetricFamily("ctrguard_slack_retries", "Slack calls retried, by "
                                      "reason.", labels=["reason"])
        if fill:
            now_s = time.time()
            wms = list(FLOW.watermarks.values())
            if wms:
                wm.add_metric([], min(wms) / 1000)
            for (topic, part), ms in sorted(FLOW.frontiers.items()):
                front.add_metric([topic, str(part)], ms / 1000)
                lag_t.add_metric([topic, str(part)], max(0.0, now_s - ms / 1000))
            for (topic, part), n in sorted(FLOW.lags().items()):
                lag_m.add_metric([topic, str(part)], n)
            held.add_metric([], FLOW.held_back())
            for name, fam in probe.items():
                value = FLOW.probe.get(name.removeprefix("ctrguard_"))
                if value is not None:
                    fam.add_metric([], float(value))
            totals = dict.fromkeys(("submitted", "delivered", "skipped_duplicate",
                                    "dead_lettered", "retries", "rate_limited"), 0)
            for st in list(FLOW.notifier_stats):
                for k in totals:
                    totals[k] += getattr(st, k, 0)
            for outcome, field in (("submitted", "submitted"), ("delivered", "delivered"),
                                   ("duplicate", "skipped_duplicate"),
                                   ("failed", "dead_lettered")):
                updates.add_metric([outcome], totals[field])
            retries.add_metric(["error"], totals["retries"])
            retries.add_metric(["rate_limited"], totals["rate_limited"])
        return [wm, front, lag_t, lag_m, held, *probe.values(), updates, retries]


_COLLECTOR = _FlowCollector()
REGISTRY.register(_COLLECTOR)  # type: ignore[arg-type]


def set_build_info() -> None:
    from ctrguard import __version__, native

    BUILD.info({"version": __version__, "detector_core": native.status()})

"""Kafka input that hands the dataflow whole batches, not single messages.

Each topic partition is a Bytewax source partition. ``next_batch`` returns at most one
:class:`~ctrguard.flows.engine.RawBatch` (the values of up to ``batch_size`` messages), so the
dataflow pays its per-item cost once per batch.

A partition claims to be idle (to hold back no watermark) only on evidence: its position
has reached the high watermark (librdkafka's, cached from the last fetch: no broker round
trip) and no message has come back, continuously for ``event_time.idle_timeout`` of wall
clock, polled without a gap longer than a quarter of it (a gap: the process was stopped,
its sink blocked; the cached high watermark may be stale then, so the count starts again).
An empty poll alone proves nothing: the next fetch may be in flight. The claim carries the
time it was made and is renewed every quarter of the timeout while it holds; a message, or
the position falling behind the high watermark, withdraws it (see
:meth:`ctrguard.flows.engine.ShardState.idle_sources` for how shards honour claims). With
``tail: false`` the partition finishes at its end instead (drain mode: demo, tests,
backfills): that claim is for good.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from ctrguard import metrics
from ctrguard.config import KafkaSettings
from ctrguard.errors import KafkaUnavailable
from ctrguard.events import CLICK, IMPRESSION
from ctrguard.flows.engine import RawBatch

log = logging.getLogger(__name__)

#: When to poll again after an empty poll: soon while the partition has more to read (a
#: fetch is in flight), less often once it is read to its end (tailing).
_FETCH_POLL = timedelta(milliseconds=2)

#: librdkafka settings of the consumers (the settings file's ``kafka.client`` overrides
#: them). Once a partition's prefetch queue holds ``queued.min.messages`` (100,000 by
#: default), librdkafka stops fetching for ``fetch.queue.backoff.ms``, 1 s by default: a
#: flow that takes 100,000 events in less than that then finds the queue empty until the
#: next fetch arrives (measured: 758 of 964 polls empty in a 1M-event run, against 97 of
#: 299 with 10 ms, and 90k against 103k events/s).
CONSUMER_TUNING = {
    "fetch.wait.max.ms": 50,
    "queued.max.messages.kbytes": 65536,
    "fetch.queue.backoff.ms": 10,
    "log.connection.close": False,
}
_IDLE_POLL = timedelta(milliseconds=10)
#: A leader connection idle longer than this (no fetch answer; they come every
#: ``fetch.wait.max.ms`` at most when there is nothing to fetch) is not evidence of being
#: at the log end.
_RX_IDLE_US = 1_000_000
_ERROR = Message.error
_VALUE = Message.value
_OFFSET = Message.offset


def list_partitions(kafka: KafkaSettings, timeout: float = 15.0) -> list[tuple[str, int]]:
    """All (topic, partition) pairs of the two input topics, sorted."""
    admin = AdminClient(kafka.client_config())
    topics = [kafka.topics.impressions, kafka.topics.clicks]
    try:
        meta = admin.list_topics(timeout=timeout)
    except Exception as exc:  # confluent_kafka raises KafkaException
        raise KafkaUnavailable(f"cannot list topics on {','.join(kafka.brokers)}: {exc}") from None
    parts = []
    for topic in topics:
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            raise KafkaUnavailable(f"input topic {topic!r} does not exist", retryable=False)
        parts.extend((topic, p) for p in tmeta.partitions)
    return sorted(parts)


def source_id(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def commit_offset(consumer: Consumer, topic: str, partition: int, offset: int,
                  committed: int | None) -> int | None:
    """Commit ``offset`` (the next one to read) for the consumer group, without waiting,
    unless it is already committed; return the offset now committed (or on its way).

    Called at every snapshot (epoch end), so the group's offsets follow what the flow has
    read, for lag tools (``kafka-consumer-groups --describe``, Burrow, exporters). A run
    resumes from Bytewax recovery, not from these. The outcome is counted in
    ``ctrguard_offset_commits_total`` (the consumer's ``on_commit`` callback); an offset
    whose commit failed there is committed again only once the partition reads on.
    """
    try:
        if offset < 0:  # nothing read yet: where the consumer stands (an empty partition)
            offset = consumer.position([TopicPartition(topic, partition)])[0].offset
        if offset < 0 or offset == committed:
            return committed
        consumer.commit(offsets=[TopicPartition(topic, partition, offset)], asynchronous=True)
    except KafkaException as exc:
        metrics.COMMITS.labels("failed").inc()
        log.warning("could not commit offset %d of %s[%d] for lag tools: %s", offset, topic,
                    partition, exc)
        return committed
    return offset


class IdleClaims:
    """When a partition at its end may claim to be idle (see the module's docstring): pure,
    fed the wall-clock time of each poll and whether the partition was at its end then.

    ``poll`` returns ``"claim"`` (send a claim made now), ``"withdraw"`` (a claim was out
    and no longer holds) or ``None``.

    >>> c = IdleClaims(timeout_ms=1000)
    >>> [c.poll(t, True) for t in (0, 200, 400, 600, 800, 1000, 1100, 1250)]
    [None, None, None, None, None, 'claim', None, 'claim']
    >>> c.poll(1300, False), c.poll(1310, True)
    ('withdraw', None)
    >>> [c.poll(t, True) for t in (2400, 2600, 2800, 3000, 3200, 3400)]  # a gap: again
    [None, None, None, None, None, 'claim']
    """

    __slots__ = ("timeout_ms", "gap_ms", "_last_poll", "_since", "_claimed")

    def __init__(self, timeout_ms: int):
        self.timeout_ms = timeout_ms
        self.gap_ms = max(1, timeout_ms // 4)
        self._last_poll: int | None = None
        self._since: int | None = None      # first poll at the end, in this unbroken run
        self._claimed: int | None = None    # when the claim now out was last renewed

    def poll(self, now_ms: int, at_end: bool) -> str | None:
        last, self._last_poll = self._last_poll, now_ms
        if not at_end or last is None or now_ms - last > self.gap_ms:
            self._since = now_ms if at_end else None
            withdrawn, self._claimed = self._claimed is not None, None
            return "withdraw" if withdrawn else None
        if self._since is None:
            self._since = now_ms
        if now_ms - self._since < self.timeout_ms:
            return None
        if self._claimed is not None and now_ms - self._claimed < self.gap_ms:
            return None
        self._claimed = now_ms
        return "claim"

    def reset(self) -> bool:
        """A message came back: not at the end. Whether a claim was out."""
        self._since = None
        withdrawn, self._claimed = self._claimed is not None, None
        return withdrawn


class _BatchPartition(StatefulSourcePartition[RawBatch, int]):
    def __init__(self, conf: dict[str, Any], topic: str, partition: int, kind: int,
                 offset: int, batch_size: int, tail: bool, idle_timeout_ms: int = 5000):
        if conf.get("statistics.interval.ms"):
            conf = {**conf, "stats_cb": self.on_stats}
        self._consumer = Consumer(conf)
        self._tp = TopicPartition(topic, partition)
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        self._topic = topic
        self._partition = partition
        self._kind = kind
        self._offset = offset
        self._batch_size = batch_size
        self._tail = tail
        self._finished = False
        self._claims = IdleClaims(idle_timeout_ms)
        self._awake: datetime | None = None
        # When librdkafka's statistics last said the partition is being fetched from a
        # connected leader (monotonic seconds), and how often they come.
        self._fetching_at: float | None = None
        self._stats_s = conf.get("statistics.interval.ms", 0) / 1000
        self._committed: int | None = None
        self._meter = metrics.SourceMeter(self._consumer, topic, partition)

    def on_stats(self, text: str) -> None:
        """librdkafka's statistics (``stats_cb``, served within ``consume``): note whether
        the partition's leader is connected and answering fetches. Without that, the
        cached high watermark is stale (a broker restarting, a network fault) and being
        at it proves nothing."""
        try:
            stats = msgspec.json.decode(text)
            part = stats["topics"][self._topic]["partitions"][str(self._partition)]
            leader = part["leader"]
            ok = leader >= 0 and part["fetch_state"] == "active" and any(
                b.get("nodeid") == leader and b.get("state") == "UP"
                and 0 <= b.get("rxidle", -1) <= _RX_IDLE_US for b in stats["brokers"].values())
        except (KeyError, TypeError, ValueError, AttributeError):
            ok = False
        self._fetching_at = time.monotonic() if ok else None

    def _at_end(self) -> bool:
        """Whether the position has reached the high watermark of the last fetch (cached
        by librdkafka: no request to the broker)."""
        fetching = self._fetching_at
        if fetching is None or time.monotonic() - fetching > 2.5 * self._stats_s:
            return False  # not known to be fetching now: the cached watermark may be stale
        low, high = self._consumer.get_watermark_offsets(self._tp, cached=True)
        if high < 0:
            return False  # no fetch answered yet
        position = self._offset
        if position < 0:  # not resolved yet: librdkafka's
            position = self._consumer.position([self._tp])[0].offset
            if position < 0:
                return low >= 0 and low >= high  # an empty partition
        return position >= high

    def next_batch(self) -> list[RawBatch]:
        if self._finished:
            raise StopIteration()
        self._meter.poll(self._offset)
        msgs = self._consumer.consume(self._batch_size, 0.001)
        reached_end = False
        if msgs and not any(map(_ERROR, msgs)):
            # The common case, at C speed: data messages only.
            values: list[bytes] = list(map(_VALUE, msgs))
            offsets: list[int] = list(map(_OFFSET, msgs))
        else:
            values, offsets = [], []
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        reached_end = True
                        continue
                    if err.fatal() or not err.retriable():
                        raise KafkaUnavailable(f"consuming {self._topic}[{self._partition}]: "
                                               f"{err}", retryable=False)
                    log.warning("kafka consume error on %s[%d]: %s", self._topic,
                                self._partition, err)
                    continue
                values.append(msg.value())
                offsets.append(msg.offset())
        if offsets:
            self._offset = offsets[-1] + 1
        if not self._tail:
            return self._drain_batch(values, offsets, reached_end)
        now = datetime.now(UTC)
        now_ms = int(now.timestamp() * 1000)
        if values:  # a message came back: not idle (whatever the high watermark says)
            self._claims.reset()
            self._awake = None
            return [RawBatch(self._topic, self._partition, self._kind, values, offsets,
                             False, now_ms)]
        at_end = reached_end or self._at_end()
        self._awake = now + (_IDLE_POLL if at_end else _FETCH_POLL)
        verdict = self._claims.poll(now_ms, at_end)
        if verdict is None:
            return []
        return [RawBatch(self._topic, self._partition, self._kind, [], [],
                         verdict == "claim", now_ms)]

    def _drain_batch(self, values: list[bytes], offsets: list[int],
                     reached_end: bool) -> list[RawBatch]:
        """Drain mode: the partition finishes at its end, and says so for good."""
        if reached_end:
            self._finished = True
        self._awake = None if values or reached_end else datetime.now(UTC) + _FETCH_POLL
        if values or reached_end:
            return [RawBatch(self._topic, self._partition, self._kind, values, offsets,
                             reached_end)]
        return []

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        self._committed = commit_offset(self._consumer, self._topic, self._partition,
                                        self._offset, self._committed)
        return self._offset

    def close(self) -> None:
        self._meter.poll(self._offset, final=True)
        # close() waits for the commits still in flight (librdkafka's group terminate).
        self._committed = commit_offset(self._consumer, self._topic, self._partition,
                                        self._offset, self._committed)
        self._consumer.close()


class KafkaBatchSource(FixedPartitionedSource[RawBatch, int]):
    """Reads the impressions and clicks topics; one RawBatch per poll per partition."""

    def __init__(self, kafka: KafkaSettings, partitions: list[tuple[str, int]] | None = None,
                 idle_timeout_s: int = 5):
        self.kafka = kafka
        self._partitions = partitions
        self.idle_timeout_s = idle_timeout_s

    def list_parts(self) -> list[str]:
        parts = self._partitions if self._partitions is not None else list_partitions(self.kafka)
        return [source_id(t, p) for t, p in parts]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _BatchPartition:
        topic, _, part = for_part.rpartition(":")
        kind = CLICK if topic == self.kafka.topics.clicks else IMPRESSION
        start = OFFSET_BEGINNING if self.kafka.starting_offset == "beginning" else OFFSET_END
        conf = {
            # Offsets live in Bytewax recovery; the group's are committed for lag tools.
            "group.id": self.kafka.group_id,
            "on_commit": metrics.on_commit,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            **CONSUMER_TUNING,
        }
        conf.update(self.kafka.client_config())
        if self.kafka.tail:  # idle claims need evidence that the partition is fetched
            conf["statistics.interval.ms"] = max(100, self.idle_timeout_s * 1000 // 4)
        return _BatchPartition(conf, topic, int(part), kind,
                               resume_state if resume_state is not None else start,
                               self.kafka.batch_size, self.kafka.tail,
                               self.idle_timeout_s * 1000)

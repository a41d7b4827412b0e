"""Kafka outputs: figures, alerts and dead letters.

Dead letters keep the original message bytes as the record value, untouched, so nothing is
lost; the reason and origin travel in headers (``ctrguard-reason``, ``ctrguard-stage``,
``ctrguard-source-topic``, ``ctrguard-source-partition``, ``ctrguard-source-offset``).

A restart re-reads input that an earlier run already dead-lettered (from the last Bytewax
snapshot, or from the beginning without recovery). So that the dead-letter topic holds each
rejected message once, a new sink partition first reads the newest
``DEDUP_SCAN_RECORDS`` records of every dead-letter partition and then skips any dead
letter whose (source topic, partition, offset, stage, CRC of the bytes) is among them.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections import deque
from dataclasses import replace
from itertools import repeat
from operator import length_hint
from typing import Any

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from ctrguard import faults
from ctrguard.config import KafkaSettings
from ctrguard.errors import KafkaUnavailable
from flows.engine import DeadLetter

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 30.0
#: Newest records per dead-letter partition read at start to recognise earlier runs' dead
#: letters (about 100 bytes of memory each). Replays reaching further back may repeat some.
DEDUP_SCAN_RECORDS = 100_000


class DeliveryTracker:
    """Collects delivery failures reported by librdkafka callbacks."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def __call__(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failures.append(f"{msg.topic()}: {err}")


def make_producer(kafka: KafkaSettings, tracker: DeliveryTracker | None = None,
                  **overrides: Any) -> Producer:
    """A producer with our settings; ``tracker`` collects every delivery failure (one
    callback for the producer, not an argument and a reference per message)."""
    conf: dict[str, Any] = {
        "linger.ms": kafka.producer_linger_ms,
        "acks": kafka.producer_acks,
        "enable.idempotence": kafka.producer_acks == "all",
        "compression.type": "none",
        "message.timeout.ms": 120_000,
        "queue.buffering.max.messages": 1_000_000,
        # Only failures are reported (DeliveryTracker records nothing else): no Python
        # callback per delivered figure.
        "delivery.report.only.error": True,
        # Brokers close idle connections; librdkafka reconnects by itself, so don't log it.
        "log.connection.close": False,
    }
    if tracker is not None:
        conf["on_delivery"] = tracker
    conf.update(kafka.client_config())
    conf.update(overrides)
    return Producer(conf)


def flush_or_raise(producer: Producer, tracker: DeliveryTracker) -> None:
    remaining = producer.flush(FLUSH_TIMEOUT_S)
    if remaining:
        raise KafkaUnavailable(f"{remaining} messages not delivered within {FLUSH_TIMEOUT_S}s")
    if tracker.failures:
        failures, tracker.failures = tracker.failures, []
        raise KafkaUnavailable(f"{len(failures)} messages failed: {failures[0]}")


def produce(producer: Producer, topic: str, value: bytes, key: bytes | None,
            headers: list[tuple[str, bytes]] | None = None) -> None:
    """Produce one record, waiting while librdkafka's local queue is full. Delivery
    failures go to the producer's tracker (:func:`make_producer`)."""
    while True:
        try:
            if headers is None:
                producer.produce(topic, value, key)
            else:
                producer.produce(topic, value, key, headers=headers)
            return
        except BufferError:
            producer.poll(0.1)  # local queue full: let deliveries drain


def produce_json(producer: Producer, topic: str, key: str, obj: Any) -> None:
    """Produce ``obj`` (a dict or a record dataclass, which orjson serialises natively)."""
    produce(producer, topic, orjson.dumps(obj), key.encode("utf-8", "surrogatepass"))


def produce_many(producer: Producer, topic: str, values: list[bytes],
                 keys: list[bytes]) -> None:
    """Produce records in order (the common path: one call each, iterated in C, no retry
    wrapper until librdkafka's local queue is full)."""
    if len(values) != len(keys):
        _produce_each(producer, topic, values, keys)  # produces the pairs, then raises
        return
    pending = iter(values)
    try:
        deque(map(producer.produce, repeat(topic), pending, keys), maxlen=0)
    except BufferError:
        # map took the value it failed on: the record that did not fit is this one.
        failed = len(values) - length_hint(pending) - 1
        for value, key in zip(values[failed:], keys[failed:], strict=True):
            produce(producer, topic, value, key)


def _produce_each(producer: Producer, topic: str, values: list[bytes],
                  keys: list[bytes]) -> None:
    """One Python call per record (lists of different lengths: the pairs, then ValueError)."""
    send = producer.produce
    for i, (value, key) in enumerate(zip(values, keys, strict=True)):
        try:
            send(topic, value, key)
        except BufferError:
            for value, key in zip(values[i:], keys[i:], strict=True):
                produce(producer, topic, value, key)
            return


def dead_letter_headers(d: DeadLetter) -> list[tuple[str, bytes]]:
    return [
        ("ctrguard-reason", d.reason.encode("utf-8", "replace")),
        ("ctrguard-stage", d.stage.encode()),
        ("ctrguard-source-topic", d.topic.encode("utf-8", "replace")),
        ("ctrguard-source-partition", str(d.partition).encode()),
        ("ctrguard-source-offset", str(d.offset).encode()),
    ]


DeadLetterKey = tuple[str, int, int, str, int]


def dead_letter_key(d: DeadLetter) -> DeadLetterKey:
    """What identifies a dead letter across runs: its origin, stage and content."""
    return (d.topic, d.partition, d.offset, d.stage, zlib.crc32(d.raw))


def _key_of_record(headers: list[tuple[str, bytes]] | None, value: bytes | None
                   ) -> DeadLetterKey | None:
    h = {k: v for k, v in headers or ()}
    try:
        return (h["ctrguard-source-topic"].decode("utf-8", "replace"),
                int(h["ctrguard-source-partition"]), int(h["ctrguard-source-offset"]),
                h["ctrguard-stage"].decode(), zlib.crc32(value or b""))
    except (KeyError, ValueError, AttributeError):
        return None  # not written by ctrguard


def written_dead_letters(kafka: KafkaSettings, *, max_records: int = DEDUP_SCAN_RECORDS,
                         timeout: float | None = None) -> set[DeadLetterKey]:
    """Keys of the newest ``max_records`` dead letters of every dead-letter partition.

    Reads to the end of each partition (exact on tansu, whose high watermarks can lag).
    Raises :class:`KafkaUnavailable` when the topic cannot be read in ``timeout`` seconds.
    """
    topic = kafka.topics.deadletter
    timeout = kafka.connect_timeout_s if timeout is None else timeout
    conf: dict[str, Any] = {"group.id": "ctrguard-deadletter-scan", "enable.auto.commit": False,
                            "enable.partition.eof": True, "fetch.wait.max.ms": 50,
                            "log.connection.close": False}
    conf.update(kafka.client_config())
    consumer = Consumer(conf)
    seen: set[DeadLetterKey] = set()
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return seen  # nothing written yet (the topic is created on first write)
        assignment = []
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                       timeout=timeout)
            # A high watermark that lags only makes us read a little more than asked.
            assignment.append(TopicPartition(topic, p, max(low, high - max_records)))
        consumer.assign(assignment)
        pending = {tp.partition for tp in assignment}
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise KafkaUnavailable(f"reading dead-letter topic {topic!r} took more than "
                                       f"{timeout}s")
            for msg in consumer.consume(1000, 0.1):
                err = msg.error()
                if err is None:
                    key = _key_of_record(msg.headers(), msg.value())
                    if key is not None:
                        seen.add(key)
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                elif err.fatal() or not err.retriable():
                    raise KafkaUnavailable(f"reading dead-letter topic {topic!r}: {err}")
    except KafkaUnavailable:
        raise
    except Exception as exc:  # KafkaException from metadata or watermark requests
        raise KafkaUnavailable(f"reading dead-letter topic {topic!r}: {exc}") from None
    finally:
        consumer.close()
    return seen


#: Offsets further apart than this are reached by seeking, not by reading through.
SEEK_GAP = 2_000


def read_messages(kafka: KafkaSettings, wanted: dict[tuple[str, int], set[int]], *,
                  timeout: float) -> dict[tuple[str, int, int], bytes]:
    """The values of the given offsets of the given topic partitions, as far as they can be
    read in ``timeout`` seconds (an offset no longer in the log is left out)."""
    conf: dict[str, Any] = {"group.id": "ctrguard-deadletter-fetch", "enable.auto.commit": False,
                            "enable.partition.eof": True, "fetch.wait.max.ms": 50,
                            "log.connection.close": False}
    conf.update(kafka.client_config())
    consumer = Consumer(conf)
    found: dict[tuple[str, int, int], bytes] = {}
    deadline = time.monotonic() + timeout
    try:
        for (topic, partition), offsets in wanted.items():
            targets = sorted(offsets)
            i = 0
            position: int | None = None
            while i < len(targets) and time.monotonic() < deadline:
                target = targets[i]
                if position is None or target < position or target - position > SEEK_GAP:
                    consumer.assign([TopicPartition(topic, partition, target)])
                    position = target
                for msg in consumer.consume(min(1000, targets[-1] - position + 1), 0.2):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            i = len(targets)  # the rest is not in the log any more
                            break
                        if err.fatal() or not err.retriable():
                            raise KafkaUnavailable(f"reading {topic}[{partition}]: {err}")
                        continue
                    offset = msg.offset()
                    position = offset + 1
                    while i < len(targets) and targets[i] < offset:
                        i += 1  # compacted or deleted
                    if i < len(targets) and targets[i] == offset:
                        found[(topic, partition, offset)] = msg.value() or b""
                        i += 1
    except KafkaUnavailable:
        raise
    except Exception as exc:  # KafkaException
        raise KafkaUnavailable(f"reading source messages for dead letters: {exc}") from None
    finally:
        consumer.close()
    return found


class _DeadLetterPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, kafka: KafkaSettings):
        self._kafka = kafka
        self._tracker = DeliveryTracker()
        self._producer = make_producer(kafka, self._tracker)
        self._topic = kafka.topics.deadletter
        try:
            self._written = written_dead_letters(kafka)
        except KafkaUnavailable as exc:
            # Better a repeated dead letter than a flow that cannot start.
            log.warning("cannot read earlier dead letters, repeats possible: %s", exc)
            self._written = set()
        self.skipped = 0

    def _with_raw(self, items: list[DeadLetter]) -> list[DeadLetter]:
        """Late events detected in another process than the one that read them arrive
        without their bytes (they do not travel with every event): read them back."""
        wanted: dict[tuple[str, int], set[int]] = {}
        for d in items:
            if d.raw is None:
                wanted.setdefault((d.topic, d.partition), set()).add(d.offset)
        found = read_messages(self._kafka, wanted, timeout=self._kafka.connect_timeout_s)
        out = []
        for d in items:
            if d.raw is None:
                raw = found.get((d.topic, d.partition, d.offset))
                if raw is None:
                    log.warning("dead letter %s[%d]@%d: the original message is no longer "
                                "in its partition", d.topic, d.partition, d.offset)
                    d = replace(d, raw=b"",
                                reason=f"{d.reason}; original message no longer available")
                else:
                    d = replace(d, raw=raw)
            out.append(d)
        return out

    def write_batch(self, items: list[DeadLetter]) -> None:
        if any(d.raw is None for d in items):
            items = self._with_raw(items)
        if self._written:
            fresh = [d for d in items if dead_letter_key(d) not in self._written]
            self.skipped += len(items) - len(fresh)
            if len(fresh) < len(items):
                log.info("skipped %d dead letters an earlier run already wrote",
                         len(items) - len(fresh))
            items = fresh
            if not items:
                return
        for d in items:
            produce(self._producer, self._topic, d.raw, None, headers=dead_letter_headers(d))
        flush_or_raise(self._producer, self._tracker)
        faults.point("deadletter.after_produce")
        log.info("dead-lettered %d messages (%s)", len(items),
                 ", ".join(sorted({d.stage for d in items})))

    def close(self) -> None:
        self._producer.flush(FLUSH_TIMEOUT_S)


class DeadLetterSink(DynamicSink[DeadLetter]):
    """Writes rejected and late events to the dead-letter topic."""

    def __init__(self, kafka: KafkaSettings):
        self.kafka = kafka

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterPartition:
        return _DeadLetterPartition(self.kafka)

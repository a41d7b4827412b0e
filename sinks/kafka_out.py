"""Kafka outputs: figures, alerts and dead letters.

Dead letters keep the original message bytes as the record value, untouched, so nothing is
lost; the reason and origin travel in headers (``ctrguard-reason``, free text;
``ctrguard-reason-code``, one of :data:`ctrguard.reasons.REASON_CODES`; ``ctrguard-stage``,
``ctrguard-source-topic``, ``ctrguard-source-partition``, ``ctrguard-source-offset``).

A message as large as the input topic accepts may not fit in the dead-letter topic with its
headers. Such a value is cut to what fits, and the record says so: ``ctrguard-truncated:
true``, ``ctrguard-original-size`` (bytes), ``ctrguard-original-sha256`` (hex SHA-256 of the
whole original value); the original stays in its source partition at the source offset.
Producers are configured with the cluster's own record limit
(:func:`ctrguard.kafka_admin.message_limit`), not librdkafka's default.

A restart re-reads input that an earlier run already dead-lettered (from the last Bytewax
snapshot, or from the beginning without recovery). So that the dead-letter topic holds each
rejected message once, a new sink (one per worker) first reads the newest
``DEDUP_SCAN_RECORDS`` records of every dead-letter partition and then skips any dead
letter whose (source topic, partition, offset, stage, CRC of the bytes) is among them.
"""

from __future__ import annotations

import hashlib
import logging
import time
import zlib
from collections import deque
from dataclasses import replace
from itertools import repeat
from operator import length_hint
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from ctrguard import probes
from ctrguard.config import KafkaSettings
from ctrguard.errors import KafkaUnavailable
from ctrguard.events import DeadLetter
from ctrguard.reasons import reason_code
from ctrguard.records import encode_record

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
                  max_message_bytes: int | None = None, **overrides: Any) -> Producer:
    """A producer with our settings; ``tracker`` collects every delivery failure (one
    callback for the producer, not an argument and a reference per message);
    ``max_message_bytes``: the largest record the target topics take
    (:func:`ctrguard.kafka_admin.message_limit`)."""
    return Producer(producer_config(kafka, tracker, max_message_bytes, **overrides))


def producer_config(kafka: KafkaSettings, tracker: DeliveryTracker | None = None,
                    max_message_bytes: int | None = None, **overrides: Any) -> dict[str, Any]:
    """The librdkafka settings of :func:`make_producer` (also checked at start-up)."""
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
    if max_message_bytes is not None:
        conf["message.max.bytes"] = max_message_bytes
    conf.update(kafka.client_config())
    conf.update(overrides)
    return conf


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
    """Produce ``obj`` (a dict or a record dataclass: :func:`ctrguard.records.encode_record`)."""
    produce(producer, topic, encode_record(obj), key.encode("utf-8", "surrogatepass"))


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


#: Longest ``ctrguard-reason`` header, in bytes (reasons quote parts of the message).
MAX_REASON_BYTES = 1024
#: Bytes of a record beyond its value and headers (Kafka's record batch header, 61 bytes,
#: and the record's own length fields, with room to spare).
RECORD_OVERHEAD = 512
#: Per header beyond its name and value (two varint lengths).
HEADER_OVERHEAD = 10


def dead_letter_headers(d: DeadLetter) -> list[tuple[str, bytes]]:
    return [
        ("ctrguard-reason", d.reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]),
        ("ctrguard-reason-code", reason_code(d.stage, d.code).encode()),
        ("ctrguard-stage", d.stage.encode()),
        ("ctrguard-source-topic", d.topic.encode("utf-8", "replace")),
        ("ctrguard-source-partition", str(d.partition).encode()),
        ("ctrguard-source-offset", str(d.offset).encode()),
    ]


def _size(headers: list[tuple[str, bytes]]) -> int:
    return sum(len(k) + len(v) + HEADER_OVERHEAD for k, v in headers)


def truncated(value: bytes, headers: list[tuple[str, bytes]], limit: int
              ) -> tuple[bytes, list[tuple[str, bytes]]]:
    """``(value, headers)`` of a dead-letter record that fits in ``limit`` bytes: unchanged
    when it fits; else the value cut to what fits, and headers saying so (the original's
    size and SHA-256; an already cut value keeps the first ones).

    >>> v, h = truncated(b"x" * 5000, [("ctrguard-stage", b"parse")], 2000)
    >>> len(v), dict(h)["ctrguard-original-size"], dict(h)["ctrguard-truncated"]
    (1293, b'5000', b'true')
    >>> truncated(b"abc", [], 2000)
    (b'abc', [])
    """
    if len(value) + _size(headers) + RECORD_OVERHEAD <= limit:
        return value, headers
    names = {k for k, _ in headers}
    if "ctrguard-original-size" not in names:
        headers = headers + [
            ("ctrguard-truncated", b"true"),
            ("ctrguard-original-size", str(len(value)).encode()),
            ("ctrguard-original-sha256", hashlib.sha256(value).hexdigest().encode()),
        ]
    room = max(0, limit - _size(headers) - RECORD_OVERHEAD)
    return value[:room], headers


DeadLetterKey = tuple[str, int, int, str, int]


def dead_letter_key(d: DeadLetter, value: bytes | None = None) -> DeadLetterKey:
    """What identifies a dead letter across runs: its origin, stage and content (the value
    as written: cut when it did not fit)."""
    return (d.topic, d.partition, d.offset, d.stage,
            zlib.crc32(d.raw if value is None else value))


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


class _DeadLetterTracker(DeliveryTracker):
    """Keeps the records the broker refused as too large (they are cut and sent again)."""

    def __init__(self) -> None:
        super().__init__()
        self.too_large: list[tuple[bytes, list[tuple[str, bytes]]]] = []

    def __call__(self, err: Any, msg: Any) -> None:
        if err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            self.too_large.append((msg.value() or b"", list(msg.headers() or ())))
        else:
            super().__call__(err, msg)


#: A dead letter the broker refuses at every size down to this is not a size problem.
MIN_DEAD_LETTER_LIMIT = 4096


class DeadLetterSink:
    """One worker's writer of rejected and late events to the dead-letter topic (the flow
    wraps it in a Bytewax sink: :mod:`ctrguard.flows.ctr_flow`)."""

    def __init__(self, kafka: KafkaSettings):
        from ctrguard.kafka_admin import message_limit

        self._kafka = kafka
        self._topic = kafka.topics.deadletter
        self._limit = message_limit(kafka, [self._topic])
        self._tracker = _DeadLetterTracker()
        self._producer = make_producer(kafka, self._tracker, max_message_bytes=self._limit)
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
        records = [truncated(d.raw, dead_letter_headers(d), self._limit)  # type: ignore[arg-type]
                   for d in items]
        if self._written:
            fresh = [(d, r) for d, r in zip(items, records, strict=True)
                     if dead_letter_key(d, r[0]) not in self._written]
            self.skipped += len(items) - len(fresh)
            if len(fresh) < len(items):
                log.info("skipped %d dead letters an earlier run already wrote",
                         len(items) - len(fresh))
            items = [d for d, _ in fresh]
            records = [r for _, r in fresh]
            if not items:
                return
        self._send(records)
        flush_or_raise(self._producer, self._tracker)
        probes.point("deadletter.after_produce")
        log.info("dead-lettered %d messages (%s)", len(items),
                 ", ".join(sorted({d.stage for d in items})))

    def _send(self, records: list[tuple[bytes, list[tuple[str, bytes]]]]) -> None:
        """Produce and flush; a record refused as too large (by librdkafka or the broker,
        whose limit may be lower than the one it reported) is cut to half its size and sent
        again, down to :data:`MIN_DEAD_LETTER_LIMIT`."""
        limit = self._limit
        while records:
            for value, headers in records:
                try:
                    produce(self._producer, self._topic, value, None, headers=headers)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
                        raise
                    self._tracker.too_large.append((value, headers))
            self._producer.flush(FLUSH_TIMEOUT_S)
            refused, self._tracker.too_large = self._tracker.too_large, []
            if not refused:
                return
            size = max(len(v) + _size(h) + RECORD_OVERHEAD for v, h in refused)
            limit = min(limit, size) // 2
            if limit < MIN_DEAD_LETTER_LIMIT:
                raise KafkaUnavailable(f"dead-letter topic {self._topic!r} refuses records of "
                                       f"{size} bytes and every smaller size tried",
                                       retryable=False)
            log.warning("dead-letter topic %r refused %d records as too large; sending them "
                        "cut to %d bytes", self._topic, len(refused), limit)
            self._limit = limit
            records = [truncated(v, h, limit) for v, h in refused]

    def close(self) -> None:
        self._producer.flush(FLUSH_TIMEOUT_S)


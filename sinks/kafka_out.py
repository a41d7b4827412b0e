"""Kafka outputs: figures, alerts and dead letters.

Dead letters keep the original message bytes as the record value, untouched, so nothing is
lost; the reason and origin travel in headers (``ctrguard-reason``, ``ctrguard-stage``,
``ctrguard-source-topic``, ``ctrguard-source-partition``, ``ctrguard-source-offset``).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Producer

from ctrguard.config import KafkaSettings
from ctrguard.errors import KafkaUnavailable
from flows.engine import DeadLetter

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 30.0


def make_producer(kafka: KafkaSettings, **overrides: Any) -> Producer:
    conf: dict[str, Any] = {
        "linger.ms": kafka.producer_linger_ms,
        "acks": kafka.producer_acks,
        "enable.idempotence": kafka.producer_acks == "all",
        "compression.type": "none",
        "message.timeout.ms": 120_000,
        "queue.buffering.max.messages": 1_000_000,
        # Brokers close idle connections; librdkafka reconnects by itself, so don't log it.
        "log.connection.close": False,
    }
    conf.update(kafka.client_config())
    conf.update(overrides)
    return Producer(conf)


class DeliveryTracker:
    """Collects delivery failures reported by librdkafka callbacks."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def __call__(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failures.append(f"{msg.topic()}: {err}")


def flush_or_raise(producer: Producer, tracker: DeliveryTracker) -> None:
    remaining = producer.flush(FLUSH_TIMEOUT_S)
    if remaining:
        raise KafkaUnavailable(f"{remaining} messages not delivered within {FLUSH_TIMEOUT_S}s")
    if tracker.failures:
        failures, tracker.failures = tracker.failures, []
        raise KafkaUnavailable(f"{len(failures)} messages failed: {failures[0]}")


def produce_json(producer: Producer, topic: str, key: str, obj: dict, tracker: DeliveryTracker) -> None:
    while True:
        try:
            producer.produce(topic, orjson.dumps(obj), key.encode("utf-8", "surrogatepass"),
                             on_delivery=tracker)
            return
        except BufferError:
            producer.poll(0.1)  # local queue full: let deliveries drain


def dead_letter_headers(d: DeadLetter) -> list[tuple[str, bytes]]:
    return [
        ("ctrguard-reason", d.reason.encode("utf-8", "replace")),
        ("ctrguard-stage", d.stage.encode()),
        ("ctrguard-source-topic", d.topic.encode("utf-8", "replace")),
        ("ctrguard-source-partition", str(d.partition).encode()),
        ("ctrguard-source-offset", str(d.offset).encode()),
    ]


class _DeadLetterPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, kafka: KafkaSettings):
        self._producer = make_producer(kafka)
        self._topic = kafka.topics.deadletter
        self._tracker = DeliveryTracker()

    def write_batch(self, items: list[DeadLetter]) -> None:
        for d in items:
            while True:
                try:
                    self._producer.produce(self._topic, d.raw, None,
                                           headers=dead_letter_headers(d),
                                           on_delivery=self._tracker)
                    break
                except BufferError:
                    self._producer.poll(0.1)
        flush_or_raise(self._producer, self._tracker)
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

"""Topic administration against any Kafka cluster (production settings pass through)."""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka.admin import AdminClient, NewTopic

from ctrguard.config import KafkaSettings
from ctrguard.errors import KafkaUnavailable

log = logging.getLogger(__name__)


def ensure_topics(kafka: KafkaSettings, topics: list[str], partitions: int | None = None,
                  timeout: float = 30.0) -> None:
    """Create missing topics and wait until every one is visible in the metadata."""
    admin = AdminClient(kafka.client_config())
    deadline = time.monotonic() + timeout
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except Exception as exc:
        raise KafkaUnavailable(f"cannot reach Kafka at {','.join(kafka.brokers)}: {exc}") from None
    missing = [t for t in dict.fromkeys(topics) if t not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=partitions or kafka.partitions, replication_factor=-1)
             for t in missing], operation_timeout=timeout)
        for topic, fut in futures.items():
            try:
                fut.result(timeout=timeout)
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
                    raise KafkaUnavailable(f"cannot create topic {topic!r}: {exc}") from None
    while True:
        meta = admin.list_topics(timeout=timeout).topics
        if all(t in meta and meta[t].error is None and meta[t].partitions for t in topics):
            return
        if time.monotonic() > deadline:
            raise KafkaUnavailable(f"topics not visible after {timeout}s: {topics}")
        time.sleep(0.1)


#: What a Kafka broker accepts by default (``message.max.bytes`` of the broker,
#: ``max.message.bytes`` of a topic): assumed when the cluster does not say.
KAFKA_DEFAULT_MESSAGE_BYTES = 1_048_588

_limits: dict[tuple[str, str], int] = {}


def message_limit(kafka: KafkaSettings, topics: list[str], *,
                  timeout: float | None = None) -> int:
    """The largest record the cluster accepts on every one of ``topics``, in bytes.

    ``kafka.client["message.max.bytes"]`` when set (the operator's word); otherwise each
    topic's ``max.message.bytes``, else the brokers' ``message.max.bytes`` (both read with
    DescribeConfigs), else Kafka's default, :data:`KAFKA_DEFAULT_MESSAGE_BYTES`, with a log
    line saying so. librdkafka's own default (1,000,000) is below what a default broker
    accepts, so a producer left with it refuses records the topic would take. Answers are
    cached per process (one lookup per topic at start-up).
    """
    explicit = kafka.client.get("message.max.bytes")
    if explicit is not None:
        return int(explicit)
    timeout = min(kafka.connect_timeout_s, 10.0) if timeout is None else timeout
    brokers = ",".join(kafka.brokers)
    missing = [t for t in dict.fromkeys(topics) if (brokers, t) not in _limits]
    if missing:
        found = _describe_limits(kafka, missing, timeout)
        for topic in missing:
            _limits[(brokers, topic)] = found.get(topic, KAFKA_DEFAULT_MESSAGE_BYTES)
    return min(_limits[(brokers, t)] for t in topics)


def _describe_limits(kafka: KafkaSettings, topics: list[str], timeout: float) -> dict[str, int]:
    """``max.message.bytes`` per topic as the cluster reports it (topics it does not report
    get the brokers' ``message.max.bytes``; none reported: left out)."""
    from confluent_kafka.admin import ConfigResource, ResourceType

    admin = AdminClient(kafka.client_config())
    found: dict[str, int] = {}

    def read(resource: Any, name: str) -> int | None:
        try:
            entries = admin.describe_configs([resource], request_timeout=timeout)[resource] \
                .result(timeout)
        except Exception as exc:  # KafkaException, a timeout: the fallback applies
            log.debug("describe %s: %s", resource, exc)
            return None
        entry = entries.get(name)
        try:
            return int(entry.value) if entry is not None and entry.value else None
        except ValueError:
            return None

    for topic in topics:
        value = read(ConfigResource(ResourceType.TOPIC, topic), "max.message.bytes")
        if value is not None:
            found[topic] = value
    rest = [t for t in topics if t not in found]
    if rest:
        broker_limit = None
        try:
            ids = sorted(admin.list_topics(timeout=timeout).brokers)
        except Exception as exc:  # noqa: BLE001 - the fallback applies
            log.debug("list brokers: %s", exc)
            ids = []
        for broker_id in ids:
            broker_limit = read(ConfigResource(ResourceType.BROKER, str(broker_id)),
                                "message.max.bytes")
            if broker_limit is not None:
                break
        for topic in rest:
            if broker_limit is not None:
                found[topic] = broker_limit
            else:
                log.info("kafka: the cluster does not report max.message.bytes of topic %r; "
                         "assuming Kafka's default of %d bytes (set kafka.client."
                         "message.max.bytes to state it)", topic, KAFKA_DEFAULT_MESSAGE_BYTES)
    return found

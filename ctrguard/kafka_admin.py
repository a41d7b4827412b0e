"""Topic administration against any Kafka cluster (production settings pass through)."""

from __future__ import annotations

import time

from confluent_kafka.admin import AdminClient, NewTopic

from ctrguard.config import KafkaSettings
from ctrguard.errors import KafkaUnavailable


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


def missing_topics(kafka: KafkaSettings, topics: list[str], timeout: float = 30.0) -> list[str]:
    """Which of ``topics`` the cluster does not have (exit code 3 if it cannot be asked)."""
    admin = AdminClient(kafka.client_config())
    try:
        meta = admin.list_topics(timeout=timeout).topics
    except Exception as exc:
        raise KafkaUnavailable(f"cannot reach Kafka at {','.join(kafka.brokers)}: {exc}") from None
    return [t for t in dict.fromkeys(topics)
            if t not in meta or meta[t].error is not None or not meta[t].partitions]

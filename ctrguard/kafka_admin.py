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
        if broker_limit is not None:
            found.update(dict.fromkeys(rest, broker_limit))
        else:
            log.info("kafka: the cluster reports no record size limit for %s; assuming Kafka's "
                     "default of %d bytes (kafka.client.message.max.bytes states it)",
                     ", ".join(rest), KAFKA_DEFAULT_MESSAGE_BYTES)
    return found


def check_reachable(kafka: KafkaSettings, timeout: float) -> None:
    """Raise :class:`KafkaUnavailable` with one sentence (which brokers, for how long, how
    many connection attempts failed and why) when no broker answers within ``timeout``.

    librdkafka's log of the attempts is counted here, not printed: left alone it is a line
    per reconnection (about 290 in 15 s).
    """
    from ctrguard.kafka_log import KafkaLogRouter

    quiet = logging.Logger("ctrguard.kafka.preflight", level=logging.CRITICAL + 1)
    router = KafkaLogRouter(logger=quiet)
    admin = AdminClient({**kafka.client_config(), "logger": router, "error_cb": router.error})
    started = time.monotonic()
    try:
        admin.list_topics(timeout=timeout)
        return
    except Exception as exc:  # noqa: BLE001 - KafkaException: described below
        error = exc
    admin.poll(0)  # hands the queued log over to the router
    failures = router.failures()
    attempts = sum(failures.values())
    reasons = sorted({r for b in failures if (r := router.last_failure(b)) is not None})
    why = f": {attempts} connection attempts failed ({'; '.join(reasons)[:300]})" \
        if attempts else f": {error}"
    raise KafkaUnavailable(f"cannot reach Kafka at {','.join(kafka.brokers)} within "
                           f"{time.monotonic() - started:.0f}s{why}")


def client_setting_issues(kafka: KafkaSettings) -> list[tuple[str | None, str]]:
    """What librdkafka refuses in ``kafka.client``, as ``(key, message)`` (``key`` None when
    the message names none of them), found by building a throwaway producer and consumer
    with the settings ctrguard's own clients use. Nothing connects: no bootstrap servers.
    """
    from confluent_kafka import Consumer, KafkaException, Producer

    from ctrguard.flows.source import CONSUMER_TUNING
    from ctrguard.sinks.kafka_out import producer_config

    quiet = logging.Logger("ctrguard.kafka.check", level=logging.CRITICAL + 1)
    producer = {k: v for k, v in producer_config(kafka).items()
                if k not in ("bootstrap.servers", "error_cb") and k not in kafka.client}
    consumer = {k: v for k, v in {"group.id": "ctrguard-config-check",
                                  "enable.auto.commit": False, "enable.partition.eof": True,
                                  **CONSUMER_TUNING}.items() if k not in kafka.client}

    def refusal(client: dict[str, Any]) -> str | None:
        try:
            for make, conf in ((Producer, producer), (Consumer, consumer)):
                make({**conf, **client, "logger": quiet})
        except KafkaException as exc:
            err = exc.args[0]
            return err.str() if hasattr(err, "str") else str(exc)
        return None

    remaining = dict(kafka.client)
    issues: list[tuple[str | None, str]] = []
    while (text := refusal(remaining)) is not None:
        key = _blamed_key(text, remaining)
        if key is None:  # named otherwise (an alias, a combination): find it by itself
            key = next((k for k in remaining if refusal({k: remaining[k]}) is not None), None)
        issues.append((key, _redact(text, kafka.client)))
        if key is None:
            break
        remaining.pop(key)
    return issues


def _blamed_key(text: str, keys: dict[str, Any]) -> str | None:
    import re

    for name in reversed(re.findall(r'"([A-Za-z0-9._-]+)"', text)):
        if name in keys:
            return name
    found = [k for k in keys if k in text]
    return max(found, key=len) if found else None


def _redact(text: str, client: dict[str, Any]) -> str:
    for key, value in client.items():
        if any(w in key for w in ("password", "secret", "jaas")) and str(value):
            text = text.replace(str(value), "***")
    return text


def missing_topics(kafka: KafkaSettings, topics: list[str], timeout: float = 30.0) -> list[str]:
    """Which of ``topics`` the cluster does not have (exit code 3 if it cannot be asked)."""
    admin = AdminClient(kafka.client_config())
    try:
        meta = admin.list_topics(timeout=timeout).topics
    except Exception as exc:
        raise KafkaUnavailable(f"cannot reach Kafka at {','.join(kafka.brokers)}: {exc}") from None
    return [t for t in dict.fromkeys(topics)
            if t not in meta or meta[t].error is not None or not meta[t].partitions]

"""Shared fixtures: real services, started once per session, clean state per test.

``broker``            session-wide tansu broker (:class:`devtools.services.Broker`).
``kafka_config``      librdkafka settings for it, a fresh dict per test.
``topic_factory``     ``topic_factory(partitions=1, keys=TOPIC_KEYS)`` creates fresh topics.
``unique_topics``     fresh single-partition topics, keys ``TOPIC_KEYS``.
``redis_server``      session-wide ``redis-server`` (no password).
``redis_url``         URL of ``redis_server`` after FLUSHALL, restarted first if a test
                      killed it.
``redis_factory``     ``redis_factory(**start_redis_kwargs)`` starts a private server, for
                      outage and authentication tests; stopped after the test.

Tests that use any of them are marked ``integration`` automatically.
"""

from __future__ import annotations

import contextlib
import os
import uuid

import pytest

from devtools.services import (
    Broker,
    RedisServer,
    ensure_topics,
    start_broker,
    start_redis,
)

try:
    from tests.slack_fixtures import *  # noqa: F403  (fixtures, once that module exists)
except ModuleNotFoundError as exc:
    if exc.name != "tests.slack_fixtures":
        raise

# `ctrguard run` serves /metrics on metrics.port (9464) by default: test processes must not
# race each other (or another checkout's tests) for it. A test that wants the endpoint
# passes --metrics-port with a free port.
os.environ.setdefault("CTRGUARD_METRICS_PORT", "off")

#: Logical topic names of the pipeline, as used in configuration.
TOPIC_KEYS = ("impressions", "clicks", "figures", "alerts", "deadletter")

_SERVICE_FIXTURES = {
    "broker", "kafka_config", "topic_factory", "unique_topics",
    "redis_server", "redis_url", "redis_factory",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory):
    running = start_broker(log_dir=tmp_path_factory.mktemp("tansu"))
    try:
        yield running
    finally:
        # Memory storage, nothing to keep: tansu waits 5 s for the clients tests left
        # connected before it exits, at the end of every worker.
        running.stop(grace=0.5)


@pytest.fixture
def kafka_config(broker: Broker) -> dict[str, object]:
    return broker.client_config()


@pytest.fixture
def topic_factory(broker: Broker):
    """Create fresh, uniquely named topics; ``topic_factory(partitions=2)`` for more."""
    from confluent_kafka.admin import AdminClient

    created: list[str] = []

    def make(partitions: int = 1, keys: tuple[str, ...] = TOPIC_KEYS) -> dict[str, str]:
        prefix = f"t-{uuid.uuid4().hex[:12]}"
        names = {key: f"{prefix}-{key}" for key in keys}
        ensure_topics(broker.bootstrap, list(names.values()), partitions=partitions)
        created.extend(names.values())
        return names

    yield make
    if created and broker.is_running():
        # Best effort: the in-memory broker holds every topic until the session ends.
        futures = AdminClient(broker.client_config()).delete_topics(created)
        for future in futures.values():
            with contextlib.suppress(Exception):
                future.result(5)


@pytest.fixture
def unique_topics(topic_factory) -> dict[str, str]:
    """Fresh single-partition topics: ``{"impressions": "t-<uuid>-impressions", ...}``."""
    return topic_factory()


@pytest.fixture(scope="session")
def redis_server():
    with start_redis() as running:
        yield running


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if not redis_server.is_running():
        redis_server.restart()
    client = redis_server.client()
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def redis_factory():
    """Start private ``redis-server`` instances (``start_redis`` arguments)."""
    servers: list[RedisServer] = []

    def make(**kwargs) -> RedisServer:
        server = start_redis(**kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()

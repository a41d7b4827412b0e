"""Fixtures and builders for the Slack tests: a local Slack emulator and a real redis-server.

Import the fixtures into a test module with
``from tests.slack_fixtures import slack_emulator, slack_redis_url  # noqa: F401``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ctrguard.config import Settings
from ctrguard.records import Alert, make_alert_id
from ctrguard.sinks.incidents import iso
from devtools.slack_emulator import SlackEmulator

TOKEN = "xoxb-111-222-testtokensecret"
WEBHOOK_PATH = "T0001/B0001/webhooksecretpart"
WINDOW_S = 300
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


@pytest.fixture
def slack_emulator() -> Iterator[SlackEmulator]:
    with SlackEmulator(token=TOKEN, webhook_path=WEBHOOK_PATH) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def _slack_redis_server():
    from devtools.services import start_redis

    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def slack_redis_url(request: pytest.FixtureRequest) -> str:
    """A clean Redis database: the shared ``redis_url`` fixture when the project has one."""
    try:
        return request.getfixturevalue("redis_url")
    except pytest.FixtureLookupError:
        server = request.getfixturevalue("_slack_redis_server")
        client = server.client()
        client.flushall()
        client.close()
        return server.url


def make_settings(redis_url: str, emulator: SlackEmulator | None = None, *,
                  mode: str = "web", **slack: Any) -> Settings:
    """Settings pointing at the emulator (fast back-off, so retries do not slow tests)."""
    s: dict[str, Any] = {"retry_backoff_s": 0.05, "retry_backoff_max_s": 0.2,
                         "max_attempts": 4, "timeout_s": 2}
    if mode == "web":
        assert emulator is not None
        s.update(bot_token=TOKEN, base_url=emulator.base_url)
    elif mode == "webhook":
        assert emulator is not None
        s.update(webhook_url=emulator.webhook_url)
    s.update(mode=mode, **slack)
    return Settings.model_validate({"redis": {"url": redis_url}, "slack": s})


def make_alert(campaign_id: str = "c1", window: int = 0, segment: str = "all", *,
               clicks: int = 5, expected: float = 20.0, impressions: int = 1000,
               severity: str = "warning", cause: str = "click_tracking",
               detector: str = "binomial_cusum", kind: str = "ctr_drop") -> Alert:
    """An alert in window number ``window`` (5-minute windows from 2026-01-01)."""
    ws = T0 + window * WINDOW_S
    return Alert(
        alert_id=make_alert_id(campaign_id, segment, ws, detector, kind),
        campaign_id=campaign_id, segment=segment, window_start=iso(ws),
        window_end=iso(ws + WINDOW_S), window_start_s=ws, impressions=impressions,
        clicks=clicks, ctr=clicks / impressions, kind=kind, severity=severity,
        detector=detector, baseline_ctr=expected / impressions, score=6.0, confidence=0.995,
        ctr_low=0.8 * expected / impressions, ctr_high=1.2 * expected / impressions,
        expected_clicks=expected, expected_impressions=float(impressions),
        suspected_cause=cause, quarantine=True)

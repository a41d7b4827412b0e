"""Slack delivery end to end: real slack_sdk against the emulator, real redis-server."""

# ruff: noqa: F811 - pytest fixtures imported from tests.slack_fixtures

from __future__ import annotations

import io
import logging

import pytest
import redis

from ctrguard.records import WindowDecision
from ctrguard.sinks.slack import SlackNotifier, SlackSink
from tests.slack_fixtures import (  # noqa: F401 - fixtures
    T0,
    TOKEN,
    WEBHOOK_PATH,
    WINDOW_S,
    make_alert,
    make_settings,
    slack_emulator,
    slack_redis_url,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def partitions():
    made: list[SlackSink] = []

    def make(settings, **kw) -> SlackSink:
        p = SlackSink(settings, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.notifier.stop()


def ok_calls(emulator, method):
    return [c for c in emulator.calls if c.method == method and c.ok]


def test_many_alerts_of_one_campaign_make_one_message_then_updates(
        slack_emulator, slack_redis_url, partitions):
    sink = partitions(make_settings(slack_redis_url, slack_emulator))
    for w in range(4):
        sink.write_batch([make_alert(window=w), make_alert(window=w, segment="device=mobile")])
        assert sink.drain(10)
    assert len(ok_calls(slack_emulator, "chat.postMessage")) == 1
    assert len(ok_calls(slack_emulator, "chat.update")) == 3
    (msg,) = slack_emulator.messages("#ctr-alerts")
    assert len(msg.history) == 3 and "8 alerts" in msg.blocks[1]["text"]["text"]
    # Quiet windows resolve it: a final edit and a threaded reply.
    sink.write_batch([WindowDecision("c1", T0 + 7 * WINDOW_S, T0 + 8 * WINDOW_S, (), ())])
    assert sink.drain(10)
    (msg,) = slack_emulator.messages("#ctr-alerts", top_level=True)
    assert msg.blocks[0]["text"]["text"].startswith("✅ RESOLVED")
    (reply,) = slack_emulator.replies("#ctr-alerts", msg.ts)
    assert reply.text.startswith("✅ Resolved")


def test_notable_change_posts_thread_reply(slack_emulator, slack_redis_url, partitions):
    sink = partitions(make_settings(slack_redis_url, slack_emulator, default_owner="U0OWNER01"))
    sink.write_batch([make_alert(window=0)])
    sink.write_batch([make_alert(window=1)])                       # not notable: edit only
    sink.write_batch([make_alert(window=2, severity="critical")])  # notable: edit + reply
    assert sink.drain(10)
    (msg,) = slack_emulator.messages("#ctr-alerts", top_level=True)
    (reply,) = slack_emulator.replies("#ctr-alerts", msg.ts)
    assert "Severity raised to *critical*" in reply.text and "<@U0OWNER01>" in reply.text


def test_rate_limit_delays_delivery_without_blocking_submit(
        slack_emulator, slack_redis_url, partitions):
    sink = partitions(make_settings(slack_redis_url, slack_emulator))
    slack_emulator.fail_next(429, retry_after=1, method="chat.postMessage")
    sink.write_batch([make_alert("a", window=0)])
    assert slack_emulator.wait_for(
        lambda e: any(c.status == 429 for c in e.calls), timeout=5)
    # The delivery thread now waits for Retry-After; submitting more must not wait with it.
    sink.write_batch([make_alert("b", window=0)])
    sink.write_batch([make_alert("a", window=1)])
    assert ok_calls(slack_emulator, "chat.postMessage") == []
    assert sink.notifier.pending() == 3
    assert sink.drain(10)
    calls = [c for c in slack_emulator.calls if c.method != "auth.test"]
    assert [(c.method, c.status) for c in calls] == [
        ("chat.postMessage", 429), ("chat.postMessage", 200), ("chat.postMessage", 200),
        ("chat.update", 200)]
    assert calls[1].time - calls[0].time >= 0.9        # not retried before Retry-After
    assert sink.notifier.stats.rate_limited == 1


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_retried_and_deliver_once(
        slack_emulator, slack_redis_url, partitions, status):
    sink = partitions(make_settings(slack_redis_url, slack_emulator))
    slack_emulator.fail_next(status, times=2)
    sink.write_batch([make_alert(window=0)])
    assert sink.drain(10)
    assert [c.status for c in slack_emulator.calls] == [status, status, 200]
    assert len(slack_emulator.messages("#ctr-alerts")) == 1


def test_timeout_is_retried(slack_emulator, slack_redis_url, partitions):
    sink = partitions(make_settings(slack_redis_url, slack_emulator, timeout_s=1))
    slack_emulator.fail_next(503, delay=1.5)        # longer than the client's timeout
    sink.write_batch([make_alert(window=0)])
    assert sink.drain(15)
    assert len(ok_calls(slack_emulator, "chat.postMessage")) == 1
    assert sink.notifier.stats.retries == 1


def test_restart_mid_incident_posts_no_duplicate(slack_emulator, slack_redis_url, partitions):
    settings = make_settings(slack_redis_url, slack_emulator)
    first = partitions(settings)
    batch0 = [make_alert(window=0), make_alert(window=0, segment="geo=FR")]
    first.write_batch(batch0)
    first.write_batch([make_alert(window=1)])
    assert first.drain(10)
    first.close()
    # A new process: Bytewax re-delivers what came after its last snapshot, then new data.
    second = partitions(settings)
    second.write_batch(batch0)
    second.write_batch([make_alert(window=1)])
    assert second.drain(10)
    assert len(ok_calls(slack_emulator, "chat.postMessage")) == 1
    assert len(ok_calls(slack_emulator, "chat.update")) == 1
    second.write_batch([make_alert(window=2)])
    assert second.drain(10)
    assert len(ok_calls(slack_emulator, "chat.postMessage")) == 1
    assert len(ok_calls(slack_emulator, "chat.update")) == 2


def test_pending_outbox_survives_a_restart_and_is_delivered_once(
        slack_emulator, slack_redis_url, partitions):
    settings = make_settings(slack_redis_url, slack_emulator)
    first = partitions(settings, autostart=False)           # dies before delivering
    first.write_batch([make_alert(window=0)])
    first.write_batch([make_alert(window=1, severity="critical")])
    assert first.notifier.pending() == 2 and slack_emulator.calls == []
    second = partitions(settings)
    assert second.drain(10)
    third = partitions(settings)                             # yet another restart
    assert third.drain(10)
    assert slack_emulator.methods() == ["chat.postMessage", "chat.update", "chat.postMessage"]


def test_same_update_submitted_twice_is_delivered_once(
        slack_emulator, slack_redis_url, partitions):
    from ctrguard.sinks.incidents import IncidentTracker

    sink = partitions(make_settings(slack_redis_url, slack_emulator))
    (update,) = IncidentTracker().observe([make_alert(window=0)])
    sink.notifier.submit([update])
    sink.notifier.submit([update])
    assert sink.drain(10)
    assert slack_emulator.methods() == ["chat.postMessage"]
    assert sink.notifier.stats.skipped_duplicate == 1


HOSTILE = ["<!channel>", "<@U123ABC>", "<https://evil.example|click>",
           "```\n<!here>\n```", "&lt;!channel&gt;", "z" * 10_000]


def test_hostile_campaign_ids_render_inert_in_slack(slack_emulator, slack_redis_url, partitions):
    sink = partitions(make_settings(slack_redis_url, slack_emulator))
    sink.write_batch([make_alert(h, window=0, segment=h) for h in HOSTILE])
    assert sink.drain(10)
    msgs = slack_emulator.messages("#ctr-alerts")
    assert len(msgs) == len(HOSTILE)              # Slack accepted every one (limits kept)
    for m in msgs:
        texts = [m.text] + [str(b) for b in m.blocks]
        for t in texts:
            assert "<!channel>" not in t and "<!here>" not in t and "<@U123ABC>" not in t
            assert "<https://evil" not in t and "```" not in t
            assert "z" * 100 not in t
        assert all(len(b["text"]["text"]) <= 150 for b in m.blocks if b["type"] == "header")


def test_routing_owner_and_mute_with_expiry(slack_emulator, slack_redis_url, partitions):
    settings = make_settings(
        slack_redis_url, slack_emulator,
        routes=[{"campaigns": ["shop-*"], "channel": "#shop", "owner": "U0SHOP001"},
                {"campaigns": ["quiet-*"], "channel": "#quiet", "min_severity": "critical"}],
        mutes=[{"campaigns": ["shop-test"], "until": "2026-01-01T00:30:00Z"}])
    sink = partitions(settings)
    sink.write_batch([make_alert("shop-1", 0), make_alert("other", 0),
                      make_alert("quiet-1", 0), make_alert("shop-test", 0)])
    assert sink.drain(10)
    assert len(slack_emulator.messages("#shop", top_level=True)) == 1
    assert "<@U0SHOP001>" in slack_emulator.messages("#shop", top_level=True)[0].text
    assert len(slack_emulator.messages("#ctr-alerts", top_level=True)) == 1
    assert slack_emulator.messages("#quiet", top_level=True) == []           # warning < critical
    # Event time passes the mute's expiry (wall clock is irrelevant): the incident is posted.
    sink.write_batch([make_alert("shop-test", 3), make_alert("quiet-1", 1)])
    assert sink.drain(10)
    assert len(slack_emulator.messages("#shop", top_level=True)) == 1        # ends 00:20 < 00:30: muted
    sink.write_batch([make_alert("shop-test", 5), make_alert("quiet-1", 2, severity="critical")])
    assert sink.drain(10)
    assert len(slack_emulator.messages("#shop", top_level=True)) == 2
    assert len(slack_emulator.messages("#quiet", top_level=True)) == 1


def test_webhook_mode_posts_opens_and_resolves_only(slack_emulator, slack_redis_url, partitions):
    sink = partitions(make_settings(slack_redis_url, slack_emulator, mode="webhook"))
    slack_emulator.fail_next(500, method="webhook")
    sink.write_batch([make_alert(window=0)])
    sink.write_batch([make_alert(window=1, severity="critical")])
    sink.write_batch([WindowDecision("c1", T0 + 4 * WINDOW_S, T0 + 5 * WINDOW_S, (), ())])
    assert sink.drain(10)
    msgs = slack_emulator.messages("#webhook")
    assert [m.blocks[0]["text"]["text"].split(":")[0] for m in msgs] == ["🟠 WARNING",
                                                                        "✅ RESOLVED"]
    assert [c.status for c in slack_emulator.calls] == [500, 200, 200]


def test_webhook_client_errors_are_dead_lettered(slack_emulator, slack_redis_url, partitions,
                                                  caplog):
    settings = make_settings(slack_redis_url, slack_emulator, mode="webhook")
    settings = settings.model_copy(update={"slack": settings.slack.model_copy(update={
        "webhook_url": type(settings.slack.webhook_url)(
            slack_emulator.url + "/webhook/T0001/B0001/wrongsecretpart")})})
    caplog.set_level(logging.DEBUG)
    sink = partitions(settings)
    sink.write_batch([make_alert(window=0)])
    assert sink.drain(10)
    (dead,) = sink.notifier.dead_letters()
    assert "404" in dead["reason"]
    assert "wrongsecretpart" not in caplog.text and "wrongsecretpart" not in dead["reason"]


def test_console_mode_prints_the_message(slack_redis_url, partitions):
    out = io.StringIO()
    sink = partitions(make_settings(slack_redis_url, mode="console", value_per_click=0.4),
                      stream=out)
    sink.write_batch([make_alert("shop <1>", window=0, severity="critical")])
    sink.write_batch([make_alert("shop <1>", window=1, segment="geo=FR", clicks=0,
                                 expected=25.0, severity="critical")])
    sink.write_batch([WindowDecision("shop <1>", T0 + 5 * WINDOW_S, T0 + 6 * WINDOW_S, (), ())])
    sink.close()
    text = out.getvalue()
    assert "🔴 CRITICAL: CTR incident on shop ‹1›" in text
    assert "Campaign `shop <1>`" in text
    assert "↳ Driving segment now `geo=FR`" in text
    assert "✅ RESOLVED" in text
    assert text.count("CTR incident on") == 2


def test_permanent_error_is_dead_lettered_and_does_not_block(
        slack_emulator, slack_redis_url, partitions):
    sink = partitions(make_settings(slack_redis_url, slack_emulator))
    slack_emulator.fail_next(200, error="channel_not_found", method="chat.postMessage")
    sink.write_batch([make_alert("a", window=0)])
    sink.write_batch([make_alert("b", window=0)])
    assert sink.drain(10)
    (dead,) = sink.notifier.dead_letters()
    assert "channel_not_found" in dead["reason"]
    assert len(slack_emulator.messages("#ctr-alerts")) == 1


def test_deleted_message_is_forgotten_and_next_notable_update_reposts(
        slack_emulator, slack_redis_url, partitions):
    sink = partitions(make_settings(slack_redis_url, slack_emulator))
    sink.write_batch([make_alert(window=0)])
    assert sink.drain(10)
    slack_emulator.fail_next(200, error="message_not_found", method="chat.update")
    sink.write_batch([make_alert(window=1)])
    assert sink.drain(10)
    sink.write_batch([make_alert(window=2)])
    assert sink.drain(10)
    assert slack_emulator.methods() == ["chat.postMessage", "chat.postMessage"]
    assert sink.notifier.dead_letters() == []


def test_tokens_never_reach_logs_or_exceptions(slack_emulator, slack_redis_url, partitions,
                                               caplog):
    caplog.set_level(logging.DEBUG)
    logging.getLogger("ctrguard.slack.sdk").setLevel(logging.DEBUG)   # even if someone does
    try:
        settings = make_settings(slack_redis_url, slack_emulator)
        slack_emulator.token = "xoxb-a-different-token"               # ours is now refused
        slack_emulator.fail_next(503)
        sink = partitions(settings)
        sink.write_batch([make_alert(window=0)])
        assert sink.drain(10)
        (dead,) = sink.notifier.dead_letters()
        assert "invalid_auth" in dead["reason"]
        assert caplog.records
        assert TOKEN not in caplog.text and TOKEN not in str(dead)
        assert "testtokensecret" not in caplog.text
        # Redis unreachable: the error names the service, not the credentials.
        bad = make_settings("redis://:hunter2secret@127.0.0.1:1/0", slack_emulator)
        sink2 = partitions(bad, autostart=False)
        sink2.settings = bad.model_copy(update={"redis": bad.redis.model_copy(update={
            "retry_backoff_s": 0.01, "retry_backoff_max_s": 0.01,
            "slack_outage_wait_s": 0.5})})
        from ctrguard.errors import RedisUnavailable
        with pytest.raises(RedisUnavailable) as info:
            sink2.write_batch([make_alert(window=0)])
        assert "hunter2secret" not in str(info.value) and TOKEN not in str(info.value)
        assert info.value.__cause__ is None
    finally:
        logging.getLogger("ctrguard.slack.sdk").setLevel(logging.WARNING)


def test_submit_returns_without_waiting_for_slack(slack_emulator, slack_redis_url):
    settings = make_settings(slack_redis_url, slack_emulator)
    slack_emulator.delay_next(3)                     # Slack hangs on the first call
    n = SlackNotifier(settings)
    try:
        from ctrguard.sinks.incidents import IncidentTracker
        t = IncidentTracker()
        n.submit(t.observe([make_alert("a", 0)]))
        assert slack_emulator.wait_for(lambda e: e.pending_faults() == 0, timeout=5)
        # While the delivery thread is stuck in that call, submit keeps accepting.
        n.submit(t.observe([make_alert("b", 0)]))
        assert n.pending() == 2 and slack_emulator.calls == []
        assert n.drain(15)
    finally:
        n.stop()


def test_stop_that_lands_while_the_thread_reads_the_outbox_is_not_slept_through(
        slack_emulator, slack_redis_url):
    # stop() sets _stop, then _wake; the delivery loop clears _wake before it reads the
    # outbox. A stop in between must not leave the thread in a full idle wait (a close
    # waited 0.5 s for it).
    n = SlackNotifier(make_settings(slack_redis_url, slack_emulator))
    naps_after_stop: list[float] = []
    real_wait, real_xrange = n._wake.wait, n.redis.xrange

    def wait(timeout=None):
        if n._stop.is_set():
            naps_after_stop.append(timeout)
        return real_wait(timeout)

    def xrange(*args, **kwargs):
        if not n._stop.is_set():  # what stop() does, from "another thread", at this point
            n._stop.set()
            n._wake.set()
        return real_xrange(*args, **kwargs)

    n._wake.wait, n.redis.xrange = wait, xrange
    n.start()
    thread = n._thread
    thread.join(5)
    assert not thread.is_alive()
    assert naps_after_stop == []
    n.stop()


def test_redis_keys_are_namespaced(slack_emulator, slack_redis_url, partitions):
    sink = partitions(make_settings(slack_redis_url, slack_emulator))
    sink.write_batch([make_alert("<!channel> " + "k" * 5000, window=0)])
    assert sink.drain(10)
    r = redis.Redis.from_url(slack_redis_url, decode_responses=True)
    keys = sorted(r.keys("*"))
    # The Slack step's own keys, the incident links of the quarantine flags and the
    # incident's facts for feedback export (docs/redis-keys.md), never the campaign id.
    assert keys and all(k.startswith(("ctrguard:slack:", "ctrguard:incident:",
                                      "ctrguard:incidents", "ctrguard:link:",
                                      "ctrguard:feedback:incident:"))
                        for k in keys)
    assert any(k.startswith("ctrguard:slack:") for k in keys)
    assert max(len(k) for k in keys) < 100


def test_revision_that_renders_the_same_is_not_edited(
        slack_emulator, slack_redis_url, partitions):
    """A new revision whose message shows nothing new costs no chat.update."""
    from dataclasses import replace

    from ctrguard.sinks.incidents import IncidentTracker

    sink = partitions(make_settings(slack_redis_url, slack_emulator))
    tracker = IncidentTracker()
    (opened,) = tracker.observe([make_alert(window=0)])
    (grown,) = tracker.observe([make_alert(window=1)])
    same = replace(grown, incident=replace(grown.incident, revision=grown.revision + 1))
    sink.notifier.submit([opened])
    assert sink.drain(10)
    sink.notifier.submit([grown])
    assert sink.drain(10)
    sink.notifier.submit([same])
    assert sink.drain(10)
    assert slack_emulator.methods() == ["chat.postMessage", "chat.update"]

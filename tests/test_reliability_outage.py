"""Outages of the services around the flow, with real processes.

* Redis killed mid-run (``kill -9`` of ``redis-server``) and restarted on the same port
  after ``REDIS_OUTAGE_S``: no figure reaches Kafka while its flag cannot be written; when
  Redis is back everything catches up; nothing is lost.
* Slack answering 5xx, then 429 with ``Retry-After``, then timing out: the flow drains its
  input and exits while Slack is still failing (it never waits on Slack); the updates wait in
  the Redis outbox and are delivered later, once each and in order.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import msgspec
import pytest
from confluent_kafka import Consumer, TopicPartition

from ctrguard.config import load_config_text
from ctrguard.sinks.quarantine import QuarantineReader
from ctrguard.sinks.redis_client import make_redis
from ctrguard.sinks.slack import SlackNotifier
from devtools.services import produce_all
from devtools.slack_emulator import SlackEmulator
from tests.slack_fixtures import TOKEN as SLACK_TOKEN
from tests.test_reliability_crash import crash_stream
from tests.test_reliability_support import (
    W,
    collect,
    config_yaml,
    run_to_end,
    start_run,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REDIS_OUTAGE_S = 4.0


class FigureWatcher(threading.Thread):
    """Reads the figures topic as they arrive, noting when each arrived."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(daemon=True)
        self.arrivals: list[tuple[float, dict]] = []
        self._stop_event = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watch",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 20})
        self._consumer.assign([TopicPartition(topic, 0, 0)])

    def run(self) -> None:
        while not self._stop_event.is_set():
            for m in self._consumer.consume(500, 0.02):
                if not m.error():
                    self.arrivals.append((time.monotonic(), msgspec.json.decode(m.value())))
        self._consumer.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def _setup(broker, topic_factory, tmp_path, redis_url, *, slack_url=None, batch_size=500):
    topics = topic_factory()
    imps, clicks = crash_stream()
    produce_all(broker.bootstrap, topics["impressions"], imps)
    produce_all(broker.bootstrap, topics["clicks"], clicks)
    text = config_yaml(broker.bootstrap, topics, redis_url, slack_base_url=slack_url,
                       batch_size=batch_size)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    settings = load_config_text(text, source=str(path), env={"SLACK_BOT_TOKEN": SLACK_TOKEN})
    return topics, path, settings


def _without_topic(dead: Counter) -> Counter:
    """Dead letters of two runs over different input topics, made comparable."""
    return Counter({(v, tuple(h for h in hs if h[0] != "ctrguard-source-topic")): n
                    for (v, hs), n in dead.items()})


def test_redis_killed_mid_run_holds_figures_back_then_catches_up(
        broker, topic_factory, redis_factory, tmp_path):
    clean_redis = redis_factory()
    (tmp_path / "clean").mkdir()
    ctopics, cpath, csettings = _setup(broker, topic_factory, tmp_path / "clean",
                                       clean_redis.url)
    run_to_end(cpath, tmp_path / "clean.log", extra_args=["--no-slack"])
    clean = collect(broker.bootstrap, ctopics, csettings)

    server = redis_factory()
    topics, path, settings = _setup(broker, topic_factory, tmp_path, server.url, batch_size=20)
    watcher = FigureWatcher(broker.bootstrap, topics["figures"])
    watcher.start()
    proc = start_run(path, tmp_path / "run.log", extra_args=["--no-slack"])
    try:
        deadline = time.monotonic() + 60
        while len(watcher.arrivals) < 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.popen.poll() is None, "the run ended before the outage"
        server.kill()
        killed_at = time.monotonic()
        before = len(watcher.arrivals)
        time.sleep(REDIS_OUTAGE_S)
        grace = [f for t, f in watcher.arrivals if killed_at <= t <= killed_at + 0.5]
        during = [f for t, f in watcher.arrivals if t > killed_at + 0.5]
        assert proc.popen.poll() is None, "the flow died with Redis instead of waiting"
        server.restart()
        back_at = time.monotonic()
        rc = proc.wait(120)
        assert rc == 0, proc.log()[-3000:]
    finally:
        proc.kill9()
        time.sleep(0.3)
        watcher.stop()
    # Fail closed: nothing was published while Redis could not take the flags (a batch
    # whose flags Redis had confirmed before the kill may finish within the 0.5 s grace).
    assert during == [], f"{len(during)} figures published while Redis was down"
    assert "redis unavailable" in proc.log()
    after = [f for t, f in watcher.arrivals if t >= back_at]
    assert after, "nothing was published after Redis came back"
    # Nothing lost: every window's figure, as in a clean run.
    run = collect(broker.bootstrap, topics, settings)
    assert run.figures == clean.figures
    assert run.alerts == clean.alerts
    assert _without_topic(run.dead) == _without_topic(clean.dead)
    # Redis came back empty (no persistence): the flags of every window decided after the
    # outage began are there, and each figure published since agrees with Redis.
    reader = QuarantineReader(make_redis(settings.redis), settings.redis.key_prefix,
                              window_length_s=W)
    for fig in after:
        st = reader.status(fig["campaign_id"], fig["segment"], fig["window_start_s"])
        expected = "quarantined" if fig["status"] == "quarantined" else "clean"
        assert st.state == expected, (fig, st)
    later_flags = {k: v for k, v in clean.flags.items()
                   if k[2] >= min(f["window_start_s"] for f in after)}
    assert all(run.flags.get(k) == v for k, v in later_flags.items())
    print(f"[measure] redis outage {REDIS_OUTAGE_S}s: {before} figures before, "
          f"{len(grace)} in the 0.5 s grace (confirmed by Redis before the kill), "
          f"{len(during)} during, {len(after)} after; {len(later_flags)} flags rewritten")


def test_slack_down_then_rate_limited_then_timing_out(broker, topic_factory, redis_factory,
                                                       tmp_path):
    redis_server = redis_factory()
    # Reference: the same input with a healthy Slack.
    with SlackEmulator(token=SLACK_TOKEN) as healthy:
        (tmp_path / "clean").mkdir()
        ctopics, cpath, csettings = _setup(broker, topic_factory, tmp_path / "clean",
                                           redis_factory().url, slack_url=healthy.base_url)
        run_to_end(cpath, tmp_path / "clean.log")
        clean = collect(broker.bootstrap, ctopics, csettings, healthy)
        clean_history = {m.text: [h["text"] for h in m.history] + [m.text]
                         for m in healthy.messages("#ctr-alerts", top_level=True)}

    with SlackEmulator(token=SLACK_TOKEN) as slack:
        # 20 x 503, 2 x 429 (Retry-After 1 s), 2 x no answer within the 2 s client timeout.
        slack.fail_next(503, times=20)
        slack.fail_next(429, retry_after=1, times=2)
        slack.fail_next(503, delay=3.0, times=2)
        topics, path, settings = _setup(broker, topic_factory, tmp_path, redis_server.url,
                                        slack_url=slack.base_url)
        started = time.monotonic()
        run_to_end(path, tmp_path / "run.log")
        flow_s = time.monotonic() - started
        # The flow drained its input and exited while Slack was still failing.
        still_failing = slack.pending_faults()
        assert still_failing > 0, "Slack recovered before the flow ended: nothing proven"
        run = collect(broker.bootstrap, topics, settings, slack)
        assert run.outbox_left > 0
        assert run.figures == clean.figures and run.alerts == clean.alerts
        waiting = run.outbox_left
        # Slack recovers; the next start's delivery thread empties the outbox.
        notifier = SlackNotifier(settings)
        try:
            assert notifier.drain(90), "outbox not delivered after Slack recovered"
        finally:
            notifier.stop()
        run = collect(broker.bootstrap, topics, settings, slack)
        failed = Counter(c.status for c in slack.calls if not c.ok)
    assert run.outbox_left == 0
    assert run.slack_posts == clean.slack_posts
    assert all(n == 1 for n in run.slack_posts.values())
    assert not [k for k, n in run.slack_updates.items() if n > 1]
    assert run.slack_final == clean.slack_final
    # In order: each message went through its versions in the healthy run's order
    # (queued updates of one incident may be merged into the last one, never reordered).
    for m in slack.messages("#ctr-alerts", top_level=True):
        versions = [h["text"] for h in m.history] + [m.text]
        ref = clean_history[m.text]
        positions = [ref.index(v) for v in versions]
        assert positions == sorted(positions), versions
    print(f"[measure] slack outage: flow exited after {flow_s:.1f}s with {still_failing} "
          f"scripted faults left and {waiting} updates queued; failed calls {dict(failed)}")

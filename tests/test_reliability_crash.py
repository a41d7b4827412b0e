"""Crash and resume: ``kill -9`` the live flow mid-stream, restart it, compare with a clean run.

Every test runs ``ctrguard run`` as a real process (tansu broker, redis-server, slack-sdk
against the Slack emulator). The process is killed either by a fault-injection point
(``CTRGUARD_CRASH_AT``, ``os._exit(137)``: no cleanup at all) or by SIGKILL from outside.
It is then restarted with Bytewax recovery (``python -m bytewax.recovery DIR 1`` once, then
``ctrguard run --recovery-dir DIR``, snapshots every 0.5 s) and drained. The result must
equal a clean run's: same figure per (campaign, segment, window) (repeats allowed, but
identical), same alerts, every quarantine flag, the same dead letters exactly once, every
Slack message and reply exactly once and no ``chat.update`` applied twice.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from ctrguard.config import load_config_text
from devtools.services import consume_to_eof, ensure_topics, produce_all, start_redis
from devtools.slack_emulator import SlackEmulator
from tests.slack_fixtures import TOKEN as SLACK_TOKEN
from tests.test_reliability_support import (
    T0,
    Outcome,
    assert_same_as_clean,
    collect,
    config_yaml,
    ev,
    expire_slack_lease,
    init_recovery,
    output_topics,
    run_to_end,
    start_run,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOURS = 5
OUTAGE = (3 * 3600, 3 * 3600 + 45 * 60)
#: Malformed messages spread through the impressions, and events late beyond any doubt at
#: the end of it (the click topic is long at its end by then).
BROKEN = [b"{not json", b"\xff\xfe\x00", b'{"event_id": 7, "ts": 1, "campaign_id": "c"}',
          b'{"event_id": "x", "campaign_id": "big"}', b"[]", b"null"]


def crash_stream(seed: int = 11):
    """Two campaigns, ~120 impressions a minute at 4% CTR; "big" loses its clicks during
    ``OUTAGE`` (one incident, quarantined windows). ~50 dead letters."""
    rng = np.random.default_rng(seed)
    imps, clicks = [], []
    n = 0
    for minute in range(HOURS * 60):
        base = T0 + minute * 60
        for off in np.sort(rng.uniform(0, 60, rng.poisson(120))):
            n += 1
            camp = "big" if rng.random() < 0.7 else "small"
            dev = "mobile" if rng.random() < 0.6 else "desktop"
            imps.append(ev(f"i{n}", base + off, campaign=camp, device=dev))
            if rng.random() < 0.04 and not (camp == "big" and OUTAGE[0] <= minute * 60 < OUTAGE[1]):
                clicks.append(ev(f"k{n}", base + off + 2, campaign=camp, device=dev))
        if minute % 7 == 3:
            imps.append(BROKEN[minute % len(BROKEN)] + str(minute).encode())
    imps += [ev(f"late{i}", T0 + 60 + i, campaign="small") for i in range(5)]
    return imps, clicks


class Scenario:
    """Shared input topics and a clean run's outcome, computed once for the module."""

    def __init__(self, broker, redis_server, tmp: Path):
        self.broker = broker
        self.redis = redis_server
        self.tmp = tmp
        prefix = f"t-{uuid.uuid4().hex[:12]}"
        self.inputs = {"impressions": f"{prefix}-impressions", "clicks": f"{prefix}-clicks"}
        ensure_topics(broker.bootstrap, list(self.inputs.values()))
        imps, clicks = crash_stream()
        self.n_events = len(imps) + len(clicks)
        produce_all(broker.bootstrap, self.inputs["impressions"], imps)
        produce_all(broker.bootstrap, self.inputs["clicks"], clicks)
        self.clean = self.run_clean()

    def new_run(self, name: str, batch_size: int = 500):
        """Fresh output topics, a Redis key prefix and a Slack emulator for one run."""
        topics = output_topics(self.broker.bootstrap, self.inputs)
        emulator = SlackEmulator(token=SLACK_TOKEN).start()
        prefix = f"r{time.monotonic_ns()}"
        text = config_yaml(self.broker.bootstrap, topics, self.redis.url, prefix=prefix,
                           slack_base_url=emulator.base_url, batch_size=batch_size)
        path = self.tmp / f"{name}-{prefix}.yaml"
        path.write_text(text)
        settings = load_config_text(text, source=str(path), env={"SLACK_BOT_TOKEN": SLACK_TOKEN})
        return topics, emulator, settings, path

    def run_clean(self) -> Outcome:
        topics, emulator, settings, path = self.new_run("clean")
        try:
            run_to_end(path, self.tmp / "clean.log")
            return collect(self.broker.bootstrap, topics, settings, emulator)
        finally:
            emulator.stop()


@pytest.fixture(scope="module")
def scenario(broker, tmp_path_factory):
    with start_redis() as redis_server:
        yield Scenario(broker, redis_server, tmp_path_factory.mktemp("crash"))


def test_clean_run_has_what_the_crash_tests_compare(scenario):
    """The reference itself: the crash tests below are only as strong as what it holds."""
    clean = scenario.clean
    assert len(clean.figures) >= 300
    assert any(b"quarantined" in next(iter(v)) for v in clean.figures.values())
    assert clean.flags and set(clean.flags.values()) == {"quarantined"}
    assert sum(clean.dead.values()) >= 40
    assert sum(1 for (thread, _t) in clean.slack_posts if not thread) >= 1
    assert clean.figure_records == len(clean.figures)  # no repeats without a crash
    assert clean.outbox_left == 0


CRASH_BATCH = 50
SNAPSHOT_S = 0.2
CRASH_POINTS = [
    # (fault spec, what is interrupted)
    ("release.after_redis:40", "flags + watermark in Redis, figures not yet in Kafka"),
    ("release.after_publish:25", "figures published, Bytewax not yet moved on"),
    ("deadletter.after_produce:4", "dead letters written, before the next batch"),
    ("slack.after_call:1", "first Slack post made and recorded, outbox entry not yet done"),
    ("slack.after_call:2", "a later Slack call (update/reply) made, entry not yet done"),
]


@pytest.mark.parametrize("crash_at", [c[0] for c in CRASH_POINTS])
def test_crash_at_point_then_resume_with_recovery(scenario, crash_at, tmp_path):
    # Small input batches: the run lasts a few seconds, so snapshots (every 0.2 s) are
    # taken before the crash and the restart resumes from one, not from the beginning.
    topics, emulator, settings, path = scenario.new_run(crash_at.replace(":", "-"),
                                                        batch_size=CRASH_BATCH)
    recovery = tmp_path / "recovery"
    init_recovery(recovery)
    try:
        proc = start_run(path, tmp_path / "run1.log", recovery_dir=recovery, crash_at=crash_at,
                         snapshot_s=SNAPSHOT_S)
        rc = proc.wait()
        assert rc == 137, f"expected the crash at {crash_at}, exit {rc}:\n{proc.log()[-3000:]}"
        assert f"crashing at {crash_at.split(':')[0]}" in proc.log()
        before = len(consume_to_eof(scenario.broker.bootstrap, topics["figures"]))
        if crash_at.startswith(("release", "deadletter")):
            assert before < len(scenario.clean.figures), "the crash came after the last figure"
        expire_slack_lease(settings)
        run_to_end(path, tmp_path / "run2.log", recovery_dir=recovery, snapshot_s=SNAPSHOT_S)
        run = collect(scenario.broker.bootstrap, topics, settings, emulator)
    finally:
        emulator.stop()
    print(f"[measure] {crash_at}: {before} figure records before the crash, "
          f"{run.figure_records} after the restart, {len(scenario.clean.figures)} windows")
    assert_same_as_clean(scenario.clean, run)


def test_kill9_from_outside_twice_then_resume(scenario, tmp_path):
    """SIGKILL from outside at arbitrary moments: once after the first 60 figures, then
    again 60 figure records into the resumed run (small batches keep each run long enough
    to be killed; the whole stream has 360 windows)."""
    from confluent_kafka import Consumer, TopicPartition

    topics, emulator, settings, path = scenario.new_run("kill9", batch_size=25)
    recovery = tmp_path / "recovery"
    init_recovery(recovery)
    watcher = Consumer({"bootstrap.servers": scenario.broker.bootstrap, "group.id": "w",
                        "enable.auto.commit": False})
    watcher.assign([TopicPartition(topics["figures"], 0, 0)])
    seen = 0
    try:
        for i in range(2):
            target = seen + 60
            proc = start_run(path, tmp_path / f"run{i}.log", recovery_dir=recovery)
            deadline = time.monotonic() + 120
            while proc.popen.poll() is None and seen < target and time.monotonic() < deadline:
                seen += sum(1 for m in watcher.consume(500, 0.02) if not m.error())
            assert proc.popen.poll() is None, "the run ended before it could be killed"
            proc.kill9()
            expire_slack_lease(settings)
        run_to_end(path, tmp_path / "final.log", recovery_dir=recovery)
        run = collect(scenario.broker.bootstrap, topics, settings, emulator)
    finally:
        watcher.close()
        emulator.stop()
    assert_same_as_clean(scenario.clean, run)


def test_restart_without_recovery_does_not_realert_or_double_dead_letters(scenario, tmp_path):
    """No recovery configured: the second run re-reads everything from the beginning.
    Figures repeat (identical); Slack gets nothing new; no dead letter is written twice."""
    topics, emulator, settings, path = scenario.new_run("norecovery")
    try:
        run_to_end(path, tmp_path / "run1.log")
        first = collect(scenario.broker.bootstrap, topics, settings, emulator)
        calls_before = len([c for c in emulator.calls if c.ok])
        run_to_end(path, tmp_path / "run2.log")
        second = collect(scenario.broker.bootstrap, topics, settings, emulator)
        new_calls = [c for c in emulator.calls[calls_before:] if c.ok]
    finally:
        emulator.stop()
    assert_same_as_clean(scenario.clean, first)
    assert_same_as_clean(scenario.clean, second)
    assert second.figure_records == 2 * first.figure_records  # really re-read everything
    assert not [c.method for c in new_calls if c.method in ("chat.postMessage", "chat.update")]

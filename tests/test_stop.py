"""Ctrl-C and SIGTERM stop ``ctrguard run`` cleanly (issue 15, item 7).

Reproduction on main: Ctrl-C on ``ctrguard run`` printed a Rust panic and a
``BytewaxRuntimeError`` traceback and exited 1 (the README promises 130); SIGTERM exited 143
with nothing logged. Now the first signal stops the flow at a batch boundary: the input
partitions end at their next poll, the shards keep their open windows (they are not closed
as at the end of a drained stream), Bytewax writes the snapshot, and the command exits 130
(SIGINT) or 0 (SIGTERM) with a log line and no panic text. Restarted with recovery, the run
continues where it stopped: the result equals a clean run's, no figure is published twice
and no Slack message is posted twice.

Real processes and services: ``ctrguard run`` (one process, its own process group, as a
shell starts it), the tansu broker, ``redis-server``, slack-sdk against the Slack emulator.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from devtools.services import consume_to_eof
from tests.test_reliability_crash import scenario  # noqa: F401 - the module's fixture
from tests.test_reliability_support import (
    assert_same_as_clean,
    collect,
    init_recovery,
    run_to_end,
    start_run,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PANIC_TEXT = ("panicked", "Traceback", "BytewaxRuntimeError", "RUST_BACKTRACE", "KeyboardInterrupt")


def _run_until_figures(scenario, path, log_path, recovery, topics, count):  # noqa: F811
    """Start ``ctrguard run`` with recovery and return it once ``count`` figure records are
    out (while it is still running)."""
    watcher = Consumer({"bootstrap.servers": scenario.broker.bootstrap, "group.id": "stop-w",
                        "enable.auto.commit": False})
    watcher.assign([TopicPartition(topics["figures"], 0, 0)])
    seen = 0
    try:
        proc = start_run(path, log_path, recovery_dir=recovery, snapshot_s=0.2)
        deadline = time.monotonic() + 120
        while proc.popen.poll() is None and seen < count and time.monotonic() < deadline:
            seen += sum(1 for m in watcher.consume(500, 0.02) if not m.error())
    finally:
        watcher.close()
    assert proc.popen.poll() is None, f"the run ended before it could be stopped:\n{proc.log()}"
    return proc


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 0)],
                         ids=["ctrl-c", "sigterm"])
def test_a_signal_stops_at_a_batch_boundary_and_recovery_continues(scenario, signum, code,  # noqa: F811
                                                                   tmp_path):
    topics, emulator, settings, path = scenario.new_run(f"stop-{signum}", batch_size=25)
    recovery = tmp_path / "recovery"
    init_recovery(recovery)
    try:
        proc = _run_until_figures(scenario, path, tmp_path / "run1.log", recovery, topics, 60)
        if signum == signal.SIGINT:
            os.killpg(proc.popen.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        else:
            proc.popen.send_signal(signal.SIGTERM)    # a service manager: the process
        rc = proc.wait(60)
        log = proc.log()
        assert rc == code, log[-3000:]
        name = signal.Signals(signum).name
        assert f"{name} received: stopping at the end of the current batch" in log
        assert f"stopped on {name}; state snapshotted" in log
        for text in PANIC_TEXT:
            assert text not in log, f"{text!r} in the log:\n{log[-3000:]}"
        before = len(consume_to_eof(scenario.broker.bootstrap, topics["figures"]))
        assert before < len(scenario.clean.figures), "stopped after the last figure"
        run_to_end(path, tmp_path / "run2.log", recovery_dir=recovery, snapshot_s=0.2)
        run = collect(scenario.broker.bootstrap, topics, settings, emulator)
    finally:
        emulator.stop()
    print(f"[measure] {name}: exit {rc}, {before} figure records before the stop, "
          f"{run.figure_records} after the restart, {len(scenario.clean.figures)} windows")
    assert_same_as_clean(scenario.clean, run)
    # The stop's own snapshot: the restart resumed exactly where the stop was, so no
    # figure was published twice (after a crash, the last snapshot is older: repeats).
    assert run.figure_records == len(scenario.clean.figures)


def test_a_second_signal_exits_at_once_and_recovery_still_holds(scenario, tmp_path):  # noqa: F811
    """A stop that cannot finish: Redis hangs (SIGSTOP), so the release sink holds the
    figures back and the batch never completes. The first Ctrl-C asks for a stop and the
    flow keeps waiting (fail closed); the second exits at once, 130, without a snapshot;
    the restart resumes from the last one."""
    topics, emulator, settings, path = scenario.new_run("stop-twice", batch_size=25)
    recovery = tmp_path / "recovery"
    init_recovery(recovery)
    redis_pid = scenario.redis.pid
    try:
        proc = _run_until_figures(scenario, path, tmp_path / "run1.log", recovery, topics, 60)
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 60
            while "redis unavailable" not in proc.log() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "redis unavailable" in proc.log(), proc.log()[-3000:]
            os.killpg(proc.popen.pid, signal.SIGINT)
            time.sleep(2)
            assert proc.popen.poll() is None, "stopped with figures held back"
            assert "SIGINT received: stopping" in proc.log()
            os.killpg(proc.popen.pid, signal.SIGINT)
            assert proc.wait(30) == 130
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        log = proc.log()
        assert "SIGINT again: exiting now, without a snapshot" in log
        for text in PANIC_TEXT:
            assert text not in log, f"{text!r} in the log:\n{log[-3000:]}"
        from tests.test_reliability_support import expire_slack_lease

        expire_slack_lease(settings)
        run_to_end(path, tmp_path / "run2.log", recovery_dir=recovery, snapshot_s=0.2)
        run = collect(scenario.broker.bootstrap, topics, settings, emulator)
    finally:
        emulator.stop()
    assert_same_as_clean(scenario.clean, run)

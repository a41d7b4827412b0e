"""``kill -9`` of the live flow while a Slack call is in flight, then a restart with recovery.

The Slack emulator holds the answer to one ``chat.postMessage`` (the incident's message, or
a thread reply) for far longer than the test needs; the flow process is SIGKILLed while its
delivery thread waits for that answer. Before the kill the test checks that the call really
is in flight: the attempt marker is in Redis (``P:slack:step:<key>:<step>:attempted``) and
the call's result is not. Three cases:

* ``post-acted``: Slack posted the incident message, its answer never reached the process;
* ``reply-acted``: the same for a thread reply (the incident message went through);
* ``post-not-acted``: Slack held the request and never acted on it (it answers 503 to the
  dead client later).

After the restart (Bytewax recovery, snapshots every 0.2 s, the dead process's delivery
lease expired) the result must equal the clean run's, and the emulator must hold exactly
as many messages, top-level and replies, as the clean run posted: nothing posted twice,
nothing lost.
"""

from __future__ import annotations

import time

import pytest

from ctrguard.sinks.redis_client import make_redis
from devtools.services import start_redis
from tests.test_reliability_crash import Scenario
from tests.test_reliability_support import (
    assert_same_as_clean,
    collect,
    expire_slack_lease,
    init_recovery,
    run_to_end,
    start_run,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Seconds the emulator holds the answer: far beyond the kill, which comes within ~10 ms.
HELD_S = 60.0
BATCH = 50
SNAPSHOT_S = 0.2
CASES = ["post-acted", "reply-acted", "post-not-acted"]


@pytest.fixture(scope="module")
def slack_scenario(broker, tmp_path_factory):
    with start_redis() as redis_server:
        yield Scenario(broker, redis_server, tmp_path_factory.mktemp("slackcrash"))


def _in_flight_marker(client, prefix: str, step: str) -> str | None:
    """An attempt marker of ``step`` whose call has no recorded result yet."""
    for raw in client.scan_iter(match=f"{prefix}:slack:step:*:{step}:attempted", count=1000):
        marker = raw.decode() if isinstance(raw, bytes) else raw
        if not client.exists(marker.removesuffix(":attempted")):
            return marker
    return None


def _wait_in_flight(client, prefix: str, step: str, emulator, *, acted: bool, proc,
                    timeout: float = 90.0) -> str:
    """Wait until a ``step`` call is in flight (and, if ``acted``, Slack has carried it out).
    """
    thread = step == "reply"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.popen.poll() is None, f"the run ended first:\n{proc.log()[-3000:]}"
        marker = _in_flight_marker(client, prefix, step)
        if marker is not None and (not acted or any(
                c.method == "chat.postMessage" and c.ok
                and bool(c.payload.get("thread_ts")) == thread for c in emulator.calls)):
            return marker
        time.sleep(0.005)
    raise AssertionError(f"no {step} call in flight within {timeout} s:\n{proc.log()[-3000:]}")


def test_clean_run_has_a_post_and_a_reply(slack_scenario):
    posts = slack_scenario.clean.slack_posts
    assert sum(n for (thread, _t), n in posts.items() if not thread) >= 1
    assert sum(n for (thread, _t), n in posts.items() if thread) >= 1


@pytest.mark.parametrize("case", CASES)
def test_kill9_during_slack_call_then_resume_posts_nothing_twice(slack_scenario, case,
                                                                   tmp_path):
    sc = slack_scenario
    topics, emulator, settings, path = sc.new_run(f"slackkill-{case}", batch_size=BATCH)
    prefix = settings.redis.key_prefix
    step = "reply" if case == "reply-acted" else "post"
    if case == "reply-acted":
        emulator.fail_next(200, method="chat.postMessage")  # a pass: the incident post is normal
    if case == "post-not-acted":
        emulator.fail_next(503, delay=HELD_S, method="chat.postMessage")
    else:
        emulator.lose_response_next(HELD_S, method="chat.postMessage")
    recovery = tmp_path / "recovery"
    init_recovery(recovery)
    client = make_redis(settings.redis)
    try:
        proc = start_run(path, tmp_path / "run1.log", recovery_dir=recovery,
                         snapshot_s=SNAPSHOT_S)
        try:
            marker = _wait_in_flight(client, prefix, step, emulator,
                                     acted=case != "post-not-acted", proc=proc)
        finally:
            proc.kill9()
        # Killed mid-call: the attempt was recorded, its result never was.
        assert client.exists(marker), marker
        assert not client.exists(marker.removesuffix(":attempted")), "the call had finished"
        posted_before = len(emulator.messages())
        expire_slack_lease(settings)
        log = run_to_end(path, tmp_path / "run2.log", recovery_dir=recovery,
                         snapshot_s=SNAPSHOT_S)
        run = collect(sc.broker.bootstrap, topics, settings, emulator)
        messages = emulator.messages()
        # The step of the killed call is recorded now, by the restarted process.
        assert client.exists(marker.removesuffix(":attempted"))
    finally:
        client.close()
        emulator.stop()
    print(f"[measure] {case}: {posted_before} messages in Slack at the kill, "
          f"{len(messages)} after the restart; clean run {sum(sc.clean.slack_posts.values())}")
    assert "Traceback" not in log
    assert_same_as_clean(sc.clean, run)
    # Counted in the emulator itself: every message the clean run posted, each exactly once.
    clean_tops = sum(n for (thread, _t), n in sc.clean.slack_posts.items() if not thread)
    assert len(messages) == sum(sc.clean.slack_posts.values())
    assert len([m for m in messages if m.thread_ts is None]) == clean_tops
    texts = [(m.thread_ts is not None, m.text) for m in messages]
    assert len(set(texts)) == len(texts), "a message was posted twice"

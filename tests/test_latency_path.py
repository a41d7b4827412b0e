"""The window-close-to-release path: decisions travel as one batch per shard, the release
sink writes a whole activation in one Redis transaction and one Kafka flush, shards skip
snapshots Bytewax would drop, and the latency benchmark's Redis poller stays cheap."""

from __future__ import annotations

import pickle
import time
from functools import partial

import pytest

from ctrguard.config import load_config_text
from ctrguard.flows.ctr_flow import DecisionBatch, ShardLogic, _pack, build_monitor_for, is_decision
from ctrguard.flows.engine import DeadLetter, ShardState
from ctrguard.records import WindowDecision
from ctrguard.sinks.release import ReleaseGate, ReleaseSink


def _decision(cid: str, start: int = 1767611100) -> WindowDecision:
    return WindowDecision(cid, start, start + 300, (), ())


def _late(offset: int) -> DeadLetter:
    return DeadLetter("late", "window closed", "imp", 0, offset, b"{}")


def test_decisions_leave_a_shard_as_one_batch_and_late_events_stay_single():
    d1, d2 = _decision("c1"), _decision("c2")
    late = _late(7)
    out = _pack([d1, late, d2])
    assert out[:-1] == [late]
    assert isinstance(out[-1], DecisionBatch) and list(out[-1]) == [d1, d2]
    assert [is_decision(x) for x in out] == [False, True]
    assert _pack([late]) == [late]
    assert _pack([]) == []
    assert pickle.loads(pickle.dumps(out[-1])) == out[-1]  # crosses processes


def test_release_sink_writes_redis_then_kafka_once_per_call():
    calls: list[tuple[str, list[str]]] = []
    part = ReleaseSink.__new__(ReleaseSink)  # no Redis, no Kafka: the gate only
    part._gate = ReleaseGate(lambda ds: calls.append(("redis", [d.campaign_id for d in ds])),
                             lambda ds: calls.append(("kafka", [d.campaign_id for d in ds])))
    part.write_batch([DecisionBatch([_decision("a"), _decision("b")]), DecisionBatch([]),
                      _decision("c"), DecisionBatch([_decision("d")])])
    assert calls == [("redis", ["a", "b", "c", "d"]), ("kafka", ["a", "b", "c", "d"])]


@pytest.mark.parametrize("snapshots", [True, False])
def test_shard_snapshot_only_when_recovery_keeps_it(snapshots):
    settings = load_config_text("segments:\n  dimensions: [device]\n", source="test", env={})
    state = ShardState(settings, ["imp:0", "clk:0"], partial(build_monitor_for, settings))
    snap = ShardLogic(state, snapshots).snapshot()
    if snapshots:
        assert isinstance(pickle.loads(snap), ShardState)
    else:
        assert snap is None


@pytest.mark.parametrize("recovery", [False, True])
def test_run_snapshots_only_with_a_recovery_directory(monkeypatch, tmp_path, recovery):
    import bytewax.run

    import ctrguard.flows.ctr_flow
    from ctrguard.flows import run_cmd

    seen: dict[str, object] = {}
    monkeypatch.setattr(run_cmd, "preflight", lambda settings: [("t", 0)])
    monkeypatch.setattr(ctrguard.flows.ctr_flow, "get_flow",
                        lambda settings, **kw: seen.update(kw) or "flow")
    monkeypatch.setattr(bytewax.run, "cli_main", lambda flow, **kw: seen.update(ran=flow))
    args = ["run", "--no-slack"] + (["--recovery-dir", str(tmp_path)] if recovery else [])
    import argparse

    parser = argparse.ArgumentParser()
    run_cmd.register(parser.add_subparsers())
    ns = parser.parse_args(args)
    assert ns.func(ns) == 0
    assert seen["ran"] == "flow" and seen["snapshots"] is recovery


def test_latency_poller_reads_all_scores_only_when_one_moved(redis_url):
    import redis

    from bench.latency import _CheckedPoller

    client = redis.Redis.from_url(redis_url)
    key = "bench:checked"
    client.zadd(key, {"c1": 600, "c2": 600})
    poller = _CheckedPoller(redis_url, key, 300, 0.01)
    full_reads = 0
    zrange = poller._client.zrange

    def counting_zrange(*a, **kw):
        nonlocal full_reads
        full_reads += 1
        return zrange(*a, **kw)

    poller._client.zrange = counting_zrange  # type: ignore[method-assign]
    poller.poll_once()
    assert set(poller.seen) == {("c1", 600), ("c2", 600)} and full_reads == 1
    for _ in range(3):
        poller.poll_once()
    assert full_reads == 1  # nothing moved: no full read
    before = time.time()
    client.zadd(key, {"c2": 1200})  # two windows at once
    poller.poll_once()
    assert full_reads == 2
    assert poller.seen[("c2", 900)] >= before and poller.seen[("c2", 1200)] >= before
    assert ("c1", 900) not in poller.seen
    client.zadd(key, {"c3": 900})  # a new campaign
    poller.poll_once()
    assert full_reads == 3 and ("c3", 900) in poller.seen
    poller.poll_once()
    assert full_reads == 3
    client.zadd(key, {"c1": 900})
    poller.poll_once()
    assert full_reads == 4 and ("c1", 900) in poller.seen
    poller._client.close()
    client.close()

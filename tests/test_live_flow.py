"""The live flow end to end: real tansu broker, real redis-server, slack-sdk against the emulator.

Each flow test runs three ways (``run_main``, ``cluster_main`` with one worker and with two)
so partitioning bugs show, as Bytewax's own tests do.
"""

from __future__ import annotations

import threading
from pathlib import Path

import msgspec
import numpy as np
import pytest
from bytewax.testing import cluster_main, run_main

from ctrguard.config import Settings, load_config_text
from ctrguard.flows.ctr_flow import get_flow
from ctrguard.flows.source import list_partitions
from ctrguard.replay.run import run_replay
from ctrguard.sinks.quarantine import QuarantineStore
from ctrguard.sinks.redis_client import make_redis
from devtools.services import consume_to_eof, produce_all
from tests.slack_fixtures import TOKEN as SLACK_TOKEN

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z, seconds
W = 300


def flow_settings(broker, redis_url, topics, *, slack_base_url=None, extra="") -> Settings:
    text = f"""
kafka:
  brokers: ["{broker.bootstrap}"]
  topics:
    impressions: {topics['impressions']}
    clicks: {topics['clicks']}
    figures: {topics['figures']}
    alerts: {topics['alerts']}
    deadletter: {topics['deadletter']}
  tail: false
  batch_size: 500
redis:
  url: "{redis_url}"
windows:
  length: 5m
  allowed_lateness: 2m
  shards: 4
quarantine:
  retention_days: 3650
slack:
  default_channel: "#ctr-alerts"
{extra}
"""
    env = {}
    if slack_base_url:
        text += f"  base_url: \"{slack_base_url}\"\n"
        env["SLACK_BOT_TOKEN"] = SLACK_TOKEN
    return load_config_text(text, source="test.yaml", env=env)


def run_flow(settings: Settings, runner: str, slack: bool = True) -> None:
    flow = get_flow(settings, slack=slack, partitions=list_partitions(settings.kafka))
    if runner == "run_main":
        run_main(flow)
    elif runner == "cluster1":
        cluster_main(flow, [], 0, worker_count_per_proc=1)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=2)


RUNNERS = ["run_main", "cluster1", "cluster2"]


def ev(eid, ts_s, campaign="c1", **extra) -> bytes:
    return msgspec.json.encode({"event_id": eid, "ts": int(ts_s * 1000), "campaign_id": campaign, **extra})


def read_values(broker, topic) -> list[bytes]:
    return [m.value() for m in consume_to_eof(broker.bootstrap, topic)]


def read_json(broker, topic):
    return [msgspec.json.decode(v) for v in read_values(broker, topic)]


# ----------------------------------------------------------------------------- hand count


@pytest.mark.parametrize("runner", RUNNERS)
def test_figures_equal_hand_count(broker, redis_url, unique_topics, runner):
    imps = [
        ev("i1", T0 + 10, device="mobile"),
        ev("i2", T0 + 20, device="desktop", channel="email"),
        ev("i3", T0 + 30, device="mobile"),
        ev("i1", T0 + 10, device="mobile"),                       # duplicate
        ev("i4", T0 + W + 5, device="mobile"),                    # window 2
        ev("i5", T0 + 50, device="mobile"),                       # out of order, in lateness
        ev("q1", T0 + 40, is_internal=True),                      # internal
        ev("b1", T0 + 40, user_agent="Mozilla/5.0 (compatible; bingbot/2.0)"),  # bot
        ev("i6", T0 + 3 * W + 200, device="desktop"),             # moves time on
        b"{broken json",                                          # malformed
        b'{"event_id": "x", "ts": "yesterday", "campaign_id": "c1"}',
    ]
    clicks = [ev("k1", T0 + 15, device="mobile"), ev("k1", T0 + 15, device="mobile"),
              ev("k2", T0 + 25, device="desktop", channel="email"),
              ev("k3", T0 + 3 * W + 210, device="desktop")]
    produce_all(broker.bootstrap, unique_topics["impressions"], imps)
    produce_all(broker.bootstrap, unique_topics["clicks"], clicks)
    settings = flow_settings(broker, redis_url, unique_topics)
    run_flow(settings, runner, slack=False)

    figs = {(f["segment"], f["window_start"]): (f["impressions"], f["clicks"], f["status"])
            for f in read_json(broker, unique_topics["figures"])}
    w0, w1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
    assert figs[("all", w0)] == (4, 2, "ok")
    assert figs[("device=mobile", w0)] == (3, 1, "ok")
    assert figs[("device=desktop", w0)] == (1, 1, "ok")
    assert figs[("channel=email", w0)] == (1, 1, "ok")
    assert figs[("all", w1)] == (1, 0, "ok")
    assert sum(1 for key in figs if key[1] == w0) == 4

    dead = read_values(broker, unique_topics["deadletter"])
    assert len(dead) == 2
    # The original bytes are kept as the record value; the reason travels in a header.
    assert b"{broken json" in dead

    store = QuarantineStore(make_redis(settings.redis), settings.quarantine,
                            settings.redis.key_prefix, window_length_s=W)
    assert store.status("c1", "all", T0).state == "clean"
    assert store.status("c1", "all", T0 + 100 * W).state == "pending"


def test_event_beyond_allowed_lateness_is_dead_lettered(broker, redis_url, unique_topics):
    # One message per batch and one worker: the arrival order is the processing order, so
    # which event is late is exact. (With several workers, lateness is decided per batch.)
    late = ev("late", T0 + 60, device="mobile")
    # Three clicks: a source's frontier is its 3rd-largest time (event_time.frontier_quorum),
    # so the click partition moves past window 0 without waiting for its end.
    produce_all(broker.bootstrap, unique_topics["clicks"],
                [ev(f"k{i}", T0 + 3 * W + 210 + i) for i in range(3)])
    # Thousands of one-message polls before the late event: the click partition has long
    # reported (its messages, then its end) by the time the late event is read. (With 400,
    # on a loaded machine the click consumer's first fetch came after the late event.)
    filler = [ev(f"f{i}", T0 + 3 * W + 200 + i / 10000) for i in range(3000)]
    produce_all(broker.bootstrap, unique_topics["impressions"],
                [ev("i1", T0 + 10), *filler, late])
    settings = flow_settings(broker, redis_url, unique_topics,
                             extra="").model_copy()
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"batch_size": 1})})
    run_flow(settings, "run_main", slack=False)
    figs = {(f["segment"], f["window_start"]): f["impressions"]
            for f in read_json(broker, unique_topics["figures"])}
    assert figs[("all", "2026-01-01T00:00:00Z")] == 1
    assert read_values(broker, unique_topics["deadletter"]) == [late]


def test_dead_letters_carry_reason_headers(broker, redis_url, unique_topics):
    from confluent_kafka import Consumer, TopicPartition

    produce_all(broker.bootstrap, unique_topics["impressions"],
                [b"\xff\xfe not utf-8", b'{"event_id": 1, "ts": 1, "campaign_id": "c"}',
                 ev("ok", T0)])
    settings = flow_settings(broker, redis_url, unique_topics)
    run_flow(settings, "run_main", slack=False)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "t",
                         "enable.partition.eof": True})
    consumer.assign([TopicPartition(unique_topics["deadletter"], 0, 0)])
    reasons = {}
    while True:
        msg = consumer.poll(10)
        assert msg is not None
        if msg.error():
            break
        headers = dict(msg.headers())
        reasons[msg.value()] = headers["ctrguard-reason"].decode()
        assert headers["ctrguard-source-topic"].decode() == unique_topics["impressions"]
    consumer.close()
    assert reasons[b"\xff\xfe not utf-8"] in ("not valid UTF-8",) or "JSON" in reasons[b"\xff\xfe not utf-8"]
    assert "event_id" in reasons[b'{"event_id": 1, "ts": 1, "campaign_id": "c"}']


# ----------------------------------------------------------------------------- outage


def outage_stream(seed=3, hours=5, outage=(3 * 3600, 3 * 3600 + 45 * 60)):
    """One campaign, ~600 impressions/window at 4% CTR, clicks vanish during ``outage``."""
    rng = np.random.default_rng(seed)
    imps, clicks = [], []
    n = 0
    for minute in range(hours * 60):
        base = T0 + minute * 60
        k = rng.poisson(120)
        offsets = np.sort(rng.uniform(0, 60, k))
        for off in offsets:
            n += 1
            dev = "mobile" if rng.random() < 0.6 else "desktop"
            imps.append(ev(f"i{n}", base + off, campaign="big", device=dev))
            if rng.random() < 0.04 and not (outage[0] <= minute * 60 < outage[1]):
                clicks.append(ev(f"k{n}", base + off + 2, campaign="big", device=dev))
    return imps, clicks


@pytest.mark.parametrize("runner", ["run_main", "cluster2"])
def test_click_outage_quarantines_windows_and_posts_one_slack_message(
        broker, redis_url, unique_topics, slack_emulator, runner, tmp_path):
    imps, clicks = outage_stream()
    produce_all(broker.bootstrap, unique_topics["impressions"], imps)
    produce_all(broker.bootstrap, unique_topics["clicks"], clicks)
    settings = flow_settings(broker, redis_url, unique_topics,
                             slack_base_url=slack_emulator.base_url)

    # Watch the figures topic while the flow runs: each figure's Redis status must already
    # be decided when the figure is readable (flag before figure).
    violations: list[str] = []
    seen: list[dict] = []
    stop = threading.Event()
    store = QuarantineStore(make_redis(settings.redis), settings.quarantine,
                            settings.redis.key_prefix, window_length_s=W)

    def watch():
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "watch"})
        c.assign([TopicPartition(unique_topics["figures"], 0, 0)])
        while not stop.is_set():
            for msg in c.consume(500, 0.1):
                if msg.error():
                    continue
                fig = msgspec.json.decode(msg.value())
                seen.append(fig)
                st = store.status(fig["campaign_id"], fig["segment"], fig["window_start_s"])
                expected = "quarantined" if fig["status"] == "quarantined" else "clean"
                if st.state != expected:
                    violations.append(f"{fig['segment']} {fig['window_start']}: figure "
                                      f"{fig['status']} but redis says {st.state}")
        c.close()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    run_flow(settings, runner)
    figures = read_json(broker, unique_topics["figures"])
    stop.set()
    watcher.join(10)
    assert not violations, violations[:5]
    assert len(seen) == len(figures)

    out_start, out_end = T0 + 3 * 3600, T0 + 3 * 3600 + 45 * 60
    quarantined = sorted({f["window_start_s"] for f in figures
                          if f["segment"] == "all" and f["status"] == "quarantined"})
    assert quarantined, "the outage quarantined nothing"
    assert all(out_start <= s < out_end + W for s in quarantined), quarantined
    # Detection within two windows of the outage's start.
    assert quarantined[0] <= out_start + 2 * W
    for s in quarantined:
        assert store.status("big", "all", s).state == "quarantined"
    assert store.status("big", "all", T0 + 3600).state == "clean"

    alerts = read_json(broker, unique_topics["alerts"])
    assert {a["suspected_cause"] for a in alerts if a["quarantine"]} >= {"click_tracking"}
    posts = [c for c in slack_emulator.calls if c.method == "chat.postMessage"
             and not c.payload.get("thread_ts")]
    assert len(posts) == 1, [p.payload.get("text") for p in posts]

    # Replay of the same events gives the same alerts as the live flow.
    imp_path, clk_path = tmp_path / "imp.jsonl", tmp_path / "clk.jsonl"
    imp_path.write_bytes(b"\n".join(imps) + b"\n")
    clk_path.write_bytes(b"\n".join(clicks) + b"\n")
    result = run_replay(imp_path, clk_path, settings, tmp_path / "replay")
    replay_alerts = [msgspec.json.decode(line) for line in result.alerts_path.read_bytes().splitlines()]
    assert sorted(a["alert_id"] for a in replay_alerts) == sorted(a["alert_id"] for a in alerts)


def test_replay_is_deterministic(tmp_path: Path):
    imps, clicks = outage_stream(seed=5, hours=4)
    (tmp_path / "i.jsonl").write_bytes(b"\n".join(imps))
    (tmp_path / "c.jsonl").write_bytes(b"\n".join(clicks))
    settings = load_config_text("", env={})
    a = run_replay(tmp_path / "i.jsonl", tmp_path / "c.jsonl", settings, tmp_path / "a")
    b = run_replay(tmp_path / "i.jsonl", tmp_path / "c.jsonl", settings, tmp_path / "b")
    assert a.alerts_path.read_bytes() == b.alerts_path.read_bytes()
    assert a.figures_path.read_bytes() == b.figures_path.read_bytes()
    assert a.summary == b.summary
    assert a.summary["events_read"] == len(imps) + len(clicks)

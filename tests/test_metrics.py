"""Metrics, health and logs of ``ctrguard run``: a real process against the tansu broker, a
real ``redis-server`` and the Slack emulator, its ``/metrics`` scraped over HTTP while it runs.

Every count the endpoint reports is checked against what the run left behind, read
independently: the events produced, the records on the figures, alerts and dead-letter
topics, the flags and incidents in Redis, the Slack emulator's calls, the offsets committed
for the consumer group. Then every metric ``deploy/prometheus-rules.yaml`` and
``deploy/grafana-dashboard.json`` read is looked for in the same scrape.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from ctrguard.config import load_config_text
from ctrguard.sinks.quarantine import QuarantineReader
from ctrguard.sinks.redis_client import make_redis
from devtools.services import consume_to_eof, ensure_topics, free_port, produce_all
from devtools.slack_emulator import SlackEmulator
from tests.metrics_support import deploy_metric_names, http_get, scrape, wait_for
from tests.slack_fixtures import TOKEN as SLACK_TOKEN
from tests.test_reliability_crash import HOURS, crash_stream
from tests.test_reliability_support import (
    REPO,
    T0,
    W,
    config_yaml,
    ev,
    init_recovery,
    output_topics,
    start_run,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LATENESS_S = 120
#: Impressions far after the stream: they close every window of the stream (the click
#: topic, read to its end, holds nothing back once idle). Five, so that one batch holds at
#: least event_time.frontier_quorum (3) of them: fewer could not move the frontier.
TICK_S = T0 + HOURS * 3600 + 3600
TICKS = 5


def metrics_stream():
    """crash_stream (an incident, malformed messages, late events) plus two duplicates, an
    internal and a bot impression, and the closing ticks."""
    imps, clicks = crash_stream()
    imps = imps[:12] + [imps[10], imps[11]] + imps[12:]
    imps += [ev("q1", T0 + 100, campaign="small", is_internal=True),
             ev("b1", T0 + 100, campaign="small",
                user_agent="Mozilla/5.0 (compatible; Googlebot/2.1)"),
             *(ev(f"tick{i}", TICK_S, campaign="tick") for i in range(TICKS))]
    return imps, clicks


class Run:
    """The module's running flow: started once, scraped by every test below."""

    def __init__(self, broker, redis_server, tmp: Path):
        self.broker = broker
        prefix = f"t-{uuid.uuid4().hex[:12]}"
        self.inputs = {"impressions": f"{prefix}-impressions", "clicks": f"{prefix}-clicks"}
        ensure_topics(broker.bootstrap, list(self.inputs.values()))
        self.imps, self.clicks = metrics_stream()
        produce_all(broker.bootstrap, self.inputs["impressions"], self.imps)
        produce_all(broker.bootstrap, self.inputs["clicks"], self.clicks)
        self.topics = output_topics(broker.bootstrap, self.inputs)
        self.group = f"g-{uuid.uuid4().hex[:8]}"
        self.slack = SlackEmulator(token=SLACK_TOKEN).start()
        text = config_yaml(broker.bootstrap, self.topics, redis_server.url,
                           prefix=f"m{uuid.uuid4().hex[:8]}", slack_base_url=self.slack.base_url,
                           extra="metrics:\n  probe_interval: 1s\nlogging:\n  heartbeat: 1s\n")
        # Tail the topics (the run is scraped while it runs), under a group of its own.
        text = text.replace("  tail: false\n", f"  tail: true\n  group_id: {self.group}\n")
        self.config = tmp / "run.yaml"
        self.config.write_text(text)
        self.settings = load_config_text(text, env={"SLACK_BOT_TOKEN": SLACK_TOKEN})
        recovery = tmp / "recovery"
        init_recovery(recovery)
        self.port = free_port()
        self.proc = start_run(
            self.config, tmp / "run.log", recovery_dir=recovery, drain=False,
            extra_args=["--metrics-port", str(self.port), "--log-format", "json"])
        self.final = self._settle()

    def _settle(self):
        """Scrape until the whole input is read, the figures are out and Slack is done."""
        n_imps, n_clicks = len(self.imps), len(self.clicks)
        figures = []

        def settled():
            m = scrape(self.port)
            consumed = m.by("ctrguard_events_total", "source")
            done = (m.get("ctrguard_events_total", source="impressions", outcome="consumed")
                    == n_imps
                    and m.get("ctrguard_events_total", source="clicks", outcome="consumed")
                    == n_clicks)
            # Every window of the stream closed: the watermark is at the ticks (the click
            # partition, read to its end, claims to be idle after event_time.idle_timeout).
            if not done or m.get("ctrguard_watermark_seconds") != TICK_S - LATENESS_S:
                return None
            figures[:] = consume_to_eof(self.broker.bootstrap, self.topics["figures"])
            published = m.total("ctrguard_figures_published_total")
            outbox = m.get("ctrguard_slack_outbox_messages")
            return m if (consumed and published == len(figures) and figures
                         and outbox == 0 and m.get("ctrguard_quarantined_windows")) else None

        m = wait_for(settled, 180, "the run to read everything and publish its figures",
                     interval=0.5, alive=lambda: self.proc.popen.poll() is None)
        self.figures = [orjson.loads(f.value()) for f in figures]
        return m

    def stop(self) -> int:
        if self.proc.popen.poll() is None:
            self.proc.popen.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(60)
        finally:
            self.slack.stop()


@pytest.fixture(scope="module")
def run(broker, redis_server, tmp_path_factory):
    if not redis_server.is_running():
        redis_server.restart()
    r = Run(broker, redis_server, tmp_path_factory.mktemp("metrics"))
    yield r
    r.stop()


def test_event_counts_match_the_input_and_the_outputs(run):
    m = run.final
    ev_ = {(dict(ls)["source"], dict(ls)["outcome"]): v
           for (n, ls), v in m.samples.items() if n == "ctrguard_events_total"}
    assert ev_[("impressions", "consumed")] == len(run.imps)
    assert ev_[("clicks", "consumed")] == len(run.clicks)
    assert ev_[("impressions", "duplicate")] == 2
    assert ev_[("clicks", "duplicate")] == 0
    assert m.get("ctrguard_events_excluded_total", source="impressions", reason="internal") == 1
    assert m.get("ctrguard_events_excluded_total", source="impressions",
                 reason="bot_user_agent") == 1
    assert ev_[("impressions", "excluded")] == 2

    # Dead letters by reason code, as the dead-letter topic holds them.
    headers = [dict(msg.headers()) for msg in consume_to_eof(run.broker.bootstrap,
                                                             run.topics["deadletter"])]
    stages = Counter(h["ctrguard-stage"].decode() for h in headers)
    codes = Counter(h["ctrguard-reason-code"].decode() for h in headers)
    assert stages["late"] == 5 and stages["parse"] > 20 and len(codes) >= 3
    by_reason = {dict(ls)["reason"]: v for (n, ls), v in m.samples.items()
                 if n == "ctrguard_events_dead_lettered_total" and v}
    assert by_reason == dict(codes)
    assert ev_[("impressions", "dead_lettered")] + ev_[("clicks", "dead_lettered")] \
        == len(headers)

    # Counted: what the figures of the "all" series add up to, plus the open tick window.
    all_series = [f for f in run.figures if f["segment"] == "all"]
    assert ev_[("impressions", "counted")] == sum(f["impressions"] for f in all_series) + TICKS
    assert ev_[("clicks", "counted")] == sum(f["clicks"] for f in all_series)
    # Every consumed event has exactly one outcome.
    for source in ("impressions", "clicks"):
        assert ev_[(source, "consumed")] == sum(
            ev_[(source, o)] for o in ("counted", "excluded", "duplicate", "dead_lettered"))


def test_window_figure_and_alert_counts_match_the_topics(run):
    m = run.final
    windows = {(f["campaign_id"], f["window_start_s"]) for f in run.figures}
    assert m.get("ctrguard_windows_closed_total") == len(windows)
    status = Counter(f["status"] for f in run.figures)
    assert status["quarantined"] > 0
    assert m.by("ctrguard_figures_published_total", "status") == {
        "ok": status["ok"], "quarantined": status["quarantined"]}
    alerts = [orjson.loads(a.value()) for a in consume_to_eof(run.broker.bootstrap,
                                                              run.topics["alerts"])]
    severities = Counter(a["severity"] for a in alerts)
    assert alerts
    assert {k: v for k, v in m.by("ctrguard_alerts_published_total", "severity").items()
            if v} == dict(severities)
    assert m.get("ctrguard_figures_held_back") == 0
    assert m.get("ctrguard_release_redis_failures_total") == 0
    assert m.get("ctrguard_window_close_duration_seconds_count") >= len(
        {f["window_start_s"] for f in run.figures})
    assert m.get("ctrguard_release_duration_seconds_count") > 0
    assert m.get("ctrguard_snapshot_duration_seconds_count") > 0


def test_watermark_and_lags(run):
    m = run.final
    assert m.get("ctrguard_watermark_seconds") == TICK_S - LATENESS_S
    imp, clk = run.inputs["impressions"], run.inputs["clicks"]
    assert m.get("ctrguard_source_event_time_seconds", topic=imp, partition="0") == TICK_S
    # A partition's event time is its frontier: the 3rd latest event time of a batch (the
    # last batch of clicks may hold fewer than 3, then the one before counts).
    times = sorted(orjson.loads(c)["ts"] / 1000 for c in run.clicks)
    assert times[-5] <= m.get("ctrguard_source_event_time_seconds", topic=clk,
                              partition="0") <= times[-3]
    lag = m.get("ctrguard_event_time_lag_seconds", topic=imp, partition="0")
    assert lag is not None and lag > 0
    assert wait_for(lambda: all(
        scrape(run.port).get("ctrguard_consumer_lag_messages", topic=t, partition="0") == 0
        for t in (imp, clk)), 10, "consumer lag 0 on both inputs")


def test_offsets_are_committed_for_the_consumer_group(run):
    tps = [TopicPartition(run.inputs["impressions"], 0), TopicPartition(run.inputs["clicks"], 0)]
    want = [len(run.imps), len(run.clicks)]
    consumer = Consumer({"bootstrap.servers": run.broker.bootstrap, "group.id": run.group,
                         "enable.auto.commit": False})
    try:
        got = wait_for(lambda: (lambda c: c if [tp.offset for tp in c] == want else None)(
            consumer.committed(tps, timeout=10)), 30, f"committed offsets {want}")
    finally:
        consumer.close()
    assert [tp.offset for tp in got] == want
    assert scrape(run.port).get("ctrguard_offset_commits_total", outcome="ok") >= 2


def test_slack_and_redis_figures(run):
    # The last incident updates may still be on their way when the run settled.
    def delivered():
        m = scrape(run.port)
        u = m.by("ctrguard_slack_updates_total", "outcome")
        return m if u["submitted"] >= 1 and u["delivered"] == u["submitted"] \
            and m.get("ctrguard_slack_outbox_messages") == 0 else None

    m = wait_for(delivered, 30, "every Slack update delivered and the outbox empty")
    assert m.by("ctrguard_slack_updates_total", "outcome")["failed"] == 0
    posts = [c for c in run.slack.calls if c.ok and c.method == "chat.postMessage"]
    assert posts
    client = make_redis(run.settings.redis)
    try:
        prefix = run.settings.redis.key_prefix
        reader = QuarantineReader(client, prefix, window_length_s=W)
        quarantined = reader.list_flags(state="quarantined", limit=100_000)
        assert quarantined
        # Counted by reading every flag, so only every QUARANTINE_COUNT_EVERY probes: the
        # gauge reaches the flags in Redis within that many probe intervals.
        from ctrguard.health import QUARANTINE_COUNT_EVERY

        wait_for(lambda: scrape(run.port).get("ctrguard_quarantined_windows")
                 == len(quarantined),
                 (QUARANTINE_COUNT_EVERY + 1) * run.settings.metrics.probe_interval + 5,
                 f"the quarantined-windows gauge to reach the {len(quarantined)} flags")
        assert m.get("ctrguard_incidents_open") == client.zcard(f"{prefix}:slack:open")
    finally:
        client.close()
    assert m.get("ctrguard_redis_up") == 1 and m.get("ctrguard_kafka_up") == 1


def test_health_and_readiness(run):
    assert http_get(run.port, "/healthz") == (200, "ok\n")
    status, body = http_get(run.port, "/readyz")
    verdict = json.loads(body)
    assert status == 200 and verdict["ready"], verdict
    assert set(verdict["checks"]) == {"kafka", "redis", "watermark"}
    assert http_get(run.port, "/nope")[0] == 404
    info = scrape(run.port).samples
    assert any(n == "ctrguard_build_info" for n, _ in info)


def test_every_metric_of_the_rules_and_the_dashboard_is_exported(run):
    names = scrape(run.port).names
    wanted = deploy_metric_names()
    assert len(wanted) > 15
    missing = sorted(wanted - names)
    assert not missing, f"deploy/ reads metrics the flow does not export: {missing}"


def test_json_logs_and_heartbeat(run):
    def heartbeats():
        lines = [line for line in run.proc.log().splitlines() if line.strip()]
        docs = []
        for line in lines:
            doc = json.loads(line)     # every line is one JSON object (librdkafka's too)
            assert set(doc) == {"time", "level", "logger", "message", "fields"}, doc
            assert doc["time"].endswith("Z")
            docs.append(doc)
        beats = [d for d in docs if d["message"].startswith("heartbeat:")]
        return [b for b in beats if b["fields"]["events_total"] == len(run.imps) + len(
            run.clicks)] or None

    beat = wait_for(heartbeats, 10, "a heartbeat after the whole input was read")[-1]
    f = beat["fields"]
    assert f["consumer_lag"] == 0 and f["figures_held_back"] == 0 and f["slack_outbox"] == 0
    assert f["watermark"] == "2026-01-01T05:58:00Z"  # the tick, less the allowed lateness
    assert {"events_per_s", "event_time_lag_s", "incidents_open"} <= set(f)


def test_interrupt_stops_the_run_with_exit_code_130(run):
    assert run.stop() == 130
    assert http_get_refused(run.port)


def http_get_refused(port: int) -> bool:
    try:
        http_get(port, "/healthz", timeout=2)
    except OSError:
        return True
    return False


def test_figures_held_back_while_redis_is_down(broker, redis_factory, topic_factory, tmp_path):
    """Redis stops mid-run: /metrics shows the figures waiting and Redis unreachable,
    /readyz fails on Redis; once it is back, the figures go out and the gauge is 0."""
    server = redis_factory()
    topics = topic_factory()
    imps, clicks = crash_stream()
    before, after = imps[:len(imps) * 2 // 5], imps[len(imps) * 2 // 5:]
    last_ts = max(orjson.loads(v)["ts"] for v in before if v.startswith(b'{"event_id":"i'))
    clicks_before = [c for c in clicks if orjson.loads(c)["ts"] <= last_ts]
    produce_all(broker.bootstrap, topics["impressions"], before)
    produce_all(broker.bootstrap, topics["clicks"], clicks_before)
    text = config_yaml(broker.bootstrap, topics, server.url,
                       extra="metrics:\n  probe_interval: 1s\nlogging:\n  heartbeat: null\n")
    path = tmp_path / "outage.yaml"
    path.write_text(text.replace("  tail: false\n", "  tail: true\n"))
    port = free_port()
    proc = start_run(path, tmp_path / "outage.log", drain=False,
                     extra_args=["--metrics-port", str(port), "--no-slack"])
    alive = lambda: proc.popen.poll() is None  # noqa: E731
    try:
        wait_for(lambda: scrape(port).total("ctrguard_figures_published_total"), 120,
                 "the first figures", alive=alive)
        server.stop()
        produce_all(broker.bootstrap, topics["impressions"], after)
        produce_all(broker.bootstrap, topics["clicks"], clicks[len(clicks_before):])

        def held():
            m = scrape(port)
            # The worker waits for Redis and reads nothing: the lag grows meanwhile.
            return m if (m.get("ctrguard_figures_held_back") and m.get("ctrguard_redis_up") == 0
                         and m.get("ctrguard_release_redis_failures_total")
                         and m.total("ctrguard_consumer_lag_messages") > 0) else None

        m = wait_for(held, 60, "figures held back while Redis is down", alive=alive)
        status, body = http_get(port, "/readyz")
        verdict = json.loads(body)
        assert status == 503 and not verdict["ready"]
        assert not verdict["checks"]["redis"]["ok"] and verdict["checks"]["kafka"]["ok"]
        # Nothing held back was published meanwhile (fail closed).
        on_topic = len(consume_to_eof(broker.bootstrap, topics["figures"]))
        assert m.total("ctrguard_figures_published_total") == on_topic

        server.restart()

        def released():
            m = scrape(port)
            published = m.total("ctrguard_figures_published_total")
            return (m.get("ctrguard_figures_held_back") == 0 and m.get("ctrguard_redis_up") == 1
                    and published > on_topic
                    and published == len(consume_to_eof(broker.bootstrap, topics["figures"])))

        wait_for(released, 120, "the held figures to go out once Redis is back", alive=alive)
        assert wait_for(lambda: http_get(port, "/readyz")[0] == 200, 10, "ready again")
    finally:
        if alive():
            proc.popen.send_signal(signal.SIGINT)
        proc.wait(60)


def test_demo_prints_the_metrics_url_and_serves_it_while_it_runs():
    env = {k: v for k, v in os.environ.items()
           if k not in ("CTRGUARD_KAFKA_BROKERS", "CTRGUARD_REDIS_URL")}
    proc = subprocess.Popen([sys.executable, "-m", "devtools.demo", "--campaigns", "2",
                             "--hours", "3", "--volume-scale", "0.5"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        for line in proc.stdout:
            if "metrics while the demo runs:" in line:
                url = line.split("runs: ", 1)[1].split()[0]
                break
        assert url and url.endswith("/metrics"), url
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        consumed = 0.0
        while proc.poll() is None:
            try:
                consumed = max(consumed, scrape(port).total("ctrguard_events_total",
                                                            outcome="consumed"))
            except OSError:
                break  # the demo is stopping its services
        rest = proc.stdout.read()
        assert proc.wait(120) == 0, rest[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert consumed > 0
    assert http_get_refused(port)  # stopped with the demo


def test_each_process_of_a_cluster_serves_its_own_port():
    from ctrguard.cli import build_parser
    from ctrguard.flows.run_cmd import metrics_port

    parser = build_parser()
    settings = load_config_text("metrics:\n  port: 9500\n", env={})

    def port(*argv: str):
        return metrics_port(settings, parser.parse_args(["run", *argv]))

    assert port() == 9500
    assert [port("--process-id", str(i), "--addresses", "a:1;b:1") for i in (0, 1)] \
        == [9500, 9501]
    assert port("--process-id", "1", "--metrics-port", "9600") == 9600
    assert port("--metrics-port", "off") is None
    assert metrics_port(load_config_text("metrics:\n  port: null\n", env={}),
                        parser.parse_args(["run", "--process-id", "1"])) is None
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--metrics-port", "70000"])

"""Feedback end to end: buttons on incident messages, a running ``ctrguard serve`` verifying
Slack's signatures, votes in Redis, the message updated, labels exported and read by
``ctrguard evaluate``; and the chart posted in the incident's thread.

Real services: a redis-server, the Slack emulator (slack-sdk over HTTP), ``ctrguard serve``
in its own process.
"""

from __future__ import annotations

import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
from slack_sdk.signature import SignatureVerifier

from ctrguard.cli import main as cli_main
from ctrguard.config import load_config_text
from ctrguard.records import STATUS_QUARANTINED, Figure, WindowDecision
from ctrguard.sinks.feedback import InteractionError, parse_interaction
from ctrguard.sinks.slack import SlackSink
from ctrguard.sinks.slack_render import FEEDBACK_ACTIONS
from tests.slack_fixtures import T0, TOKEN, WINDOW_S, make_alert

SECRET = "3f1c0ffee5ecret0000signing1234567"
REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- helpers


def config_text(redis_url: str, emulator: Any, extra: str = "") -> str:
    return f"""
redis:
  url: "{redis_url}"
slack:
  mode: web
  base_url: "{emulator.base_url}"
  default_channel: "#ctr-alerts"
  retry_backoff_s: 0.05
  retry_backoff_max_s: 0.2
  max_attempts: 4
  timeout_s: 2
{extra}"""


def settings_for(redis_url, emulator, extra: str = ""):
    return load_config_text(config_text(redis_url, emulator, extra), source="test.yaml",
                            env={"SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET})


def window_decisions(campaign: str, windows: int, bad: range, *, segment: str = "all",
                     seed: int = 0) -> list[WindowDecision]:
    """One decision a window: 1000 impressions and ~20 clicks, 2 clicks in ``bad`` windows
    (with an alert each). Click counts vary by window so the chart's line is recognisable."""
    out = []
    for w in range(windows):
        ws = T0 + w * WINDOW_S
        if w in bad:
            a = make_alert(campaign, w, segment, clicks=2, expected=20.0)
            fig = Figure(campaign, segment, a.window_start, a.window_end, ws, 1000, 2, 0.002,
                         STATUS_QUARANTINED, (a.alert_id,))
            out.append(WindowDecision(campaign, ws, ws + WINDOW_S, (fig,), (a,)))
        else:
            clicks = 18 + (w * 7 + seed) % 5
            fig = Figure(campaign, segment, "", "", ws, 1000, clicks, clicks / 1000, "ok")
            out.append(WindowDecision(campaign, ws, ws + WINDOW_S, (fig,), ()))
    return out


def feed(sink: SlackSink, *streams: list[WindowDecision]) -> None:
    """One batch per window, every campaign's decision of that window in it (as the flow)."""
    for batch in zip(*streams, strict=True):
        sink.write_batch(list(batch))


def top_message(emulator, campaign: str):
    msgs = [m for m in emulator.messages("#ctr-alerts", top_level=True) if campaign in m.text]
    assert len(msgs) == 1, [m.text for m in msgs]
    return msgs[0]


def interaction(emulator, message, action_id: str, *, user: str = "U024BE7LH",
                name: str = "alice", action_ts: str | None = None) -> bytes:
    """The form body Slack sends when ``user`` presses a button on ``message``."""
    value = next(e["value"] for b in message.blocks if b["type"] == "actions"
                 for e in b["elements"] if e["action_id"] == action_id)
    payload = {
        "type": "block_actions", "user": {"id": user, "username": name, "team_id": "T1"},
        "api_app_id": "A1", "token": "legacy", "team": {"id": "T1", "domain": "acme"},
        "container": {"type": "message", "message_ts": message.ts,
                      "channel_id": message.channel, "is_ephemeral": False},
        "trigger_id": "1.2.3", "channel": {"id": message.channel, "name": "ctr-alerts"},
        "message": {"type": "message", "ts": message.ts, "text": message.text,
                    "blocks": message.blocks},
        "response_url": emulator.response_url(message.channel, message.ts),
        "actions": [{"action_id": action_id, "block_id": "ctrguard_feedback_buttons",
                     "text": {"type": "plain_text", "text": "x"}, "value": value,
                     "type": "button", "action_ts": action_ts or f"{time.time():.6f}"}],
    }
    return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()


def post(url: str, body: bytes, *, secret: str = SECRET, timestamp: int | None = None,
         signature: str | None = None, signed_body: bytes | None = None) -> int:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    sig = signature if signature is not None else SignatureVerifier(secret).generate_signature(
        timestamp=ts, body=body if signed_body is None else signed_body)
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


class Serve:
    """``ctrguard serve`` in its own process, on a free port."""

    def __init__(self, config: Path):
        env = {**os.environ, "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET,
               "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ctrguard", "serve", "--config", str(config), "--port", "0"],
            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []

        def pump() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 30
        self.url = ""
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, "".join(self.log)
                continue
            if "listening on " in line:
                self.url = line.split("listening on ", 1)[1].strip()
                break
        assert self.url, "".join(self.log)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)


@pytest.fixture
def feedback_env(tmp_path, redis_url, slack_emulator):
    """Two campaigns' incidents delivered to the emulator, and a running ``ctrguard serve``."""
    settings = settings_for(redis_url, slack_emulator)
    cfg = tmp_path / "ctrguard.yaml"
    cfg.write_text(config_text(redis_url, slack_emulator))
    sink = SlackSink(settings)
    c1 = window_decisions("c1", 40, range(20, 26))
    c2 = window_decisions("c2", 40, range(30, 33), seed=3)
    feed(sink, c1, c2)
    assert sink.drain(30)
    serve = Serve(cfg)
    try:
        yield {"settings": settings, "config": cfg, "sink": sink, "serve": serve,
               "decisions": c1 + c2, "redis": redis.Redis.from_url(redis_url,
                                                                   decode_responses=True)}
    finally:
        assert serve.stop() == 0, "".join(serve.log)
        sink.close()


# --------------------------------------------------------------------------- end to end


def test_buttons_signed_votes_message_update_and_labels_read_by_evaluate(
        feedback_env, slack_emulator, tmp_path, monkeypatch):
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    env = feedback_env
    r = env["redis"]
    m1, m2 = top_message(slack_emulator, "c1"), top_message(slack_emulator, "c2")
    # Each incident message carries the three buttons, stable ids, the incident as value.
    for m in (m1, m2):
        actions = [b for b in m.blocks if b["type"] == "actions"]
        assert len(actions) == 1
        assert [e["action_id"] for e in actions[0]["elements"]] == list(FEEDBACK_ACTIONS)
        incident_id = m.metadata["event_payload"]["incident_id"]
        assert {e["value"] for e in actions[0]["elements"]} == {incident_id}
    i1 = m1.metadata["event_payload"]["incident_id"]
    i2 = m2.metadata["event_payload"]["incident_id"]
    url = env["serve"].url

    # Forged (wrong secret), stale (10 minutes old), unsigned and mangled: 401, nothing kept.
    body = interaction(slack_emulator, m1, "ctrguard_feedback_confirmed")
    assert post(url, body, secret="not-the-secret") == 401
    assert post(url, body, timestamp=int(time.time()) - 600) == 401
    assert post(url, body, signature="") == 401
    assert post(url, body, signature="v0=" + "0" * 64) == 401
    assert post(url, body.replace(b"U024BE7LH", b"U0MALLORY"), signed_body=body) == 401
    assert r.xlen("ctrguard:feedback") == 0
    assert post(url, b"payload=not-json") == 400

    # Signed: accepted, recorded with who said what, and the message shows it.
    edits_before = len(m1.history)
    assert post(url, body) == 200
    assert post(url, interaction(slack_emulator, m2, "ctrguard_feedback_false_alarm",
                                 user="U0BOB0001", name="bob")) == 200
    entries = [f for _, f in r.xrange("ctrguard:feedback")]
    assert [(e["incident_id"], e["verdict"], e["user_id"], e["user_name"], e["campaign_id"])
            for e in entries] == [(i1, "confirmed", "U024BE7LH", "alice", "c1"),
                                  (i2, "false_alarm", "U0BOB0001", "bob", "c2")]
    assert r.hgetall(f"ctrguard:feedback:latest:{i1}")["verdict"] == "confirmed"

    def shows(msg, text):
        return any(text in e.get("text", "") for b in (msg.blocks or [])
                   if b["type"] == "context" for e in b["elements"])

    assert slack_emulator.wait_for(lambda e: shows(top_message(e, "c1"), "*Confirmed*")
                                   and shows(top_message(e, "c2"), "*False alarm*"), 10)
    m1 = top_message(slack_emulator, "c1")
    assert len(m1.history) > edits_before
    assert shows(m1, "<@U024BE7LH>")
    assert [b["type"] for b in m1.blocks].count("actions") == 1  # buttons kept, once

    # The same interaction sent again (Slack or a proxy retrying) is not counted twice.
    assert post(url, body) == 200
    assert r.xlen("ctrguard:feedback") == 2

    # Export: the confirmed incident is a label, the false alarm a trap, and
    # ``ctrguard evaluate`` reads both.
    labels, traps = tmp_path / "labels.csv", tmp_path / "traps.csv"
    assert cli_main(["feedback", "export", "--config", str(env["config"]), "--out",
                     str(labels), "--traps-out", str(traps)]) == 0
    assert labels.read_text().splitlines() == [
        "campaign_id,segment,kind,start,end",
        "c1,*,ctr_drop,2026-01-01T01:40:00Z,2026-01-01T02:10:00Z"]
    assert traps.read_text().splitlines()[1:] == [
        "c2,*,false_alarm,2026-01-01T02:30:00Z,2026-01-01T02:45:00Z"]
    alerts, figures = tmp_path / "alerts.jsonl", tmp_path / "figures.jsonl"
    alerts.write_bytes(b"".join(msgspec.json.encode(a) + b"\n" for d in env["decisions"]
                                for a in d.alerts))
    figures.write_bytes(b"".join(msgspec.json.encode(f) + b"\n" for d in env["decisions"]
                                 for f in d.figures))
    out = tmp_path / "evaluation.json"
    assert cli_main(["evaluate", "--alerts", str(alerts), "--figures", str(figures),
                     "--labels", str(labels), "--traps", str(traps), "--out", str(out)]) == 0
    result = json.loads(out.read_text())["ctrguard"]
    assert (result["incidents"], result["detected"], result["recall"]) == (1, 1, 1.0)
    assert result["false_episodes"] == 1
    assert result["false_episodes_on_traps"] == {"false_alarm": 1}

    # A later vote wins: c1 called expected after all -> no label, a planned-change trap.
    assert post(url, interaction(slack_emulator, m1, "ctrguard_feedback_expected",
                                 user="U0CAROL01", name="carol")) == 200
    assert cli_main(["feedback", "export", "--config", str(env["config"]), "--out",
                     str(labels), "--traps-out", str(traps)]) == 0
    assert labels.read_text().splitlines() == ["campaign_id,segment,kind,start,end"]
    assert "c1,*,planned_change," in traps.read_text()


def test_chart_in_thread_is_the_driving_series_and_is_replaced_at_resolution(
        redis_url, slack_emulator, monkeypatch):
    import ctrguard.sinks.slack_extras as extras

    threads: list[str] = []
    real = extras.render_chart

    def spy(doc, **kw):
        threads.append(threading.current_thread().name)
        return real(doc, **kw)

    monkeypatch.setattr(extras, "render_chart", spy)
    settings = settings_for(redis_url, slack_emulator, "charts:\n  windows: 12\n")
    sink = SlackSink(settings)
    # device=mobile breaks; "all" is only mildly affected (no alert).
    bad = range(20, 24)
    mobile = window_decisions("c9", 40, bad, segment="device=mobile", seed=1)
    total = window_decisions("c9", 40, range(0), seed=2)
    merged = [WindowDecision(a.campaign_id, a.window_start_s, a.window_end_s,
                             b.figures + a.figures, a.alerts)
              for a, b in zip(mobile, total, strict=True)]
    try:
        sink.write_batch(merged[:21])   # the first alerting window: the incident opens
        assert sink.drain(30)
        msg = top_message(slack_emulator, "c9")
        ups = slack_emulator.uploads()
        assert len(ups) == 1
        up = ups[0]
        assert (up.channel, up.thread_ts) == (msg.channel, msg.ts)
        assert up.data.startswith(PNG_MAGIC) and "c9" in up.title and "mobile" in up.title
        # The PNG is exactly the chart of the last 12 windows of device=mobile, drawn from
        # this test's own figures (not from ``all``, not from another window range).
        points = [[T0 + w * WINDOW_S, 1000, 2 if w in bad else 18 + (w * 7 + 1) % 5]
                  for w in range(9, 21)]
        a = make_alert("c9", 20, "device=mobile", clicks=2, expected=20.0)
        doc = {"v": 1, "campaign_id": "c9", "segment": "device=mobile", "window_s": WINDOW_S,
               "status": "open", "incident_start_s": T0 + 20 * WINDOW_S,
               "incident_end_s": T0 + 21 * WINDOW_S, "points": points,
               "bands": [[a.window_start_s, a.baseline_ctr, a.ctr_low, a.ctr_high]]}
        assert up.data == real(doc, title=up.title)
        from PIL import Image

        img = Image.open(io.BytesIO(up.data))
        img.verify()
        assert img.format == "PNG" and img.size == (800, 420)

        sink.write_batch(merged[21:])   # the rest: the incident resolves
        assert sink.drain(30)
        ups = slack_emulator.uploads()
        assert len(ups) == 1 and ups[0].file_id != up.file_id, "not replaced at resolution"
        assert ups[0].thread_ts == msg.ts and "resolved" in ups[0].title
        assert [u.file_id for u in slack_emulator.uploads(include_deleted=True)
                if u.deleted] == [up.file_id]
        # Drawn on the delivery thread, never on the dataflow's.
        assert threads and set(threads) == {"ctrguard-slack-delivery"}
        # Re-delivering the same decisions uploads nothing new (idempotent).
        n = len(slack_emulator.uploads(shared_only=False, include_deleted=True))
        sink.write_batch(merged)
        assert sink.drain(30)
        assert len(slack_emulator.uploads(shared_only=False, include_deleted=True)) == n
    finally:
        sink.close()


def test_chart_failure_for_missing_scope_does_not_hold_the_incident(
        redis_url, slack_emulator):
    settings = settings_for(redis_url, slack_emulator)
    sink = SlackSink(settings)
    slack_emulator.fail_next(200, error="missing_scope", method="files.getUploadURLExternal",
                             times=10)
    try:
        feed(sink, window_decisions("c5", 30, range(20, 22)))
        assert sink.drain(30)
        msg = top_message(slack_emulator, "c5")
        assert msg.history, "the resolution was not edited in"
        assert "RESOLVED" in msg.blocks[0]["text"]["text"]
        assert sink.notifier.stats.dead_lettered == 0
        assert slack_emulator.uploads(shared_only=False) == []
        assert "files.getUploadURLExternal" in slack_emulator.methods(ok_only=False)
    finally:
        sink.close()


def test_no_buttons_when_feedback_buttons_are_off(redis_url, slack_emulator):
    settings = settings_for(redis_url, slack_emulator,
                            "feedback:\n  buttons: false\ncharts:\n  enabled: false\n")
    sink = SlackSink(settings)
    try:
        feed(sink, window_decisions("c3", 24, range(20, 21)))
        assert sink.drain(30)
        assert [b["type"] for b in top_message(slack_emulator, "c3").blocks].count("actions") \
            == 0
        assert slack_emulator.uploads() == []
        assert sink.history is None
    finally:
        sink.close()


# --------------------------------------------------------------------------- units


def test_parse_interaction_ignores_foreign_actions_and_refuses_non_interactions():
    def body(payload: Any) -> bytes:
        return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()

    assert parse_interaction(body({"type": "view_submission"})) == []
    assert parse_interaction(body({"type": "block_actions", "actions": [
        {"action_id": "other_app", "value": "x"},
        {"action_id": "ctrguard_feedback_confirmed", "value": "y" * 500},
        {"action_id": "ctrguard_feedback_confirmed"}, "garbage"]})) == []
    for bad in (b"", b"payload=%7B", b"payload=[1]", b"\xff\xfe", b"text=hello"):
        with pytest.raises(InteractionError):
            parse_interaction(bad)


def test_serve_refuses_to_start_without_a_signing_secret(tmp_path, redis_url,
                                                         slack_emulator, capsys, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config_text(redis_url, slack_emulator))
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    monkeypatch.delenv("SLACK_SIGNING_SECRET", raising=False)
    assert cli_main(["serve", "--config", str(cfg)]) == 2
    assert "feedback.signing_secret" in capsys.readouterr().err


def test_oversized_request_is_refused_before_reading(tmp_path, redis_url, slack_emulator):
    from ctrguard.sinks.feedback_server import InteractionServer

    settings = settings_for(redis_url, slack_emulator, "feedback:\n  max_body_bytes: 2048\n")
    with InteractionServer(settings, port=0) as srv:
        assert post(srv.url, b"payload=" + b"x" * 5000) == 413
        with urllib.request.urlopen(f"http://{srv.host}:{srv.port}/healthz", timeout=5) as r:
            assert r.read() == b"ok"


def test_without_a_bot_token_the_message_is_updated_through_its_response_url(
        redis_url, slack_emulator):
    from ctrguard.sinks.feedback_server import InteractionServer

    sink = SlackSink(settings_for(redis_url, slack_emulator))
    try:
        feed(sink, window_decisions("c4", 24, range(20, 22)))
        assert sink.drain(30)
    finally:
        sink.close()
    msg = top_message(slack_emulator, "c4")
    edits = slack_emulator.methods().count("chat.update")
    settings = load_config_text(f'redis:\n  url: "{redis_url}"\n', source="t.yaml",
                                env={"SLACK_SIGNING_SECRET": SECRET})
    assert settings.slack.bot_token is None
    with InteractionServer(settings, port=0) as srv:
        assert post(srv.url, interaction(slack_emulator, msg, "ctrguard_feedback_expected")) \
            == 200
        assert slack_emulator.wait_for(lambda e: any(
            "*Expected (planned change)*" in el.get("text", "")
            for b in top_message(e, "c4").blocks if b["type"] == "context"
            for el in b["elements"]), 10)
    assert "response_url" in slack_emulator.methods()
    assert slack_emulator.methods().count("chat.update") == edits


def test_a_vote_on_a_stall_becomes_a_pipeline_label(tmp_path, redis_url, slack_emulator,
                                                    monkeypatch):
    """An ingestion stall is one pipeline incident whose "campaign" is its stall id: a vote
    on its message becomes a label of every campaign (``*,*``, as ``ctrguard generate``
    writes a stall), not a label of a campaign called ``stall:impressions:...``."""
    from tests.test_slack_stalls import stall_alert

    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    settings = settings_for(redis_url, slack_emulator)
    cfg = tmp_path / "ctrguard.yaml"
    cfg.write_text(config_text(redis_url, slack_emulator))
    sink = SlackSink(settings)
    for w in range(8):                       # stalled in windows 0-2, resolved after
        ws = T0 + w * WINDOW_S
        sink.write_batch([WindowDecision(f"c{i}", ws, ws + WINDOW_S, (),
                                         (stall_alert(f"c{i}", w),) if w < 3 else ())
                          for i in range(20)])
    assert sink.drain(30)
    sink.close()
    (msg,) = slack_emulator.messages("#ctr-alerts", top_level=True)
    assert "ingestion stall" in msg.text
    serve = Serve(cfg)
    try:
        assert post(serve.url, interaction(slack_emulator, msg,
                                           "ctrguard_feedback_confirmed")) == 200
    finally:
        assert serve.stop() == 0, "".join(serve.log)
    labels, traps = tmp_path / "labels.csv", tmp_path / "traps.csv"
    assert cli_main(["feedback", "export", "--config", str(cfg), "--out", str(labels),
                     "--traps-out", str(traps)]) == 0
    assert labels.read_text().splitlines() == [
        "campaign_id,segment,kind,start,end",
        "*,*,ingestion_stall,2026-01-01T00:00:00Z,2026-01-01T00:15:00Z"]

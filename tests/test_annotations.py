"""Planned changes: alerts inside them are marked expected and do not quarantine, in the live
flow (declared with ``ctrguard annotate``, read by the release sink), in Slack and in replay.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import msgspec
import orjson
import pytest

from ctrguard.cli import main as cli_main
from ctrguard.config import load_config_text
from ctrguard.errors import ConfigError
from ctrguard.sinks.annotations import AnnotationCache, AnnotationStore
from ctrguard.sinks.quarantine import QuarantineStore
from ctrguard.sinks.redis_client import make_redis
from devtools.services import produce_all
from tests.slack_fixtures import TOKEN
from tests.test_live_flow import T0, W, ev, flow_settings, outage_stream, read_json, run_flow

OUTAGE = (T0 + 3 * 3600, T0 + 3 * 3600 + 45 * 60)


def two_campaigns() -> tuple[list[bytes], list[bytes]]:
    """The outage stream twice: campaign ``big`` and campaign ``promo-7`` (same events),
    beside campaign ``steady`` whose clicks go on (else every click stops at once: that
    is the click source's stall, one pipeline incident, not the campaigns')."""
    imps, clicks = outage_stream()
    steady_imps, steady_clicks = outage_stream(seed=4, outage=(0, 0))

    def renamed(values: list[bytes], campaign: bytes, prefix: bytes) -> list[bytes]:
        return [v.replace(b'"campaign_id":"big"', b'"campaign_id":"' + campaign + b'"')
                .replace(b'"event_id":"', b'"event_id":"' + prefix) for v in values]

    def in_time_order(*streams: list[bytes]) -> list[bytes]:
        return sorted((v for s in streams for v in s), key=lambda v: orjson.loads(v)["ts"])

    return (in_time_order(imps, renamed(imps, b"promo-7", b"p"),
                          renamed(steady_imps, b"steady", b"s")),
            in_time_order(clicks, renamed(clicks, b"promo-7", b"p"),
                          renamed(steady_clicks, b"steady", b"s")))


def test_planned_change_declared_with_annotate_is_expected_in_the_live_flow(
        broker, redis_url, unique_topics, slack_emulator, tmp_path, monkeypatch):
    imps, clicks = two_campaigns()
    assert any(b'"promo-7"' in v for v in imps) and any(b'"big"' in v for v in imps)
    produce_all(broker.bootstrap, unique_topics["impressions"], imps)
    produce_all(broker.bootstrap, unique_topics["clicks"], clicks)
    settings = flow_settings(broker, redis_url, unique_topics,
                             slack_base_url=slack_emulator.base_url)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f'redis:\n  url: "{redis_url}"\n')
    # Declared through the command, as a person would (kept in Redis, audited).
    assert cli_main(["annotate", "add", "--config", str(cfg), "--campaign", "promo-*",
                     "--start", "2026-01-01T02:50:00Z", "--end", "2026-01-01T04:00:00Z",
                     "--kind", "promotion", "--reason", "spring sale", "--by", "alice"]) == 0

    run_flow(settings, "run_main")

    alerts = read_json(broker, unique_topics["alerts"])
    figures = read_json(broker, unique_topics["figures"])
    promo = [a for a in alerts if a["campaign_id"] == "promo-7"]
    big = [a for a in alerts if a["campaign_id"] == "big"]
    assert promo and big
    assert all(a["expected"] == "promotion: spring sale" and not a["quarantine"]
               for a in promo), promo[:2]
    assert all(a["expected"] == "" for a in big)
    assert any(a["quarantine"] for a in big)
    assert not [f for f in figures if f["campaign_id"] == "promo-7"
                and f["status"] == "quarantined"]
    assert [f for f in figures if f["campaign_id"] == "big" and f["status"] == "quarantined"]
    store = QuarantineStore(make_redis(settings.redis), settings.quarantine,
                            settings.redis.key_prefix, window_length_s=W)
    assert store.list_flags(campaign="promo-7") == []
    assert store.list_flags(campaign="big")

    # Slack: both incidents posted; only the planned one says it is expected; each thread
    # has its chart.
    msgs = slack_emulator.messages("#ctr-alerts", top_level=True)
    by_campaign = {c: [m for m in msgs if c in m.text] for c in ("promo-7", "big")}
    assert len(by_campaign["promo-7"]) == 1 and len(by_campaign["big"]) == 1

    def context(m):
        return " ".join(e.get("text", "") for b in m.blocks if b["type"] == "context"
                        for e in b["elements"])

    assert "*Expected*" in context(by_campaign["promo-7"][0])
    assert "spring sale" in context(by_campaign["promo-7"][0])
    assert "*Expected*" not in context(by_campaign["big"][0])
    threads = {u.thread_ts for u in slack_emulator.uploads()}
    assert threads == {by_campaign["promo-7"][0].ts, by_campaign["big"][0].ts}

    # The audit trail says who declared it.
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    audit = AnnotationStore(make_redis(settings.redis)).audit()
    assert [(e["action"], e["who"]) for e in audit] == [("added", "alice")]


def test_replay_marks_alerts_inside_planned_changes_from_a_file_and_from_config(tmp_path):
    imps, clicks = two_campaigns()
    ip, cp = tmp_path / "imp.jsonl", tmp_path / "clk.jsonl"
    ip.write_bytes(b"\n".join(imps) + b"\n")
    cp.write_bytes(b"\n".join(clicks) + b"\n")
    base = tmp_path / "plain"
    assert cli_main(["replay", "--impressions", str(ip), "--clicks", str(cp), "--out",
                     str(base), "--no-baselines", "--quiet"]) == 0
    plain = [msgspec.json.decode(x) for x in (base / "alerts.jsonl").read_bytes().splitlines()]
    assert any(a["campaign_id"] == "promo-7" and a["quarantine"] for a in plain)

    ann = tmp_path / "planned.yaml"
    ann.write_text("- campaigns: ['promo-*']\n  start: 2026-01-01T02:50:00Z\n"
                   "  end: 2026-01-01T04:00:00Z\n  kind: launch\n  reason: new creative\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("annotations:\n  planned_changes:\n"
                   "    - campaigns: ['promo-*']\n      start: 2026-01-01T02:50:00Z\n"
                   "      end: 2026-01-01T04:00:00Z\n      kind: launch\n"
                   "      reason: new creative\n")
    outs = {"file": ["--annotations", str(ann)], "config": ["--config", str(cfg)]}
    for name, extra in outs.items():
        out = tmp_path / name
        assert cli_main(["replay", "--impressions", str(ip), "--clicks", str(cp), "--out",
                         str(out), "--no-baselines", "--quiet", *extra]) == 0
        alerts = [msgspec.json.decode(x) for x in (out / "alerts.jsonl").read_bytes().splitlines()]
        figures = [msgspec.json.decode(x) for x in (out / "figures.jsonl").read_bytes().splitlines()]
        summary = json.loads((out / "summary.json").read_text())
        # Same alerts as without annotations (same ids), only marked.
        assert sorted(a["alert_id"] for a in alerts) == sorted(a["alert_id"] for a in plain)
        promo = [a for a in alerts if a["campaign_id"] == "promo-7"]
        inside = [a for a in promo if a["window_start_s"] < OUTAGE[1] + 3600
                  and a["window_start_s"] + W > T0 + 2 * 3600 + 50 * 60]
        assert inside and all(a["expected"] == "launch: new creative"
                              and not a["quarantine"] for a in inside)
        assert all(a["expected"] == "" for a in alerts if a["campaign_id"] == "big")
        assert [a for a in alerts if a["campaign_id"] == "big"] == \
            [a for a in plain if a["campaign_id"] == "big"]
        assert summary["expected_alerts"] == len(inside)
        q_plain = sum(1 for x in (base / "figures.jsonl").read_bytes().splitlines()
                      if b'"quarantined"' in x)
        q_now = sum(1 for f in figures if f["status"] == "quarantined")
        assert summary["quarantined_windows"] == q_now < q_plain


def test_annotation_cache_reads_redis_at_a_bounded_rate_and_survives_an_outage(
        redis_factory):
    server = redis_factory()
    settings = load_config_text(f'redis:\n  url: "{server.url}"\nannotations:\n'
                                "  refresh_s: 30\n", env={})
    now = [1000.0]
    client = make_redis(settings.redis)
    cache = AnnotationCache(settings, client, clock=lambda: now[0])
    store = AnnotationStore(make_redis(settings.redis))
    assert len(cache.current()) == 0
    store.add(["c1"], T0, T0 + 3600, kind="launch", reason="x", by="bob")
    calls_before = int(server.client().info("commandstats")["cmdstat_hgetall"]["calls"])
    for _ in range(1000):   # a thousand batches within the period: no read
        assert len(cache.current()) == 0
        now[0] += 0.01
    assert int(server.client().info("commandstats")["cmdstat_hgetall"]["calls"]) \
        == calls_before
    now[0] += 30
    assert cache.current().match("c1", T0, T0 + W).reason == "x"
    server.stop()
    now[0] += 60
    assert cache.current().match("c1", T0, T0 + W) is not None  # the last set stays


def test_annotate_command(tmp_path, redis_url, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f'redis:\n  url: "{redis_url}"\nannotations:\n  planned_changes:\n'
                   "    - campaigns: [shop-1]\n      start: 2026-01-02T00:00:00Z\n"
                   "      end: 2026-01-03T00:00:00Z\n      kind: holiday\n")
    base = ["--config", str(cfg)]
    assert cli_main(["annotate", "add", *base, "--campaign", "c*", "--start", str(T0),
                     "--end", "2026-01-01T06:00:00+01:00", "--kind", "budget_change",
                     "--by", "bob", "--reason", "double budget"]) == 0
    ann_id = capsys.readouterr().out.strip()
    assert cli_main(["annotate", "list", *base, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(a["id"], a["source"], a["end"]) for a in listed] == [
        (ann_id, "redis", "2026-01-01T05:00:00Z"), ("config:0", "config", "2026-01-03T00:00:00Z")]
    assert cli_main(["annotate", "list", *base, "--campaign", "shop-1"]) == 0
    assert "holiday" in capsys.readouterr().out
    # Refusals: bad time (2), end before start (2), unknown id (1).
    assert cli_main(["annotate", "add", *base, "--campaign", "c", "--start", "yesterday",
                     "--end", str(T0), "--by", "x"]) == 2
    assert cli_main(["annotate", "add", *base, "--campaign", "c", "--start", str(T0 + 10),
                     "--end", str(T0), "--by", "x"]) == 2
    assert cli_main(["annotate", "remove", *base, "nope", "--by", "x", "--reason", "y"]) == 1
    assert cli_main(["annotate", "remove", *base, ann_id, "--by", "carol",
                     "--reason", "cancelled"]) == 0
    capsys.readouterr()
    assert cli_main(["annotate", "audit", *base, "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [(e["action"], e["who"], e["why"]) for e in entries] == [
        ("removed", "carol", "cancelled"), ("added", "bob", "double budget")]


def test_annotate_exits_3_when_redis_is_unreachable(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text('redis:\n  url: "redis://127.0.0.1:1/0"\n  connect_timeout_s: 0.5\n'
                   "  socket_timeout_s: 0.5\n")
    assert cli_main(["annotate", "list", "--config", str(cfg)]) == 3


def test_bad_planned_change_in_config_stops_at_start_with_file_and_line():
    text = ("annotations:\n  planned_changes:\n    - campaigns: [c1]\n"
            "      start: 2026-01-02T00:00:00Z\n      end: 2026-01-01T00:00:00Z\n")
    with pytest.raises(ConfigError) as err:
        load_config_text(text, source="bad.yaml", env={})
    assert "bad.yaml:3: annotations.planned_changes.0: end must be after start" in str(err.value)


def test_replay_refuses_a_malformed_annotation_file(tmp_path, capsys):
    ann = tmp_path / "a.yaml"
    ann.write_text("- campaigns: [c1]\n  start: not-a-time\n  end: 2026-01-01T00:00:00Z\n")
    i = tmp_path / "i.jsonl"
    i.write_bytes(ev("e1", T0) + b"\n")
    assert cli_main(["replay", "--impressions", str(i), "--clicks", str(i), "--out",
                     str(tmp_path / "o"), "--annotations", str(ann), "--quiet"]) == 2
    assert "a.yaml: item 0.start" in capsys.readouterr().err


def test_an_incident_running_past_its_planned_change_says_which_part_is_expected(
        broker, redis_url, unique_topics, slack_emulator, tmp_path):
    """A planned change that ends while the outage goes on: the windows after it are
    quarantined, so the message must not say the incident is expected and not quarantined
    (it did: the note matched any overlap of the incident's span)."""
    imps, clicks = outage_stream()
    produce_all(broker.bootstrap, unique_topics["impressions"], imps)
    produce_all(broker.bootstrap, unique_topics["clicks"], clicks)
    settings = flow_settings(broker, redis_url, unique_topics,
                             slack_base_url=slack_emulator.base_url)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f'redis:\n  url: "{redis_url}"\n')
    assert cli_main(["annotate", "add", "--config", str(cfg), "--campaign", "big",
                     "--start", "2026-01-01T02:50:00Z", "--end", "2026-01-01T03:20:00Z",
                     "--kind", "launch", "--reason", "new tag", "--by", "alice"]) == 0

    run_flow(settings, "run_main")

    alerts = read_json(broker, unique_topics["alerts"])
    inside = [a for a in alerts if a["window_start_s"] < T0 + 3 * 3600 + 20 * 60]
    after = [a for a in alerts if a["window_start_s"] >= T0 + 3 * 3600 + 20 * 60]
    assert inside and after
    assert all(a["expected"] and not a["quarantine"] for a in inside)
    assert any(a["quarantine"] for a in after)
    store = QuarantineStore(make_redis(settings.redis), settings.quarantine,
                            settings.redis.key_prefix, window_length_s=W)
    assert store.list_flags(campaign="big")

    (msg,) = slack_emulator.messages("#ctr-alerts", top_level=True)
    note = " ".join(e.get("text", "") for b in msg.blocks if b["type"] == "context"
                    for e in b["elements"] if "expected" in e.get("text", "").lower())
    assert "*Partly expected*" in note and "launch: new tag" in note, note
    first = min(a["window_start_s"] for a in inside)
    assert f"{datetime.fromtimestamp(first, UTC):%H:%M}–03:20 UTC" in note, note
    assert "the incident's other windows are" in note and "; not quarantined" not in note

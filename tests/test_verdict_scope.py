"""What verdicts say, through ``ctrguard replay`` (issue 16): the scope of a fault (one
pipeline incident for an ingestion stall, nothing for the partial window at the end of a
replay), its cause (bot clicks told from a real surge by the clicks themselves) and what
is held back (``quarantine.causes``)."""

from __future__ import annotations

from collections import Counter, defaultdict

import orjson
import pytest

from ctrguard.cli import EXIT_OK, main
from ctrguard.replay import generator as g

W = 300


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """12 busy campaigns over 12 hours: bot clicks, real surges and one stall of every
    source; the clicks of the last impressions come after the end."""
    out = tmp_path_factory.mktemp("scope")
    sc = g.generate(out, seed=1, campaigns=12, hours=12, min_volume=40, incident_rate=1.0,
                    trap_rate=0.0, incident_kinds=("bot_clicks", "ctr_surge", "ingestion_stall"),
                    very_late_fraction=0.0)
    kinds = Counter(lab.kind for lab in sc.incidents)
    assert kinds["ingestion_stall"] == 1 and kinds["bot_clicks"] >= 3 and kinds["ctr_surge"] >= 3
    return sc


def _replay(sc, out, config=None) -> tuple[list[dict], list[dict]]:
    args = ["replay", "--impressions", str(sc.impressions_path), "--clicks",
            str(sc.clicks_path), "--out", str(out), "--no-baselines", "--quiet"]
    if config is not None:
        args += ["--config", str(config)]
    assert main(args) == EXIT_OK
    alerts = [orjson.loads(x) for x in (out / "alerts.jsonl").read_bytes().splitlines()]
    figures = [orjson.loads(x) for x in (out / "figures.jsonl").read_bytes().splitlines()]
    return alerts, figures


@pytest.fixture(scope="module")
def replayed(scenario, tmp_path_factory):
    return _replay(scenario, tmp_path_factory.mktemp("replayed"))


def _label_alerts(alerts, lab):
    return [a for a in alerts if a["campaign_id"] == lab.campaign_id
            and lab.start_s - W < a["window_start_s"] < lab.end_s + 3 * W]


def test_the_partial_window_at_the_end_raises_no_alert(scenario, replayed):
    alerts, figures = replayed
    end = scenario.end_s
    # The clicks that follow the last impressions were counted, in a window of their own
    # with no impressions at all...
    stray = [f for f in figures if f["window_start_s"] >= end]
    assert stray and all(f["impressions"] == 0 and f["clicks"] > 0 for f in stray)
    # ...and it is not judged for silence (it is closed by the drain, partial): without
    # this, every busy campaign got a critical silence there. A CTR incident still open
    # does not report it either: no impressions, no CTR.
    assert not [a for a in alerts if a["window_start_s"] >= end]
    assert not [a for a in alerts if a["kind"] == "silence"]


def test_a_stall_of_every_source_is_one_pipeline_incident(scenario, replayed):
    alerts, _ = replayed
    lab = next(lab for lab in scenario.incidents if lab.kind == "ingestion_stall")
    during = [a for a in alerts if lab.start_s - W < a["window_start_s"] < lab.end_s + W]
    assert during and {a["kind"] for a in during} == {"ingestion_stall"}
    assert {(a["suspected_cause"], a["detector"], a["quarantine"], a["segment"])
            for a in during} == {("ingestion_stall", "ingestion_stall", True, "all")}
    first = min(a["window_start_s"] for a in during)
    assert {a["incident"] for a in during} == {f"stall:impressions:{first}"}
    # One alert per affected campaign-window, with the campaign's own counts; most
    # campaigns are affected.
    per = Counter((a["campaign_id"], a["window_start_s"]) for a in during)
    assert max(per.values()) == 1
    assert len({a["campaign_id"] for a in during}) >= 9
    assert all(a["impressions"] == 0 for a in during if a["window_start_s"] >= lab.start_s + W)
    # Nothing else of the pipeline's stall is reported per campaign.
    assert not [a for a in alerts if a["incident"].startswith("stall:")
                and not lab.start_s - W < a["window_start_s"] < lab.end_s + W]


def _majority_cause(alerts):
    return Counter(a["suspected_cause"] for a in alerts).most_common(1)[0][0]


def test_bots_are_told_from_a_real_surge_by_their_clicks(scenario, replayed):
    alerts, figures = replayed
    status = {(f["campaign_id"], f["segment"], f["window_start_s"]): f["status"]
              for f in figures}
    found = defaultdict(list)
    for lab in scenario.incidents:
        if lab.kind in ("bot_clicks", "ctr_surge"):
            got = _label_alerts(alerts, lab)
            if got:
                found[lab.kind].append(_majority_cause(got))
            if got and lab.kind == "ctr_surge":
                # A creative that works: alerted on, its figures still reported.
                assert not any(a["quarantine"] for a in got)
                assert {status[(a["campaign_id"], a["segment"], a["window_start_s"])]
                        for a in got} == {"ok"}
    assert len(found["bot_clicks"]) >= 3 and set(found["bot_clicks"]) == {"bot_clicks"}
    assert len(found["ctr_surge"]) >= 2 and set(found["ctr_surge"]) == {"behaviour_change"}


def test_quarantine_causes_choose_what_is_held_back(scenario, tmp_path):
    config = tmp_path / "causes.yaml"
    config.write_text("quarantine:\n  causes:\n    behaviour_change: true\n"
                      "    bot_clicks: false\n")
    alerts, figures = _replay(scenario, tmp_path / "out", config)
    by_cause = defaultdict(set)
    for a in alerts:
        by_cause[a["suspected_cause"]].add(a["quarantine"])
    assert by_cause["behaviour_change"] == {True}
    assert by_cause["bot_clicks"] == {False}
    assert by_cause["ingestion_stall"] == {True}  # not listed: its default
    held = {(f["campaign_id"], f["segment"], f["window_start_s"]) for f in figures
            if f["status"] == "quarantined"}
    assert all((a["campaign_id"], a["segment"], a["window_start_s"]) in held
               for a in alerts if a["suspected_cause"] == "behaviour_change")


def test_an_unknown_cause_in_the_config_stops_the_replay(scenario, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("quarantine:\n  causes:\n    bots: true\n")
    assert main(["replay", "--impressions", str(scenario.impressions_path), "--clicks",
                 str(scenario.clicks_path), "--out", str(tmp_path / "out"), "--quiet",
                 "--config", str(config)]) == 2
    assert not (tmp_path / "out" / "alerts.jsonl").exists()
    assert "bad.yaml:2: quarantine.causes: unknown cause 'bots'" in capsys.readouterr().err


def _alert_keys(alerts):
    return sorted((a["campaign_id"], a["segment"], a["window_start_s"], a["kind"],
                   a["incident"], a["quarantine"]) for a in alerts)


def test_a_stall_is_judged_alike_however_the_campaigns_are_sharded(scenario, replayed):
    """Every shard of the running flow judges a stall from the whole pipeline's volume,
    which every one of its chunks carries: one state per shard (as the flow runs) says
    what the replay's single state says. Judged from a shard's own campaigns, the 12
    campaigns over 16 shards (most alone in theirs) each got a ``silence`` of their own."""
    from ctrguard.config import load_config
    from ctrguard.detectors.monitor import build_monitor
    from ctrguard.events import CLICK, IMPRESSION
    from ctrguard.flows.engine import EventPreparer, ShardState
    from ctrguard.records import WindowDecision
    from ctrguard.replay.run import _FileSource

    settings = load_config(None, env={})
    assert settings.windows.shards > 12  # most campaigns alone in their shard
    sources = [_FileSource(scenario.impressions_path, "impressions", IMPRESSION, 5000),
               _FileSource(scenario.clicks_path, "clicks", CLICK, 5000)]
    ids = ["impressions:0", "clicks:0"]
    preparer = EventPreparer(settings)
    states = [ShardState(settings, ids, lambda: build_monitor(settings.detectors))
              for _ in range(settings.windows.shards)]
    got = []

    def keep(items):
        got.extend(a.to_dict() for d in items if isinstance(d, WindowDecision)
                   for a in d.alerts)

    while pending := [s for s in sources if not s.done]:
        src = min(pending, key=lambda s: (s.frontier is not None, s.frontier or 0))
        prepared = preparer.prepare(src.read_chunk())
        if prepared.frontier_ms is not None:
            src.frontier = prepared.frontier_ms
        for shard, chunk in preparer.chunks(prepared):
            keep(states[shard].ingest(chunk))
    for state in states:
        keep(state.flush())
    alerts, _ = replayed
    assert any(a["kind"] == "ingestion_stall" for a in got)
    assert not any(a["kind"] == "silence" for a in got)
    per_shard, replay = _alert_keys(got), _alert_keys(alerts)
    assert per_shard == replay, (sorted(set(per_shard) - set(replay)),
                                 sorted(set(replay) - set(per_shard)))


def test_the_shard_count_changes_no_verdict(scenario, replayed, tmp_path):
    config = tmp_path / "one-shard.yaml"
    config.write_text("windows:\n  shards: 1\n")
    alerts, figures = _replay(scenario, tmp_path / "out", config)
    assert _alert_keys(alerts) == _alert_keys(replayed[0])
    assert sorted(map(orjson.dumps, figures)) == sorted(map(orjson.dumps, replayed[1]))


def _per_shard_alerts(items, settings, per_batch: int):
    """``items`` (tests/live_traffic.py) through a state per shard, as the live flow runs
    them, each partition's messages in batches of ``per_batch``."""
    from ctrguard.detectors.monitor import build_monitor
    from ctrguard.events import CLICK, IMPRESSION
    from ctrguard.flows.engine import EventPreparer, RawBatch, ShardState
    from ctrguard.records import WindowDecision

    preparer = EventPreparer(settings)
    keys = sorted({(it.topic, it.partition) for it in items})
    states = [ShardState(settings, [f"{t}:{p}" for t, p in keys],
                         lambda: build_monitor(settings.detectors))
              for _ in range(settings.windows.shards)]
    pending = {key: [] for key in keys}
    out = []

    def send(key, idle=False):
        values, pending[key] = pending[key], []
        kind = IMPRESSION if key[0] == "impressions" else CLICK
        prepared = preparer.prepare(RawBatch(key[0], key[1], kind, values,
                                             list(range(len(values))), idle=idle))
        for shard, chunk in preparer.chunks(prepared):
            out.extend(states[shard].ingest(chunk))

    for it in items:
        key = (it.topic, it.partition)
        pending[key].append(it.value)
        if len(pending[key]) >= per_batch:
            send(key)
    for key in keys:
        send(key, idle=True)
    for state in states:
        out.extend(state.flush())
    return sorted((a.campaign_id, a.segment, a.window_start_s, a.kind, a.incident,
                   a.quarantine) for d in out if isinstance(d, WindowDecision)
                  for a in d.alerts)


def test_batches_change_no_verdict():
    """The same traffic (a click outage of the biggest campaign) in batches of 20 and of
    5,000 messages per partition: the same alerts. (The chunks of a click batch for shards
    without its events once counted its volume as impressions: the big campaign's outage
    became an ingestion stall in one shard, with small batches only.)"""
    from ctrguard.config import load_config
    from tests.live_traffic import traffic

    items = traffic(240, outage=(150, 195))
    settings = load_config(None, env={})
    small = _per_shard_alerts(items, settings, 20)
    assert any(a[3] == "click_outage" for a in small)
    assert not any(a[3] == "ingestion_stall" for a in small)
    assert small == _per_shard_alerts(items, settings, 5000)

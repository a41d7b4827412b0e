"""Evaluation metrics on hand-made alert and label sets with known answers."""

from __future__ import annotations

import orjson
import pytest

from ctrguard.replay import generator as g
from ctrguard.replay.evaluate import (
    FigureIndex,
    ReplayInputError,
    decidability,
    evaluate,
    evaluate_many,
    format_table,
    load_alerts,
    load_labels,
)
from ctrguard.replay.generator import Label

W = 300


def alert(cid: str, ws: int, segment: str = "all", **kw) -> dict:
    return {"campaign_id": cid, "segment": segment, "window_start_s": ws, **kw}


def flat_figures(cid: str, n: int, imps: int, clicks: int, segment: str = "all",
                 override: dict[int, tuple[int, int]] | None = None) -> list[dict]:
    out = []
    for w in range(n):
        i, c = (override or {}).get(w, (imps, clicks))
        out.append({"campaign_id": cid, "segment": segment, "window_start_s": w * W,
                    "impressions": i, "clicks": c})
    return out


LABELS = [
    Label("c1", "*", "click_outage", 3000, 6000),
    Label("c2", "device=mobile", "bot_clicks", 9000, 10800),
    Label("c3", "*", "creative_fatigue", 0, 7200),
]
ALERTS = [
    alert("c1", 3600),            # detects the outage two windows in
    alert("c1", 3900),            # same episode
    alert("c1", 6600),            # after the end, within 3 windows of tolerance: true episode
    alert("c2", 9300, "channel=email"),   # wrong segment: false
    alert("c2", 12000),           # after the tolerance: false
    alert("c4", 0),               # no incident at all: false
]


def test_recall_precision_false_alarms_and_delay():
    r = evaluate(ALERTS, LABELS, [], window_s=W, campaign_days=10)
    assert (r["incidents"], r["detected"]) == (3, 1)
    assert r["recall"] == pytest.approx(1 / 3)
    assert (r["episodes"], r["true_episodes"], r["false_episodes"]) == (5, 2, 3)
    assert r["episode_precision"] == pytest.approx(0.4)
    assert r["false_alarms_per_100_campaign_days"] == pytest.approx(30.0)
    assert r["median_delay_windows"] == 2.0
    assert r["median_delay_windows_abrupt"] == 2.0
    assert r["per_kind"]["click_outage"]["recall"] == 1.0
    assert r["per_kind"]["bot_clicks"]["recall"] == 0.0
    assert r["per_kind"]["creative_fatigue"]["median_delay_windows"] is None
    details = {d["kind"]: d for d in r["incident_details"]}
    assert details["click_outage"]["delay_windows"] == 2.0
    assert details["bot_clicks"]["detected"] is False
    assert len(r["false_episode_details"]) == 3


def test_no_alerts_means_zero_recall_and_undefined_precision():
    r = evaluate([], LABELS, [], window_s=W, campaign_days=5)
    assert r["recall"] == 0.0 and r["episode_precision"] is None
    assert r["false_alarms_per_100_campaign_days"] == 0.0
    assert r["median_delay_windows"] is None


def test_an_alert_on_all_detects_a_segment_incident_unless_strict():
    alerts = [alert("c2", 9300)]
    assert evaluate(alerts, LABELS, [], window_s=W, campaign_days=1)["detected"] == 1
    strict = evaluate(alerts, LABELS, [], window_s=W, campaign_days=1, strict_segments=True)
    assert strict["detected"] == 0 and strict["false_episodes"] == 1
    exact = evaluate([alert("c2", 9300, "device=mobile")], LABELS, [], window_s=W,
                     campaign_days=1, strict_segments=True)
    assert exact["detected"] == 1


def test_delay_counts_whole_windows_from_the_window_containing_the_start():
    lab = [Label("c1", "*", "click_outage", 3100, 6000)]
    # Window [3000, 3300) contains the start: delay 0, although it begins before the start.
    assert evaluate([alert("c1", 3000)], lab, [], window_s=W,
                    campaign_days=1)["median_delay_windows"] == 0.0
    # Window [2700, 3000) ends before the incident: not a detection.
    r = evaluate([alert("c1", 2700)], lab, [], window_s=W, campaign_days=1)
    assert r["detected"] == 0 and r["false_episodes"] == 1
    # The first matching alert sets the delay, not the first alert of the episode.
    r = evaluate([alert("c1", 2700), alert("c1", 3300), alert("c1", 3900)], lab, [],
                 window_s=W, campaign_days=1)
    assert r["median_delay_windows"] == 1.0 and r["episodes"] == 1


def test_tolerance_after_the_end_is_configurable():
    lab = [Label("c1", "*", "click_outage", 0, 3000)]
    late = [alert("c1", 3000 + 2 * W)]
    assert evaluate(late, lab, [], window_s=W, campaign_days=1)["detected"] == 1
    assert evaluate(late, lab, [], window_s=W, campaign_days=1,
                    tolerance_windows=1)["detected"] == 0


def test_episodes_merge_alerts_within_the_gap():
    two_windows_apart = [alert("c9", 0), alert("c9", 900)]      # gap 600 s = 2 windows
    three_windows_apart = [alert("c9", 0), alert("c9", 1200)]   # gap 900 s
    assert evaluate(two_windows_apart, [], [], window_s=W, campaign_days=1)["episodes"] == 1
    assert evaluate(three_windows_apart, [], [], window_s=W, campaign_days=1)["episodes"] == 2
    assert evaluate(three_windows_apart, [], [], window_s=W, campaign_days=1,
                    merge_gap_windows=3)["episodes"] == 1
    # Different campaigns never merge; the order of the input does not matter.
    mixed = [alert("b", 300), alert("a", 0), alert("a", 300)]
    assert evaluate(mixed, [], [], window_s=W, campaign_days=1)["episodes"] == 2


def test_campaign_days_come_from_the_figures_when_not_given():
    figs = flat_figures("c1", 288, 100, 2) + flat_figures("c2", 144, 100, 2)
    r = evaluate([alert("c1", 0)], [], figs, window_s=W)
    assert r["campaign_days"] == pytest.approx(1.5)
    assert r["false_alarms_per_100_campaign_days"] == pytest.approx(100 / 1.5)


def test_min_severity_and_iso_window_starts():
    alerts = [{"campaign_id": "c1", "segment": "all", "window_start": "1970-01-01T01:00:00Z",
               "severity": "info"},
              alert("c1", 4200, severity="critical")]
    lab = [Label("c1", "*", "click_outage", 3000, 6000)]
    r = evaluate(alerts, lab, [], window_s=W, campaign_days=1)
    assert r["median_delay_windows"] == 2.0  # 3600 s, from the ISO start
    r = evaluate(alerts, lab, [], window_s=W, campaign_days=1, min_severity="warning")
    assert r["alerts"] == 1 and r["median_delay_windows"] == 4.0


def test_false_episodes_are_attributed_to_traps():
    traps = [Label("c5", "*", "volume_surge", 600, 1800)]
    r = evaluate([alert("c5", 900), alert("c5", 9000)], [], [], window_s=W, campaign_days=1,
                 traps=traps)
    assert r["false_episodes"] == 2
    assert r["false_episodes_on_traps"] == {"volume_surge": 1}


# --------------------------------------------------------------------------- decidability


def test_outage_on_a_busy_series_is_decidable_and_on_a_quiet_one_is_not():
    busy = flat_figures("c1", 40, 1000, 20, override={w: (1000, 0) for w in range(10, 14)})
    quiet = flat_figures("c2", 40, 10, 0, override={w: (10, 1) for w in range(0, 40, 5)})
    labels = [Label("c1", "*", "click_outage", 3000, 4200),
              Label("c2", "*", "click_outage", 3000, 4200)]
    d = decidability(labels, busy + quiet, window_s=W)
    assert d[0]["decidable"] is True and d[0]["expected"] == pytest.approx(80.0)
    assert d[1]["decidable"] is False and d[1]["p_value"] > 0.1
    r = evaluate([], labels, busy + quiet, window_s=W, campaign_days=1)
    assert r["decidable_incidents"] == 1 and r["recall_decidable"] == 0.0


def test_decidability_uses_ctr_so_doubled_impressions_count():
    figs = flat_figures("c1", 40, 1000, 20, override={w: (2000, 20) for w in range(10, 20)})
    d = decidability([Label("c1", "*", "duplicate_impressions", 3000, 6000)], figs, window_s=W)
    assert d[0]["observed"] == 200 and d[0]["expected"] == pytest.approx(400.0)
    assert d[0]["decidable"] is True


def test_decidability_uses_the_labelled_segment_and_whole_windows():
    figs = (flat_figures("c1", 40, 1000, 20)
            + flat_figures("c1", 40, 300, 6, "device=mobile",
                           override={w: (300, 30) for w in range(11, 14)}))
    # Starts mid-window 10 and ends mid-window 14: windows 11-13 are wholly inside.
    d = decidability([Label("c1", "device=mobile", "bot_clicks", 3100, 4300)], figs,
                     window_s=W)
    assert d[0]["series"] == "device=mobile" and d[0]["windows"] == 3
    assert d[0]["observed"] == 90 and d[0]["expected"] == pytest.approx(18.0)
    assert d[0]["decidable"] is True


def test_reference_windows_skip_other_incidents_of_the_campaign():
    # A CTR surge right before the outage must not inflate the "normal" CTR.
    figs = flat_figures("c1", 60, 1000, 10,
                        override={**{w: (1000, 50) for w in range(10, 20)},
                                  **{w: (1000, 0) for w in range(20, 24)}})
    labels = [Label("c1", "*", "ctr_surge", 3000, 6000),
              Label("c1", "*", "click_outage", 6000, 7200)]
    d = decidability(labels, figs, window_s=W)
    assert d[1]["reference_ctr"] == pytest.approx(0.01)
    assert d[1]["expected"] == pytest.approx(40.0)


def test_decidability_without_reference_is_unknown():
    d = decidability([Label("cx", "*", "click_outage", 0, 600)], [], window_s=W)
    assert d[0]["decidable"] is None
    r = evaluate([alert("cx", 0)], [Label("cx", "*", "click_outage", 0, 600)], [],
                 window_s=W, campaign_days=1)
    assert r["decidable_incidents"] == 0 and r["recall_decidable"] is None


def test_perfect_alerts_on_a_generated_scenario_score_perfectly():
    sim = g.simulate(seed=4, campaigns=12, hours=12, incident_rate=0.6)
    figs = g.count_figures(sim)
    perfect = [alert(lab.campaign_id, lab.start_s // W * W,
                     "all" if lab.segment == "*" else lab.segment,
                     suspected_cause=sorted(g.CAUSE_OF_KIND[lab.kind])[0])
               for lab in sim.incidents if lab.campaign_id != "*"]
    # A pipeline incident: one alert per campaign, all under one pipeline-level id.
    perfect += [alert(cid, lab.start_s // W * W, suspected_cause="ingestion_stall",
                      incident=f"stall:impressions:{lab.start_s // W * W}")
                for lab in sim.incidents if lab.campaign_id == "*" for cid in sim.campaign_ids]
    assert any(lab.kind == "ingestion_stall" for lab in sim.incidents)
    r = evaluate(perfect, sim.incidents, figs, window_s=W, traps=sim.traps)
    assert r["recall"] == 1.0 and r["episode_precision"] == 1.0
    assert r["episodes"] == len(sim.incidents) and r["cause_accuracy"] == 1.0
    assert r["false_alarms_per_100_campaign_days"] == 0.0
    assert r["median_delay_windows"] == 0.0
    assert r["campaign_days"] == pytest.approx(12 * 12 / 24, rel=0.02)
    # Click outages on campaigns with any clicks to speak of are decidable.
    for lab, d in zip(sim.incidents, r["incident_details"], strict=True):
        if lab.kind == "click_outage" and d["expected_clicks"] and d["expected_clicks"] > 15:
            assert d["decidable"] is True and d["observed_clicks"] == 0


# --------------------------------------------------------------------------- side by side, I/O


def test_evaluate_many_gives_one_result_per_alert_set(tmp_path):
    figs = flat_figures("c1", 40, 1000, 20, override={w: (1000, 0) for w in range(10, 20)})
    path = tmp_path / "ztest.jsonl"
    path.write_text('{"campaign_id":"c1","segment":"all","window_start_s":3000}\n'
                    '{"campaign_id":"c1","segment":"all","window_start_s":600}\n')
    res = evaluate_many({"ctrguard": [alert("c1", 3300)], "raw_river": [], "ztest": path},
                        [Label("c1", "*", "click_outage", 3000, 6000)], figs, window_s=W)
    assert list(res) == ["ctrguard", "raw_river", "ztest"]
    assert res["ctrguard"]["recall"] == 1.0 and res["ctrguard"]["median_delay_windows"] == 1.0
    assert res["raw_river"]["recall"] == 0.0
    assert res["ztest"]["episode_precision"] == 0.5
    assert all(r["decidable_incidents"] == 1 for r in res.values())
    table = format_table(res).splitlines()
    assert len(table) == 4 and table[1].startswith("ctrguard")


def test_load_labels_round_trip_and_errors(tmp_path):
    path = tmp_path / "incidents.csv"
    g.write_labels(path, LABELS)
    assert sorted(load_labels(path), key=lambda x: x.start_s) == \
        sorted(LABELS, key=lambda x: x.start_s)
    bad = tmp_path / "bad.csv"
    bad.write_text("campaign_id,segment,kind,start,end\n"
                   "c1,*,click_outage,2026-01-05T00:00:00Z,2026-01-05T01:00:00Z\n"
                   "c1,*,click_outage,2026-01-05T00:00:00,2026-01-05T01:00:00Z\n")
    with pytest.raises(ReplayInputError, match=r"bad.csv:3: .*no timezone"):
        load_labels(bad)
    bad.write_text("campaign,segment\n")
    with pytest.raises(ReplayInputError, match=r"bad.csv:1: header"):
        load_labels(bad)
    bad.write_text("campaign_id,segment,kind,start,end\nc1,*,x,100,50\n")
    with pytest.raises(ReplayInputError, match=r"bad.csv:2: end must be after start"):
        load_labels(bad)


def test_load_alerts_reports_the_bad_line(tmp_path):
    path = tmp_path / "alerts.jsonl"
    path.write_text('{"campaign_id":"c1","segment":"all","window_start_s":0}\n\n'
                    '{"campaign_id":"c1","segment":"all"}\n')
    with pytest.raises(ReplayInputError, match=r"alerts.jsonl:3: bad alert"):
        load_alerts(path)


def test_figure_index_keeps_the_last_report_of_a_window():
    idx = FigureIndex([
        {"campaign_id": "c", "segment": "all", "window_start_s": 0, "impressions": 5,
         "clicks": 1},
        {"campaign_id": "c", "segment": "all", "window_start_s": 0, "impressions": 7,
         "clicks": 2},
    ])
    assert idx.counts("c", "all", 0) == (7, 2) and idx.counts("c", "all", 300) == (0, 0)


def test_clairvoyant_delay_grows_as_the_series_gets_quieter():
    """The oracle delay is what any detector at the same false-alarm budget must wait."""
    labels = [Label("busy", "*", "click_outage", 30 * W, 50 * W),
              Label("quiet", "*", "click_outage", 30 * W, 50 * W)]
    figs = (flat_figures("busy", 80, 2000, 40, override={w: (2000, 0) for w in range(30, 50)})
            + flat_figures("quiet", 80, 200, 2, override={w: (200, 0) for w in range(30, 50)}))
    out = evaluate_many({"x": [alert("busy", 30 * W)]}, labels, figs, oracle_budget=0.02)
    rows = {r["campaign_id"]: r for r in out["x"]["incident_details"]}
    # ln(288 windows * 1 series / 0.02) = 9.6 nats: 40 expected clicks missing decide in
    # the first window, 2 per window need five windows (0..4).
    assert out["x"]["oracle"]["threshold_nats"] == pytest.approx(9.575, abs=0.01)
    assert rows["busy"]["oracle_delay_windows"] == 0
    assert rows["quiet"]["oracle_delay_windows"] == 4
    assert out["x"]["median_oracle_delay_windows_abrupt"] == 2.0
    assert "clairvoyant" in format_table(out)
    # Without a budget nothing is computed.
    plain = evaluate_many({"x": []}, labels, figs)
    assert "oracle_delay_windows" not in plain["x"]["incident_details"][0]


def test_a_stall_reported_per_campaign_is_a_false_episode_per_campaign():
    # One stall of the whole pipeline: reported as one pipeline incident it is one true
    # episode; reported as a silence of each campaign it is detected by nothing and every
    # campaign's silence is a false episode.
    labels = [Label("*", "*", "ingestion_stall", 3000, 4200)]
    per_campaign = [alert(f"c{i}", 3000, suspected_cause="silence", incident="3000:silence")
                    for i in range(5)]
    r = evaluate(per_campaign, labels, [], window_s=W, campaign_days=5)
    assert r["detected"] == 0 and r["episodes"] == 5 and r["false_episodes"] == 5
    one = [{**a, "suspected_cause": "ingestion_stall", "incident": "stall:impressions:3000"}
           for a in per_campaign]
    r = evaluate(one, labels, [], window_s=W, campaign_days=5)
    assert r["detected"] == 1 and r["episodes"] == 1 and r["false_episodes"] == 0
    assert r["cause_accuracy"] == 1.0


def test_suspected_cause_is_judged_by_the_cause_most_alerts_of_an_incident_name():
    labels = [Label("c1", "*", "ctr_surge", 3000, 6000), Label("c2", "*", "bot_clicks", 3000, 6000)]
    alerts = [alert("c1", 3000, suspected_cause="bot_clicks"),
              alert("c1", 3300, suspected_cause="behaviour_change"),
              alert("c1", 3600, suspected_cause="behaviour_change"),
              alert("c2", 3000, suspected_cause="bot_clicks")]
    r = evaluate(alerts, labels, [], window_s=W, campaign_days=2)
    assert r["cause_judged"] == 2 and r["cause_right"] == 2
    alerts[1]["suspected_cause"] = "bot_clicks"
    r = evaluate(alerts, labels, [], window_s=W, campaign_days=2)
    assert r["cause_right"] == 1 and r["per_kind"]["ctr_surge"]["cause_accuracy"] == 0.0


def test_excess_delay_is_measured_against_the_clairvoyant_test():
    # 1,000 impressions at 2 % CTR; clicks vanish from window 10: the clairvoyant test
    # needs one window (20 expected clicks = 20 nats > 11.7), an alarm in window 13 is 3
    # windows late.
    figs = flat_figures("c1", 30, 1000, 20, override={w: (1000, 0) for w in range(10, 20)})
    labels = [Label("c1", "*", "click_outage", 3000, 6000)]
    out = evaluate_many({"x": [alert("c1", 3900)]}, labels, figs, window_s=W,
                        oracle_budget=0.02)["x"]
    assert out["clairvoyant_decidable_incidents"] == 1
    assert out["incident_details"][0]["oracle_delay_windows"] == 0
    assert out["recall_clairvoyant_decidable"] == 1.0
    assert out["median_excess_delay_windows"] == 3.0


def test_pool_command_sums_runs_and_refuses_a_missing_one(tmp_path, capsys):
    from ctrguard.replay import pool

    figs = flat_figures("c1", 30, 1000, 20, override={w: (1000, 0) for w in range(10, 20)})
    labels = [Label("c1", "*", "click_outage", 3000, 6000)]
    for name, ws in (("a", 3000), ("b", 3600)):
        out = evaluate_many({"ctrguard": [alert("c1", ws, suspected_cause="click_tracking"),
                                          alert("c1", 8400)]},
                            labels, figs, window_s=W, oracle_budget=0.02)
        (tmp_path / name).mkdir()
        (tmp_path / name / "evaluation.json").write_bytes(orjson.dumps(out))
    assert pool.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    text = capsys.readouterr().out
    assert "recall, clairvoyant-decidable incidents   1.00 (2/2)" in text
    assert "median delay beyond the clairvoyant test  1.0 windows" in text
    assert "episode precision                         0.50 (2/4)" in text
    assert "suspected cause right                     1.00 (2/2)" in text
    assert pool.main([str(tmp_path / "a"), str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err

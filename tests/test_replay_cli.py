"""The replay, generate, evaluate and score-series subcommands: help, outputs, exit codes."""

from __future__ import annotations

import csv
import importlib.util

import msgspec
import pytest

from ctrguard.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenario")
    assert main(["generate", "--out", str(out), "--seed", "2", "--campaigns", "6",
                 "--hours", "6", "--volume-scale", "2", "--quiet"]) == EXIT_OK
    return out


@pytest.mark.parametrize("command,flags", [
    ("replay", ["--impressions", "--clicks", "--labels", "--no-baselines", "Exit codes"]),
    ("generate", ["--seed", "--campaigns", "--hours", "--volume-scale", "--start"]),
    ("evaluate", ["--alerts", "--figures", "--labels", "--traps"]),
    ("score-series", ["--csv", "--out", "timestamp"]),
])
def test_help(command, flags, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in flags:
        assert flag in text


def test_top_level_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("replay", "generate", "evaluate", "score-series"):
        assert command in text


def test_generate_writes_the_scenario(scenario, capsys):
    names = {p.name for p in scenario.iterdir()}
    assert {"impressions.jsonl.gz", "clicks.jsonl.gz", "incidents.csv", "traps.csv",
            "scenario.json"} <= names
    assert (scenario / "incidents.csv").read_text().startswith("campaign_id,segment,kind,")


def test_generate_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--out", str(tmp_path), "--campaigns", "0"])
    assert exc.value.code == EXIT_USAGE
    assert main(["generate", "--out", str(tmp_path), "--hours", "1",
                 "--start", "2026-01-05T00:00:00", "--quiet"]) == EXIT_USAGE
    assert "timezone" in capsys.readouterr().err


def test_replay_missing_input_is_a_usage_error(tmp_path, capsys):
    code = main(["replay", "--impressions", str(tmp_path / "nope.jsonl"), "--clicks",
                 str(tmp_path / "nope2.jsonl"), "--out", str(tmp_path / "out")])
    assert code == EXIT_USAGE
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_replay_rejects_bad_labels_before_replaying(scenario, tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("campaign_id,segment,kind,start,end\nc000,*,click_outage,soon,later\n")
    code = main(["replay", "--impressions", str(scenario / "impressions.jsonl.gz"),
                 "--clicks", str(scenario / "clicks.jsonl.gz"), "--out", str(tmp_path / "out"),
                 "--labels", str(labels), "--no-baselines"])
    assert code == EXIT_USAGE
    assert "labels.csv:2:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_replay_bad_config_is_a_usage_error(scenario, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("windows:\n  length: -5\n")
    code = main(["replay", "--impressions", str(scenario / "impressions.jsonl.gz"),
                 "--clicks", str(scenario / "clicks.jsonl.gz"), "--out", str(tmp_path / "o"),
                 "--config", str(cfg), "--no-baselines"])
    assert code == EXIT_USAGE
    assert "bad.yaml:2" in capsys.readouterr().err


def test_replay_with_labels_writes_the_evaluation(scenario, tmp_path, capsys):
    out = tmp_path / "replay"
    code = main(["replay", "--impressions", str(scenario / "impressions.jsonl.gz"),
                 "--clicks", str(scenario / "clicks.jsonl.gz"), "--out", str(out),
                 "--labels", str(scenario / "incidents.csv"), "--traps",
                 str(scenario / "traps.csv"), "--no-baselines", "--quiet"])
    assert code == EXIT_OK
    for name in ("alerts.jsonl", "figures.jsonl", "summary.json", "evaluation.json"):
        assert (out / name).is_file()
    ev = msgspec.json.decode((out / "evaluation.json").read_bytes())
    assert list(ev) == ["ctrguard"]
    n_labels = len((scenario / "incidents.csv").read_text().splitlines()) - 1
    assert ev["ctrguard"]["incidents"] == n_labels
    assert ev["ctrguard"]["campaign_days"] == pytest.approx(6 * 6 / 24, rel=0.05)
    assert "ctrguard" in capsys.readouterr().out
    # The standalone evaluate reproduces it from the files.
    again = tmp_path / "again.json"
    assert main(["evaluate", "--alerts", str(out / "alerts.jsonl"), "--figures",
                 str(out / "figures.jsonl"), "--labels", str(scenario / "incidents.csv"),
                 "--traps", str(scenario / "traps.csv"), "--out", str(again)]) == EXIT_OK
    assert msgspec.json.decode(again.read_bytes()) == ev


@pytest.mark.skipif(importlib.util.find_spec("ctrguard.detectors.baselines") is None,
                    reason="baseline detectors not built yet")
def test_replay_runs_the_baselines_side_by_side(scenario, tmp_path):
    out = tmp_path / "replay"
    assert main(["replay", "--impressions", str(scenario / "impressions.jsonl.gz"),
                 "--clicks", str(scenario / "clicks.jsonl.gz"), "--out", str(out),
                 "--labels", str(scenario / "incidents.csv"), "--quiet"]) == EXIT_OK
    ev = msgspec.json.decode((out / "evaluation.json").read_bytes())
    assert list(ev) == ["ctrguard", "raw_river", "ztest"]


def _write_eval_inputs(tmp_path):
    figures = tmp_path / "figures.jsonl"
    figures.write_bytes(b"".join(msgspec.json.encode(
        {"campaign_id": "c1", "segment": "all", "window_start_s": w * 300,
         "impressions": 1000, "clicks": 0 if 10 <= w < 14 else 20}) + b"\n" for w in range(40)))
    labels = tmp_path / "incidents.csv"
    labels.write_text("campaign_id,segment,kind,start,end\nc1,*,click_outage,3000,4200\n")
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text('{"campaign_id":"c1","segment":"all","window_start_s":3300}\n')
    other = tmp_path / "alerts_ztest.jsonl"
    other.write_text('{"campaign_id":"c1","segment":"all","window_start_s":9000}\n')
    return figures, labels, alerts, other


def test_evaluate_compares_named_alert_sets(tmp_path, capsys):
    figures, labels, alerts, other = _write_eval_inputs(tmp_path)
    out = tmp_path / "ev.json"
    code = main(["evaluate", "--alerts", str(alerts), "--alerts", str(other), "--alerts",
                 f"mine={alerts}", "--figures", str(figures), "--labels", str(labels),
                 "--out", str(out)])
    assert code == EXIT_OK
    ev = msgspec.json.decode(out.read_bytes())
    assert list(ev) == ["ctrguard", "ztest", "mine"]
    assert ev["ctrguard"]["recall"] == 1.0 and ev["ctrguard"]["recall_decidable"] == 1.0
    assert ev["ctrguard"]["median_delay_windows"] == 1.0
    assert ev["ztest"]["recall"] == 0.0 and ev["ztest"]["false_episodes"] == 1
    assert capsys.readouterr().out.splitlines()[0].startswith("system")


def test_evaluate_bad_alert_line_is_a_usage_error(tmp_path, capsys):
    figures, labels, alerts, _ = _write_eval_inputs(tmp_path)
    alerts.write_text('{"campaign_id":"c1","segment":"all","window_start_s":3300}\nnot json\n')
    code = main(["evaluate", "--alerts", str(alerts), "--figures", str(figures),
                 "--labels", str(labels)])
    assert code == EXIT_USAGE
    assert "alerts.jsonl:2: bad alert" in capsys.readouterr().err
    code = main(["evaluate", "--alerts", str(tmp_path / "none.jsonl"), "--figures",
                 str(figures), "--labels", str(labels)])
    assert code == EXIT_USAGE


@pytest.mark.parametrize("body,message", [
    ("timestamp,value\n2026-01-01T00:00:00Z,1\n2026-01-01T00:01:00Z,abc\n",
     "s.csv:3: value 'abc' is not a number"),
    ("timestamp,value\n2026-01-01T00:00:00,1\n", "s.csv:2: timestamp"),
    ("timestamp,value\n1767225660,1\n1767225600,2\n", "s.csv:3: timestamps must not go back"),
    ("timestamp,value\n1767225600,1,7\n", "s.csv:2: expected 2 fields"),
    ("time,val\n1,2\n", "s.csv:1: header must contain"),
    ("timestamp,value\n1767225600,nan\n", "s.csv:2: value 'nan' is not finite"),
])
def test_score_series_reports_bad_rows_with_line_numbers(tmp_path, capsys, body, message):
    src = tmp_path / "s.csv"
    src.write_text(body)
    assert main(["score-series", "--csv", str(src), "--out", str(tmp_path / "o.csv")]) \
        == EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_score_series_missing_file(tmp_path, capsys):
    assert main(["score-series", "--csv", str(tmp_path / "x.csv"), "--out",
                 str(tmp_path / "o.csv")]) == EXIT_USAGE


@pytest.mark.skipif(importlib.util.find_spec("ctrguard.detectors.scalar") is None,
                    reason="scalar scorer not built yet")
def test_score_series_appends_score_and_alert_columns(tmp_path):
    src = tmp_path / "s.csv"
    rows = [(1767225600 + 60 * i, 10.0 + (i % 3) * 0.1) for i in range(200)]
    rows[150] = (rows[150][0], 500.0)
    src.write_text("timestamp,value\n" + "".join(f"{t},{v}\n" for t, v in rows))
    out = tmp_path / "o.csv"
    assert main(["score-series", "--csv", str(src), "--out", str(out), "--quiet"]) == EXIT_OK
    with open(out, newline="") as fh:
        got = list(csv.reader(fh))
    assert got[0] == ["timestamp", "value", "anomaly_score", "alert"]
    assert len(got) == 201
    assert [r[:2] for r in got[1:]] == [[str(t), str(v)] for t, v in rows]
    assert {r[3] for r in got[1:]} <= {"0", "1"}
    assert got[151][3] == "1"


def test_score_series_without_scorer_fails_cleanly(tmp_path, capsys, monkeypatch):
    import ctrguard.replay.cli as cli

    def missing():
        raise ModuleNotFoundError("No module named 'ctrguard.detectors.scalar'", name="ctrguard.detectors.scalar")

    monkeypatch.setattr(cli, "_scorer", missing)
    src = tmp_path / "s.csv"
    src.write_text("timestamp,value\n1767225600,1\n")
    assert main(["score-series", "--csv", str(src), "--out", str(tmp_path / "o.csv")]) \
        == EXIT_FAILURE
    assert "not available" in capsys.readouterr().err

"""Recorded windows (decode and window once) and ``ctrguard tune``, end to end."""

from __future__ import annotations

import csv

import msgspec
import pytest

from ctrguard.cli import EXIT_OK, EXIT_USAGE, main
from ctrguard.config import load_config, load_config_text
from ctrguard.replay.recorded import detect, record, write_run


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenario")
    assert main(["generate", "--out", str(out), "--seed", "5", "--campaigns", "8",
                 "--hours", "10", "--volume-scale", "2", "--quiet"]) == EXIT_OK
    return out


def _sorted_lines(path):
    return sorted(path.read_bytes().splitlines())


def test_detectors_over_a_recording_give_the_replay_line_for_line(scenario, tmp_path):
    """A recording run with other detector settings writes what a full replay with them
    writes: same alerts, figures (with status), bands and dead letters."""
    cfg = tmp_path / "other.yaml"
    cfg.write_text("detectors:\n  false_alarms_per_campaign_day: 0.2\n  warmup_windows: 4\n")
    replayed = tmp_path / "replayed"
    assert main(["replay", "--impressions", str(scenario / "impressions.jsonl.gz"),
                 "--clicks", str(scenario / "clicks.jsonl.gz"), "--config", str(cfg),
                 "--out", str(replayed), "--no-baselines", "--bands", "--quiet"]) == EXIT_OK
    stream = record(scenario / "impressions.jsonl.gz", scenario / "clicks.jsonl.gz",
                    load_config(None))
    summary = write_run(stream, load_config(cfg), tmp_path / "detected")
    for name in ("alerts.jsonl", "figures.jsonl", "bands.jsonl", "deadletter.jsonl"):
        assert _sorted_lines(tmp_path / "detected" / name) == _sorted_lines(replayed / name), name
    expected = msgspec.json.decode((replayed / "summary.json").read_bytes())
    for key in ("events_read", "windows", "quarantined_windows", "alerts", "excluded"):
        assert summary[key] == expected[key], key
    assert expected["alerts"] > 0
    # Other settings, other alerts: the recording really is re-detected.
    assert len(detect(stream, load_config(None)).alerts) != expected["alerts"]


def test_tune_sweeps_scores_and_writes_a_config_that_replays_to_its_numbers(scenario, tmp_path,
                                                                              capsys):
    grid = tmp_path / "grid.yaml"
    # (Budgets far apart: at 0.5 a day this stream has no false episode any more.)
    grid.write_text("grid:\n  detectors.false_alarms_per_campaign_day: [0.005, 0.5, 50.0]\n"
                    "settings:\n  - {detectors.warmup_windows: 12}\n")
    out = tmp_path / "tune"
    assert main(["tune", "--scenario", str(scenario), "--grid", str(grid),
                 "--set", "detectors.cooldown_windows=2,6", "--processes", "2",
                 "--out", str(out), "--quiet"]) == EXIT_OK
    table = capsys.readouterr().out
    result = msgspec.json.decode((out / "tune.json").read_bytes())
    rows = result["rows"]
    assert len(rows) == 3 * 2 + 1
    assert "Pareto" in table and len(table.splitlines()) == len(rows) + 3
    with open(out / "tune.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    fa = [r["false_alarms_per_100_campaign_days"] for r in rows[:6:2]]
    assert fa == sorted(fa) and fa[0] < fa[-1]   # a larger budget, more false alarms
    assert result["pareto"] and result["chosen"] in range(len(rows))
    html_text = (out / "tune.html").read_text()
    assert "Pareto front" in html_text and "plotly.js v" in html_text
    # chosen.yaml loads, and a replay with it scores what tune said it would.
    chosen = rows[result["chosen"]]
    settings = load_config(out / "chosen.yaml")
    for key, value in chosen["setting"].items():
        assert getattr(settings.detectors, key.removeprefix("detectors.")) == value
    run = tmp_path / "run"
    assert main(["replay", "--impressions", str(scenario / "impressions.jsonl.gz"),
                 "--clicks", str(scenario / "clicks.jsonl.gz"), "--labels",
                 str(scenario / "incidents.csv"), "--traps", str(scenario / "traps.csv"),
                 "--config", str(out / "chosen.yaml"), "--out", str(run), "--no-baselines",
                 "--quiet"]) == EXIT_OK
    ev = msgspec.json.decode((run / "evaluation.json").read_bytes())["ctrguard"]
    for key in ("recall", "recall_decidable", "episode_precision",
                "false_alarms_per_100_campaign_days", "median_delay_windows"):
        assert chosen[key] == pytest.approx(ev[key]), key


def test_tune_in_one_process_scores_the_same(scenario, tmp_path):
    outs = []
    for procs in ("1", "2"):
        out = tmp_path / procs
        assert main(["tune", "--scenario", str(scenario), "--set",
                     "detectors.false_alarms_per_campaign_day=0.01,0.1", "--processes", procs,
                     "--out", str(out), "--quiet"]) == EXIT_OK
        rows = msgspec.json.decode((out / "tune.json").read_bytes())["rows"]
        outs.append([{k: v for k, v in r.items() if k != "cpu_s"} for r in rows])
    assert outs[0] == outs[1]


@pytest.mark.parametrize("args,message", [
    (["--set", "windows.length=10m"], "only detectors.<setting> can be swept"),
    (["--set", "detectors.no_such=1"], "detectors.no_such: unknown setting"),
    (["--set", "detectors.warmup_windows=0,4"], "detectors.warmup_windows: Input should be"),
    (["--set", "detectors.warmup_windows"], "expected KEY=V1,V2"),
])
def test_tune_refuses_bad_settings_before_any_work(scenario, tmp_path, capsys, args, message):
    assert main(["tune", "--scenario", str(scenario), "--out", str(tmp_path / "t"),
                 *args]) == EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_tune_grid_file_errors_name_file_and_line(scenario, tmp_path, capsys):
    grid = tmp_path / "g.yaml"
    grid.write_text("grid:\n  detectors.false_alarms_per_campaign_day: [0.01]\n"
                    "  detectors.cooldown_windows: [-1]\n")
    assert main(["tune", "--scenario", str(scenario), "--grid", str(grid),
                 "--out", str(tmp_path / "t")]) == EXIT_USAGE
    assert f"{grid}:3: detectors.cooldown_windows:" in capsys.readouterr().err


def test_chosen_config_keeps_the_base_config(tmp_path):
    from ctrguard.replay.tune import _write_chosen

    base = tmp_path / "base.yaml"
    base.write_text("windows:\n  length: 10m\ndetectors:\n  warmup_windows: 8\n")
    path = _write_chosen(tmp_path / "c.yaml", {"setting": {"detectors.cooldown_windows": 2},
                                               "recall": 0.5, "recall_decidable": None,
                                               "false_alarms_per_100_campaign_days": 1.0,
                                               "median_excess_delay_windows": 1.0}, base)
    s = load_config_text(path.read_text())
    assert (s.windows.length, s.detectors.warmup_windows, s.detectors.cooldown_windows) == \
        (600, 8, 2)

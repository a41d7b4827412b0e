"""``ctrguard diff --config A --config B``: what a configuration change would have fired."""

from __future__ import annotations

import msgspec
import pytest

from ctrguard.cli import EXIT_OK, EXIT_USAGE, main


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenario")
    assert main(["generate", "--out", str(out), "--seed", "5", "--campaigns", "8",
                 "--hours", "10", "--volume-scale", "2", "--quiet"]) == EXIT_OK
    return out


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    d = tmp_path_factory.mktemp("configs")
    a, b = d / "a.yaml", d / "b.yaml"
    a.write_text("detectors:\n  false_alarms_per_campaign_day: 0.02\n")
    b.write_text("detectors:\n  false_alarms_per_campaign_day: 5.0\n  cooldown_windows: 1\n")
    return a, b


def _lines(path):
    return [msgspec.json.decode(x) for x in path.read_bytes().splitlines() if x.strip()]


def _held(run):
    return {(f["campaign_id"], f["segment"], f["window_start_s"])
            for f in _lines(run / "figures.jsonl") if f["status"] == "quarantined"}


def test_diff_tells_what_the_second_config_would_have_fired(scenario, configs, tmp_path,
                                                            capsys):
    a, b = configs
    out = tmp_path / "diff"
    assert main(["diff", "--config", str(a), "--config", str(b), "--scenario", str(scenario),
                 "--out", str(out), "--quiet"]) == EXIT_OK
    table = capsys.readouterr().out
    d = msgspec.json.decode((out / "diff.json").read_bytes())
    assert d["settings_changed"] == {"detectors.cooldown_windows": [6, 1],
                                     "detectors.false_alarms_per_campaign_day": [0.02, 5.0]}
    inc = d["incidents"]
    # Every incident of B is added, changed or unchanged; every one of A is matched or removed.
    assert len(inc["added"]) + len(inc["changed"]) + inc["unchanged"] == d["b"]["incidents"]
    assert len(inc["removed"]) <= d["a"]["incidents"]
    assert inc["added"], "a budget 250 times larger adds incidents"
    # The quarantined windows come from the two runs' own figures.
    qa, qb = _held(out / "a"), _held(out / "b")
    q = d["quarantined_windows"]
    assert (q["a"], q["b"]) == (len(qa), len(qb))
    assert {tuple(x) for x in q["added"]} == qb - qa
    assert {tuple(x) for x in q["removed"]} == qa - qb
    assert qb - qa
    assert f"{len(inc['added'])} added" in table and "quarantined series-windows" in table
    page = (out / "report.html").read_text()
    assert 'id="diff"' in page and page.count('<tr class="added">') == len(inc["added"])
    # With the scenario's labels both configurations are evaluated, side by side.
    ev = msgspec.json.decode((out / "b" / "evaluation.json").read_bytes())
    assert set(ev) == {"A", "B"}
    assert d["b"]["evaluation"]["false_alarms_per_100_campaign_days"] >= \
        d["a"]["evaluation"]["false_alarms_per_100_campaign_days"]


def test_the_same_config_twice_changes_nothing(scenario, configs, tmp_path, capsys):
    a, _ = configs
    out = tmp_path / "same"
    assert main(["diff", "--config", str(a), "--config", str(a), "--scenario", str(scenario),
                 "--out", str(out), "--quiet"]) == EXIT_OK
    d = msgspec.json.decode((out / "diff.json").read_bytes())
    assert d["settings_changed"] == {}
    assert (d["incidents"]["added"], d["incidents"]["removed"], d["incidents"]["changed"]) == \
        ([], [], [])
    assert d["incidents"]["unchanged"] == d["a"]["incidents"] > 0
    assert (out / "a" / "alerts.jsonl").read_bytes() == (out / "b" / "alerts.jsonl").read_bytes()


def test_configs_that_window_differently_are_recorded_twice(scenario, configs, tmp_path):
    a, _ = configs
    b = tmp_path / "device-only.yaml"
    b.write_text("segments:\n  dimensions: [device]\n")
    out = tmp_path / "windows"
    assert main(["diff", "--config", str(a), "--config", str(b), "--impressions",
                 str(scenario / "impressions.jsonl.gz"), "--clicks",
                 str(scenario / "clicks.jsonl.gz"), "--out", str(out), "--quiet"]) == EXIT_OK
    segs_a = {f["segment"] for f in _lines(out / "a" / "figures.jsonl")}
    segs_b = {f["segment"] for f in _lines(out / "b" / "figures.jsonl")}
    assert any(s.startswith("channel=") for s in segs_a)
    assert not any(s.startswith("channel=") for s in segs_b)


def test_diff_usage_errors(scenario, configs, tmp_path, capsys):
    a, _ = configs
    assert main(["diff", "--config", str(a), "--scenario", str(scenario),
                 "--out", str(tmp_path / "x")]) == EXIT_USAGE
    assert "exactly twice" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("detectors:\n  warmup_windows: -3\n")
    assert main(["diff", "--config", str(a), "--config", str(bad), "--scenario",
                 str(scenario), "--out", str(tmp_path / "x")]) == EXIT_USAGE
    assert f"{bad}:2: detectors.warmup_windows" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

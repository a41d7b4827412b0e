"""A tiny run of the benchmark harness: every measurement produces a plausible figure.

No timing assertions (timings belong in the benchmark's report, not in pass/fail tests):
the checks are that each step ran on the data it was given and reported consistent numbers.
"""

from __future__ import annotations

import json
import re

import pytest

from bench.run import REQUIRED_KEYS, main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bench_smoke_run_reports_every_key(tmp_path, capsys):
    results_path = tmp_path / "results.json"
    markdown_path = tmp_path / "BENCHMARKS.md"
    code = main(["--events", "20000", "--campaigns", "50", "--raw-repeats", "1",
                 "--live-repeats", "2", "--replay-repeats", "2",
                 "--dense-volume-scale", "0.5",
                 "--latency-seconds", "25", "--latency-rate", "2000",
                 "--memory-series", "400", "--tune-hours", "2",
                 # (one compiled part off in 3b and 6b, not each in turn: the same code path)
                 "--native-parts", "scan",
                 "--results", str(results_path),
                 "--markdown", str(markdown_path), "--timeout", "300"])
    assert code == 0
    r = json.loads(results_path.read_text())
    assert set(REQUIRED_KEYS) <= r.keys()

    for key in ("raw_eps", "naive_eps", "ctrguard_eps", "replay_eps"):
        assert r[key] > 0, key
    assert r["ratio_to_raw"] == pytest.approx(r["ctrguard_eps"] / r["raw_eps"], rel=0.01)
    # (rounded to 2 decimals: 0.005 absolute when the ratio is small, as on a busy machine)
    assert r["ratio_to_naive"] == pytest.approx(r["ctrguard_eps"] / r["naive_eps"], rel=0.01,
                                                abs=0.005)
    assert r["speedup_two_processes"] > 0

    d = r["details"]
    events = d["scenario"]["events"]
    assert d["scenario"]["impressions"] >= 20000
    # The naive flow counted every event, in a window or as late.
    assert d["naive"]["counted"] + d["naive"]["late"] == events
    # The live flow decided windows for (nearly) every campaign and left watermarks in Redis.
    assert d["ctrguard"]["campaigns_checked"] >= 45
    # Two live runs on fresh state each; the reported one is one of them, with the
    # machine's CPU and steal beside its own.
    assert len(d["ctrguard_runs_eps"]) == 2 and r["ctrguard_eps"] in d["ctrguard_runs_eps"]
    assert d["ctrguard"]["machine_busy_cpu_s"] >= d["ctrguard"]["flow_cpu_s"] * 0.5
    assert d["ctrguard"]["steal_cpu_s"] >= 0
    # Replay read every event in each of its runs (fresh processes); the reported rate is
    # one of them.
    assert d["replay"]["events_read"] == events
    assert len(d["replay"]["runs_eps"]) == 2 and r["replay_eps"] in d["replay"]["runs_eps"]
    assert d["replay"]["cpu_s"] > 0 and d["replay"]["windows"] > 0
    # Consuming alone costs its thread some CPU per event, and no more than the process.
    raw_cpu = d["raw_cpu_us_per_event"]
    assert 0 < raw_cpu["thread"] <= raw_cpu["process"] + 0.01

    # Dense traffic: a scenario of its own (a minute of event time at least), read whole by
    # raw consume and by the live flow.
    dense = d["dense"]
    assert dense["events"] >= 20000 and dense["impressions_per_s"] > 0
    assert r["dense_ratio_to_raw"] == pytest.approx(
        r["dense_ctrguard_eps"] / r["dense_raw_eps"], rel=0.01)
    assert dense["ctrguard"]["campaigns_checked"] >= 45
    assert len(dense["ctrguard_runs_eps"]) == 2

    # Latency: windows were measured, and percentiles are ordered.
    lat = d["latency"]
    assert lat["windows_measured"] >= 1
    assert lat["figures"]["samples"] > 0
    assert 0 < r["latency_p50_ms"] <= r["latency_p99_ms"]
    # Redis is written before the figure is published.
    assert lat["redis_checked"]["p50_ms"] <= r["latency_p50_ms"] + 50

    # Memory: a series costs between a hundred bytes and a hundred kilobytes.
    assert 100 < r["bytes_per_series"] < 100_000
    assert d["memory"]["400"]["series"] >= 400
    assert 10 < r["peak_rss_mb"] < 10_000

    # 3b and 6b: the flow and replay once more with the scanner off, nothing else.
    assert [k for k in d if "_off_" in k] == ["live_off_scan", "replay_off_scan"]
    assert d["live_off_scan"]["eps"] > 0 and d["replay_off_scan"]["eps"] > 0

    text = markdown_path.read_text()
    assert "| scan: event scanner off" in text
    assert "## Results" in text and f"{events:,} events" in text
    assert "us/event in the consuming thread" in text and "leaves" in text
    assert "median of 2:" in text and "machine busy" in text
    assert "9. dense traffic" in text and "events per campaign-window" in text
    # Step 10: every setting of the sweep scored, its wall time reported.
    assert d["tune"]["settings"] == 20 and r["tune_s"] == d["tune"]["wall_s"] > 0
    assert "10. ctrguard tune: 20 settings" in text
    assert "speed-up" in capsys.readouterr().out


# --------------------------------------------------------------------------- bench.ab

#: Each step on a tiny input: the committed tree against the working tree, Python source
#: on both sides (building the compiled parts twice would take minutes).
AB_STEPS = {
    "replay": ["--events", "3000", "--campaigns", "30"],
    "live": ["--events", "3000", "--campaigns", "30"],
    "engine": ["--events", "3000", "--campaigns", "30", "--detector", "default",
               "--volume-scale", "2.0"],
    "monitor": ["--events", "3000", "--campaigns", "30", "--no-synthetic"],
    "release": ["--campaigns", "40", "--windows", "4", "--shards", "3", "--alert-rate", "0.2"],
    "slack": ["--campaigns", "200", "--windows", "12"],
    "chart": ["--campaigns", "40", "--windows", "40"],
}


def _ab(step: str, tmp_path, *extra: str, warmup: int = 1) -> list[str]:
    return ["--step", step, "--base", "HEAD", "--rounds", "1", "--warmup", str(warmup),
            "--no-native", "--cache", str(tmp_path / "cache"), *AB_STEPS[step], *extra]


@pytest.mark.parametrize("step", sorted(AB_STEPS))
def test_ab_runs_each_step_on_both_sides_and_finds_the_same_outputs(step, tmp_path, capsys):
    from bench import ab

    assert ab.main(_ab(step, tmp_path, warmup=0)) == 0  # (the warm-up: the test below)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["step"] == step and out["identical_outputs"] is True
    for side in ("base", "new"):
        assert out[side]["units"] > 0 and out[side]["median"] > 0
        assert out[side]["detector_core"].split("/")[0] == "pure"
    assert out["base"]["rev"] == "HEAD" and out["new"]["rev"] == ab.WORKTREE
    assert out["base"]["units"] == out["new"]["units"]   # the same inputs
    assert len(out["ratio_new_to_base_per_round"]) == 1


@pytest.mark.parametrize("step", ["engine", "release"])
def test_ab_exits_1_when_one_side_produces_something_else(step, tmp_path, monkeypatch,
                                                          capsys):
    """The new side's runs report other outputs (a digest, or records the harness reads
    back, tampered with here after the real run): exit 1 and the runs named."""
    from bench import ab

    real_run, real_digest = ab.Side.run, ab.digest_of

    def run(self, step_name, spec, timeout, profile=None):
        res = real_run(self, step_name, spec, timeout, profile)
        if self.label == "new" and res.get("digest"):
            res["digest"] = "0" * 64
        return res

    def digest_of(obj):
        text = real_digest(obj)
        return "f" * 64 if tampered["next"] else text

    tampered = {"next": False}
    real_collect = ab.Step.collect if step == "engine" else ab.ReleaseStep.collect

    def collect(self, run_id, result):
        tampered["next"] = run_id.startswith("new")
        try:
            return real_collect(self, run_id, result)
        finally:
            tampered["next"] = False

    monkeypatch.setattr(ab.Side, "run", run)
    monkeypatch.setattr(ab, "digest_of", digest_of)
    monkeypatch.setattr(ab.ReleaseStep if step == "release" else ab.Step, "collect", collect)
    assert ab.main(_ab(step, tmp_path)) == 1
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["identical_outputs"] is False
    # Every run of one side differs from the first run of the other (warm-up and round).
    sides = {d.split()[0] for d in out["differences"]}
    assert len(out["differences"]) == 2 and len(sides) == 1


def test_ab_profile_samples_both_sides_and_names_where_they_differ(tmp_path, capsys):
    """``--profile DIR``: every timed run sampled by py-spy, the table of functions per
    side written to DIR/compare.txt (and logged)."""
    from bench import ab

    prof = tmp_path / "prof"
    args = _ab("chart", tmp_path, "--profile", str(prof), warmup=0)
    args[args.index("--campaigns") + 1] = "1000"   # (about half a CPU second a run)
    args[args.index("--windows") + 1] = "400"
    assert ab.main(args) == 0
    assert sorted(p.name for p in prof.glob("*-1.txt")) == ["base-1.txt", "new-1.txt"]
    table = (prof / "compare.txt").read_text()
    head, _, rows = table.partition("\n\n")
    base, new = (int(x.replace(",", "")) for x in
                 re.match(r"samples per run: base ([\d,]+), new ([\d,]+)", head).groups())
    assert base > 10 and new > 10   # (fewer when the tests load both cores)
    # The step's own work is what is sampled (not the imports before it).
    assert "SeriesHistory.observe (sinks/slack_chart.py)" in rows
    assert "<frozen importlib" not in rows
    assert "per function" in capsys.readouterr().err


def test_ab_refuses_an_unknown_revision(tmp_path, capsys):
    from bench import ab

    with pytest.raises(SystemExit) as exc:
        ab.main(["--step", "chart", "--base", "no-such-rev-xyz", "--cache",
                 str(tmp_path / "cache")])
    assert exc.value.code == 2 and "not a git revision" in capsys.readouterr().err

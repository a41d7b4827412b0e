"""A tiny run of the benchmark harness: every measurement produces a plausible figure.

No timing assertions (timings belong in the benchmark's report, not in pass/fail tests):
the checks are that each step ran on the data it was given and reported consistent numbers.
"""

from __future__ import annotations

import json

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

    text = markdown_path.read_text()
    assert "## Results" in text and f"{events:,} events" in text
    assert "us/event in the consuming thread" in text and "leaves" in text
    assert "median of 2:" in text and "machine busy" in text
    assert "9. dense traffic" in text and "events per campaign-window" in text
    # Step 10: every setting of the sweep scored, its wall time reported.
    assert d["tune"]["settings"] == 20 and r["tune_s"] == d["tune"]["wall_s"] > 0
    assert "10. ctrguard tune: 20 settings" in text
    assert "speed-up" in capsys.readouterr().out

"""``python -m bench.run [--events N]`` (``make bench``): ctrguard's benchmarks in one run.

On one generated scenario (default: >= 2 M impressions plus their clicks, 2,000 campaigns,
3 devices, a few incidents), against a local tansu broker, a private ``redis-server`` and the
Slack emulator, all started here and stopped at the end:

1. raw consume of the input topics (the ceiling);
2. a naive Bytewax flow (``KafkaSource -> map(json.loads) -> count_window``; the floor);
3. ctrguard's live flow in drain mode (one worker);
4. window-close-to-Redis/figure latency in tail mode at a paced rate;
5. state memory per active series (10k and 100k series);
6. replay from gzip JSONL;
7. the live flow with two processes versus one on two-partition topics.

Prints a table, writes ``bench/results.json`` and ``BENCHMARKS.md``. Progress goes to stderr.
See ``BENCHMARKS.md`` for the method of each measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import common
from bench.common import (
    BATCH_SIZE,
    CAMPAIGNS,
    DENSE_VOLUME_SCALE,
    EVENTS,
    REPO,
    SEED,
    SLACK_TOKEN,
    CpuMeter,
    build_scenario,
    finish_child,
    log,
    new_topics,
    output_topics,
    produce_lines,
    run_child,
    start_child,
    stop_process,
    write_config,
    write_gzip,
)
from bench.tune import measure_tune, tune_rows

#: Targets set by the performance issue (reported against, never enforced).
TARGETS = {
    "ratio_to_raw": (">=", 0.75),
    "ratio_to_naive": (">=", 4.0),
    "latency_p99_ms": ("<", 1000.0),
    "bytes_per_series": ("<=", 2048),
    "replay_eps": (">=", 300_000),
    "speedup_two_processes": (">=", 1.8),
}
#: The collapsed stacks of the last ``--profile`` run.
PROFILE_PATH = REPO / "bench" / "profile.collapsed.gz"
STEPS = ("raw", "naive", "live", "two", "latency", "replay", "engine", "dense", "memory",
         "tune")
REQUIRED_KEYS = ("raw_eps", "naive_eps", "ctrguard_eps", "ratio_to_raw", "ratio_to_naive",
                 "latency_p50_ms", "latency_p99_ms", "bytes_per_series", "peak_rss_mb",
                 "replay_eps", "speedup_two_processes")
#: Keys beside the issue's in results.json: step 9 (dense traffic).
EXTRA_KEYS = ("dense_raw_eps", "dense_ctrguard_eps", "dense_ratio_to_raw", "tune_s")


# --------------------------------------------------------------------------- environment


def _detector_core() -> str:
    from ctrguard import native

    return "compiled" if native.status() == "compiled" else f"python ({native.status()})"


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, Any]:
    import confluent_kafka

    from devtools.services import _redis_binary, _tansu_binary

    def first_line(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
            return out.strip().splitlines()[0] if out.strip() else "?"
        except (OSError, subprocess.SubprocessError):
            return "?"

    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "python": platform.python_version(),
        "bytewax": _version("bytewax"),
        "river": _version("river"),
        "confluent_kafka": f"{_version('confluent-kafka')} (librdkafka "
                           f"{confluent_kafka.libversion()[0]})",
        "msgspec": _version("msgspec"),
        # compiled (mypyc) or Python: see ctrguard/native.py
        "detector_core": _detector_core(),
        "redis_py": _version("redis"),
        "tansu": first_line([_tansu_binary(), "--version"]),
        "redis_server": " ".join(first_line([_redis_binary(), "--version"]).split()[:3]),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": mem_gib,
        "kernel": platform.release(),
        # Other work on the machine at the start (the benchmark's own load comes on top).
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


# --------------------------------------------------------------------------- steps


def ctrguard_config(workdir: Path, name: str, broker, redis_url: str, slack_url: str,
                    topics: dict[str, str], *, tail: bool = False) -> Path:
    return write_config(workdir / f"{name}.yaml", bootstrap=broker.bootstrap, topics=topics,
                        redis_url=redis_url, key_prefix=f"bench-{name}", tail=tail,
                        slack_base_url=slack_url)


def checked_summary(redis_server, prefix: str) -> dict[str, Any]:
    """What the run left in Redis: campaigns with a watermark, the latest one, flags."""
    client = redis_server.client()
    try:
        rows = client.zrange(f"{prefix}:checked:v2", -1, -1, withscores=True)
        return {"campaigns_checked": client.zcard(f"{prefix}:checked:v2"),
                "latest_checked_s": int(rows[0][1]) if rows else None,
                "flags": client.zcard(f"{prefix}:flags")}
    finally:
        client.close()


def measure_raw(bootstrap: str, topics: dict[str, str], n_events: int, repeats: int,
                label: str) -> dict[str, Any]:
    """Raw consume of both input topics ``repeats`` times: the median rate, every run's, and
    the median run's CPU per event (consuming thread, whole process)."""
    from bench.raw import raw_consume

    rates, cpu = [], []
    for i in range(repeats):
        n, elapsed, thread_s, process_s = raw_consume(
            bootstrap, [topics["impressions"], topics["clicks"]], 1)
        if n != n_events:
            raise RuntimeError(f"raw consume read {n} messages, produced {n_events}")
        rates.append(n / elapsed)
        cpu.append((thread_s / n * 1e6, process_s / n * 1e6))
        log(f"{label} run {i + 1}: {n:,} in {elapsed:.2f}s = {n / elapsed:,.0f}/s; CPU "
            f"{cpu[-1][0]:.2f} us/event in the consuming thread, {cpu[-1][1]:.2f} in the "
            "process")
    # CPU per event of the median run: what consuming alone costs the one thread the live
    # flow also processes on (the budget note in the report).
    mid = median_run(rates)
    return {"eps": round(statistics.median(rates)), "runs_eps": [round(x) for x in rates],
            "cpu_us_per_event": {"thread": round(cpu[mid][0], 3),
                                 "process": round(cpu[mid][1], 3)}}


@dataclass
class LiveContext:
    """What every live-flow run of a bench run shares: its services and work directory."""

    workdir: Path
    broker: Any
    redis_server: Any
    slack: Any
    meter: CpuMeter
    timeout: float


def measure_live(ctx: LiveContext, topics: dict[str, str], n_events: int, repeats: int,
                 name: str, label: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The live flow in drain mode ``repeats`` times on ``topics``, each on fresh state (its
    own Redis prefix and output topics: a run on the state of the one before would find
    its Slack messages sent); the median run and every run."""
    bootstrap = ctx.broker.bootstrap
    runs = []
    for i in range(repeats):
        run_name = name if i == 0 else f"{name}-{i + 1}"
        cfg = ctrguard_config(ctx.workdir, run_name, ctx.broker, ctx.redis_server.url,
                              ctx.slack.base_url,
                              {**topics, **output_topics(bootstrap, run_name)}
                              if i else topics)
        calls = len(ctx.slack.calls)
        ctx.meter.start()
        live = run_child(["ctrguard", "--config", str(cfg)], ctx.workdir / f"{run_name}.log",
                         timeout=ctx.timeout, label=label)
        run = {"eps": round(n_events / live["elapsed_s"]),
               "elapsed_s": live["elapsed_s"], "maxrss_mb": live["maxrss_mb"],
               "flow_cpu_s": round(live["cpu_s"], 2), **ctx.meter.stop(),
               **checked_summary(ctx.redis_server, f"bench-{run_name}"),
               "slack_calls": len(ctx.slack.calls) - calls}
        runs.append(run)
        log(f"{label} run {i + 1}: {live['elapsed_s']:.1f}s = {run['eps']:,.0f}/s; {run}")
    # The median run (as for raw consume): its rate, memory and CPU are reported.
    return runs[median_run([r["eps"] for r in runs])], runs


#: The windows of the bench's configuration (``windows.length: 5m``, bench.common).
WINDOW_S = 300


def measure_dense(args: argparse.Namespace, ctx: LiveContext) -> dict[str, Any]:
    """Step 9: raw consume and the live flow on traffic as dense as the issue's load.

    The main scenario spreads its events over hours (about nine events per campaign and
    window), so closing windows and running the detectors weigh on every event; at tens of
    thousands of impressions a second a window holds thousands of a campaign's events and
    the per-event work (consume, parse, dedup, count) is what is left. Same number of
    events, campaigns and seed; the span of event time is what changes (a few minutes).
    """
    bootstrap = ctx.broker.bootstrap
    log(f"9. dense traffic: simulating >= {args.events:,} impressions at volume scale "
        f"{args.dense_volume_scale} ...")
    sc = build_scenario(args.events, args.campaigns, args.seed, args.dense_volume_scale)
    topics = new_topics(bootstrap, "dense", 1)
    produce_lines(bootstrap, topics["impressions"], sc.impressions)
    produce_lines(bootstrap, topics["clicks"], sc.clicks)
    n_events, seconds = sc.events, sc.hours * 3600
    facts = {"volume_scale": args.dense_volume_scale, "hours": sc.hours,
             "impressions": len(sc.impressions), "clicks": len(sc.clicks), "events": n_events,
             "impressions_per_s": round(len(sc.impressions) / seconds),
             "events_per_campaign_window": round(
                 n_events / args.campaigns / max(1.0, seconds / WINDOW_S))}
    del sc
    log(f"9. dense traffic: {facts}")
    raw = measure_raw(bootstrap, topics, n_events, args.raw_repeats, "9. dense raw consume")
    chosen, runs = measure_live(ctx, topics, n_events, args.live_repeats, "dense",
                                "9. dense ctrguard flow")
    return {**facts, "raw_eps": raw["eps"], "raw_runs_eps": raw["runs_eps"],
            "raw_cpu_us_per_event": raw["cpu_us_per_event"], "ctrguard_eps": chosen["eps"],
            "ctrguard_runs_eps": [r["eps"] for r in runs],
            "ratio_to_raw": round(chosen["eps"] / raw["eps"], 3),
            "ctrguard": {k: v for k, v in chosen.items() if k != "eps"}}


def two_process_run(workdir: Path, name: str, config: Path, processes: int,
                    timeout: float) -> dict[str, Any]:
    """The live flow in ``processes`` processes (``cluster_main``, as ``bytewax.run -i/-a``)."""
    from devtools.services import free_port

    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    procs = []
    try:
        for i in range(processes):
            args = ["ctrguard", "--config", str(config)]
            if processes > 1:
                args += ["--addresses", addresses, "--proc-id", str(i)]
            procs.append((start_child(args, workdir / f"{name}-{i}.log"),
                          workdir / f"{name}-{i}.log"))
        results = [finish_child(p, path, timeout=timeout, label=f"{name} process {i}")
                   for i, (p, path) in enumerate(procs)]
    finally:
        for p, _ in procs:
            stop_process(p)
    start = min(r["start"] for r in results)
    end = max(r["end"] for r in results)
    return {"elapsed_s": end - start, "maxrss_mb": [r["maxrss_mb"] for r in results],
            "flow_cpu_s": round(sum(r["cpu_s"] for r in results), 2),
            "per_process": [{"elapsed_s": round(r["elapsed_s"], 2), "cpu_s": round(r["cpu_s"], 2)}
                            for r in results]}


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    if isinstance(value, int | float):
        return f"{value:,.0f}"
    return str(value)


def target_status(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    status = {}
    for key, (op, goal) in TARGETS.items():
        value = results.get(key)
        if value is None:
            met = None
        elif op == ">=":
            met = value >= goal
        elif op == "<":
            met = value < goal
        else:
            met = value <= goal
        status[key] = {"target": f"{op} {goal:g}", "value": value, "met": met}
    return status


# --------------------------------------------------------------------------- report


def cpu_note(run: dict[str, Any]) -> str:
    """Where the CPU went during a run: the flow, the broker, Redis, this process."""
    if "flow_cpu_s" not in run:
        return ""
    parts = [f"{name} {run[f'{name}_cpu_s']:.1f}" for name in ("flow", "broker", "redis", "bench")
             if f"{name}_cpu_s" in run]
    total = sum(run[f"{name}_cpu_s"] for name in ("flow", "broker", "redis", "bench")
                if f"{name}_cpu_s" in run)
    machine = ""
    if "machine_busy_cpu_s" in run:
        # Everything the machine ran (the above and any other process), and what the
        # hypervisor took: a run slowed by others shows here, not in the flow's own CPU.
        machine = (f"; machine busy {run['machine_busy_cpu_s'] / run['elapsed_s']:.2f} cores, "
                   f"steal {run.get('steal_cpu_s', 0.0):.1f} s")
    return (f"CPU s: {', '.join(parts)} = {total / run['elapsed_s']:.2f} cores "
            f"over {run['elapsed_s']:.0f} s{machine}")


def median_run(rates: list[float]) -> int:
    """The index of the median run (the lower middle one of an even count): the run whose
    rate is reported and whose other figures (CPU, memory) go with it.

    >>> median_run([400.0, 300.0, 350.0]), median_run([4.0, 1.0, 3.0, 2.0])
    (2, 3)
    """
    return rates.index(statistics.median_low(rates))


def runs_note(rates: list[float]) -> str:
    """``median of N: a, b, c`` for the repeated runs of a step."""
    return f"median of {len(rates)}: " + ", ".join(_fmt(x) for x in rates)


def replay_note(d: dict[str, Any]) -> str:
    """The replay runs and the median run's CPU per event (absent in old results)."""
    if not d.get("runs_eps"):
        return ""
    return (f"{runs_note(d['runs_eps'])}; that run's CPU: "
            f"{d['cpu_s'] / d['events_read'] * 1e6:.2f} us/event, peak RSS "
            f"{d['maxrss_mb']:.0f} MiB; ")


def raw_cpu_note(d: dict[str, Any]) -> str:
    """What consuming alone cost per event, in the median raw run (absent in old results)."""
    cpu = d.get("raw_cpu_us_per_event")
    if not cpu:
        return ""
    return (f"; that run's CPU: {cpu['thread']:.2f} us/event in the consuming thread, "
            f"{cpu['process']:.2f} in the process (librdkafka's threads too)")


def budget_note(r: dict[str, Any], d: dict[str, Any]) -> str:
    """The per-event time the ratio target leaves the flow's one thread, and how much of
    it consuming alone takes (from the raw run's CPU)."""
    cpu = d.get("raw_cpu_us_per_event")
    raw, target = r.get("raw_eps"), TARGETS["ratio_to_raw"][1]
    if not cpu or not raw:
        return ""
    budget = 1e6 / (target * raw)
    return (f"; {target} x raw leaves {budget:.2f} us/event on the flow's thread, of which "
            f"consuming alone took {cpu['thread']:.2f}")


#: Compiled parts measured on and off in the same run, on the live flow (step 3) and on
#: replay (step 6): name, what is off, environment of the run without it
#: (``ctrguard/native.py``: ``CTRGUARD_NATIVE_OFF``; ``all`` is ``CTRGUARD_PURE_PYTHON``).
NATIVE_PARTS = (
    ("all", "no compiled code at all", {"CTRGUARD_PURE_PYTHON": "1"}),
    ("core", "detector core as Python (no mypyc)", {"CTRGUARD_NATIVE_OFF": "core"}),
    ("scan", "event scanner off (msgspec decoding)", {"CTRGUARD_NATIVE_OFF": "scan"}),
    ("shard", "shard loops off (numpy and Python)", {"CTRGUARD_NATIVE_OFF": "shard"}),
)
#: What a compiled part must buy, on the live flow or on replay, to earn its place.
KEEP_GAIN = 0.15


def native_gains(d: dict[str, Any], part: str) -> dict[str, dict[str, float]]:
    """For each row (live, replay) measured without ``part``: the gain in events/s and in
    CPU per event of having it (``0.2``: 20 % faster / 20 % more CPU without it).

    >>> native_gains({"live": {"eps": 100, "cpu_us": 4.0}, "live_off_scan":
    ...               {"eps": 80, "cpu_us": 5.0}}, "scan")
    {'live': {'rate': 0.25, 'cpu': 0.25}}
    """
    out = {}
    for row in ("live", "replay"):
        on, off = d.get(row), d.get(f"{row}_off_{part}")
        if on and off and off.get("eps") and on.get("cpu_us"):
            out[row] = {"rate": round(on["eps"] / off["eps"] - 1, 3),
                        "cpu": round(off["cpu_us"] / on["cpu_us"] - 1, 3)}
    return out


def native_section(d: dict[str, Any]) -> str:
    table = native_table(d)
    if not table:
        return ""
    return f"""## What each compiled part buys

Each part turned off in turn, in the same run, on the live flow (step 3, the median run
with everything on against one run without the part) and on replay (step 6). A part earns
its place when it buys at least {KEEP_GAIN:.0%} on either row; judged on CPU per event,
which the other sessions sharing these 2 cores disturb less than the rate.

{table}

"""


def native_table(d: dict[str, Any]) -> str:
    """The markdown table of what each compiled part buys (empty when not measured)."""
    lines = []
    for part, what, _ in NATIVE_PARTS:
        gains = native_gains(d, part)
        if not gains:
            continue
        cells = []
        for row in ("live", "replay"):
            g = gains.get(row)
            on, off = d.get(row, {}), d.get(f"{row}_off_{part}", {})
            cells.append("n/a" if g is None else
                         f"{_fmt(on['eps'])} vs {_fmt(off['eps'])}/s ({g['rate']:+.0%}); "
                         f"{on['cpu_us']:.2f} vs {off['cpu_us']:.2f} CPU us/event "
                         f"({g['cpu']:+.0%})")
        best = max(g["cpu"] for g in gains.values())
        verdict = ("keeps its place" if best >= KEEP_GAIN else
                   f"below {KEEP_GAIN:.0%} on both rows") if part != "all" else "(all parts)"
        lines.append(f"| {part}: {what} | {cells[0]} | {cells[1]} | {verdict} |")
    if not lines:
        return ""
    return ("| part turned off | live flow: with vs without | replay: with vs without | "
            "verdict |\n| --- | --- | --- | --- |\n" + "\n".join(lines))


def table_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    d = r["details"]
    t = r["targets"]

    def mark(key: str) -> str:
        met = t[key]["met"]
        return f"{t[key]['target']}: " + ("met" if met else "NOT met" if met is not None else "n/a")

    lat = d["latency"]
    memory_rows = []
    for i, m in enumerate(d["memory"].values()):
        last = i == len(d["memory"]) - 1
        memory_rows.append((
            f"{'5.' if i == 0 else '  '} state per active series ({m['series']:,} series)",
            f"{_fmt(m['bytes_per_series'])} B",
            (f"{mark('bytes_per_series')}; " if last else "")
            + (f"{m['bytes_per_series_before_snapshot']} B before the first snapshot, "
               if "bytes_per_series_before_snapshot" in m else "")
            + f"detectors {m['monitor_bytes_per_series']} B, snapshot "
            f"{m['snapshot_bytes_per_series']} B, RSS growth {m['rss_bytes_per_series']} B, "
            f"peak RSS {m['peak_rss_mb']:.0f} MiB"))
    rows = [
        ("1. raw consume (confluent-kafka, no processing)", f"{_fmt(r['raw_eps'])} events/s",
         runs_note(d["raw_runs_eps"]) + raw_cpu_note(d)),
        ("2. naive Bytewax flow (json.loads + count_window)", f"{_fmt(r['naive_eps'])} events/s",
         f"{d['naive']['windows']:,} window counts, {d['naive']['late']:,} late; "
         f"{cpu_note(d['naive'])}"),
        ("3. ctrguard live flow, drain, 1 worker", f"{_fmt(r['ctrguard_eps'])} events/s",
         (runs_note(d["ctrguard_runs_eps"]) + "; " if "ctrguard_runs_eps" in d else "")
         + f"peak RSS {r['peak_rss_mb']:.0f} MiB; {cpu_note(d['ctrguard'])}"),
        *[(f"   same flow, {what}", f"{_fmt(d[f'live_off_{part}']['eps'])} events/s",
           f"with it x{1 + native_gains(d, part)['live']['rate']:.2f} (same run), CPU per "
           f"event x{1 + native_gains(d, part)['live']['cpu']:.2f}; "
           f"{cpu_note(d[f'live_off_{part}'])}")
          for part, what, _ in NATIVE_PARTS if f"live_off_{part}" in d],
        ("   ratio to raw consume", f"{r['ratio_to_raw']:.3f}",
         mark("ratio_to_raw") + budget_note(r, d)),
        ("   ratio to naive flow", f"{r['ratio_to_naive']:.2f}", mark("ratio_to_naive")),
        ("4. window close -> figure on topic, p50 / p99",
         f"{_fmt(r['latency_p50_ms'])} / {_fmt(r['latency_p99_ms'])} ms", mark("latency_p99_ms")),
        ("   window close -> P:checked:v2 in Redis, p50 / p99",
         f"{_fmt(lat['redis_checked']['p50_ms'])} / {_fmt(lat['redis_checked']['p99_ms'])} ms",
         f"{lat['windows_measured']} windows x {lat['campaigns']} campaigns, "
         f"{_fmt(lat['impressions_per_s'])} imp/s"
         + ("; max per window: " + ", ".join(_fmt(w["max_ms"]) for w in lat["per_window"])
            + " ms" if lat.get("per_window") else "")),
        *memory_rows,
        ("6. replay from gzip JSONL (1 core)", f"{_fmt(r['replay_eps'])} events/s",
         replay_note(d.get("replay", {})) + mark("replay_eps")),
        *[(f"   same replay, {what}", f"{_fmt(d[f'replay_off_{part}']['eps'])} events/s",
           f"with it x{1 + native_gains(d, part)['replay']['rate']:.2f} (same run), CPU per "
           f"event x{1 + native_gains(d, part)['replay']['cpu']:.2f} "
           f"({d[f'replay_off_{part}']['cpu_us']:.2f} us)")
          for part, what, _ in NATIVE_PARTS if f"replay_off_{part}" in d],
        *engine_rows(d.get("engine")),
        ("7. live flow, 2 partitions: 1 process", f"{_fmt(d['two']['p1_eps'])} events/s",
         cpu_note({**d['two']['p1_cpu'], "elapsed_s": d['two']['p1_elapsed_s']})),
        ("   live flow, 2 partitions: 2 processes", f"{_fmt(d['two']['p2_eps'])} events/s",
         f"speed-up x{r['speedup_two_processes']:.2f}; {mark('speedup_two_processes')}; "
         + cpu_note({**d['two']['p2_cpu'], "elapsed_s": d['two']['p2_elapsed_s']})
         + ("; per process: " + ", ".join(f"{p['elapsed_s']:.0f} s / {p['cpu_s']:.0f} CPU s"
                                          for p in d["two"]["p2_per_process"])
            if "p2_per_process" in d["two"] else "")
         + two_cpu_note(d["two"], d["scenario"]["events"])),
        *dense_rows(d.get("dense")),
        *tune_rows(d.get("tune")),
    ]
    return rows


def dense_rows(dense: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    """Step 9's rows (absent in old results)."""
    if not dense:
        return []
    goal = TARGETS["ratio_to_raw"][1]
    ratio = dense["ratio_to_raw"]
    return [
        ("9. dense traffic (the issue's load): raw consume", f"{_fmt(dense['raw_eps'])} events/s",
         f"{_fmt(dense['impressions_per_s'])} impressions/s of event time, "
         f"{_fmt(dense['events'])} events over {dense['hours'] * 60:.0f} min, "
         f"{_fmt(dense['events_per_campaign_window'])} events per campaign-window; "
         + runs_note(dense["raw_runs_eps"]) + raw_cpu_note(dense)),
        ("   dense traffic: ctrguard live flow, drain, 1 worker",
         f"{_fmt(dense['ctrguard_eps'])} events/s",
         f"ratio to raw {ratio:.3f}: >= {goal:g} " + ("met" if ratio >= goal else "NOT met")
         + f"; {runs_note(dense['ctrguard_runs_eps'])}; {cpu_note(dense['ctrguard'])}"),
    ]


def two_cpu_note(two: dict[str, Any], events: int) -> str:
    """The flow's CPU per event in one and in two processes, and the speed-up that CPU
    allows where each process has a core of its own (the broker and Redis elsewhere): the
    scaling left once the machine's other work and the hypervisor's steal are set aside.

    >>> two_cpu_note({"p1_cpu": {"flow_cpu_s": 10.0}, "p2_cpu": {"flow_cpu_s": 12.5}}, 10**6)
    '; flow CPU per event: 10.00 us in 1 process, 12.50 us in 2 (both): x1.60 with a core per process'
    """
    one, both = two["p1_cpu"]["flow_cpu_s"], two["p2_cpu"]["flow_cpu_s"]
    if not one or not both:
        return ""
    return (f"; flow CPU per event: {one / events * 1e6:.2f} us in 1 process, "
            f"{both / events * 1e6:.2f} us in 2 (both): x{2 * one / both:.2f} with a core "
            "per process")


def engine_rows(e: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    if not e:
        return []
    nd, dd = e["no_detector"], e["default_detector"]
    return [
        ("8. engine alone, no detector (CPU)",
         f"{_fmt(nd['prepare_us_per_event'] + nd['shards_us_per_event'], 2)} us/event",
         f"{_fmt(nd['events_per_cpu_s'])} events/CPU-s: prepare (decode, validate, exclude, "
         f"route) {nd['prepare_us_per_event']} us, shards (dedup, windows, figures) "
         f"{nd['shards_us_per_event']} us per event"),
        ("   engine alone, default detectors (CPU)",
         f"{_fmt(dd['prepare_us_per_event'] + dd['shards_us_per_event'], 2)} us/event",
         f"{_fmt(dd['events_per_cpu_s'])} events/CPU-s; detection "
         f"{dd['detection_us_per_event']} us/event = {dd['detection_share']:.0%} of the "
         f"engine: {dd['detection_us_per_campaign_window']} us per campaign-window "
         f"({_fmt(dd['campaign_windows'])}), {dd['detection_us_per_series_window']} us per "
         f"series-window"),
    ]


def render_text(r: dict[str, Any]) -> str:
    rows = table_rows(r)
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    return "\n".join(f"{a.ljust(w0)}  {b.rjust(w1)}  {c}" for a, b, c in rows)


def render_markdown(r: dict[str, Any]) -> str:
    d = r["details"]
    env = r["environment"]
    sc = d["scenario"]
    lat = d["latency"]
    live_runs = len(d.get("ctrguard_runs_eps", [0]))
    replay_runs = len(d.get("replay", {}).get("runs_eps", [0]))
    dense_scale = d.get("dense", {}).get("volume_scale", DENSE_VOLUME_SCALE)
    rows = "\n".join(f"| {a.strip()} | {b} | {c} |" for a, b, c in table_rows(r))
    profile = ""
    if d.get("profile"):
        prof = d["profile"]
        top_self = "\n".join(f"| `{name}` | {pct} |" for name, pct in prof["self_pct"][:15])
        top_incl = "\n".join(f"| `{name}` | {pct} |" for name, pct in prof["inclusive_pct"][:20])
        profile = f"""
## Profile of the live flow (py-spy, {prof['samples']:,} samples)

Sampled with `py-spy record --format raw --nonblocking` on a separate drain run of the same
topics (so the measured run is not slowed by sampling), counting only the samples inside
`run_main`; the collapsed stacks are in `bench/profile.collapsed.gz` (summary:
`python -m bench.profile bench/profile.collapsed.gz`). py-spy attributes time in C
extensions (msgspec, librdkafka, pickle) to the Python function that called them.

Inclusive share (the function or anything it calls):

| function | % of samples |
| --- | ---: |
{top_incl}

Self share (time in the function's own code):

| function | % of samples |
| --- | ---: |
{top_self}
"""
    return f"""# Benchmarks

Numbers of the latest run of `{r['command']}`, written by that run (`bench/run.py`); they are
measured, not edited. The machine is shared and has 2 cores, so runs vary by 10-20 %; the
broker, Redis and the benchmark itself share those cores with the flow under test.

Run: {r['finished_at']}, {r['duration_s']:.0f} s in total.

## Results

| measurement | result | notes |
| --- | ---: | --- |
{rows}

{native_section(d)}Events are impressions plus clicks. Targets come from the performance issue; "NOT met" is
reported as measured.

## Scenario and machine

- Scenario: `ctrguard.replay.generator.simulate(seed={sc['seed']}, campaigns={sc['campaigns']},
  hours={sc['hours']}, volume_scale={sc.get('volume_scale', common.VOLUME_SCALE)},
  incident_rate={common.INCIDENT_RATE}, trap_rate={common.TRAP_RATE})`: {sc['impressions']:,} impressions + {sc['clicks']:,} clicks
  = {sc['events']:,} events ({sc['avg_bytes']:.0f} bytes per JSON event on average),
  {sc['incidents']} incidents and {sc['traps']} traps injected, 3 devices x 4 channels.
- ctrguard configuration: defaults, except `segments.dimensions: [device]` (the naive flow
  counts per campaign and device, so both do the same windowing; ctrguard adds the campaign
  total), `kafka.batch_size: {BATCH_SIZE}`, `tail: false` (drain) except for the latency run,
  Slack in `web` mode against the local emulator (`devtools.slack_emulator`), a private
  `redis-server`, the embedded tansu broker with in-memory storage.
- Machine: {env['nproc']} CPUs ({env['cpu']}), {env['ram_gib']} GiB RAM, Linux {env['kernel']};
  1-minute load average {env.get('loadavg_1m_at_start', 'n/a')} at the start of the run
  and {env.get('loadavg_1m_at_end', 'n/a')} at its end (the machine is shared: other
  sessions' test suites may run at the same time).
- Versions: Python {env['python']}, Bytewax {env['bytewax']}, River {env['river']},
  confluent-kafka {env['confluent_kafka']}, msgspec {env['msgspec']}, redis-py
  {env['redis_py']}, {env['tansu']}, {env['redis_server']}; detector core:
  {env.get('detector_core', 'python')}.

## Method

1. **Raw consume** (ceiling): one confluent-kafka consumer assigned every input partition
   from the beginning, `consume(num_messages={BATCH_SIZE})` until every partition reports EOF,
   touching each message's value and nothing else; the consumer settings and the
   garbage-collector thresholds are those of ctrguard's source and flow process. Repeated
   {len(d['raw_runs_eps'])} times; the median is reported.
2. **Naive flow** (floor, `bench/naive.py`): `KafkaSource(tail=False,
   batch_size={BATCH_SIZE})` on both topics -> `op.map(json.loads)` ->
   `win.count_window` keyed by campaign, device and stream (the stream is unkeyed; the
   windowing operator keys it) with an `EventClock` (2 min wait) and 5-minute
   `TumblingWindower` -> a sink that counts windows; `.late` is counted too.
3. **ctrguard live flow**: `run_main(get_flow(settings))` in drain mode: parse, validate,
   exclude, dedup, window, detect, Redis flags and watermarks, figures and alerts to Kafka,
   Slack to the emulator. Rates are events / time spent in `run_main` (each flow runs in a
   fresh child process, `bench/child.py`; imports and River's import are not timed, the
   Slack outbox drain at the end is). It runs {live_runs} time(s), each on fresh
   state (its own Redis prefix and output topics); the median run is reported (its rate
   and CPU; peak RSS is the largest of the runs, the child's `VmHWM`). With the compiled
   code (`ctrguard/native.py`), the same flow runs once more on the same topics for each
   compiled part turned off (`CTRGUARD_NATIVE_OFF=core|scan|shard`, the Python or
   numpy reference runs instead) and once with none (`CTRGUARD_PURE_PYTHON=1`): what each
   buys, measured in the same run. Step 6 does the same for replay (one run each).
4. **Latency** (`bench/latency.py`): the live flow runs in tail mode in a child process.
   This process produces a synthetic stream at {_fmt(lat['impressions_per_s'])}
   impressions/s (+ {_fmt(lat['clicks_per_s'])} clicks/s) over {lat['campaigns']} campaigns
   in event-time order, event time running x{lat['speed']:g} the wall clock (a 5-minute
   window closes every {300 / lat['speed']:g} s), for {lat['duration_s']:g} s. A window's
   close is the later of the wall times at which the producer produced the first event at or
   after window end + allowed lateness (2 min) to each input topic (the watermark is the
   minimum over partitions). A consumer thread stamps each figure of series `all` arriving
   on the figures topic; a thread polling `P:checked:v2` every {lat['redis_poll_ms']:g} ms
   stamps when each campaign's score reaches the window end. Latency = stamp - close, per
   campaign and window ({lat['figures']['samples']:,} samples), leaving out the first
   windows (start-up). Redis is written before the figures are published, so the figure
   latency is the end-to-end one reported as `latency_p50_ms`/`latency_p99_ms`.
5. **Memory** (`bench/memory.py`): a `ShardState` with the default `CampaignMonitor`,
   segmented by device (4 series per campaign), fed 8 windows of synthetic chunks (every
   series of every campaign has events: 9 impressions and 1 click per campaign and window).
   `bytes_per_series` is the size of every object reachable from the state
   (`sys.getsizeof` over the object graph, each object once) over the number of series, at
   the largest series count, measured after one `pickle.dumps(state)`: Bytewax snapshots the
   state at every epoch, and on CPython >= 3.11 pickling materialises the lazily created
   `__dict__` of every object without `__slots__`, which then stays (the size before the
   first snapshot is given too). It includes the open window's counts and dedup ids and the
   dedup ids of closed windows still within the allowed lateness. Also given: the detectors
   alone, RSS growth (includes allocator slack from the freed input), and
   `len(pickle.dumps(state))` per series (what a snapshot stores).
6. **Replay**: `ctrguard.replay.run.run_replay` on the scenario written as gzip JSONL
   (compresslevel 3), what `ctrguard replay --no-baselines` runs, in a fresh child process
   (`bench/child.py`): events read / wall time, including writing figures, alerts and dead
   letters (River's import is done before, as for the live flow). Repeated {replay_runs}
   times; the median is reported.
7. **Two processes**: the same scenario produced to 2-partition topics (round-robin, so
   each partition keeps file order); the live flow in drain mode once in one process
   (`run_main`) and once in two processes of one worker each (`cluster_main` with two
   addresses, what `python -m bytewax.run -i N -a 'h:p;h:p'` and `python -m
   bytewax.testing -p2` do); elapsed = last end - first start. Speed-up = 2-process rate /
   1-process rate. On 2 cores shared with the broker and Redis, two flow processes cannot
   have a core each, so the row also gives the flow's CPU per event in each run and the
   speed-up that CPU allows with a core per process (2 x 1-process CPU / 2-process CPU).
8. **Engine alone** (`bench/engine.py`): the scenario's messages through `EventPreparer`
   and 16 `ShardState`s in this process, in batches of {BATCH_SIZE} lines read in event-time
   step as replay reads them, no Kafka, Redis or Slack; CPU time (`time.process_time`),
   once with a detector that decides nothing and once with the default `CampaignMonitor`,
   whose `update` calls are timed one by one: what detection costs per campaign-window
   and what everything else costs per event.
9. **Dense traffic**: the main scenario spreads its events over hours (a few events per
   campaign and window), so closing windows and running the detectors weigh on every
   event. Step 9 simulates the same number of events, campaigns and seed at the density
   the performance issue describes (`volume_scale={dense_scale}`: tens of thousands of
   impressions a second of event time, thousands of events per campaign-window, a few
   minutes of event time), and measures raw consume and the live flow on it as in steps 1
   and 3 (same repeats, medians; the live flow's windows close when the input is drained).

The flow processes (and replay, and step 8) raise CPython's garbage-collector thresholds
(`ctrguard.flows.engine.tune_gc`, called by `get_flow`): with the default (700) a flow spent a
large share of its time in collections over long-lived detector state.

## Command

```
{r['command']}
```

`make bench` runs `.venv/bin/python -m bench.run`; `EVENTS=N make bench` sets the number of
impressions (`--events N`); `--profile` adds a py-spy profile of the live flow.
Results as JSON: `bench/results.json`.

## Comparing two revisions

`python -m bench.ab --step STEP` runs one step on two revisions (default: the merge-base
with `main` against the working tree; `--base REV`, `--new REV`, and `--base-env`/`--new-env`
to turn a compiled part off on one side), each exported from git and built in a tree of its
own, on the same inputs, alternating in fresh child processes, and compares what each run
produced (exit 1 if anything differs). Steps: `replay`, `live`, `engine`, `monitor`,
`release`, `slack`, `chart`; it reports CPU per event (or per campaign-window, or per
decision) for every round and the medians. `python -m bench.ab --help` says what each
step runs.
{profile}"""


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=EVENTS,
                   help="impressions to generate, at least (clicks come on top)")
    p.add_argument("--campaigns", type=int, default=CAMPAIGNS)
    p.add_argument("--volume-scale", type=float, default=common.VOLUME_SCALE,
                   help="traffic density: impressions per campaign and minute of event time "
                        f"(ctrguard.replay.generator.simulate; {common.VOLUME_SCALE} by default)")
    p.add_argument("--dense-volume-scale", type=float, default=DENSE_VOLUME_SCALE,
                   help="traffic density of step 9 (the issue's load; "
                        f"{DENSE_VOLUME_SCALE} by default)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--raw-repeats", type=int, default=3)
    p.add_argument("--replay-repeats", type=int, default=3,
                   help="runs of replay (3), each in a fresh process; the median is reported")
    p.add_argument("--live-repeats", type=int, default=3,
                   help="runs of the live flow (3); the median is reported")
    p.add_argument("--latency-seconds", type=float, default=60.0)
    p.add_argument("--tune-hours", type=float, default=24.0,
                   help="hours of the 40-campaign stream of step 10 (ctrguard tune)")
    p.add_argument("--latency-rate", type=float, default=20_000,
                   help="impressions/s produced during the latency run")
    p.add_argument("--memory-series", default="10000,100000",
                   help="comma-separated series counts; the last is reported")
    p.add_argument("--profile", action="store_true",
                   help="also profile the live flow with py-spy (bench/profile.collapsed.gz)")
    p.add_argument("--profile-idle", action="store_true",
                   help="with --profile: also sample the flow while it waits (I/O, sleeps)")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results.json")
    p.add_argument("--markdown", type=Path, default=REPO / "BENCHMARKS.md")
    p.add_argument("--timeout", type=float, default=1800, help="per flow run, seconds")
    p.add_argument("--no-python-core", action="store_true",
                   help="skip the runs with compiled parts turned off (3b, 6b)")
    p.add_argument("--native-parts", default=",".join(part for part, _, _ in NATIVE_PARTS),
                   help="comma-separated compiled parts turned off in turn in 3b and 6b "
                        "(default: all of them, %(default)s)")
    p.add_argument("--only", default="",
                   help=f"comma-separated subset of {','.join(STEPS)} "
                   "(quick iterations: prints what ran, writes no report)")
    p.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                   help="measure nothing: rewrite the report from a results file")
    args = p.parse_args(argv)
    if args.render is not None:
        saved = json.loads(args.render.read_text())
        args.markdown.write_text(render_markdown(saved))
        print(render_text(saved))
        return 0
    command = "python -m bench.run " + shlex.join(argv if argv is not None else sys.argv[1:])

    def chosen(flag: str, value: str, what: str, known: Sequence[str]) -> set[str]:
        """The comma-separated names of ``value``; any unknown one stops with a usage error."""
        names = {x.strip() for x in value.split(",") if x.strip()}
        if names - set(known):
            p.error(f"{flag}: unknown {what} {sorted(names - set(known))}; "
                    f"choose from {','.join(known)}")
        return names

    steps = chosen("--only", args.only, "steps", STEPS)
    parts = chosen("--native-parts", args.native_parts, "parts",
                   [part for part, _, _ in NATIVE_PARTS])
    native_parts = [row for row in NATIVE_PARTS if row[0] in parts]
    def want(step: str) -> bool:
        return not steps or step in steps

    from devtools import services
    from devtools.slack_emulator import SlackEmulator

    t_begin = time.monotonic()
    env = environment()
    log(f"python {env['python']}, bytewax {env['bytewax']}, river {env['river']}, "
        f"confluent-kafka {env['confluent_kafka']}, {env['tansu']}; {env['nproc']} CPUs "
        f"({env['cpu']}), {env['ram_gib']} GiB")
    log(f"command: {command}")
    log(f"simulating >= {args.events:,} impressions, {args.campaigns} campaigns, seed {args.seed}")
    sc = build_scenario(args.events, args.campaigns, args.seed, args.volume_scale)
    n_events = sc.events
    avg_bytes = sum(map(len, sc.impressions[:100_000])) / max(1, min(100_000, len(sc.impressions)))
    log(f"scenario: {len(sc.impressions):,} impressions + {len(sc.clicks):,} clicks over "
        f"{sc.hours} h, {sc.incidents} incidents, {sc.traps} traps")
    results: dict[str, Any] = {}
    details: dict[str, Any] = {"scenario": {
        "seed": sc.seed, "campaigns": sc.campaigns, "hours": sc.hours,
        "volume_scale": args.volume_scale,
        "impressions": len(sc.impressions), "clicks": len(sc.clicks), "events": n_events,
        "incidents": sc.incidents, "traps": sc.traps, "avg_bytes": avg_bytes}}
    timeout = args.timeout

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ctrguard-bench-")))
        log("starting tansu, redis-server and the Slack emulator")
        broker = stack.enter_context(services.start_broker(log_dir=workdir))
        redis_server = stack.enter_context(services.start_redis())
        slack = stack.enter_context(SlackEmulator(token=SLACK_TOKEN))
        bootstrap = broker.bootstrap
        meter = CpuMeter(broker=broker.pid, redis=redis_server.pid)
        live_ctx = LiveContext(workdir, broker, redis_server, slack, meter, timeout)

        # -- 1. raw consume ------------------------------------------------------------
        topics = new_topics(bootstrap, "one", 1)
        if want("raw") or want("naive") or want("live") or args.profile:
            t0 = time.perf_counter()
            produce_lines(bootstrap, topics["impressions"], sc.impressions)
            produce_lines(bootstrap, topics["clicks"], sc.clicks)
            produce_s = time.perf_counter() - t0
            log(f"produced {n_events:,} events in {produce_s:.1f}s "
                f"({n_events / produce_s:,.0f}/s)")
            details["produce_eps"] = round(n_events / produce_s)
        if want("raw"):
            raw = measure_raw(bootstrap, topics, n_events, args.raw_repeats, "1. raw consume")
            details["raw_runs_eps"] = raw["runs_eps"]
            details["raw_cpu_us_per_event"] = raw["cpu_us_per_event"]
            results["raw_eps"] = raw["eps"]

        # -- 2. naive flow -------------------------------------------------------------
        if want("naive"):
            log("2. naive flow (KafkaSource -> json.loads -> count_window) ...")
            meter.start()
            naive = run_child(["naive", "--brokers", bootstrap, "--topics",
                               f"{topics['impressions']},{topics['clicks']}",
                               "--batch-size", str(BATCH_SIZE)],
                              workdir / "naive.log", timeout=timeout, label="naive flow")
            if naive["counted"] + naive["late"] != n_events:
                raise RuntimeError(f"naive flow counted {naive['counted']} + {naive['late']} "
                                   f"late of {n_events} events")
            results["naive_eps"] = round(n_events / naive["elapsed_s"])
            details["naive"] = {**{k: naive[k] for k in ("elapsed_s", "windows", "counted",
                                                         "late", "maxrss_mb")},
                                "flow_cpu_s": round(naive["cpu_s"], 2), **meter.stop()}
            log(f"2. naive flow: {naive['elapsed_s']:.1f}s = {results['naive_eps']:,.0f}/s")

        # -- 3. ctrguard live flow -----------------------------------------------------
        if want("live"):
            log(f"3. ctrguard live flow, drain mode, one worker, {args.live_repeats} run(s) ...")
            chosen, runs = measure_live(live_ctx, topics, n_events, args.live_repeats, "live",
                                        "3. ctrguard flow")
            results["ctrguard_eps"] = chosen["eps"]
            results["peak_rss_mb"] = round(max(r["maxrss_mb"] for r in runs), 1)
            details["ctrguard"] = {k: v for k, v in chosen.items() if k != "eps"}
            details["ctrguard_runs_eps"] = [r["eps"] for r in runs]
            if details["ctrguard"]["campaigns_checked"] < 0.9 * args.campaigns:
                raise RuntimeError(f"the live flow left watermarks for only "
                                   f"{details['ctrguard']['campaigns_checked']} campaigns")
            details["live"] = {"eps": results["ctrguard_eps"],
                               "cpu_us": round(chosen["flow_cpu_s"] / n_events * 1e6, 3)}
            if env["detector_core"] == "compiled" and not args.no_python_core:
                # The same flow with each compiled part turned off in turn (3b): what each
                # buys, in the same run.
                for part, what, extra in native_parts:
                    name = f"live-off-{part}"
                    log(f"3b. ctrguard live flow, {what} ...")
                    cfg = ctrguard_config(workdir, name, broker, redis_server.url,
                                          slack.base_url,
                                          {**topics, **output_topics(bootstrap, name)})
                    meter.start()
                    run = run_child(["ctrguard", "--config", str(cfg)],
                                    workdir / f"{name}.log", timeout=timeout,
                                    label=f"ctrguard flow ({what})",
                                    env=common.child_env(**extra))
                    details[f"live_off_{part}"] = {
                        "eps": round(n_events / run["elapsed_s"]),
                        "cpu_us": round(run["cpu_s"] / n_events * 1e6, 3),
                        "elapsed_s": run["elapsed_s"], "maxrss_mb": run["maxrss_mb"],
                        "flow_cpu_s": round(run["cpu_s"], 2), **meter.stop(),
                        **checked_summary(redis_server, f"bench-{name}")}
                    log(f"3b. {what}: {details[f'live_off_{part}']['eps']:,}/s; "
                        f"gains {native_gains(details, part).get('live')}")

        if args.profile:
            log("profiling the live flow with py-spy (a separate run) ...")
            pyspy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) \
                or shutil.which("py-spy")
            if pyspy is None:
                log("py-spy is not installed (pip install py-spy); no profile")
            else:
                from bench.profile import summarize

                out = workdir / "profile.txt"
                pcfg = ctrguard_config(workdir, "profile", broker, redis_server.url,
                                       slack.base_url,
                                       {**topics, **output_topics(bootstrap, "profile")})
                prof = run_child(["ctrguard", "--config", str(pcfg)], workdir / "profile.log",
                                 timeout=timeout, label="profiled flow",
                                 wrap=[pyspy, "record", "--format", "raw", "--nonblocking",
                                       "--rate", "200", "--output", str(out),
                                       *(["--idle"] if args.profile_idle else []), "--"])
                details["profile"] = summarize(out, 25)
                with open(out, "rb") as src, gzip.open(PROFILE_PATH, "wb", 9) as dst:
                    shutil.copyfileobj(src, dst)
                details["profile"]["elapsed_s"] = prof["elapsed_s"]

        # -- 7. two processes ----------------------------------------------------------
        if want("two"):
            log("7. two-partition topics: producing the same scenario ...")
            topics2 = new_topics(bootstrap, "two", 2)
            produce_lines(bootstrap, topics2["impressions"], sc.impressions, partitions=2)
            produce_lines(bootstrap, topics2["clicks"], sc.clicks, partitions=2)
            two: dict[str, Any] = {}
            for procs in (1, 2):
                name = f"p{procs}"
                cfg = ctrguard_config(workdir, name, broker, redis_server.url, slack.base_url,
                                      {**topics2, **output_topics(bootstrap, name)})
                log(f"7. live flow on 2 partitions, {procs} process(es) ...")
                meter.start()
                res = two_process_run(workdir, name, cfg, procs, timeout)
                two[f"{name}_cpu"] = {"flow_cpu_s": res["flow_cpu_s"], **meter.stop()}
                two[f"{name}_per_process"] = res["per_process"]
                two[f"{name}_eps"] = n_events / res["elapsed_s"]
                two[f"{name}_elapsed_s"] = res["elapsed_s"]
                two[f"{name}_maxrss_mb"] = res["maxrss_mb"]
                two[f"{name}_checked"] = checked_summary(redis_server, f"bench-{name}")
                log(f"7. {procs} process(es): {res['elapsed_s']:.1f}s = "
                    f"{two[f'{name}_eps']:,.0f}/s")
            results["speedup_two_processes"] = round(two["p2_eps"] / two["p1_eps"], 2)
            details["two"] = two

        # -- 4. latency ----------------------------------------------------------------
        if want("latency"):
            from bench.latency import measure_latency

            log("4. latency, tail mode ...")
            lat = measure_latency(bootstrap, redis_server.url, slack.base_url, workdir,
                                  campaigns=args.campaigns, rate=args.latency_rate,
                                  duration_s=args.latency_seconds, seed=args.seed)
            details["latency"] = lat
            results["latency_p50_ms"] = lat["figures"]["p50_ms"]
            results["latency_p99_ms"] = lat["figures"]["p99_ms"]
            log(f"4. latency: figures {lat['figures']}, redis {lat['redis_checked']}")

        # -- 6. replay -----------------------------------------------------------------
        if want("replay"):
            log("6. replay: writing gzip JSONL ...")
            imp_path, clk_path = workdir / "impressions.jsonl.gz", workdir / "clicks.jsonl.gz"
            write_gzip(imp_path, sc.impressions)
            write_gzip(clk_path, sc.clicks)
            cfg = ctrguard_config(workdir, "replay", broker, redis_server.url, slack.base_url,
                                  topics)
            # Each run in a fresh process, as `ctrguard replay` runs: not in this one, which
            # holds the scenario and has run everything before.
            replay_runs = []
            for i in range(args.replay_repeats):
                run = run_child(["replay", "--config", str(cfg), "--impressions", str(imp_path),
                                 "--clicks", str(clk_path), "--out",
                                 str(workdir / f"replay-out-{i}")],
                                workdir / f"replay-{i}.log", timeout=timeout,
                                label=f"replay run {i + 1}")
                replay_runs.append(run)
                log(f"6. replay run {i + 1}: {run['events_read']:,} events in "
                    f"{run['elapsed_s']:.1f}s = {run['eps']:,}/s, "
                    f"{run['cpu_s'] / run['events_read'] * 1e6:.2f} CPU us/event")
            rates = [r["eps"] for r in replay_runs]
            chosen = replay_runs[median_run(rates)]
            results["replay_eps"] = chosen["eps"]
            details["replay"] = {"elapsed_s": chosen["elapsed_s"], "cpu_s": chosen["cpu_s"],
                                 "events_read": chosen["events_read"],
                                 "windows": chosen["windows"], "alerts": chosen["alerts"],
                                 "maxrss_mb": max(r["maxrss_mb"] for r in replay_runs),
                                 "runs_eps": rates,
                                 "gzip_mb": round((imp_path.stat().st_size
                                                   + clk_path.stat().st_size) / 2**20, 1)}
            log(f"6. replay: median {results['replay_eps']:,}/s ({runs_note(rates)})")
            details["replay"]["eps"] = chosen["eps"]
            details["replay"]["cpu_us"] = round(chosen["cpu_s"] / chosen["events_read"] * 1e6, 3)
            if env["detector_core"] == "compiled" and not args.no_python_core:
                for part, what, extra in native_parts:
                    run = run_child(["replay", "--config", str(cfg), "--impressions",
                                     str(imp_path), "--clicks", str(clk_path), "--out",
                                     str(workdir / f"replay-off-{part}")],
                                    workdir / f"replay-off-{part}.log", timeout=timeout,
                                    label=f"replay ({what})", env=common.child_env(**extra))
                    details[f"replay_off_{part}"] = {
                        "eps": run["eps"], "elapsed_s": run["elapsed_s"], "cpu_s": run["cpu_s"],
                        "cpu_us": round(run["cpu_s"] / run["events_read"] * 1e6, 3)}
                    log(f"6b. replay, {what}: {run['eps']:,}/s; "
                        f"gains {native_gains(details, part).get('replay')}")
        # -- 8. engine only ------------------------------------------------------------
        if want("engine"):
            from bench.engine import measure_engine

            log("8. engine alone (CPU): preparation, windows, detection ...")
            details["engine"] = measure_engine(sc.impressions, sc.clicks)
            log(f"8. engine: {details['engine']}")
        del sc

        # -- 9. dense traffic ----------------------------------------------------------
        if want("dense"):
            details["dense"] = measure_dense(args, live_ctx)
            results["dense_raw_eps"] = details["dense"]["raw_eps"]
            results["dense_ctrguard_eps"] = details["dense"]["ctrguard_eps"]
            results["dense_ratio_to_raw"] = details["dense"]["ratio_to_raw"]

    # -- 5. memory (after the services are gone and the scenario freed) ----------------
    if want("memory"):
        memory: dict[str, Any] = {}
        for count in [int(x) for x in args.memory_series.split(",") if x]:
            log(f"5. memory: {count:,} series ...")
            label = f"{count // 1000}k" if count % 1000 == 0 else str(count)
            proc = subprocess.run([sys.executable, "-m", "bench.memory", "--series", str(count)],
                                  cwd=REPO, env=common.child_env(), capture_output=True,
                                  text=True, timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"bench.memory exited {proc.returncode}: "
                                   f"{proc.stderr[-2000:]}")
            memory[label] = json.loads(proc.stdout.strip().splitlines()[-1])
            log(f"5. memory {label}: {memory[label]}")
        details["memory"] = memory
        results["bytes_per_series"] = memory[list(memory)[-1]]["bytes_per_series"]

    # -- 10. ctrguard tune (no services) ------------------------------------------------
    if want("tune"):
        details["tune"] = measure_tune(hours=args.tune_hours, timeout=timeout)
        results["tune_s"] = details["tune"]["wall_s"]

    if "raw_eps" in results and "ctrguard_eps" in results:
        results["ratio_to_raw"] = round(results["ctrguard_eps"] / results["raw_eps"], 3)
    if "naive_eps" in results and "ctrguard_eps" in results:
        results["ratio_to_naive"] = round(results["ctrguard_eps"] / results["naive_eps"], 2)
    if steps:
        # A partial run: print what was measured; the report needs every measurement.
        print(json.dumps({**results, "details": details}, indent=2))
        return 0
    results = {**{key: results[key] for key in REQUIRED_KEYS},
               **{key: results[key] for key in EXTRA_KEYS if key in results}}
    results["targets"] = target_status(results)
    results["details"] = details
    env["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    results["environment"] = env
    results["command"] = command
    results["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    results["duration_s"] = round(time.monotonic() - t_begin, 1)
    assert all(k in results for k in REQUIRED_KEYS)

    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    args.markdown.write_text(render_markdown(results))
    print(render_text(results))
    print(f"\nresults: {args.results}  report: {args.markdown}  "
          f"({results['duration_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

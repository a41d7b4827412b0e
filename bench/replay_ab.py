"""Side by side: the replay code of a git revision against the working tree's, same data.

``python -m bench.replay_ab [--base-rev HEAD] [--events N] [--rounds R] [--whole-tree]``

Writes the benchmark scenario (``bench.common.build_scenario``, gzip JSONL as ``bench.run``
writes it for its replay step) once, or takes ``--impressions/--clicks`` files, then runs
``replay.run.run_replay`` on it ``--rounds`` times for each side, alternating which side goes
first, each run in a fresh child process. The machine is shared: CPU time
(``time.process_time``) per event is the figure to compare; events/s (wall) is reported too.

By default the base side is the working tree with only ``replay/`` taken from
``--base-rev`` (copied into a temporary directory placed first on the child's ``sys.path``),
so both sides run the same engine and detectors and the difference is the replay code's
own. ``--whole-tree`` runs the base side in the tree of ``--base-rev`` instead (``git
archive`` into the work directory, its compiled parts built there: engine, detectors and C
extensions of that revision too); each side's detector core is reported, and a base side
that is not compiled where the working tree is stops the run.

Every run's outputs (alerts, figures, dead letters, summary, baseline alerts) must be
byte-identical to the first base run's: the exit status is 1 when any differs.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import CAMPAIGNS, REPO, SEED, SLACK_TOKEN, export_tree, log

#: Output files compared between runs (``alerts_<baseline>.jsonl`` are added when present).
OUTPUTS = ("alerts.jsonl", "figures.jsonl", "deadletter.jsonl", "summary.json")


# --------------------------------------------------------------------------- child

#: One replay, timed, in a child process; prints a JSON line. Self-contained (run with
#: ``python -c``), so that it runs the same on either side's tree: whatever ``replay``,
#: ``flows`` and ``detectors`` come first on PYTHONPATH are the ones measured.
_CHILD = """
import json, sys, time
from pathlib import Path
a = json.loads(sys.argv[1])
from ctrguard.config import load_config, load_config_text
if a["config"]:
    settings = load_config(Path(a["config"]))
else:
    settings = load_config_text(Path(a["bench_config"]).read_text(), source="bench",
                                env={"SLACK_BOT_TOKEN": a["token"]})
import replay.run
# Imported by the first campaign otherwise (River, SciPy: seconds): start-up, not replay,
# as in bench.run's replay step.
import detectors.monitor
try:
    from detectors import native
    core = native.status() + "/" + native.in_use()
except (ImportError, AttributeError):
    core = "unknown"
# CPU time inside the engine's entry points (a few hundred calls a run): the rest of the
# replay's time is its own (reading, writing, bookkeeping).
import flows.engine as fe
engine_s = [0.0]
def timed(f):
    def call(*args, **kwargs):
        t = time.process_time()
        try:
            return f(*args, **kwargs)
        finally:
            engine_s[0] += time.process_time() - t
    return call
try:
    for cls, names in ((fe.EventPreparer, ("prepare", "merged")),
                       (fe.ShardState, ("ingest", "flush"))):
        for name in names:
            setattr(cls, name, timed(getattr(cls, name)))
except (AttributeError, TypeError):  # a compiled engine's classes may refuse
    engine_s = None
cpu0, wall0 = time.process_time(), time.perf_counter()
result = replay.run.run_replay(a["impressions"], a["clicks"], settings, a["out"],
                               baselines=a["baselines"])
cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
print(json.dumps({"replay_module": replay.run.__file__, "engine_module": fe.__file__,
                  "detector_core": core, "events": result.summary["events_read"],
                  "cpu_s": cpu, "wall_s": wall,
                  "engine_cpu_s": engine_s[0] if engine_s else None}), flush=True)
"""


# --------------------------------------------------------------------------- parent


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


def _copy_replay_package(rev: str, dest: Path) -> Path:
    """``replay/`` as of ``rev`` (tracked files only) under ``dest``; returns ``dest``."""
    names = _git("ls-tree", "-r", "--name-only", rev, "--", "replay/").split()
    if not names:
        raise SystemExit(f"no replay/ package at {rev}")
    for name in names:
        data = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=REPO, check=True,
                              capture_output=True).stdout
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return dest


def _write_inputs(work: Path, events: int, campaigns: int, seed: int) -> tuple[Path, Path]:
    from bench.common import build_scenario
    from bench.run import write_gzip

    log(f"simulating >= {events:,} impressions, {campaigns} campaigns, seed {seed}")
    sc = build_scenario(events, campaigns, seed)
    imp, clk = work / "impressions.jsonl.gz", work / "clicks.jsonl.gz"
    write_gzip(imp, sc.impressions)
    write_gzip(clk, sc.clicks)
    log(f"wrote {sc.events:,} events ({(imp.stat().st_size + clk.stat().st_size) / 2**20:.1f} "
        f"MiB gzip)")
    return imp, clk


def _bench_config(work: Path) -> Path:
    """bench.run's replay configuration; the service addresses are never contacted."""
    from bench.common import write_config

    topics = {name: f"replay-ab-{name}" for name in
              ("impressions", "clicks", "figures", "alerts", "deadletter")}
    return write_config(work / "replay.yaml", bootstrap="127.0.0.1:9", topics=topics,
                        redis_url="redis://127.0.0.1:9/0", key_prefix="bench-replay",
                        tail=False, slack_base_url=None)


def _outputs(out: Path) -> list[str]:
    return sorted({*OUTPUTS, *(p.name for p in out.glob("alerts_*.jsonl"))})


def _differences(ref: Path, out: Path) -> list[str]:
    bad = []
    for name in sorted(set(_outputs(ref)) | set(_outputs(out))):
        a, b = ref / name, out / name
        if not (a.exists() and b.exists()):
            bad.append(f"{name}: missing in {'reference' if not a.exists() else out.name}")
        elif not filecmp.cmp(a, b, shallow=False):
            bad.append(f"{name}: differs ({a} vs {b})")
    return bad


def _run_side(label: str, path_first: list[Path], cwd: Path, out: Path,
              args: argparse.Namespace, imp: Path, clk: Path, config: Path | None,
              bench_config: Path | None) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in path_first)
    spec = {"impressions": str(imp), "clicks": str(clk), "out": str(out),
            "config": str(config) if config else None,
            "bench_config": str(bench_config) if bench_config else None,
            "token": SLACK_TOKEN, "baselines": args.baselines}
    # cwd is the work directory, not the repository: "-c" puts the cwd first on sys.path,
    # and the base side's replay/ must win over the working tree's.
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)], cwd=cwd, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{label} run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replay_ab", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-rev", default="HEAD",
                   help="git revision whose replay/ is the base side (default HEAD)")
    p.add_argument("--events", type=int, default=300_000,
                   help="impressions to simulate, as bench.run --events (default 300,000)")
    p.add_argument("--campaigns", type=int, default=CAMPAIGNS)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--rounds", type=int, default=5, help="timed runs per side (default 5)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed runs per side first (outputs still compared; default 1)")
    p.add_argument("--impressions", type=Path, default=None,
                   help="replay these files instead of a generated scenario (with --clicks)")
    p.add_argument("--clicks", type=Path, default=None)
    p.add_argument("--config", type=Path, default=None,
                   help="ctrguard YAML for --impressions/--clicks (default: bench.run's)")
    p.add_argument("--baselines", action="store_true",
                   help="run the baselines too (compares alerts_<name>.jsonl as well)")
    p.add_argument("--whole-tree", action="store_true",
                   help="base side: a git worktree of --base-rev (its engine too), not only "
                        "its replay/ on the working tree")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep inputs and outputs here (default: a temporary directory, removed)")
    args = p.parse_args(argv)
    if (args.impressions is None) != (args.clicks is None):
        p.error("--impressions and --clicks go together")
    if args.rounds < 1 or args.warmup < 0:
        p.error("--rounds must be at least 1, --warmup at least 0")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="replay-ab-"))
    work.mkdir(parents=True, exist_ok=True)
    worktree: Path | None = None
    try:
        if args.impressions is not None:
            imp, clk = args.impressions.resolve(), args.clicks.resolve()
        else:
            imp, clk = _write_inputs(work, args.events, args.campaigns, args.seed)
        config = args.config.resolve() if args.config else None
        bench_config = None if config else _bench_config(work)
        rev = _git("rev-parse", args.base_rev).strip()
        if args.whole_tree:
            worktree = work / "base-tree"
            log(f"exporting and building {rev[:12]}")
            export_tree(rev, worktree)
            base_path = [worktree]
        else:
            base_path = [_copy_replay_package(rev, work / "base-replay"), REPO]
        sides = {"base": base_path, "new": [REPO]}
        runs: dict[str, list[dict[str, Any]]] = {"base": [], "new": []}
        ref: Path | None = None
        cores: dict[str, str] = {}
        diffs: list[str] = []
        for r in range(-args.warmup, args.rounds):
            order = ["base", "new"] if r % 2 == 0 else ["new", "base"]
            for label in order:
                out = work / f"out-{label}-{r}"
                res = _run_side(label, sides[label], work, out, args, imp, clk, config,
                                bench_config)
                cores[label] = res["detector_core"]
                if len(cores) == 2 and len({c.startswith("compiled") for c in cores.values()}) > 1:
                    raise SystemExit(f"one side runs compiled code, the other does not: {cores}")
                if r >= 0:
                    runs[label].append(res)
                step = (f"warm-up {r + args.warmup + 1}/{args.warmup}" if r < 0
                        else f"round {r + 1}/{args.rounds}")
                own = ("" if res["engine_cpu_s"] is None else
                       f" ({(res['cpu_s'] - res['engine_cpu_s']) / res['events'] * 1e6:.2f} "
                       "outside the engine)")
                log(f"{step} {label}: {res['events']:,} events, "
                    f"{res['cpu_s'] / res['events'] * 1e6:.2f} CPU µs/event{own}, "
                    f"{res['events'] / res['wall_s']:,.0f} events/s")
                if ref is None:
                    ref = out
                    continue
                bad = _differences(ref, out)
                diffs += [f"{label} run {r + 1}: {d}" for d in bad]
                if not bad:
                    shutil.rmtree(out)
        result: dict[str, Any] = {"base_rev": args.base_rev, "base_commit": rev,
                                  "base_side": "whole tree" if args.whole_tree else "replay/ only",
                                  "rounds": args.rounds, "identical_outputs": not diffs}
        for label, rows in runs.items():
            events = rows[0]["events"]
            cpu = [x["cpu_s"] / x["events"] * 1e6 for x in rows]
            eps = [x["events"] / x["wall_s"] for x in rows]
            own = [(x["cpu_s"] - x["engine_cpu_s"]) / x["events"] * 1e6 for x in rows
                   if x["engine_cpu_s"] is not None]
            result[label] = {
                "events": events,
                "cpu_us_per_event_median": round(statistics.median(cpu), 3),
                # CPU outside the engine's entry points (prepare, merged, ingest, flush).
                "own_cpu_us_per_event_median": round(statistics.median(own), 3) if own else None,
                "own_cpu_us_per_event_min": round(min(own), 3) if own else None,
                # Other load only ever adds time: the fastest run is the least disturbed.
                "cpu_us_per_event_min": round(min(cpu), 3),
                "events_per_s_median": round(statistics.median(eps)),
                "events_per_s_max": round(max(eps)),
                "cpu_us_per_event": [round(c, 3) for c in cpu],
                "replay_module": rows[0]["replay_module"],
                "engine_module": rows[0]["engine_module"],
                "detector_core": rows[0]["detector_core"],
            }
        result["own_cpu_ratio_new_to_base_per_round"] = [
            round((n["cpu_s"] - n["engine_cpu_s"]) / (b["cpu_s"] - b["engine_cpu_s"]), 3)
            for b, n in zip(runs["base"], runs["new"], strict=True)
            if n["engine_cpu_s"] is not None and b["engine_cpu_s"] is not None]
        result["cpu_ratio_new_to_base_per_round"] = [
            round((n["cpu_s"] / n["events"]) / (b["cpu_s"] / b["events"]), 3)
            for b, n in zip(runs["base"], runs["new"], strict=True)]
        if diffs:
            result["differences"] = diffs
        print(json.dumps(result), flush=True)
        b, n = result["base"], result["new"]
        log(f"medians: base {b['cpu_us_per_event_median']:.2f} CPU µs/event "
            f"({b['own_cpu_us_per_event_median']} outside the engine, "
            f"{b['events_per_s_median']:,} events/s), new {n['cpu_us_per_event_median']:.2f} "
            f"({n['own_cpu_us_per_event_median']} outside the engine, "
            f"{n['events_per_s_median']:,} events/s); outputs "
            + ("identical" if not diffs else "DIFFER: " + "; ".join(diffs[:5])))
        return 0 if not diffs else 1
    finally:
        if worktree is not None:
            shutil.rmtree(worktree, ignore_errors=True)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

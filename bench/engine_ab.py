"""Side by side: the engine of another git revision against the working tree's, same run.

``python -m bench.engine_ab --base-rev HEAD~1 [--events N] [--rounds R] [--memory-series N]``

The machine is shared, so timings taken minutes apart differ by more than most changes do.
This loads ``flows/engine.py`` of ``--base-rev`` (``git show``) as a second module next to
the working tree's and, in each of ``--rounds`` rounds, pushes the same raw batches through
both (alternating which goes first) with the detector that decides nothing
(``bench.engine._NoDetector``): CPU time (``time.process_time``) per event of ``prepare``
(decode, validate, exclude, route) and of the shards (dedup, windows, figures). Medians,
minima (the least disturbed round) and the per-round ratios are printed as one JSON line.
With ``--memory-series`` the memory measurement of ``bench.memory`` (deep size of the
state, bytes per series) runs for both.

Only ``flows/engine.py`` comes from ``--base-rev`` there: the C extensions (the event
scanner, ``flows/_shard.c``) and ``ctrguard/events.py`` are the working tree's on both sides.
``--whole-tree`` compares whole revisions instead: ``--base-rev`` is exported
(``git archive``) into a temporary directory and its compiled parts built there
(``python -m detectors build``; both sides must say ``compiled``), and each round runs the
same batches through each tree in a child process of its own (``cwd`` and ``PYTHONPATH`` at
that tree), alternating which goes first. Each child also digests everything it produced
(every chunk's columns, dead letters, exclusions, frontiers, decisions, shard statistics):
the digests must all be equal, else the exit status is 1. ``--detector default`` gives every
campaign the default ``CampaignMonitor`` there instead (detection, verdicts and alerts
included in the time and the digest). With ``--callgrind`` each side
also runs under ``valgrind --tool=callgrind`` once with one pass over the batches and once
with two: the difference is the instructions of one pass (warm), a count that other load
on the machine does not disturb.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.common import CAMPAIGNS, DIMENSIONS, REPO, SEED, export_tree, log


def load_rev(rev: str, name: str = "engine_base") -> ModuleType:
    """``flows/engine.py`` as of ``rev``, imported as module ``name``."""
    src = subprocess.run(["git", "show", f"{rev}:flows/engine.py"], check=True,
                         capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    mod.__file__ = f"<{rev}:flows/engine.py>"
    sys.modules[name] = mod
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)  # noqa: S102
    return mod


def _run(engine: ModuleType, settings: Any, batches: list, now_ms: int) -> tuple[float, float, int]:
    from bench.engine import _NoDetector

    prep = engine.EventPreparer(settings)
    sources = ["impressions:0", "clicks:0"]
    states = [engine.ShardState(settings, sources, _NoDetector)
              for _ in range(settings.windows.shards)]
    prep_s = shard_s = 0.0
    outputs = 0
    gc.collect()
    for raw in batches:
        batch = engine.RawBatch(*raw)
        t0 = time.process_time()
        chunks = prep.chunks(prep.prepare(batch, now_ms=now_ms))
        t1 = time.process_time()
        for shard, chunk in chunks:
            outputs += len(states[shard].ingest(chunk))
        t2 = time.process_time()
        prep_s += t1 - t0
        shard_s += t2 - t1
    t1 = time.process_time()
    for state in states:
        outputs += len(state.flush())
    shard_s += time.process_time() - t1
    return prep_s, shard_s, outputs


#: One side's run of the batches (``--whole-tree``), in a child process whose ``cwd`` and
#: ``PYTHONPATH`` are that side's tree. Self-contained (``python -c``): the same code runs
#: against either tree's modules. Prints one JSON line: per pass, the CPU seconds of
#: prepare and of the shards, and a digest of everything produced.
_CHILD = """
import gc, hashlib, json, pickle, sys, time
a = json.loads(sys.argv[1])
from ctrguard.config import load_config_text
import flows.engine as engine
from detectors import native
settings = load_config_text(a["config"], source="bench", env={})
with open(a["batches"], "rb") as f:
    batches, now_ms = pickle.load(f)
class NoDetector:
    def update(self, window, counts):
        return []
if a["detector"] == "default":
    from functools import partial
    from detectors.monitor import build_monitor
    NoDetector = partial(build_monitor, settings.detectors)
engine.tune_gc()
passes = []
for _ in range(a["passes"]):
    digest = hashlib.sha256()
    put = lambda obj: digest.update(repr(obj).encode())
    prep = engine.EventPreparer(settings)
    states = [engine.ShardState(settings, ["impressions:0", "clicks:0"], NoDetector)
              for _ in range(settings.windows.shards)]
    prep_s = shard_s = 0.0
    gc.collect()
    for raw in batches:
        batch = engine.RawBatch(*raw)
        t0 = time.process_time()
        prepared = prep.prepare(batch, now_ms=now_ms)
        chunks = prep.chunks(prepared)
        t1 = time.process_time()
        outs = [states[shard].ingest(chunk) for shard, chunk in chunks]
        t2 = time.process_time()
        prep_s += t1 - t0
        shard_s += t2 - t1
        if a["digest"]:
            put((prepared.frontier_ms, sorted(prepared.excluded.items()),
                 prepared.dead_letters))
            for shard, chunk in chunks:
                eids, offsets, _ = chunk.row_columns(raws=False)
                put((shard, chunk.kind, chunk.ts_ms.tolist(), list(chunk.campaign_ids),
                     list(chunk.dims), list(eids), list(offsets), chunk.keys.tolist()))
            put(outs)
    t1 = time.process_time()
    outs = [state.flush() for state in states]
    shard_s += time.process_time() - t1
    put(outs)
    put([state.stats.as_dict() for state in states])
    passes.append({"prepare_s": prep_s, "shards_s": shard_s, "digest": digest.hexdigest()})
print(json.dumps({"passes": passes, "core": native.status(),
                  "engine": engine.__file__, "shard_ext": engine._SHARD is not None}))
"""


def _core(tree: Path) -> str:
    return subprocess.run([sys.executable, "-m", "detectors", "status"], cwd=tree,
                          capture_output=True, text=True, env=_env(tree)).stdout.strip()


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree)}


def _child(tree: Path, work: Path, config: str, passes: int, digest: bool,
           callgrind: Path | None = None, detector: str = "none") -> dict[str, Any]:
    cmd = [sys.executable, "-c", _CHILD, json.dumps({
        "config": config, "batches": str(work / "batches.pkl"), "passes": passes,
        "digest": digest, "detector": detector})]
    if callgrind is not None:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={callgrind}", *cmd]
    done = subprocess.run(cmd, cwd=tree, env=_env(tree), check=True, capture_output=True,
                          text=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if callgrind is not None:
        m = re.search(r"Collected : (\d+)", done.stderr)
        out["instructions"] = int(m.group(1)) if m else None
    return out


def whole_tree(args: argparse.Namespace, config: str, batches: list, now_ms: int,
               events: int) -> int:
    """``--whole-tree``: see the module's docstring."""
    work = Path(tempfile.mkdtemp(prefix="engine-ab-"))
    try:
        with open(work / "batches.pkl", "wb") as f:
            pickle.dump((batches, now_ms), f)
        rev = subprocess.run(["git", "rev-parse", args.base_rev], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout.strip()
        log(f"exporting and building {rev[:12]}")
        export_tree(rev, work / "base")
        trees = {"base": work / "base", "new": REPO}
        cores = {label: _core(tree) for label, tree in trees.items()}
        if set(cores.values()) != {"compiled"}:
            raise SystemExit(f"both sides must be compiled: {cores}")
        runs: dict[str, list[dict[str, Any]]] = {"base": [], "new": []}
        for r in range(args.rounds):
            order = ["base", "new"] if r % 2 == 0 else ["new", "base"]
            for label in order:
                got = _child(trees[label], work, config, 1, True, detector=args.detector)
                runs[label].append(got["passes"][0] | {"shard_ext": got["shard_ext"]})
                log(f"round {r + 1}/{args.rounds} {label}: "
                    f"prepare {got['passes'][0]['prepare_s'] / events * 1e6:.3f}, "
                    f"shards {got['passes'][0]['shards_s'] / events * 1e6:.3f} CPU µs/event")
        digests = {x["digest"] for rows in runs.values() for x in rows}
        result: dict[str, Any] = {"events": events, "rounds": args.rounds, "base_rev": rev,
                                  "mode": "whole tree", "detector": args.detector,
                                  "cores": cores,
                                  "identical_outputs": len(digests) == 1}
        for label, rows in runs.items():
            prep = [x["prepare_s"] / events * 1e6 for x in rows]
            shards = [x["shards_s"] / events * 1e6 for x in rows]
            total = [a + b for a, b in zip(prep, shards, strict=True)]
            result[label] = {
                "prepare_us_per_event": round(statistics.median(prep), 3),
                "shards_us_per_event": round(statistics.median(shards), 3),
                "total_us_per_event": round(statistics.median(total), 3),
                "min_prepare_us_per_event": round(min(prep), 3),
                "min_shards_us_per_event": round(min(shards), 3),
                "min_total_us_per_event": round(min(total), 3),
                "shard_extension": rows[0]["shard_ext"],
            }
        result["ratio_new_to_base_per_round"] = {
            part: [round(n[f"{part}_s"] / b[f"{part}_s"], 3)
                   for b, n in zip(runs["base"], runs["new"], strict=True)]
            for part in ("prepare", "shards")}
        if args.callgrind:
            counts = {}
            for label, tree in trees.items():
                one, two = (_child(tree, work, config, passes, False,
                                   work / f"callgrind.{label}.{passes}", args.detector)
                            for passes in (1, 2))
                if one["instructions"] is None or two["instructions"] is None:
                    raise SystemExit("valgrind did not report its instruction count")
                counts[label] = two["instructions"] - one["instructions"]
                log(f"callgrind {label}: {counts[label]:,} instructions a pass")
            result["callgrind_instructions_per_event"] = {
                label: round(n / events, 1) for label, n in counts.items()}
            result["callgrind_ratio_new_to_base"] = round(counts["new"] / counts["base"], 4)
        print(json.dumps(result), flush=True)
        return 0 if result["identical_outputs"] else 1
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.engine_ab")
    p.add_argument("--base-rev", default="HEAD")
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--memory-series", type=int, default=0)
    p.add_argument("--whole-tree", action="store_true",
                   help="compare whole revisions, C extensions included, in child processes")
    p.add_argument("--callgrind", action="store_true",
                   help="--whole-tree: also count instructions a pass with valgrind")
    p.add_argument("--keep", action="store_true", help="--whole-tree: keep the work directory")
    p.add_argument("--detector", choices=("none", "default"), default="none",
                   help="--whole-tree: the monitor of every campaign, the one that decides "
                        "nothing or the default CampaignMonitor (detection measured too)")
    args = p.parse_args(argv)
    if args.callgrind and not args.whole_tree:
        p.error("--callgrind goes with --whole-tree")
    if args.detector != "none" and not args.whole_tree:
        p.error("--detector goes with --whole-tree")

    import flows.engine as new
    from bench.common import build_scenario
    from bench.engine import _batches
    from ctrguard.config import load_config_text
    from ctrguard.events import decode_batch

    config = f"segments:\n  dimensions: [{', '.join(DIMENSIONS)}]\n"
    settings = load_config_text(config, source="bench", env={})
    sc = build_scenario(args.events, CAMPAIGNS, SEED)

    def frontier(values: list[bytes]) -> int | None:
        ts = decode_batch(values[-50:]).ts_ms
        return int(ts.max()) if ts.size else None

    batches = [tuple(b) for b in _batches(sc.impressions, sc.clicks, frontier)]
    events = sum(len(b[3]) for b in batches)
    now_ms = int(time.time() * 1000)
    if args.whole_tree:
        return whole_tree(args, config, batches, now_ms, events)
    base = load_rev(args.base_rev)
    new.tune_gc()
    runs: dict[str, list[tuple[float, float]]] = {"base": [], "new": []}
    outputs = {}
    for r in range(args.rounds):
        order = [("base", base), ("new", new)]
        if r % 2:
            order.reverse()
        for label, engine in order:
            prep_s, shard_s, outputs[label] = _run(engine, settings, batches, now_ms)
            runs[label].append((prep_s, shard_s))
    result: dict[str, Any] = {"events": events, "rounds": args.rounds,
                              "base_rev": args.base_rev, "outputs": outputs}
    for label, rows in runs.items():
        result[label] = {
            "prepare_us_per_event": round(statistics.median(a for a, _ in rows) / events * 1e6, 2),
            "shards_us_per_event": round(statistics.median(b for _, b in rows) / events * 1e6, 2),
            "total_us_per_event": round(statistics.median(a + b for a, b in rows) / events * 1e6,
                                        2),
            # Other load only ever adds time: the fastest round is the least disturbed one.
            "min_prepare_us_per_event": round(min(a for a, _ in rows) / events * 1e6, 2),
            "min_shards_us_per_event": round(min(b for _, b in rows) / events * 1e6, 2),
        }
    result["ratio_new_to_base_per_round"] = {
        "prepare": [round(n[0] / b[0], 3) for b, n in zip(runs["base"], runs["new"], strict=True)],
        "shards": [round(n[1] / b[1], 3) for b, n in zip(runs["base"], runs["new"], strict=True)],
    }
    if args.memory_series:
        from bench.memory import measure

        for label, engine in (("base", base), ("new", new)):
            sys.modules["flows.engine"] = engine
            try:
                m = measure(args.memory_series, trace=False)
            finally:
                sys.modules["flows.engine"] = new
            result[f"memory_{label}"] = {k: m[k] for k in (
                "series", "bytes_per_series", "bytes_per_series_before_snapshot",
                "monitor_bytes_per_series", "snapshot_bytes_per_series")}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

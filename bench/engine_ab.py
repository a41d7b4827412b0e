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
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from types import ModuleType
from typing import Any

from bench.common import CAMPAIGNS, DIMENSIONS, SEED


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.engine_ab")
    p.add_argument("--base-rev", default="HEAD")
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--memory-series", type=int, default=0)
    args = p.parse_args(argv)

    import flows.engine as new
    from bench.common import build_scenario
    from bench.engine import _batches
    from ctrguard.config import load_config_text
    from ctrguard.events import decode_batch

    base = load_rev(args.base_rev)
    new.tune_gc()
    settings = load_config_text(f"segments:\n  dimensions: [{', '.join(DIMENSIONS)}]\n",
                                source="bench", env={})
    sc = build_scenario(args.events, CAMPAIGNS, SEED)

    def frontier(values: list[bytes]) -> int | None:
        ts = decode_batch(values[-50:]).ts_ms
        return int(ts.max()) if ts.size else None

    batches = [tuple(b) for b in _batches(sc.impressions, sc.clicks, frontier)]
    events = sum(len(b[3]) for b in batches)
    now_ms = int(time.time() * 1000)
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

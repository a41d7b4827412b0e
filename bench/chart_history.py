"""Cost of the Slack sink's chart history (``sinks.slack_chart.SeriesHistory``).

The sink keeps the last ``charts.windows`` windows of every series in Web API mode, fed
from every ``WindowDecision`` on the dataflow thread. This measures what that costs:
CPU per decision of ``observe`` (``time.process_time``, median of the rounds) and the
memory it holds per series (``tracemalloc``, after the last window), on a synthetic
stream of ``--campaigns`` campaigns x ``--series`` series x ``--windows`` windows, with
figures built as the engine builds them.

    .venv/bin/python -m bench.chart_history [--campaigns 2000] [--series 4]
        [--windows 100] [--keep 36] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctrguard.records import Figure, WindowDecision  # noqa: E402
from sinks.slack_chart import SeriesHistory  # noqa: E402

T0 = 1_767_225_600
WINDOW_S = 300


def stream(campaigns: int, series: int, windows: int, seed: int) -> list[list[WindowDecision]]:
    rng = random.Random(seed)
    segs = ["all"] + [f"device=d{i}" for i in range(series - 1)]
    ids = [f"camp-{i:05d}" for i in range(campaigns)]
    batches = []
    for w in range(windows):
        ws = T0 + w * WINDOW_S
        start, end = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
        batch = []
        for cid in ids:
            figs = []
            for s in segs:
                n = rng.randint(50, 2000)
                k = rng.randint(0, n // 20)
                figs.append(Figure(cid, s, start, end, ws, n, k, k / n, "ok"))
            batch.append(WindowDecision(cid, ws, ws + WINDOW_S, tuple(figs), ()))
        batches.append(batch)
    return batches


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--campaigns", type=int, default=2000)
    p.add_argument("--series", type=int, default=4, help="series per campaign (all + N-1)")
    p.add_argument("--windows", type=int, default=100)
    p.add_argument("--keep", type=int, default=36, help="charts.windows")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    batches = stream(args.campaigns, args.series, args.windows, 7)
    decisions = sum(len(b) for b in batches)
    cpu = []
    for _ in range(args.rounds):
        h = SeriesHistory(args.keep, WINDOW_S)
        t = time.process_time()
        for b in batches:
            h.observe(b)
        cpu.append(time.process_time() - t)
        print(f"round: {cpu[-1] / decisions * 1e6:.3f} µs per decision", file=sys.stderr)
    tracemalloc.start()
    h = SeriesHistory(args.keep, WINDOW_S)
    before = tracemalloc.get_traced_memory()[0]
    for b in batches:
        h.observe(b)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    out = {"campaigns": args.campaigns, "series_per_campaign": args.series,
           "windows": args.windows, "keep": args.keep, "decisions": decisions,
           "cpu_us_per_decision": round(statistics.median(cpu) / decisions * 1e6, 3),
           "cpu_us_per_series_window": round(statistics.median(cpu) / decisions
                                             / args.series * 1e6, 3),
           "bytes_per_series": round(held / (args.campaigns * args.series))}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

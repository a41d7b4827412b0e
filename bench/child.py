"""One measured dataflow run in a fresh process, so its time and peak RSS are its own.

``python -m bench.child naive --brokers B --topics T1,T2 --batch-size N``
``python -m bench.child ctrguard --config PATH [--addresses 'h:p;h:p' --proc-id I]``
``python -m bench.child replay --config PATH --impressions F --clicks F --out DIR``

Prints one JSON line: wall-clock start and end of the run (``run_main`` / ``cluster_main``,
or ``run_replay``, not imports or start-up), its duration, the CPU time of the process (all
threads) during it, and the process's peak RSS; for replay also the events read.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from bench.common import peak_rss_mb


def _timed(run) -> dict[str, float]:
    start = time.time()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    run()
    cpu = time.process_time() - cpu0
    elapsed = time.perf_counter() - t0
    return {"start": start, "end": start + elapsed, "elapsed_s": elapsed, "cpu_s": cpu}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.child")
    p.add_argument("flow", choices=["naive", "ctrguard", "replay"])
    p.add_argument("--brokers")
    p.add_argument("--topics")
    p.add_argument("--batch-size", type=int, default=5000)
    p.add_argument("--config", type=Path)
    p.add_argument("--addresses", default="", help="';'-separated, for cluster_main")
    p.add_argument("--proc-id", type=int, default=0)
    p.add_argument("--impressions", type=Path, help="replay: impression file")
    p.add_argument("--clicks", type=Path, help="replay: click file")
    p.add_argument("--out", type=Path, help="replay: output directory")
    p.add_argument("--pyinstrument", type=Path, help="write a pyinstrument text profile here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    result: dict[str, object] = {}
    if args.flow == "replay":
        # As `ctrguard replay --no-baselines` runs it, River's import done first (as below).
        import ctrguard.detectors.monitor  # noqa: F401
        from ctrguard.config import load_config
        from ctrguard.replay.run import run_replay

        settings = load_config(args.config)
        summary: dict[str, object] = {}

        def replay() -> None:
            summary.update(run_replay(args.impressions, args.clicks, settings, args.out).summary)

        result.update(_timed(replay))
        result["events_read"] = summary["events_read"]
        result["windows"] = summary["windows"]
        result["alerts"] = summary["alerts"]
        result["eps"] = round(summary["events_read"] / result["elapsed_s"])
        result["maxrss_mb"] = peak_rss_mb()
        print(json.dumps(result), flush=True)
        return 0

    from bytewax.testing import cluster_main, run_main

    if args.flow == "naive":
        from bench import naive

        flow = naive.get_flow(args.brokers.split(","), args.topics.split(","), args.batch_size)
    else:
        # Imported by the first campaign otherwise (River, SciPy: ~1.5 s), which would be
        # charged to the run; a service pays it once at start-up.
        import ctrguard.detectors.monitor  # noqa: F401
        from ctrguard.config import load_config
        from ctrguard.flows.ctr_flow import get_flow
        from ctrguard.flows.source import list_partitions

        settings = load_config(args.config)
        flow = get_flow(settings, partitions=list_partitions(settings.kafka))

    addresses = [a for a in args.addresses.split(";") if a]

    def run() -> None:
        if addresses:
            cluster_main(flow, addresses, args.proc_id)
        else:
            run_main(flow)

    if args.pyinstrument:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
        result.update(_timed(run))
        profiler.stop()
        args.pyinstrument.write_text(profiler.output_text(unicode=False, color=False,
                                                          show_all=False))
    else:
        result.update(_timed(run))
    if args.flow == "naive":
        from bench import naive

        result.update(naive.COUNTS)
    result["maxrss_mb"] = peak_rss_mb()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

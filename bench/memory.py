"""State memory per active series: ``python -m bench.memory --series N`` prints one JSON line.

Builds a :class:`ctrguard.flows.engine.ShardState` with the default ``CampaignMonitor`` (as the flow
does), segmented by device like the throughput runs (a campaign has 4 series: ``all`` and 3
devices), and feeds it ``windows`` five-minute windows of synthetic chunks in which every
series of every campaign has events. The state then holds what a running shard holds: the
detectors of every series, one open window's counts and dedup ids, and the dedup ids of the
closed windows still inside the allowed lateness.

Reported, each divided by the number of series: the bytes of every object reachable from
the state (``sys.getsizeof`` over the object graph, each object once; of which the
detectors) after one snapshot as Bytewax takes at every epoch (pickling materialises the
lazy instance dicts of CPython >= 3.11, and they stay) and before it, RSS growth (includes
allocator slack left by the freed input chunks), the
pickled snapshot (what Bytewax stores per snapshot); and the process's peak RSS. With
``--tracemalloc`` also the retained heap as tracemalloc sees it (it adds allocator headers).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import pickle
import sys
import time
import tracemalloc
from functools import partial

from bench.common import peak_rss_mb

DEVICES = ("mobile", "desktop", "tablet")
IMPRESSIONS_PER_DEVICE = 3


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def deep_size(root: object) -> int:
    """Bytes of every object reachable from ``root`` (each counted once).

    Classes, modules and functions are shared code, not state, and are not followed.
    """
    import types

    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
            types.MethodType, types.CodeType)
    seen: set[int] = set()
    total = 0
    stack = [root]
    getsizeof = sys.getsizeof
    get_referents = gc.get_referents
    while stack:
        obj = stack.pop()
        oid = id(obj)
        if oid in seen or isinstance(obj, skip):
            continue
        seen.add(oid)
        total += getsizeof(obj)
        stack.extend(get_referents(obj))
    return total


def measure(series: int, windows: int = 8, chunk: int = 5000,
            trace: bool = True) -> dict[str, float | int]:
    from ctrguard.config import load_config_text
    from ctrguard.detectors.monitor import build_monitor
    from ctrguard.flows.engine import CLICK, IMPRESSION, Chunk, Prepared, ShardState

    settings = load_config_text("segments:\n  dimensions: [device]\n", source="bench", env={})
    per_campaign = 1 + len(DEVICES)
    campaigns = math.ceil(series / per_campaign)
    length_ms = settings.windows.length * 1000
    t_start = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    sources = ["imp:0", "clk:0"]
    cids = [f"c{i:06d}" for i in range(campaigns)]
    dims = [(d,) for d in DEVICES]

    gc.collect()
    if trace:
        tracemalloc.start()
    base_heap = tracemalloc.get_traced_memory()[0] if trace else 0
    base_rss = _rss_mb()
    state = ShardState(settings, sources, partial(build_monitor, settings.detectors))
    t0 = time.perf_counter()
    seq = 0
    for w in range(windows):
        start = t_start + w * length_ms
        step = max(1, length_ms // (campaigns * len(DEVICES) * IMPRESSIONS_PER_DEVICE))
        imps: list[Prepared] = []
        clicks: list[Prepared] = []
        ts = start
        for i, cid in enumerate(cids):
            for d in dims:
                for _ in range(IMPRESSIONS_PER_DEVICE):
                    seq += 1
                    imps.append(Prepared(min(ts, start + length_ms - 1), IMPRESSION,
                                         f"imp-{seq:09d}", cid, d, b"", seq))
                    ts += step
            seq += 1
            clicks.append(Prepared(min(ts, start + length_ms - 1), CLICK, f"clk-{seq:09d}",
                                   cid, dims[i % len(dims)], b"", seq))
        for src, events in (("imp:0", imps), ("clk:0", clicks)):
            for k in range(0, len(events), chunk):
                part = events[k:k + chunk]
                state.ingest(Chunk.of(src, part[-1].ts_ms, False, part))
        del imps, clicks, part
    feed_s = time.perf_counter() - t0
    gc.collect()
    heap = (tracemalloc.get_traced_memory()[0] - base_heap) if trace else 0
    if trace:
        tracemalloc.stop()
    rss = _rss_mb() - base_rss
    n_series = state.series()
    t1 = time.perf_counter()
    fresh = deep_size(state)
    walk_s = time.perf_counter() - t1
    # Bytewax pickles the state at every epoch; on CPython >= 3.11 that materialises the
    # lazily created instance __dict__ of every object without __slots__, and they stay.
    # What a running flow holds is therefore the size after the first snapshot.
    snapshot = len(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
    walked = deep_size(state)
    monitor_bytes = deep_size([c.monitor for c in state._campaigns.values()])
    monitors = len(pickle.dumps([c.monitor for c in state._campaigns.values()],
                                protocol=pickle.HIGHEST_PROTOCOL))
    result: dict[str, float | int] = {
        "series": n_series,
        "campaigns": state.campaigns,
        "windows_fed": windows,
        "events_fed": seq,
        "feed_s": round(feed_s, 2),
        "bytes_per_series": round(walked / n_series),
        "bytes_per_series_before_snapshot": round(fresh / n_series),
        "monitor_bytes_per_series": round(monitor_bytes / n_series),
        "walk_s": round(walk_s, 2),
        "heap_bytes_per_series": round(heap / n_series) if trace else None,
        "rss_bytes_per_series": round(rss * 1024 * 1024 / n_series),
        "snapshot_bytes_per_series": round(snapshot / n_series),
        "monitor_snapshot_bytes_per_series": round(monitors / n_series),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory")
    p.add_argument("--series", type=int, required=True)
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--tracemalloc", action="store_true",
                   help="also measure the retained heap with tracemalloc (about 10x slower)")
    args = p.parse_args(argv)
    print(json.dumps(measure(args.series, args.windows, trace=args.tracemalloc)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

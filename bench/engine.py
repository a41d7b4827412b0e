"""Where the CPU goes without Kafka, Redis or Slack: preparation, windows, detection.

The scenario's messages are fed to :class:`ctrguard.flows.engine.EventPreparer` and 16
:class:`ctrguard.flows.engine.ShardState` in batches of ``BATCH_SIZE`` lines, the two streams read
in event-time step as replay reads them, in this process, twice: once with a detector that
does nothing (what the flow costs besides detection) and once with the default
``CampaignMonitor``, whose ``update`` calls are timed one by one. CPU time
(``time.process_time``), so other load on the machine matters less than for wall time.

``python -m bench.engine --events N`` prints one JSON line (for a quick look).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from typing import Any

from bench.common import BATCH_SIZE, CAMPAIGNS, DIMENSIONS, SEED


class _NoDetector:
    """A monitor that decides nothing: the cost of everything but detection."""

    def update(self, window: Any, counts: Any) -> list:
        return []


class _TimedMonitor:
    """Wraps the real monitor; adds up the CPU time of its ``update`` calls."""

    __slots__ = ("inner", "clock")

    def __init__(self, inner: Any, clock: dict[str, float]):
        self.inner = inner
        self.clock = clock

    def update(self, window: Any, counts: Any) -> list:
        t0 = time.process_time()
        out = self.inner.update(window, counts)
        self.clock["cpu_s"] += time.process_time() - t0
        self.clock["calls"] += 1
        self.clock["series"] += len(counts)
        return out


def _batches(impressions: list[bytes], clicks: list[bytes], ts_of) -> list:
    from ctrguard.flows.engine import CLICK, IMPRESSION, RawBatch

    streams = [["impressions", IMPRESSION, impressions, 0, None],
               ["clicks", CLICK, clicks, 0, None]]
    out = []
    while True:
        pending = [s for s in streams if s[3] < len(s[2])]
        if not pending:
            return out
        src = min(pending, key=lambda s: (s[4] is not None, s[4] or 0))
        start = src[3]
        values = src[2][start:start + BATCH_SIZE]
        src[3] += len(values)
        out.append(RawBatch(src[0], 0, src[1], values, range(start, start + len(values)),
                            src[3] >= len(src[2])))
        src[4] = ts_of(values)


def measure_engine(impressions: list[bytes], clicks: list[bytes]) -> dict[str, Any]:
    """CPU per event of preparation and windows, and of detection per campaign-window."""
    from ctrguard.config import load_config_text
    from ctrguard.detectors.monitor import build_monitor
    from ctrguard.events import decode_batch
    from ctrguard.flows.engine import EventPreparer, ShardState, tune_gc

    settings = load_config_text(f"segments:\n  dimensions: [{', '.join(DIMENSIONS)}]\n",
                                source="bench", env={})
    tune_gc()

    def frontier(values: list[bytes]) -> int | None:
        ts = decode_batch(values[-50:]).ts_ms
        return int(ts.max()) if ts.size else None

    batches = _batches(impressions, clicks, frontier)
    events = sum(len(b.values) for b in batches)
    now_ms = int(time.time() * 1000)
    sources = ["impressions:0", "clicks:0"]
    result: dict[str, Any] = {"events": events, "batches": len(batches),
                              "shards": settings.windows.shards}
    for label in ("no_detector", "default_detector"):
        clock = {"cpu_s": 0.0, "calls": 0, "series": 0}
        if label == "no_detector":
            factory = _NoDetector
        else:
            factory = partial(_timed_monitor, build_monitor, settings.detectors, clock)
        prep = EventPreparer(settings)
        states = [ShardState(settings, sources, factory) for _ in range(settings.windows.shards)]
        prep_s = shard_s = 0.0
        decisions = 0
        for batch in batches:
            t0 = time.process_time()
            chunks = prep.chunks(prep.prepare(batch, now_ms=now_ms))
            t1 = time.process_time()
            for shard, chunk in chunks:
                decisions += len(states[shard].ingest(chunk))
            shard_s += time.process_time() - t1
            prep_s += t1 - t0
        t1 = time.process_time()
        for state in states:
            decisions += len(state.flush())
        shard_s += time.process_time() - t1
        entry = {"prepare_us_per_event": round(prep_s / events * 1e6, 2),
                 "shards_us_per_event": round(shard_s / events * 1e6, 2),
                 "events_per_cpu_s": round(events / (prep_s + shard_s)),
                 "outputs": decisions}
        if clock["calls"]:
            entry.update({
                "detection_cpu_s": round(clock["cpu_s"], 2),
                "campaign_windows": clock["calls"],
                "series_windows": clock["series"],
                "detection_us_per_campaign_window": round(clock["cpu_s"] / clock["calls"] * 1e6,
                                                          1),
                "detection_us_per_series_window": round(clock["cpu_s"] / clock["series"] * 1e6,
                                                        1),
                "detection_us_per_event": round(clock["cpu_s"] / events * 1e6, 2),
                "detection_share": round(clock["cpu_s"] / (prep_s + shard_s), 3),
            })
        result[label] = entry
    return result


def _timed_monitor(build, detector_settings, clock):
    return _TimedMonitor(build(detector_settings), clock)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.engine")
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--campaigns", type=int, default=CAMPAIGNS)
    p.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args(argv)
    import ctrguard.detectors.monitor  # noqa: F401  (River's import is start-up, not measured)
    from bench.common import build_scenario

    sc = build_scenario(args.events, args.campaigns, args.seed)
    print(json.dumps(measure_engine(sc.impressions, sc.clicks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

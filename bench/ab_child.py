"""One timed run of one step of ``python -m bench.ab``, in one side's tree.

``python PATH/bench/ab_child.py STEP SPEC`` with ``PYTHONPATH`` and the working directory
at the side's exported tree: whatever ``ctrguard``, ``flows``, ``detectors``, ``sinks`` and
``replay`` that tree holds are the ones measured. So this file imports nothing of the
harness (``bench``: the side's tree may have another one, or none) and is run by path.

``SPEC`` is a JSON object (inputs the harness wrote, service addresses, step options).
Prints one JSON line: ``cpu_s`` (``time.process_time`` of the measured calls), ``units``
(what the CPU is divided by: events, campaign-windows or decisions), ``digest`` (of what
the step produced in memory, where it does not leave its output in files or services,
which the harness digests itself), ``core`` (the side's detector core) and ``extra``.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import pickle
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Run by path, Python puts this file's folder first on sys.path: the harness's bench/ must not
# shadow anything of the side's tree.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)


def _alias_old_layout() -> None:
    """A side's tree from before the ``ctrguard`` namespace has top-level ``flows``,
    ``detectors``, ``sinks`` and ``replay`` (and ``detectors.native``, ``flows._shard``):
    make the names this file uses find them there, not in the installed checkout."""
    import contextlib
    import importlib

    tree = Path.cwd()
    if (tree / "ctrguard" / "native.py").exists() or not (tree / "flows").is_dir():
        return
    import ctrguard

    for name in ("detectors", "flows", "sinks", "replay"):
        sys.modules[f"ctrguard.{name}"] = module = importlib.import_module(name)
        setattr(ctrguard, name, module)
    sys.modules["ctrguard.native"] = ctrguard.native = importlib.import_module("detectors.native")
    for name in ("detectors.monitor", "detectors.base", "detectors.settings", "flows.engine",
                 "replay.run", "sinks.release", "sinks.slack", "sinks.incidents"):
        with contextlib.suppress(ImportError):  # a module that revision did not have
            sys.modules[f"ctrguard.{name}"] = importlib.import_module(name)


def _core() -> str:
    try:
        from ctrguard import native

        return f"{native.status()}/{native.in_use()}"
    except (ImportError, AttributeError):
        return "unknown"


def _settings(spec: dict[str, Any]) -> Any:
    from ctrguard.config import load_config_text

    return load_config_text(spec["config"], source="bench.ab",
                            env={"SLACK_BOT_TOKEN": "xoxb-bench-0000-benchtoken"})


def _load(path: str) -> Any:
    with open(path, "rb") as fh:
        return pickle.load(fh)


# --------------------------------------------------------------------------- steps


def replay(spec: dict[str, Any]) -> dict[str, Any]:
    """``ctrguard.replay.run.run_replay`` on the two files; outputs in ``spec["out"]``."""
    import ctrguard.detectors.monitor  # noqa: F401  (River's import: start-up, not replay)
    import ctrguard.replay.run

    settings = _settings(spec)
    cpu0 = time.process_time()
    result = ctrguard.replay.run.run_replay(spec["impressions"], spec["clicks"], settings, spec["out"],
                                   baselines=spec.get("baselines", False))
    cpu = time.process_time() - cpu0
    return {"cpu_s": cpu, "units": result.summary["events_read"]}


def timed(call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)``: the frame ``bench.ab --profile`` counts samples under (the timed
    part of a step, not its imports and set-up)."""
    return call(*args)


def live(spec: dict[str, Any]) -> dict[str, Any]:
    """The live flow in drain mode, one worker; outputs on the configured topics and Redis."""
    from bytewax.testing import run_main

    import ctrguard.detectors.monitor  # noqa: F401  (imported by the first campaign otherwise)
    from ctrguard.flows.ctr_flow import get_flow
    from ctrguard.flows.source import list_partitions

    settings = _settings(spec)
    flow = get_flow(settings, partitions=list_partitions(settings.kafka))
    cpu0, thread0 = time.process_time(), time.thread_time()
    timed(run_main, flow)
    # The process's CPU includes librdkafka's and the sinks' threads; the dataflow runs on
    # this thread (run_main), whose CPU varies less with how long the run waits.
    return {"cpu_s": time.process_time() - cpu0, "units": spec["events"],
            "extra": {"dataflow_thread_cpu_s": round(time.thread_time() - thread0, 4)}}


def engine(spec: dict[str, Any]) -> dict[str, Any]:
    """Preparation and shards (``ctrguard.flows.engine``) over the recorded batches; ``detector``
    ``none`` (a monitor that decides nothing) or ``default`` (the real one)."""
    import ctrguard.flows.engine as fe

    settings = _settings(spec)
    batches, now_ms = _load(spec["batches"])

    class NoDetector:
        def update(self, window: Any, counts: Any) -> list:
            return []

    factory: Any = NoDetector
    if spec.get("detector") == "default":
        from functools import partial

        from ctrguard.detectors.monitor import build_monitor

        factory = partial(build_monitor, settings.detectors)
    fe.tune_gc()
    digest = hashlib.sha256()
    prep = fe.EventPreparer(settings)
    states = [fe.ShardState(settings, ["impressions:0", "clicks:0"], factory)
              for _ in range(settings.windows.shards)]
    prep_s = shard_s = 0.0
    events = 0
    gc.collect()
    # (a revision whose RawBatch has fewer fields takes the leading ones: the fields added
    # since, the poll time of an idle claim, have defaults)
    n_fields = len(fe.RawBatch._fields)
    for raw in batches:
        batch = fe.RawBatch(*raw[:n_fields])
        events += len(batch.values)
        t0 = time.process_time()
        prepared = prep.prepare(batch, now_ms=now_ms)
        chunks = prep.chunks(prepared)
        t1 = time.process_time()
        outs = [states[shard].ingest(chunk) for shard, chunk in chunks]
        shard_s += time.process_time() - t1
        prep_s += t1 - t0
        digest.update(repr((prepared.frontier_ms, sorted(prepared.excluded.items()),
                            prepared.dead_letters)).encode())
        for shard, chunk in chunks:
            eids, offsets, _ = chunk.row_columns(raws=False)
            digest.update(repr((shard, chunk.kind, chunk.ts_ms.tolist(), list(chunk.campaign_ids),
                                list(chunk.dims), list(eids), list(offsets),
                                chunk.keys.tolist())).encode())
        digest.update(repr(outs).encode())
    t1 = time.process_time()
    outs = [state.flush() for state in states]
    shard_s += time.process_time() - t1
    digest.update(repr(outs).encode())
    digest.update(repr([state.stats.as_dict() for state in states]).encode())
    return {"cpu_s": prep_s + shard_s, "units": events, "digest": digest.hexdigest(),
            "extra": {"prepare_cpu_s": round(prep_s, 4), "shards_cpu_s": round(shard_s, 4),
                      "shard_extension": getattr(fe, "_SHARD", None) is not None}}


def canonical(obj: Any, out: list[str], depth: int = 0) -> None:
    """``obj``'s content as text: what a pickle holds, without the pickle's memo (which
    object is shared with which) or a set's order; floats by their bits."""
    t = type(obj)
    if depth > 50:
        raise RecursionError("state too deep")
    if t is float:
        out.append(f"f{obj.hex()}")
    elif obj is None or t in (int, bool, str, bytes):
        out.append(f"{t.__name__}:{obj!r}")
    elif t in (list, tuple):
        out.append(f"{t.__name__}{len(obj)}(")
        for x in obj:
            canonical(x, out, depth + 1)
        out.append(")")
    elif t is dict:
        out.append(f"dict{len(obj)}(")
        for k, v in obj.items():
            canonical(k, out, depth + 1)
            canonical(v, out, depth + 1)
        out.append(")")
    elif t in (set, frozenset):
        out.append(f"{t.__name__}{sorted(map(repr, obj))}")
    elif isinstance(obj, type) or callable(obj):  # pickled by name
        out.append(f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', obj)}")
    else:
        reduced = obj.__reduce_ex__(4)
        func, args = reduced[0], reduced[1]
        out.append(f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', func)}(")
        canonical(args, out, depth + 1)
        for extra in reduced[2:3]:
            canonical(extra, out, depth + 1)
        out.append(")")


def monitor(spec: dict[str, Any]) -> dict[str, Any]:
    """Every recorded ``CampaignMonitor.update`` call, timed; then, untimed, the same calls
    again with each monitor's state (its pickle's content) digested after every call."""
    from ctrguard.detectors.base import Counts, Window
    from ctrguard.detectors.monitor import build_monitor
    from ctrguard.detectors.settings import DetectorSettings

    gc.set_threshold(50_000, 20, 100)  # as the flow (ctrguard.flows.engine.tune_gc)
    streams = []
    for s in _load(spec["streams"]):
        cache: dict[tuple, dict] = {}
        calls = []
        for ci, start, end, items in s["calls"]:
            counts = cache.get(items)
            if counts is None:
                counts = cache[items] = {name: Counts(n, k) for name, n, k in items}
            calls.append((ci, Window(start, end), counts))
        streams.append((s["name"], DetectorSettings(**s["settings"]), s["campaigns"], calls))
    digest = hashlib.sha256()
    cpu = 0.0
    units = 0
    per_stream = {}
    for name, settings, campaigns, calls in streams:
        mons = [build_monitor(settings) for _ in range(campaigns)]
        outs = []
        append = outs.append
        gc.collect()
        t0 = time.process_time()
        for ci, window, counts in calls:
            append(mons[ci].update(window, counts))
        spent = time.process_time() - t0
        cpu += spent
        units += len(calls)
        per_stream[name] = round(spent / max(len(calls), 1) * 1e6, 3)
        digest.update(repr(outs).encode())
        if spec.get("states", True):
            mons = [build_monitor(settings) for _ in range(campaigns)]
            for ci, window, counts in calls:
                mons[ci].update(window, counts)
                text: list[str] = []
                canonical(mons[ci], text)
                digest.update("\x1f".join(text).encode())
    return {"cpu_s": cpu, "units": units, "digest": digest.hexdigest(),
            "extra": {"cpu_us_per_call_by_stream": per_stream}}


def release(spec: dict[str, Any]) -> dict[str, Any]:
    """The release sink's ``write_batch`` over the recorded calls (flags to Redis, then
    figures and alerts to Kafka; the harness digests both afterwards)."""
    import ctrguard.sinks.release

    try:
        from ctrguard.flows.engine import tune_gc

        tune_gc()  # the live flow's garbage collector settings
    except ImportError:
        pass
    settings = _settings(spec)
    calls = _load(spec["calls"])
    # Before the Bytewax adapters moved to flows/ctr_flow.py the per-worker sink was
    # _ReleasePartition (ReleaseSink was its Bytewax factory); since, it is ReleaseSink.
    module = ctrguard.sinks.release
    part = getattr(module, "_ReleasePartition", module.ReleaseSink)(settings)
    part._store.clock = lambda: spec["clock_s"]   # flags carry the writer's clock
    part._store.client.ping()
    part._producer.list_topics(settings.kafka.topics.figures, timeout=30)
    cpu = 0.0
    thread = 0.0
    for items in calls:
        c, t = time.process_time(), time.thread_time()
        part.write_batch(items)
        cpu += time.process_time() - c
        thread += time.thread_time() - t
    part.close()
    part._gate = None  # (a cycle: free the producer now)
    decisions = sum(len(batch) for items in calls for batch in items)
    return {"cpu_s": cpu, "units": decisions, "extra": {"thread_cpu_s": round(thread, 4)}}


def slack(spec: dict[str, Any]) -> dict[str, Any]:
    """The Slack sink's ``write_batch`` in console mode with no delivery thread (the outbox
    fills in Redis, which the harness digests afterwards)."""
    import ctrguard.sinks.slack
    from ctrguard.sinks.redis_client import make_redis

    settings = _settings(spec)
    batches = _load(spec["batches"])
    client = make_redis(settings.redis)
    module = ctrguard.sinks.slack  # SlackSinkPartition before the adapters moved, SlackSink since
    part = getattr(module, "SlackSinkPartition", module.SlackSink)(
        settings, redis_client=client, stream=io.StringIO(), autostart=False)
    cpu = 0.0
    for batch in batches:
        t = time.process_time()
        part.write_batch(batch)
        cpu += time.process_time() - t
    part.notifier.stop()
    client.close()
    return {"cpu_s": cpu, "units": sum(len(b) for b in batches)}


def chart(spec: dict[str, Any]) -> dict[str, Any]:
    """The Slack sink's chart history (``SeriesHistory.observe``) over the batches, and
    the memory it holds per series after the last (``tracemalloc``, untimed run)."""
    import tracemalloc

    from ctrguard.sinks.slack_chart import SeriesHistory

    batches = _load(spec["batches"])
    history = SeriesHistory(spec["keep"], spec["window_s"])
    t = time.process_time()
    timed(lambda: [history.observe(b) for b in batches])
    cpu = time.process_time() - t
    digest = hashlib.sha256(pickle.dumps(history, protocol=4)).hexdigest()
    tracemalloc.start()
    again = SeriesHistory(spec["keep"], spec["window_s"])
    before = tracemalloc.get_traced_memory()[0]
    for b in batches:
        again.observe(b)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {"cpu_s": cpu, "units": sum(len(b) for b in batches), "digest": digest,
            "extra": {"bytes_per_series": round(held / max(spec["series"], 1))}}


STEPS = {"replay": replay, "live": live, "engine": engine, "monitor": monitor,
         "release": release, "slack": slack, "chart": chart}


def main(argv: list[str]) -> int:
    step, spec = argv[0], json.loads(argv[1])
    _alias_old_layout()
    out = STEPS[step](spec)
    out.setdefault("digest", None)
    out.setdefault("extra", {})
    out["core"] = _core()
    out["pid"] = os.getpid()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

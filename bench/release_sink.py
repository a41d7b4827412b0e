"""CPU cost of the release sink's ``write_batch`` per ``WindowDecision``: baseline vs current.

A private ``redis-server`` and a tansu broker on free ports (as the tests start them), and a
synthetic stream shaped like the live flow's output: ``--campaigns`` campaigns, ``--windows``
closed windows; every window is one ``write_batch`` call whose items are ``--shards``
batches of decisions (one per shard, as the live flow sends them), one decision per
campaign with 1-4 figures (campaign total plus devices), and a few decisions with alerts,
most of them quarantining. The stream also holds a window delivered twice (at-least-once
input after a restart), one call with two windows of every campaign (the watermark is the
later end) and campaigns whose ids are not ASCII.

Two implementations run side by side in the same process, alternating round by round on a
flushed Redis and fresh topics: the *baseline* (``sinks/release.py``, ``sinks/kafka_out.py``
and ``sinks/quarantine.py`` as of ``--baseline``, a git revision, loaded from ``git show``
into a temporary package, with the figure encoding of ``ctrguard/records.py`` and its C
encoder of the same revision) and the *current* modules. Both must leave the same Redis
contents (every key, type, value and TTL; audit entries without their server-clock ids)
and the same Kafka records (topic partition, offset order, key, value bytes, headers): the
script checks that after every run and fails if they differ.

Reported: CPU time of this process in ``write_batch`` (``time.process_time``: the calling
thread plus librdkafka's threads while it waits in the flush), of the calling thread alone
(``time.thread_time``), wall time of the calls, and
CPU of the redis-server (``INFO cpu``), each per ``WindowDecision``, median over the rounds;
and ``*_cpu_best``: every call's cheapest round, summed (other processes on a shared machine
only ever add time). The garbage collector is set as the live flow sets it.

    .venv/bin/python -m bench.release_sink [--rounds 5] [--campaigns 2000] [--windows 20]
        [--shards 16] [--baseline REV]
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ctrguard.config import Settings  # noqa: E402
from ctrguard.records import (  # noqa: E402
    STATUS_OK,
    STATUS_QUARANTINED,
    Alert,
    Figure,
    WindowDecision,
    make_alert_id,
)
from sinks.quarantine import iso_utc  # noqa: E402

WINDOW_S = 300
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
#: The last commit of the three sink modules before the release sink's fast path.
BASELINE = "7871462"
MODULES = ("kafka_out", "quarantine", "release")
BASELINE_PACKAGE = "_release_baseline"
DEVICES = ("device=mobile", "device=desktop", "device=tablet")
DETECTORS = ("binomial_cusum", "adwin", "page_hinkley")
KEY_PREFIX = "ctrguard"
PARTITIONS = 3


def load_baseline(rev: str) -> Any:
    """``sinks/release.py`` of ``rev`` with its ``kafka_out`` and ``quarantine`` of the same
    revision, imported as the package ``_release_baseline``, and the figure encoding of
    ``ctrguard/records.py`` of ``rev`` (with its C encoder ``ctrguard/_records.c``, compiled
    here, where the current one is built): both sides encode with their own code, so a
    change there shows. The record classes and everything else are shared with the
    current code (the decisions are the same objects for both)."""
    tmp = Path(tempfile.mkdtemp(prefix="release-baseline-"))
    try:
        pkg = tmp / BASELINE_PACKAGE
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        pattern = re.compile(r"\b(?:sinks\.(" + "|".join(MODULES) + r")|ctrguard\.(records))\b")

        def ours(m: re.Match[str]) -> str:
            return f"{BASELINE_PACKAGE}.{m.group(1) or m.group(2)}"

        for name in MODULES:
            src = _git_show(rev, f"sinks/{name}.py")
            (pkg / f"{name}.py").write_text(pattern.sub(ours, src))
        (pkg / "records.py").write_text(_baseline_records(rev, pkg))
        sys.path.insert(0, str(tmp))
        try:
            # All of them now, while the files exist (release imports quarantine lazily).
            for name in (*MODULES, "records"):
                importlib.import_module(f"{BASELINE_PACKAGE}.{name}")
        finally:
            sys.path.remove(str(tmp))
    finally:
        shutil.rmtree(tmp)
    return sys.modules[f"{BASELINE_PACKAGE}.release"]


def _git_show(rev: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout


def _baseline_records(rev: str, pkg: Path) -> str:
    """``ctrguard/records.py`` of ``rev`` bound to the current record classes, and to its
    own C encoder (built into ``pkg``) where it has one and the current one is built."""
    from ctrguard import records

    src = _git_show(rev, "ctrguard/records.py")
    src += ("\n# (bench) The record classes are the current ones, shared by both sides.\n"
            "from ctrguard.records import Alert, Figure, WindowDecision  # noqa: E402,F811\n")
    if "_RECORDS" not in src:
        return src
    if records._RECORDS is None:
        return src + "_RECORDS = None\n"
    c_src = pkg / "_records_src.c"
    c_src.write_text(_git_show(rev, "ctrguard/_records.c"))
    build = ("from setuptools import Distribution, Extension\n"
             f"ext = Extension({BASELINE_PACKAGE + '._records'!r}, [{str(c_src)!r}])\n"
             "cmd = Distribution({'ext_modules': [ext]}).get_command_obj('build_ext')\n"
             f"cmd.build_lib = {str(pkg.parent)!r}\n"
             f"cmd.build_temp = {str(pkg.parent / 'build')!r}\n"
             "cmd.ensure_finalized()\ncmd.run()\n")
    subprocess.run([sys.executable, "-c", build], check=True, capture_output=True)
    return src + f"from {BASELINE_PACKAGE} import _records as _RECORDS  # noqa: E402\n"


# --------------------------------------------------------------------------- scenario


def _alert(cid: str, segment: str, ws: int, iso: tuple[str, str], detector: str,
           rng: random.Random) -> Alert:
    imps = rng.randint(200, 5000)
    clicks = rng.randint(0, imps // 100)
    return Alert(
        alert_id=make_alert_id(cid, segment, ws, detector, "ctr_drop"), campaign_id=cid,
        segment=segment, window_start=iso[0], window_end=iso[1], window_start_s=ws,
        impressions=imps, clicks=clicks, ctr=clicks / imps, kind="ctr_drop",
        severity=rng.choice(("info", "warning", "critical")), detector=detector,
        baseline_ctr=0.02, score=round(rng.uniform(5, 12), 3), confidence=0.99,
        ctr_low=0.015, ctr_high=0.025, expected_clicks=imps * 0.02,
        expected_impressions=float(imps),
        suspected_cause=rng.choice(("", "click_tracking", "bot traffic")),
        quarantine=rng.random() < 0.8, incident=rng.choice(("", f"inc-{cid}")))


def decision(cid: str, ws: int, iso: tuple[str, str], rng: random.Random,
             alert_rate: float) -> WindowDecision:
    """One campaign's closed window: the campaign total and 0-3 devices, as the engine
    makes them (ok figures unless an alert on the series quarantines it; the window's
    texts shared by all its figures)."""
    segments = ("all", *rng.sample(DEVICES, rng.choice((0, 1, 2, 2, 3, 3))))
    alerts: tuple[Alert, ...] = ()
    if rng.random() < alert_rate:
        segment = rng.choice(segments)
        alerts = tuple(_alert(cid, segment, ws, iso, det, rng)
                       for det in rng.sample(DETECTORS, rng.choice((1, 1, 2))))
    figures = []
    for seg in segments:
        imps = rng.choice((0, rng.randint(1, 50), rng.randint(50, 20_000)))
        clicks = rng.randint(0, imps // 25) if imps else 0
        on_seg = [a for a in alerts if a.segment == seg]
        quarantined = any(a.quarantine for a in on_seg)
        figures.append(Figure(
            campaign_id=cid, segment=seg, window_start=iso[0], window_end=iso[1],
            window_start_s=ws, impressions=imps, clicks=clicks,
            ctr=clicks / imps if imps else 0.0,
            status=STATUS_QUARANTINED if quarantined else STATUS_OK,
            alert_ids=tuple(a.alert_id for a in on_seg)))
    return WindowDecision(cid, ws, ws + WINDOW_S, tuple(figures), alerts)


def campaign_ids(campaigns: int) -> list[str]:
    ids = [f"c{i:04d}" for i in range(campaigns)]
    # Not every id is ASCII (ids come from event JSON): escapes must survive every path.
    for i, text in zip(range(3, campaigns, max(1, campaigns // 4)),
                       ("café-ü", "キャンペーン", "promo 🎉 25%:x"), strict=False):
        ids[i] = f"{text}-{i}"
    return ids


class Scenario:
    """The ``write_batch`` calls of a run, each built afresh just before it is made (as the
    live flow's decisions are, so both implementations find them equally warm in the CPU
    caches) and identical for every run: each call draws from its own seeded generator.

    A call is a list of per-shard tuples of decisions, one decision per campaign and window.
    One call holds two windows (a shard that lagged behind: the watermark is the later end),
    and the last call repeats an earlier one (re-delivery after a restart).
    """

    def __init__(self, campaigns: int, windows: int, shards: int, seed: int,
                 alert_rate: float = 0.005):
        self.ids = campaign_ids(campaigns)
        self.shards = shards
        self.seed = seed
        self.alert_rate = alert_rate
        lag = windows // 2 if windows > 2 else windows   # windows lag and lag + 1 together
        self.plan = [[w, w + 1] if w == lag else [w] for w in range(windows) if w != lag + 1]
        if len(self.plan) > 2:
            self.plan.append(self.plan[len(self.plan) // 3])

    def __len__(self) -> int:
        return len(self.plan)

    def call(self, i: int) -> list[tuple[WindowDecision, ...]]:
        windows = self.plan[i]
        rng = random.Random(self.seed * 1_000_003 + windows[0])
        decisions = []
        for w in windows:
            ws = T0 + w * WINDOW_S
            iso = (iso_utc(ws), iso_utc(ws + WINDOW_S))
            decisions += [decision(cid, ws, iso, rng, self.alert_rate) for cid in self.ids]
        if len(windows) > 1:
            rng.shuffle(decisions)
        by_shard: list[list[WindowDecision]] = [[] for _ in range(self.shards)]
        for d in decisions:
            by_shard[zlib.crc32(d.campaign_id.encode()) % self.shards].append(d)
        return [tuple(s) for s in by_shard if s]


# --------------------------------------------------------------------------- one run


def redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_contents(client: Any) -> dict[str, Any]:
    """Every key: type, value and TTL (to the minute: runs are seconds apart); audit entries
    without their ids (the server's clock makes them)."""
    out: dict[str, Any] = {}
    for key in sorted(client.scan_iter(count=1000)):
        kind = client.type(key)
        if kind == "hash":
            value: Any = client.hgetall(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = [fields for _, fields in client.xrange(key)]
        elif kind == "string":
            value = client.get(key)
        else:
            value = f"<{kind}>"
        ttl = client.ttl(key)
        out[key] = (kind, value, ttl if ttl < 0 else round(ttl / 60))
    return out


def kafka_records(bootstrap: str, topic: str) -> list[tuple[Any, ...]]:
    from ctrguard.services import consume_to_eof

    return [(m.partition(), m.key(), m.value(), m.headers())
            for m in consume_to_eof(bootstrap, topic, timeout=120)]


def run_once(module: Any, settings: Settings, client: Any, bootstrap: str,
             calls: Scenario, clock_s: float, *,
             verify: bool) -> tuple[list[float], float, float, float, dict[str, Any] | None]:
    client.flushall()
    part = module._ReleasePartition(settings)
    part._store.clock = lambda: clock_s   # flags carry the writer's clock: make it equal
    # Connections and metadata before the clock starts (both implementations alike).
    part._store.client.ping()
    part._producer.list_topics(settings.kafka.topics.figures, timeout=30)
    cpu: list[float] = []
    wall = own = 0.0
    rcpu0 = redis_cpu(client)
    for i in range(len(calls)):
        items = calls.call(i)
        c, t, w = time.process_time(), time.thread_time(), time.perf_counter()
        part.write_batch(items)
        cpu.append(time.process_time() - c)
        own += time.thread_time() - t
        wall += time.perf_counter() - w
    rcpu = redis_cpu(client) - rcpu0
    part.close()
    part._store.client.close()
    part._gate = None  # a cycle (the gate holds the partition's methods): free the producer now
    result = None
    if verify:
        topics = settings.kafka.topics
        result = {"redis": redis_contents(client),
                  "figures": kafka_records(bootstrap, topics.figures),
                  "alerts": kafka_records(bootstrap, topics.alerts)}
    return cpu, own, wall, rcpu, result


def settings_for(redis_url: str, bootstrap: str, tag: str) -> Settings:
    return Settings.model_validate({
        "kafka": {"brokers": [bootstrap],
                  "topics": {"figures": f"rs-{tag}-figures", "alerts": f"rs-{tag}-alerts"}},
        "redis": {"url": redis_url, "key_prefix": KEY_PREFIX},
        "windows": {"length": WINDOW_S},
    })


def describe_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    for part in ("redis", "figures", "alerts"):
        x, y = a[part], b[part]
        if x == y:
            continue
        if part == "redis":
            for key in sorted(set(x) | set(y)):
                if x.get(key) != y.get(key):
                    return f"redis key {key!r}: {x.get(key)!r:.300} != {y.get(key)!r:.300}"
        if len(x) != len(y):
            return f"{part}: {len(x)} records != {len(y)}"
        for i, (r, s) in enumerate(zip(x, y, strict=True)):
            if r != s:
                return f"{part} record {i}: {r!r:.300} != {s!r:.300}"
    return "no difference"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--campaigns", type=int, default=2000)
    p.add_argument("--windows", type=int, default=20)
    p.add_argument("--shards", type=int, default=16,
                   help="items per write_batch call (the live flow sends one per shard)")
    p.add_argument("--alert-rate", type=float, default=0.005,
                   help="share of decisions with alerts")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--baseline", default=BASELINE, help="git revision of the baseline")
    p.add_argument("--verify", choices=("every", "first", "none"), default="every",
                   help="compare Redis and Kafka outputs after every run, only in the first "
                        "round, or never")
    args = p.parse_args(argv)

    import sinks.release as current
    from ctrguard.services import ensure_topics, start_broker, start_redis
    from flows.engine import tune_gc

    tune_gc()  # the live flow's garbage collector settings (get_flow sets them)

    baseline = load_baseline(args.baseline)
    calls = Scenario(args.campaigns, args.windows, args.shards, args.seed, args.alert_rate)
    decisions = figures = n_alerts = 0
    for i in range(len(calls)):
        for batch in calls.call(i):
            decisions += len(batch)
            figures += sum(len(d.figures) for d in batch)
            n_alerts += sum(len(d.alerts) for d in batch)
    clock_s = float(T0 + (args.windows + 2) * WINDOW_S)
    impls = {"baseline": baseline, "current": current}
    cpu: dict[str, list[float]] = {k: [] for k in impls}
    per_call: dict[str, list[list[float]]] = {k: [] for k in impls}
    own: dict[str, list[float]] = {k: [] for k in impls}
    wall: dict[str, list[float]] = {k: [] for k in impls}
    rcpu: dict[str, list[float]] = {k: [] for k in impls}
    print(f"{len(calls)} write_batch calls, {decisions} decisions, {figures} figures, "
          f"{n_alerts} alerts; baseline {args.baseline}", file=sys.stderr)
    with start_redis() as server, start_broker() as broker:
        client = server.client(decode_responses=True)
        reference = None
        for rnd in range(args.rounds):
            order = list(impls) if rnd % 2 == 0 else list(reversed(impls))
            for name in order:
                tag = f"{rnd}-{name}-{uuid.uuid4().hex[:6]}"
                settings = settings_for(server.url, broker.bootstrap, tag)
                ensure_topics(broker.bootstrap, [settings.kafka.topics.figures,
                                                 settings.kafka.topics.alerts],
                              partitions=PARTITIONS)
                verify = args.verify == "every" or (args.verify == "first" and rnd == 0)
                c, t, w, rc, result = run_once(impls[name], settings, client, broker.bootstrap,
                                            calls, clock_s, verify=verify)
                cpu[name].append(sum(c))
                per_call[name].append(c)
                own[name].append(t)
                wall[name].append(w)
                rcpu[name].append(rc)
                if result is not None:
                    if reference is None:
                        reference = result
                    elif result != reference:
                        print(f"MISMATCH: {name} (round {rnd + 1}) wrote different outputs: "
                              f"{describe_difference(reference, result)}", file=sys.stderr)
                        return 1
            print(f"round {rnd + 1}: " + ", ".join(
                f"{k} {cpu[k][-1] / decisions * 1e6:.2f} µs CPU" for k in impls),
                file=sys.stderr)
        client.close()
    out: dict[str, Any] = {
        "campaigns": args.campaigns, "windows": args.windows, "calls": len(calls),
        "decisions": decisions, "figures": figures, "alerts": n_alerts,
        "rounds": args.rounds, "baseline": args.baseline, "verified": args.verify}
    if reference is not None:
        out["flags"] = sum(1 for k in reference["redis"] if k.startswith(f"{KEY_PREFIX}:flag:"))
        out["records_figures"] = len(reference["figures"])
        out["records_alerts"] = len(reference["alerts"])
    for k in impls:
        out[f"{k}_cpu_us_per_decision"] = round(statistics.median(cpu[k]) / decisions * 1e6, 3)
        # Noise from other processes only adds: each call's cheapest round, summed.
        best = sum(map(min, zip(*per_call[k], strict=True)))
        out[f"{k}_cpu_best_us_per_decision"] = round(best / decisions * 1e6, 3)
        out[f"{k}_thread_cpu_us_per_decision"] = round(
            statistics.median(own[k]) / decisions * 1e6, 3)
        out[f"{k}_wall_us_per_decision"] = round(statistics.median(wall[k]) / decisions * 1e6, 3)
        out[f"{k}_redis_cpu_us_per_decision"] = round(
            statistics.median(rcpu[k]) / decisions * 1e6, 3)
    out["speedup_cpu"] = round(out["baseline_cpu_us_per_decision"]
                               / out["current_cpu_us_per_decision"], 2)
    out["speedup_cpu_best"] = round(out["baseline_cpu_best_us_per_decision"]
                                    / out["current_cpu_best_us_per_decision"], 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench.ab``: one step of ctrguard, two revisions, same inputs, same run.

Each side is a tree exported from git (``git archive``; the working tree as it is, untracked
files included, when a side is ``WORKTREE``) with its own compiled parts built there
(``python -m ctrguard.native build``; kept in ``/tmp/ctrguard-ab/<tree>`` for the next run).
The inputs are made once, here; then every round runs the step once per side, each run in
a fresh child process (``bench/ab_child.py``) whose ``PYTHONPATH`` and working directory
are that side's tree, the two sides alternating which goes first. What each run produced
(output files, records on the topics, Redis contents, or a digest of what it returned) is
digested and compared with the first run's: any difference is reported and the exit
status is 1. Reported: CPU time (``time.process_time`` of the measured calls) per unit,
every round and the medians, and the ratio new/base of each round (the two sides of a
round ran back to back, so their ratio is steadier than either figure on a shared machine).

Steps (unit): ``replay`` (``ctrguard replay`` on gzip JSONL; events), ``live`` (the live
flow draining the scenario from a tansu broker, Redis and a console Slack; events),
``engine`` (preparation and shards without Kafka; ``--detector default`` adds detection;
events), ``monitor`` (``CampaignMonitor.update`` over the scenario's recorded calls and
synthetic campaigns with every kind of incident, the state after every call compared too;
campaign-windows), ``release`` (the release sink's ``write_batch``: flags to a private
``redis-server``, figures and alerts to tansu; decisions), ``slack`` (the Slack sink's
``write_batch`` filling its outbox in Redis; decisions), ``chart`` (the chart history
kept for incident charts; decisions).

Examples::

    python -m bench.ab --step replay                       # merge-base with main vs worktree
    python -m bench.ab --step release --base main --new HEAD --rounds 7
    python -m bench.ab --step live --events 1000000 --rounds 3
    python -m bench.ab --step engine --base HEAD --new HEAD --new-env CTRGUARD_NATIVE_OFF=shard
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    CAMPAIGNS,
    DENSE_VOLUME_SCALE,
    REPO,
    SEED,
    VOLUME_SCALE,
    export_tree,
    log,
    native_module,
)

WORKTREE = "WORKTREE"
STEPS = ("replay", "live", "engine", "monitor", "release", "slack", "chart")
UNITS = {"replay": "event", "live": "event", "engine": "event", "monitor": "campaign-window",
         "release": "decision", "slack": "decision", "chart": "decision"}
CHILD = Path(__file__).resolve().parent / "ab_child.py"
#: Exported and built trees, by git tree id (reused while the build is ``compiled``).
CACHE = Path(tempfile.gettempdir()) / "ctrguard-ab"
EXIT_OK, EXIT_DIFFER, EXIT_USAGE = 0, 1, 2


# --------------------------------------------------------------------------- sides


def git(*args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


def tree_of(rev: str) -> tuple[str, str]:
    """``(tree id, description)`` of a revision, or of the working tree (``WORKTREE``):
    tracked files as they are now and untracked ones git does not ignore."""
    if rev != WORKTREE:
        commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
        return git("rev-parse", f"{commit}^{{tree}}"), f"{rev} ({commit[:12]})"
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git("read-tree", "HEAD", env=env)
        git("add", "-A", ".", env=env)
        return git("write-tree", env=env), "the working tree"


def side_tree(tree: str, native: bool, cache: Path = CACHE) -> Path:
    """The tree exported and (``native``) built, from the cache when it is there."""
    dest = cache / (tree[:16] + ("" if native else "-source"))
    if dest.is_dir():
        if not native:
            return dest
        status = subprocess.run([sys.executable, "-m", native_module(dest), "status"], cwd=dest,
                                capture_output=True, text=True, env=_env(dest, {})).stdout
        if status.strip() == "compiled":
            return dest
        shutil.rmtree(dest)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=cache))
    shutil.rmtree(tmp)
    log(f"exporting {tree[:12]}" + (" and building its compiled parts" if native else ""))
    export_tree(tree, tmp, build=native)
    tmp.replace(dest)
    return dest


def _env(tree: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CTRGUARD_PURE_PYTHON", "CTRGUARD_NATIVE_OFF")}
    # A bench run must not pick up a developer's services from the environment.
    for name in ("CTRGUARD_KAFKA_BROKERS", "CTRGUARD_REDIS_URL", "SLACK_WEBHOOK_URL"):
        env.pop(name, None)
    env["PYTHONPATH"] = str(tree)
    env["PYTHONHASHSEED"] = "0"   # pickled states hold sets of names: same hashes, same bytes
    env.update(extra)
    return env


@dataclass
class Side:
    label: str
    rev: str
    tree_id: str
    described: str
    path: Path
    env: dict[str, str]
    runs: list[dict[str, Any]] = field(default_factory=list)

    def run(self, step: str, spec: dict[str, Any], timeout: float,
            profile: Path | None = None) -> dict[str, Any]:
        cmd = [sys.executable, str(CHILD), step, json.dumps(spec)]
        if profile is not None:  # sampled by py-spy (collapsed stacks, CPU only)
            cmd = [_py_spy(), "record", "--format", "raw", "--nonblocking", "--rate",
                   str(PROFILE_RATE), "--output", str(profile), "--", *cmd]
        proc = subprocess.run(cmd,
                              cwd=self.path, env=_env(self.path, self.env), capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{self.label} ({self.described}) {step} run failed "
                               f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        return json.loads(lines[-1])


#: Samples a second of ``--profile``.
PROFILE_RATE = 250
#: The frames of ``--profile`` whose stacks count: the timed call (``ab_child.timed``;
#: in a step that does not use it, the step's function, its set-up included) and every
#: other thread.
PROFILE_ROOTS = ("timed (bench/ab_child.py)", "Thread._bootstrap (threading.py)")
#: The steps whose timed part runs in ``ab_child.timed``.
TIMED_STEPS = ("live", "chart")


def profile_roots(step: str) -> tuple[str, ...]:
    return PROFILE_ROOTS if step in TIMED_STEPS else PROFILE_ROOTS + (
        f"{step} (bench/ab_child.py)",)


def _py_spy() -> str:
    found = (shutil.which("py-spy", path=str(Path(sys.executable).parent))
             or shutil.which("py-spy"))
    if found is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy; the dev extra has it)")
    return found


# --------------------------------------------------------------------------- digests


def digest_files(out: Path) -> str:
    """Every file a replay wrote, by name and content."""
    h = hashlib.sha256()
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        h.update(path.relative_to(out).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def wall_clock(since: float) -> Callable[[Any], Any]:
    """A function that replaces a value that is a time between ``since`` (minus a minute)
    and now (plus one) by ``"<now>"``: epoch seconds (a number or its text) or ISO-8601 text.
    Sinks stamp some records with the wall clock (an incident's ``updated_at``); the
    scenarios' event times are far from it, so nothing else is masked.

    >>> mask = wall_clock(time.time())
    >>> mask(str(time.time())), mask("1767225600"), mask("2026-01-01T00:00:00Z"), mask("x")
    ('<now>', '1767225600', '2026-01-01T00:00:00Z', 'x')
    """
    from datetime import datetime

    lo, hi = since - 60, time.time() + 60

    def mask(value: Any) -> Any:
        t = None
        if isinstance(value, int | float):
            t = float(value)
        elif isinstance(value, str) and value[:1].isdigit():
            try:
                t = float(value)
            except ValueError:
                if "T" in value:
                    try:
                        t = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
                    except ValueError:
                        t = None
        return "<now>" if t is not None and lo <= t <= hi else value

    return mask


def redis_contents(client: Any, mask: Callable[[Any], Any] = lambda v: v) -> dict[str, Any]:
    """Every key: type, value (``mask`` applied to each scalar) and TTL to the minute (runs
    are seconds apart); stream entries without their ids (the server's clock makes them)."""
    out: dict[str, Any] = {}
    for key in sorted(client.scan_iter(count=1000)):
        kind = client.type(key)
        if kind == "hash":
            value: Any = sorted((k, mask(v)) for k, v in client.hgetall(key).items())
        elif kind == "zset":
            # (sorted after masking: scores that are wall-clock times order members
            # differently from run to run)
            value = sorted((m, mask(score)) for m, score in client.zrange(key, 0, -1,
                                                                           withscores=True))
        elif kind == "stream":
            value = [sorted((k, mask(v)) for k, v in fields.items())
                     for _, fields in client.xrange(key)]
        elif kind == "string":
            value = mask(client.get(key))
        elif kind == "set":
            value = sorted(client.smembers(key))
        else:
            value = f"<{kind}>"
        ttl = client.ttl(key)
        out[key] = (kind, value, ttl if ttl < 0 else round(ttl / 60))
    return out


def topic_records(bootstrap: str, topic: str, *, ordered: bool = True) -> list[tuple]:
    """A topic's records: partition, key, value, headers (in offset order per partition,
    or sorted where the order between batches is not the step's to keep)."""
    from devtools.services import consume_to_eof

    records = [(m.partition(), m.offset(), m.key(), m.value(), m.headers() or [])
               for m in consume_to_eof(bootstrap, topic, timeout=120)]
    if ordered:
        return [(p, k, v, h) for p, _, k, v, h in sorted(records, key=lambda r: r[:2])]
    return sorted((k or b"", v or b"", sorted(h)) for _, _, k, v, h in records)


def digest_of(obj: Any) -> str:
    return hashlib.sha256(repr(obj).encode()).hexdigest()


def differences(runs: list[tuple[str, str | None]]) -> list[str]:
    """The runs (``(label, digest)``, the first the reference) whose outputs differ.

    >>> differences([("base 1", "a"), ("new 1", "a"), ("new 2", "b")])
    ['new 2: outputs differ from base 1']
    >>> differences([("base 1", "a"), ("new 1", "a")])
    []
    """
    ref_label, ref = runs[0]
    return [f"{label}: outputs differ from {ref_label}" for label, digest in runs[1:]
            if digest != ref]


# --------------------------------------------------------------------------- steps


def _config(**sections: str) -> str:
    return "".join(f"{name}:\n{body}" for name, body in sections.items())


class Step:
    """What a step needs besides the child's run: inputs made once (``prepare``), a spec per
    run (``spec``) and the digest of what the run left (``collect``)."""

    def __init__(self, args: argparse.Namespace, work: Path, stack: list[Callable[[], None]]):
        self.args, self.work, self.stack = args, work, stack
        self.inputs: dict[str, Any] = {}

    def prepare(self) -> None: ...

    def spec(self, run_id: str) -> dict[str, Any]:
        return dict(self.inputs)

    def collect(self, run_id: str, result: dict[str, Any]) -> str | None:
        return result.get("digest")

    # services, started once when a step needs them and stopped at the end
    _redis: Any = None
    _broker: Any = None

    def redis(self) -> Any:
        if self._redis is None:
            from devtools.services import start_redis

            self._redis = start_redis()
            self.stack.append(self._redis.stop)
        return self._redis

    def broker(self) -> Any:
        if self._broker is None:
            from devtools.services import start_broker

            self._broker = start_broker()
            self.stack.append(self._broker.stop)
        return self._broker

    def dump(self, name: str, obj: Any) -> str:
        path = self.work / name
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
        return str(path)


class ReplayStep(Step):
    def prepare(self) -> None:
        from bench.common import build_scenario, write_gzip

        a = self.args
        log(f"simulating >= {a.events:,} impressions, {a.campaigns} campaigns, seed {a.seed}")
        sc = build_scenario(a.events, a.campaigns, a.seed, a.volume_scale)
        imp, clk = self.work / "impressions.jsonl.gz", self.work / "clicks.jsonl.gz"
        write_gzip(imp, sc.impressions)
        write_gzip(clk, sc.clicks)
        # bench.run's replay configuration (the service addresses are never contacted)
        self.inputs = {"impressions": str(imp), "clicks": str(clk),
                       "config": _bench_config("127.0.0.1:9", "redis://127.0.0.1:9/0",
                                               "replay-ab", "bench-replay"),
                       "baselines": a.baselines}

    def spec(self, run_id: str) -> dict[str, Any]:
        return {**self.inputs, "out": str(self.work / f"out-{run_id}")}

    def collect(self, run_id: str, result: dict[str, Any]) -> str | None:
        out = self.work / f"out-{run_id}"
        digest = digest_files(out)
        shutil.rmtree(out)
        return digest


class LiveStep(Step):
    def prepare(self) -> None:
        from bench.common import build_scenario, new_topics, produce_lines

        a = self.args
        log(f"simulating >= {a.events:,} impressions, {a.campaigns} campaigns, seed {a.seed}")
        sc = build_scenario(a.events, a.campaigns, a.seed, a.volume_scale)
        broker = self.broker()
        self.topics = new_topics(broker.bootstrap, "ab", 1)
        produce_lines(broker.bootstrap, self.topics["impressions"], sc.impressions)
        produce_lines(broker.bootstrap, self.topics["clicks"], sc.clicks)
        self.inputs = {"events": sc.events}
        log(f"produced {sc.events:,} events")

    def spec(self, run_id: str) -> dict[str, Any]:
        from bench.common import output_topics

        broker = self.broker()
        topics = {**self.topics, **output_topics(broker.bootstrap, f"ab-{run_id}")}
        self.outputs = topics
        return {**self.inputs, "config": _bench_config(broker.bootstrap, self.redis().url,
                                                       topics, f"ab-{run_id}")}

    def collect(self, run_id: str, result: dict[str, Any]) -> str | None:
        # Figures, alerts and dead letters as sets of records (one worker, drain mode: the
        # same records every run; their order between Bytewax activations is not the
        # flow's to keep). Redis holds wall-clock times (audit entries): not compared.
        bootstrap = self.broker().bootstrap
        records = [topic_records(bootstrap, self.outputs[name], ordered=False)
                   for name in ("figures", "alerts", "deadletter")]
        # (per topic: where runs differ, which records did)
        log(f"{run_id}: " + ", ".join(f"{len(r):,} {name} ({digest_of(r)[:8]})" for name, r in
                                      zip(("figures", "alerts", "dead letters"), records,
                                          strict=True)))
        return digest_of(records)


class EngineStep(Step):
    def prepare(self) -> None:
        from bench.workloads import engine_batches

        a = self.args
        log(f"simulating >= {a.events:,} impressions, {a.campaigns} campaigns, seed {a.seed}")
        config, batches, events = engine_batches(a.events, a.campaigns, a.seed,
                                                 a.volume_scale)
        self.inputs = {"config": config, "detector": a.detector,
                       "batches": self.dump("batches.pkl", (batches, int(time.time() * 1000)))}
        log(f"{len(batches)} batches, {events:,} events")


class MonitorStep(Step):
    def prepare(self) -> None:
        from bench.workloads import monitor_streams

        a = self.args
        log(f"recording the monitor calls of >= {a.events:,} impressions, and the synthetic "
            "streams")
        streams = monitor_streams(a.events, a.campaigns, a.seed)
        if a.no_synthetic:
            streams = streams[:1]
        self.inputs = {"streams": self.dump("streams.pkl", streams),
                       "states": not a.no_states}
        log(", ".join(f"{s['name']}: {len(s['calls']):,} calls" for s in streams))


class ReleaseStep(Step):
    PARTITIONS = 3

    def prepare(self) -> None:
        from bench.workloads import T0, WINDOW_S, ReleaseScenario

        a = self.args
        scenario = ReleaseScenario(a.campaigns, a.windows, a.shards, a.seed, a.alert_rate)
        calls = [scenario.call(i) for i in range(len(scenario))]
        self.inputs = {"calls": self.dump("calls.pkl", calls),
                       "clock_s": float(T0 + (a.windows + 2) * WINDOW_S)}
        log(f"{len(calls)} write_batch calls, "
            f"{sum(len(b) for items in calls for b in items):,} decisions")

    def spec(self, run_id: str) -> dict[str, Any]:
        from devtools.services import ensure_topics

        redis, broker = self.redis(), self.broker()
        client = redis.client()
        client.flushall()
        client.close()
        self.outputs = {k: f"ab-{run_id}-{uuid.uuid4().hex[:6]}.{k}" for k in ("figures", "alerts")}
        ensure_topics(broker.bootstrap, list(self.outputs.values()), partitions=self.PARTITIONS)
        self.started = time.time()
        config = _config(
            kafka=f'  brokers: ["{broker.bootstrap}"]\n  topics:\n'
                  f'    figures: {self.outputs["figures"]}\n    alerts: {self.outputs["alerts"]}\n',
            redis=f'  url: "{redis.url}"\n  key_prefix: ctrguard\n',
            windows="  length: 300\n")
        return {**self.inputs, "config": config}

    def collect(self, run_id: str, result: dict[str, Any]) -> str | None:
        client = self.redis().client(decode_responses=True)
        try:
            state = redis_contents(client, wall_clock(self.started))
        finally:
            client.close()
        bootstrap = self.broker().bootstrap
        return digest_of([state, *(topic_records(bootstrap, t) for t in self.outputs.values())])


class SlackStep(Step):
    def prepare(self) -> None:
        from bench.workloads import slack_batches

        a = self.args
        batches = slack_batches(a.campaigns, a.windows, a.seed, a.batch_size)
        self.inputs = {"batches": self.dump("batches.pkl", batches)}
        log(f"{len(batches)} batches, {sum(len(b) for b in batches):,} decisions, "
            f"{sum(len(d.alerts) for b in batches for d in b)} alerts")

    def spec(self, run_id: str) -> dict[str, Any]:
        redis = self.redis()
        client = redis.client()
        client.flushall()
        client.close()
        self.started = time.time()
        return {**self.inputs, "config": _config(redis=f'  url: "{redis.url}"\n',
                                                 slack="  mode: console\n")}

    def collect(self, run_id: str, result: dict[str, Any]) -> str | None:
        client = self.redis().client(decode_responses=True)
        try:
            return digest_of(redis_contents(client, wall_clock(self.started)))
        finally:
            client.close()


class ChartStep(Step):
    def prepare(self) -> None:
        from bench.workloads import WINDOW_S, chart_batches

        a = self.args
        batches = chart_batches(a.campaigns, a.series, a.windows, a.seed)
        self.inputs = {"batches": self.dump("batches.pkl", batches), "keep": a.keep,
                       "window_s": WINDOW_S, "series": a.campaigns * a.series}


STEP_CLASSES = {"replay": ReplayStep, "live": LiveStep, "engine": EngineStep,
                "monitor": MonitorStep, "release": ReleaseStep, "slack": SlackStep,
                "chart": ChartStep}


def _bench_config(bootstrap: str, redis_url: str, topics: dict[str, str] | str,
                  key_prefix: str) -> str:
    """bench.run's configuration of the flow and replay (``bench.common.write_config``)."""
    from bench.common import write_config

    if isinstance(topics, str):
        topics = {name: f"{topics}-{name}" for name in
                  ("impressions", "clicks", "figures", "alerts", "deadletter")}
    with tempfile.TemporaryDirectory() as tmp:
        return write_config(Path(tmp) / "c.yaml", bootstrap=bootstrap, topics=topics,
                            redis_url=redis_url, key_prefix=key_prefix, tail=False,
                            slack_base_url=None).read_text()


# --------------------------------------------------------------------------- driver


def summarize(step: str, sides: list[Side], diffs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"step": step, "unit": UNITS[step], "rounds": len(sides[0].runs),
                           "identical_outputs": not diffs}
    for side in sides:
        per = [r["cpu_s"] / r["units"] * 1e6 for r in side.runs]
        out[side.label] = {
            "rev": side.rev, "tree": side.tree_id[:12], "env": side.env,
            "detector_core": side.runs[0]["core"], "units": side.runs[0]["units"],
            f"cpu_us_per_{UNITS[step].replace('-', '_')}": [round(x, 3) for x in per],
            "median": round(statistics.median(per), 3),
            # Other load only ever adds time: the least disturbed run is the fastest.
            "min": round(min(per), 3),
            "extra": side.runs[-1]["extra"],
        }
    base, new = sides
    ratios = [(n["cpu_s"] / n["units"]) / (b["cpu_s"] / b["units"])
              for b, n in zip(base.runs, new.runs, strict=True)]
    out["ratio_new_to_base_per_round"] = [round(r, 3) for r in ratios]
    out["ratio_new_to_base_median"] = round(statistics.median(ratios), 3)
    key = "dataflow_thread_cpu_s"  # (live: the dataflow thread alone, beside the process)
    if all(key in r.get("extra", {}) for r in base.runs + new.runs):
        thread = [n["extra"][key] / b["extra"][key]
                  for b, n in zip(base.runs, new.runs, strict=True) if b["extra"][key] > 0]
        if thread:
            out["dataflow_thread_ratio_per_round"] = [round(r, 3) for r in thread]
            out["dataflow_thread_ratio_median"] = round(statistics.median(thread), 3)
    if diffs:
        out["differences"] = diffs
    return out


def _pairs(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, value = v.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"not NAME=VALUE: {v!r}")
        out[name] = value
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--step", choices=STEPS, required=True)
    p.add_argument("--base", default=None,
                   help="git revision of the base side (default: the merge-base of HEAD and "
                        f"main); {WORKTREE} for the working tree")
    p.add_argument("--new", default=WORKTREE,
                   help=f"git revision of the new side (default: {WORKTREE}, the working tree)")
    p.add_argument("--base-env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment of the base side's runs (repeat), e.g. "
                        "CTRGUARD_NATIVE_OFF=scan or CTRGUARD_PURE_PYTHON=1")
    p.add_argument("--new-env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--rounds", type=int, default=5, help="timed runs per side (default 5)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed runs per side first (outputs still compared; default 1)")
    p.add_argument("--no-native", action="store_true",
                   help="do not build the compiled parts: both sides run their Python source")
    p.add_argument("--events", type=int, default=300_000,
                   help="replay, live, engine, monitor: impressions to simulate (300,000)")
    p.add_argument("--volume-scale", type=float, default=VOLUME_SCALE,
                   help=f"replay, live, engine: traffic density, impressions per campaign "
                        f"and minute of event time (default {VOLUME_SCALE}; make bench's "
                        f"dense step, the performance issue's load: {DENSE_VOLUME_SCALE})")
    p.add_argument("--campaigns", type=int, default=None,
                   help=f"campaigns (default {CAMPAIGNS}; release, slack, chart: 2,000)")
    p.add_argument("--seed", type=int, default=None,
                   help=f"scenario seed (default {SEED}; release, slack, chart: 7)")
    p.add_argument("--baselines", action="store_true", help="replay: the baselines too")
    p.add_argument("--detector", choices=("none", "default"), default="none",
                   help="engine: a monitor that decides nothing, or the default one")
    p.add_argument("--no-states", action="store_true",
                   help="monitor: compare verdicts only, not the state after every call")
    p.add_argument("--windows", type=int, default=None,
                   help="release (20), slack (100), chart (100): closed windows")
    p.add_argument("--shards", type=int, default=16, help="release: items per write_batch")
    p.add_argument("--alert-rate", type=float, default=0.005,
                   help="release: share of decisions with alerts")
    p.add_argument("--batch-size", type=int, default=0,
                   help="slack: decisions per write_batch (0: all campaigns of a window)")
    p.add_argument("--series", type=int, default=4, help="chart: series per campaign")
    p.add_argument("--keep", type=int, default=36, help="chart: windows kept (charts.windows)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds a run may take")
    p.add_argument("--cache", type=Path, default=CACHE,
                   help=f"exported and built trees, by git tree id (default {CACHE})")
    p.add_argument("--no-synthetic", action="store_true",
                   help="monitor: only the scenario's calls, not the synthetic streams")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="sample every timed run with py-spy into DIR and print where the "
                        "sides' CPU samples differ, per function")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep inputs and outputs here (default: a temporary directory)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        p.error("--rounds must be at least 1, --warmup at least 0")
    try:
        envs = {"base": _pairs(args.base_env), "new": _pairs(args.new_env)}
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    sinks_defaults = args.step in ("release", "slack", "chart")
    if args.campaigns is None:
        args.campaigns = 2000 if sinks_defaults else CAMPAIGNS
    if args.seed is None:
        args.seed = 7 if sinks_defaults else SEED
    if args.windows is None:
        args.windows = 20 if args.step == "release" else 100
    base_rev = args.base or git("merge-base", "HEAD", "main")
    try:
        revs = {"base": (base_rev, *tree_of(base_rev)), "new": (args.new, *tree_of(args.new))}
    except subprocess.CalledProcessError as exc:
        p.error(f"not a git revision: {exc.stderr.strip()}")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-ab-"))
    work.mkdir(parents=True, exist_ok=True)
    stack: list[Callable[[], None]] = []
    try:
        sides = [Side(label, rev, tree, described,
                      side_tree(tree, native=not args.no_native, cache=args.cache), envs[label])
                 for label, (rev, tree, described) in revs.items()]
        for side in sides:
            log(f"{side.label}: {side.described}, tree {side.tree_id[:12]} at {side.path}"
                + (f", env {side.env}" if side.env else ""))
        step = STEP_CLASSES[args.step](args, work, stack)
        step.prepare()
        digests: list[tuple[str, str | None]] = []
        cores: dict[str, str] = {}
        profiles: dict[str, list[Path]] = {"base": [], "new": []}
        if args.profile is not None:
            _py_spy()
            args.profile.mkdir(parents=True, exist_ok=True)
        for r in range(-args.warmup, args.rounds):
            for side in (sides if r % 2 == 0 else sides[::-1]):
                run_id = f"{side.label}-{r + args.warmup}"
                prof = (args.profile / f"{side.label}-{r + 1}.txt"
                        if args.profile is not None and r >= 0 else None)
                res = side.run(args.step, step.spec(run_id), args.timeout, prof)
                if prof is not None:
                    profiles[side.label].append(prof)
                name = (f"{side.label} warm-up {r + args.warmup + 1}" if r < 0
                        else f"{side.label} round {r + 1}")
                digests.append((name, step.collect(run_id, res)))
                cores[side.label] = res["core"]
                if r >= 0:
                    side.runs.append(res)
                log(f"{name}: {res['units']:,} {UNITS[args.step]}s, "
                    f"{res['cpu_s'] / res['units'] * 1e6:.3f} CPU us per {UNITS[args.step]}"
                    f" ({res['core']})")
        if len({c.split('/')[0] == 'compiled' for c in cores.values()}) > 1 \
                and not any("CTRGUARD_PURE_PYTHON" in s.env or "CTRGUARD_NATIVE_OFF" in s.env
                            for s in sides):
            log(f"warning: one side runs compiled code, the other does not: {cores}")
        diffs = differences(digests)
        result = summarize(args.step, sides, diffs)
        print(json.dumps(result), flush=True)
        b, n = result["base"], result["new"]
        log(f"medians: base {b['median']:.3f}, new {n['median']:.3f} CPU us per "
            f"{UNITS[args.step]} (new/base {result['ratio_new_to_base_median']:.3f}, per "
            f"round {result['ratio_new_to_base_per_round']}); outputs "
            + ("identical" if not diffs else "DIFFER: " + "; ".join(diffs[:5])))
        if "dataflow_thread_ratio_median" in result:
            log(f"the dataflow thread alone: new/base {result['dataflow_thread_ratio_median']:.3f}"
                f", per round {result['dataflow_thread_ratio_per_round']}")
        if args.profile is not None:
            from bench.profile import compare

            table = compare(profiles["base"], profiles["new"], root=profile_roots(args.step))
            (args.profile / "compare.txt").write_text(table + "\n")
            log(f"py-spy, {PROFILE_RATE} samples a CPU second, per function "
                f"({args.profile / 'compare.txt'}):\n{table}")
        return EXIT_OK if not diffs else EXIT_DIFFER
    finally:
        for stop in reversed(stack):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001  (stopping is best effort)
                log(f"stopping a service: {exc}")
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

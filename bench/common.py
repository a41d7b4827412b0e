"""Shared pieces of the benchmarks: the scenario, producing it, configurations, child processes.

Nothing here measures; :mod:`bench.run` does.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Scenario defaults (the brief: >= 2 M impressions, 2,000 campaigns, 3 devices).
SEED = 20261123
CAMPAIGNS = 2000
EVENTS = 2_000_000
#: Median ~1 impression a minute per campaign: 2 M impressions span ~6 h of event time
#: (~70 five-minute windows), long enough for the detectors to leave their warm-up.
VOLUME_SCALE = 0.05
#: Traffic density of ``make bench``'s step 9 (dense traffic): about 19,000 impressions a
#: second of event time over 2,000 campaigns, the load the performance issue describes
#: ("tens of thousands of impressions a second"), 200 times the main scenario's.
DENSE_VOLUME_SCALE = 10.0
#: A few incidents and traps, not one per second campaign (the generator's default).
INCIDENT_RATE = 0.005
TRAP_RATE = 0.002
#: The naive flow windows per campaign and device; ctrguard is configured to segment by the
#: same dimension so both do the same windowing work (ctrguard adds the campaign total).
DIMENSIONS = ("device",)
BATCH_SIZE = 5000
SLACK_TOKEN = "xoxb-bench-0000-benchtoken"

REPO = Path(__file__).resolve().parent.parent
_T0 = time.monotonic()


def log(msg: str) -> None:
    """Progress on stderr, with the time since the benchmark started."""
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- scenario


@dataclass
class Scenario:
    seed: int
    campaigns: int
    hours: float
    impressions: list[bytes]
    clicks: list[bytes]
    incidents: int
    traps: int

    @property
    def events(self) -> int:
        return len(self.impressions) + len(self.clicks)


def build_scenario(target_impressions: int, campaigns: int, seed: int,
                   volume_scale: float = VOLUME_SCALE) -> Scenario:
    """Simulate at least ``target_impressions`` impressions (and their clicks), rendered.

    ``volume_scale`` sets the traffic's density (impressions per campaign and minute of
    event time, :func:`ctrguard.replay.generator.simulate`); the span of event time follows from it.
    """
    from ctrguard.replay.generator import render_lines, simulate

    def sim_for(hours: float):
        return simulate(seed=seed, campaigns=campaigns, hours=hours, volume_scale=volume_scale,
                        incident_rate=INCIDENT_RATE, trap_rate=TRAP_RATE)

    # The volume per hour follows the daily cycle: size by a pilot, then top up if short.
    # Denser traffic takes a shorter span (k < 1), sized to the minute.
    k = VOLUME_SCALE / volume_scale
    hours = max(0.25 * k, 2 / 60)
    sim = sim_for(hours)
    for _ in range(6):
        n = sim.impressions.size
        if n >= target_impressions:
            break
        hours = round(hours * target_impressions / max(n, 1) * 1.03 + 0.02 * k,
                      2 if k >= 1 else 4)
        sim = sim_for(hours)
    return Scenario(seed, campaigns, hours, render_lines(sim, "impressions"),
                    render_lines(sim, "clicks"), len(sim.incidents), len(sim.traps))


# --------------------------------------------------------------------------- Kafka


def producer_config(bootstrap: str) -> dict[str, Any]:
    # Explicit, not librdkafka's defaults: big batches for bulk loading.
    return {
        "bootstrap.servers": bootstrap,
        "linger.ms": 20,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.timeout.ms": 300_000,
        "allow.auto.create.topics": False,
        "acks": "all",
        "log.connection.close": False,
    }


def produce_lines(bootstrap: str, topic: str, lines: list[bytes], partitions: int = 1) -> int:
    """Produce every line; round-robin over ``partitions`` so each stays in file order."""
    from confluent_kafka import Producer

    producer = Producer(producer_config(bootstrap))
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    produce = producer.produce
    for i, value in enumerate(lines):
        part = i % partitions
        while True:
            try:
                produce(topic, value, partition=part, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10000 == 0:
            producer.poll(0)
    left = producer.flush(300)
    if left or failures:
        raise RuntimeError(f"{topic}: {left} undelivered, {len(failures)} failed: {failures[:3]}")
    return len(lines)


def new_topics(bootstrap: str, label: str, partitions: int) -> dict[str, str]:
    """Fresh input topics with ``partitions`` partitions, plus fresh output topics."""
    from devtools.services import ensure_topics

    prefix = f"bench-{label}-{uuid.uuid4().hex[:6]}"
    names = {k: f"{prefix}.{k}" for k in ("impressions", "clicks")}
    ensure_topics(bootstrap, list(names.values()), partitions=partitions)
    return {**names, **output_topics(bootstrap, label)}


def output_topics(bootstrap: str, label: str) -> dict[str, str]:
    """Fresh single-partition output topics, so runs never read each other's output."""
    from devtools.services import ensure_topics

    prefix = f"bench-{label}-{uuid.uuid4().hex[:6]}"
    names = {k: f"{prefix}.{k}" for k in ("figures", "alerts", "deadletter")}
    ensure_topics(bootstrap, list(names.values()))
    return names


# --------------------------------------------------------------------------- config


def write_config(path: Path, *, bootstrap: str, topics: dict[str, str], redis_url: str,
                 key_prefix: str, tail: bool, slack_base_url: str | None,
                 batch_size: int = BATCH_SIZE) -> Path:
    """A ctrguard YAML configuration for one benchmark run (own topics and Redis prefix)."""
    dims = ", ".join(DIMENSIONS)
    text = f"""\
kafka:
  brokers: ["{bootstrap}"]
  topics:
    impressions: {topics['impressions']}
    clicks: {topics['clicks']}
    figures: {topics['figures']}
    alerts: {topics['alerts']}
    deadletter: {topics['deadletter']}
  tail: {'true' if tail else 'false'}
  starting_offset: beginning
  batch_size: {batch_size}
redis:
  url: "{redis_url}"
  key_prefix: {key_prefix}
windows:
  length: 5m
  allowed_lateness: 2m
segments:
  dimensions: [{dims}]
"""
    if slack_base_url:
        text += f'slack:\n  base_url: "{slack_base_url}"\n  mode: web\n'
    path.write_text(text)
    return path


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["SLACK_BOT_TOKEN"] = SLACK_TOKEN
    # A bench run must not pick up a developer's services from the environment.
    for name in ("CTRGUARD_KAFKA_BROKERS", "CTRGUARD_REDIS_URL", "SLACK_WEBHOOK_URL"):
        env.pop(name, None)
    env.update(extra)
    return env


# --------------------------------------------------------------------------- children


#: Folders installed under the ``ctrguard`` namespace (pyproject.toml's ``package-dir``).
NAMESPACED = {"flows": "flows", "detectors": "detectors", "sinks": "sinks", "replay": "replay",
              "defaults": "config"}


def namespaced(tree: Path) -> bool:
    """Whether ``tree`` has the ``ctrguard.*`` layout (revisions before it had top-level
    ``flows``, ``detectors``, ...)."""
    return (tree / "config" / "__init__.py").exists()


def native_module(tree: Path) -> str:
    """The module of ``python -m ... build|status`` in ``tree``'s layout
    (``ctrguard/native.py``; ``detectors/native.py`` before the namespace)."""
    return "ctrguard.native" if (tree / "ctrguard" / "native.py").exists() else "detectors"


def link_namespace(tree: Path) -> None:
    """Make a source tree importable as it is installed, from its own folder (its
    ``PYTHONPATH``), without installing it: ``ctrguard/flows`` -> ``../flows``, ...

    The repository itself needs no links: an (editable) install maps the folders."""
    if not namespaced(tree):
        return
    for name, folder in NAMESPACED.items():
        link = tree / "ctrguard" / name
        if not link.exists():
            link.symlink_to(Path("..") / folder, target_is_directory=True)


def export_tree(rev: str, dest: Path, *, build: bool = True) -> None:
    """The tree of git revision (or tree id) ``rev`` at ``dest``, importable from its own
    folder (:func:`link_namespace`) and its compiled parts built (``python -m
    ctrguard.detectors build``) unless ``build`` is false, for a side of an A/B run."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    link_namespace(dest)
    if build:
        subprocess.run([sys.executable, "-W", "ignore::RuntimeWarning", "-m",
                        native_module(dest), "build", "--quiet"], cwd=dest, check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(dest)})


def write_gzip(path: Path, lines: list[bytes]) -> None:
    """Lines as a gzip JSONL file (replay's input), the same bytes for the same lines."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                 compresslevel=3) as gz:
        for i in range(0, len(lines), 100_000):
            gz.write(b"\n".join(lines[i:i + 100_000]) + b"\n")


def start_child(args: list[str], log_path: Path, *, env: dict[str, str] | None = None,
                wrap: list[str] | None = None) -> subprocess.Popen:
    """Start ``python -m bench.child ARGS`` in its own session, stderr to ``log_path``."""
    cmd = [*(wrap or []), sys.executable, "-m", "bench.child", *args]
    with open(log_path, "w") as err:
        return subprocess.Popen(cmd, cwd=REPO, env=env or child_env(), stdout=subprocess.PIPE,
                                stderr=err, text=True, start_new_session=True)


def finish_child(proc: subprocess.Popen, log_path: Path, *, timeout: float,
                 label: str) -> dict[str, Any]:
    """Wait for a child (with a progress line every 15 s); return the JSON it printed last."""
    started = time.monotonic()
    while True:
        try:
            proc.wait(15)
            break
        except subprocess.TimeoutExpired:
            waited = time.monotonic() - started
            if waited > timeout:
                stop_process(proc)
                raise RuntimeError(f"{label}: timed out after {timeout:.0f}s; "
                                   f"log {log_path}") from None
            log(f"{label}: running for {waited:.0f}s")
    out = proc.stdout.read() if proc.stdout is not None else ""
    if proc.stdout is not None:
        proc.stdout.close()
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{label}: exited {proc.returncode}; log {log_path}:\n{tail}")
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{label}: printed no result; log {log_path}")
    return json.loads(lines[-1])


def run_child(args: list[str], log_path: Path, *, timeout: float, label: str,
              wrap: list[str] | None = None,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = start_child(args, log_path, wrap=wrap, env=env)
    try:
        return finish_child(proc, log_path, timeout=timeout, label=label)
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a child started with ``start_new_session=True``: SIGINT, then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (``/proc/PID/stat``), 0 if unknown."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields 14 and 15 of stat(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_seconds() -> dict[str, float]:
    """The machine's CPU time so far, all cores (``/proc/stat``): ``busy`` (user, nice,
    system, irq, softirq) and ``steal`` (time the hypervisor gave this VM's CPUs to
    others); empty where ``/proc/stat`` cannot be read."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return {}
    if len(fields) < 9 or fields[0] != "cpu":
        return {}
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return {"busy": (user + nice + system + irq + softirq) / tick, "steal": steal / tick}


class CpuMeter:
    """CPU seconds the broker, Redis and this process spend between start() and stop(),
    and the machine's: all its processes (``machine_busy_cpu_s``, the flow's included) and
    the hypervisor's steal (``steal_cpu_s``): on a shared VM, what else took the cores."""

    def __init__(self, **pids: int | None):
        self._pids = {**pids, "bench": os.getpid()}
        self._start: dict[str, float] = {}
        self._machine: dict[str, float] = {}

    def start(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        self._machine = machine_seconds()

    def stop(self) -> dict[str, float]:
        out = {f"{name}_cpu_s": round(cpu_seconds(pid) - self._start[name], 2)
               for name, pid in self._pids.items()}
        now = machine_seconds()
        if now and self._machine:
            out["machine_busy_cpu_s"] = round(now["busy"] - self._machine["busy"], 2)
            out["steal_cpu_s"] = round(now["steal"] - self._machine["steal"], 2)
        return out


def peak_rss_mb() -> float:
    """Peak RSS of this process in MiB.

    ``VmHWM``, not ``ru_maxrss``: Linux carries ru_maxrss over ``exec``, so a child would
    report its parent's peak when that is larger.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

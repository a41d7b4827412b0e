"""``deploy/``: what can be checked without a Docker engine.

* ``compose.yaml`` parses; every ``ctrguard`` command it runs (through the image's
  entrypoint, ``docker/entrypoint.sh``) parses with the real CLI; every file it mounts and
  every setting file it points at exists and validates.
* ``prometheus-rules.yaml`` and ``prometheus.yml`` pass ``promtool check``; every query of
  ``grafana-dashboard.json`` is valid PromQL (``promtool`` again, as recording rules).
  (``tests/test_metrics.py`` checks that a running flow exports every metric they read.)
* The two ctrguard services' commands run here, through the same entrypoint, against an
  embedded broker with the compose file's topics and a real ``redis-server``: a two-process
  Bytewax cluster with a recovery directory each and a metrics port each, that decides the
  same figures as a replay of the same events and, restarted, resumes from its recovery
  directories instead of reading everything again.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from ctrguard.cli import build_parser
from ctrguard.config import load_config
from ctrguard.replay.run import run_replay
from devtools.services import consume_to_eof, ensure_topics, free_port, produce_all, start_broker
from tests.metrics_support import (
    DASHBOARD,
    DEPLOY,
    RULES,
    dashboard_exprs,
    grafana_to_promql,
    http_get,
    scrape,
    wait_for,
)
from tests.test_reliability_crash import HOURS, crash_stream
from tests.test_reliability_support import REPO, T0, W, ev

COMPOSE = DEPLOY / "compose.yaml"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
CTRGUARD_SERVICES = ("ctrguard-0", "ctrguard-1")


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def entrypoint_prefix() -> list[str]:
    """``ctrguard`` arguments the image's entrypoint puts before the service's command."""
    line = next(line for line in ENTRYPOINT.read_text().splitlines()
                if line.startswith("exec ctrguard "))
    words = shlex.split(line)[2:]
    assert words[-1] == "$@", line
    return words[:-1]


def service_argv(service: dict, env: dict[str, str]) -> list[str]:
    """The ``ctrguard`` argv a service runs: entrypoint prefix, variables filled, command."""
    prefix = [re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], w) for w in entrypoint_prefix()]
    return [*prefix, *service["command"]]


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make test` installs it (Debian's prometheus package)"
    return path


# --------------------------------------------------------------------------- static


def compose_env(environment: dict, outer: dict[str, str]) -> dict[str, str]:
    """A service's environment as ``docker compose`` hands it over: ``${VAR:-default}`` and
    ``${VAR}`` taken from ``outer`` (the shell of ``docker compose up``).

    >>> compose_env({"A": "${T:-}", "B": "${U:-x}", "C": 4}, {"U": "y"})
    {'A': '', 'B': 'y', 'C': '4'}
    """
    def sub(m: re.Match) -> str:
        got = outer.get(m.group(1))
        return got if got else (m.group(2) or "")

    return {k: re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", sub, str(v))
            for k, v in environment.items()}


def test_compose_parses_and_every_ctrguard_command_exists_in_the_cli():
    doc = compose()
    assert {"kafka", "topics", "redis", *CTRGUARD_SERVICES} <= set(doc["services"])
    parser = build_parser()
    ports = set()
    for name in CTRGUARD_SERVICES:
        svc = doc["services"][name]
        env = {k: str(v) for k, v in svc["environment"].items()}
        args = parser.parse_args(service_argv(svc, env))  # SystemExit(2) on a bad flag
        assert args.command == "run" and args.process_id == CTRGUARD_SERVICES.index(name)
        assert args.addresses.split(";") == [f"{s}:2101" for s in CTRGUARD_SERVICES]
        assert args.recovery_dir == Path(env["RECOVERY_DIR"])
        # The metrics port published is the one the process serves.
        (published,) = svc["ports"]
        host, container = published.split(":")
        assert int(container) == int(args.metrics_port)
        ports.add(host)
        # A recovery volume of its own, mounted where RECOVERY_DIR is.
        volumes = dict(v.split(":", 1) for v in svc["volumes"])
        assert volumes[volumes_key(volumes, "recovery-")].startswith("/var/lib/ctrguard")
        assert env["RECOVERY_DIR"].startswith("/var/lib/ctrguard/")
    assert len(ports) == 2
    assert {"recovery-0", "recovery-1"} <= set(doc["volumes"])


def volumes_key(volumes: dict[str, str], prefix: str) -> str:
    (key,) = [k for k in volumes if k.startswith(prefix)]
    return key


def test_compose_files_and_settings_exist_and_validate():
    doc = compose()
    for svc in doc["services"].values():
        for volume in svc.get("volumes", ()):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), volume
    svc = doc["services"]["ctrguard-0"]
    config = svc["environment"]["CTRGUARD_CONFIG"]
    (mounted,) = [v.split(":")[0] for v in svc["volumes"] if v.split(":")[1] == config]
    settings = load_config(DEPLOY / mounted, env={})
    assert settings.kafka.create_topics is False and settings.metrics.port == 9464
    # Every variable set for ctrguard is read by ctrguard or its entrypoint.
    readers = (REPO / "ctrguard" / "config.py").read_text() + ENTRYPOINT.read_text() \
        + (REPO / "Dockerfile").read_text()
    for var in svc["environment"]:
        assert var in readers, f"{var} is set in compose.yaml but read nowhere"
    # The topics the compose file creates are the ones the settings read.
    script = doc["services"]["topics"]["command"][0]
    created = set(re.search(r"for t in ([^;]+);", script).group(1).split())
    topics = settings.kafka.topics
    assert created == {topics.impressions, topics.clicks, topics.figures, topics.alerts,
                       topics.deadletter}


def test_the_production_commands_of_the_readme_exist_in_the_cli():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Running in production"):]
    section = section[:section.index("\n## ", 5)]
    commands = [shlex.split(line.split("#")[0]) for block in re.findall(r"```sh\n(.*?)```",
                                                                         section, flags=re.S)
                for line in block.splitlines() if line.startswith("ctrguard ")]
    assert len(commands) >= 3
    parser = build_parser()
    parsed = [parser.parse_args(argv[1:]) for argv in commands]  # SystemExit on a bad flag
    two_hosts = [a for a in parsed if a.process_id is not None]
    assert [a.process_id for a in two_hosts] == [0, 1]
    assert two_hosts[0].addresses == two_hosts[1].addresses


def test_alert_rules_and_prometheus_config_pass_promtool():
    for argv in (["check", "rules", str(RULES)],
                 ["check", "config", str(DEPLOY / "prometheus.yml")]):
        proc = subprocess.run([promtool(), *argv], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "SUCCESS" in proc.stdout + proc.stderr


def test_dashboard_queries_are_valid_promql(tmp_path):
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(e)}
        for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    proc = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A broken query fails the same check (the check can fail).
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "x:y", "expr": "sum(rate(ctrguard_events_total[5m]"}]}]}))
    assert subprocess.run([promtool(), "check", "rules", str(path)],
                          capture_output=True).returncode != 0


# --------------------------------------------------------------------------- running


def _topics_of_compose() -> tuple[list[str], int]:
    script = compose()["services"]["topics"]["command"][0]
    names = re.search(r"for t in ([^;]+);", script).group(1).split()
    partitions = int(re.search(r"--partitions (\d+)", script).group(1))
    return names, partitions


def _start(service: dict, *, env: dict[str, str], addresses: str, metrics_port: int,
           log: Path) -> subprocess.Popen:
    """Run the service's command through docker/entrypoint.sh, the hosts replaced by local
    addresses (a Docker network is not available here)."""
    command = [addresses if a == "ctrguard-0:2101;ctrguard-1:2101" else a
               for a in service["command"]]
    i = command.index("--metrics-port")
    command[i + 1] = str(metrics_port)
    with open(log, "ab") as out:
        return subprocess.Popen(["sh", str(ENTRYPOINT), *command], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.mark.integration
@pytest.mark.slow
def test_the_two_process_cluster_of_compose_runs_here(redis_url, tmp_path):
    doc = compose()
    names, partitions = _topics_of_compose()
    imps, clicks = crash_stream()
    imps = [v for v in imps if not v.startswith(b'{"event_id":"late')]
    tick = T0 + HOURS * 3600 + 3600
    # Close every window of the stream: five, so that a batch holds the frontier quorum (3).
    imps += [ev(f"tick{i}", tick, campaign="tick") for i in range(5)]
    n_events = len(imps) + len(clicks)

    settings = load_config(DEPLOY / "ctrguard.yaml", env={})
    # The same figures as a replay of the same events, for every window the live cluster
    # can close (the replay closes the rest too, at the end of its files).
    imp_path, clk_path = tmp_path / "imp.jsonl", tmp_path / "clk.jsonl"
    imp_path.write_bytes(b"\n".join(imps) + b"\n")
    clk_path.write_bytes(b"\n".join(clicks) + b"\n")
    result = run_replay(imp_path, clk_path, settings, tmp_path / "replay")
    replayed = {}
    for line in result.figures_path.read_bytes().splitlines():
        f = orjson.loads(line)
        if f["window_start_s"] + W <= tick - settings.windows.allowed_lateness:
            replayed[(f["campaign_id"], f["segment"], f["window_start_s"])] = (
                f["impressions"], f["clicks"], f["status"])
    assert len(replayed) > 300

    with start_broker(log_dir=tmp_path) as broker:
        ensure_topics(broker.bootstrap, names, partitions=partitions)
        topics = settings.kafka.topics
        produce_all(broker.bootstrap, topics.impressions, imps)
        produce_all(broker.bootstrap, topics.clicks, clicks)

        addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in CTRGUARD_SERVICES)
        ports = [free_port() for _ in CTRGUARD_SERVICES]

        def start_cluster(round_: int) -> list[subprocess.Popen]:
            procs = []
            for i, name in enumerate(CTRGUARD_SERVICES):
                svc = doc["services"][name]
                env = {**os.environ, **compose_env(svc["environment"], {}),
                       "CTRGUARD_CONFIG": str(DEPLOY / "ctrguard.yaml"),
                       "CTRGUARD_KAFKA_BROKERS": broker.bootstrap,
                       "CTRGUARD_REDIS_URL": redis_url,
                       "RECOVERY_DIR": str(tmp_path / f"recovery-{i}" / "recovery"),
                       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                       "PYTHONUNBUFFERED": "1"}
                env.pop("CTRGUARD_METRICS_PORT", None)
                procs.append(_start(svc, env=env, addresses=addresses, metrics_port=ports[i],
                                    log=tmp_path / f"{name}-{round_}.log"))
            return procs

        def logs(round_: int) -> str:
            return "".join((tmp_path / f"{n}-{round_}.log").read_text(errors="replace")
                           for n in CTRGUARD_SERVICES)

        def consumed() -> list[float]:
            return [scrape(p).total("ctrguard_events_total", outcome="consumed") for p in ports]

        procs = start_cluster(0)
        try:
            alive = lambda: all(p.poll() is None for p in procs)  # noqa: E731
            wait_for(lambda: sum(consumed()) == n_events, 180, "the cluster to read every event",
                     interval=0.5, alive=alive)
            per_process = consumed()
            assert all(n > 0 for n in per_process), per_process  # both processes read
            for port in ports:
                status, body = http_get(port, "/readyz")
                assert status == 200, body
            # Offsets are committed for the group of deploy/ctrguard.yaml at the next
            # snapshot (10 s by default): lag tools see both processes' partitions.
            from tests.test_kafka_citizenship import _committed

            ends = {}
            for topic in (topics.impressions, topics.clicks):
                for m in consume_to_eof(broker.bootstrap, topic):
                    ends[(m.topic(), m.partition())] = m.offset() + 1
            from confluent_kafka import TopicPartition

            tps = [TopicPartition(t, p) for t, p in ends]
            wait_for(lambda: _committed(broker, settings.kafka.group_id, tps) == ends, 60,
                     "the group's committed offsets to reach the end", interval=1.0, alive=alive)

            # Every event read is not every window closed: the last windows close when the
            # partitions without the closing ticks claim to be idle (event_time.idle_timeout
            # of silence, then the shards hear of it). Stopping before that would leave their
            # figures to the restarted cluster.
            def live_figures() -> dict:
                out = {}
                for m in consume_to_eof(broker.bootstrap, topics.figures):
                    f = orjson.loads(m.value())
                    out[(f["campaign_id"], f["segment"], f["window_start_s"])] = (
                        f["impressions"], f["clicks"], f["status"])
                return out

            wait_for(lambda: replayed.keys() <= live_figures().keys(), 90,
                     "every closable window's figures", interval=1.0, alive=alive)
        finally:
            _stop(procs)
        text = logs(0)
        for line in text.splitlines():  # --log-format json in compose.yaml
            if line.startswith("{"):  # (the entrypoint's own lines are text)
                assert set(json.loads(line)) == {"time", "level", "logger", "message", "fields"}
        assert text.count("initialising 4 recovery partitions") == 2, text[-3000:]
        for i in range(2):
            assert len(list((tmp_path / f"recovery-{i}" / "recovery").glob("part-*.sqlite3"))) \
                == int(doc["services"]["ctrguard-0"]["environment"]["RECOVERY_PARTITIONS"])

        figures = live_figures()
        (tmp_path / "live_alerts.jsonl").write_bytes(b"\n".join(
            m.value() for m in consume_to_eof(broker.bootstrap, topics.alerts)))

        # Restarted, the cluster resumes from its recovery directories: it reads what came
        # after the last snapshot, not the whole topics again.
        procs = start_cluster(1)
        try:
            alive = lambda: all(p.poll() is None for p in procs)  # noqa: E731

            seen_lags: list = []

            def caught_up() -> bool:
                lags = [(k, v) for p in ports for (n, k), v in scrape(p).samples.items()
                        if n == "ctrguard_consumer_lag_messages"]
                seen_lags[:] = lags
                return len(lags) == 2 * partitions and sum(v for _, v in lags) == 0

            try:
                wait_for(caught_up, 60, "the restarted cluster to catch up", interval=0.5,
                         alive=alive)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; consumer lags: {seen_lags}") from None
            assert sum(consumed()) < n_events, "restarted from the beginning, not from recovery"
        finally:
            _stop(procs)

    assert figures == replayed

"""``ctrguard run``: validate the configuration, check the services, run the live flow."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ctrguard.config import Settings, load_config
from ctrguard.errors import ConfigError, CtrGuardError, KafkaUnavailable, RedisUnavailable

log = logging.getLogger("ctrguard.run")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the live dataflow (Kafka in; Redis flags, figures, alerts, Slack out)",
        description="Run the live ctrguard dataflow. The configuration is validated first "
        "(exit code 2); Kafka and Redis must be reachable (exit code 3 otherwise). Ctrl-C "
        "stops at a batch boundary and snapshots (exit 130), SIGTERM likewise (exit 0); a "
        "second signal exits at once.",
    )
    p.add_argument("--config", type=Path, default=None,
                   help="YAML configuration (default: the embedded config/default.yaml)")
    p.add_argument("--workers", type=int, default=1, help="worker threads in this process")
    p.add_argument("--process-id", type=int, default=None,
                   help="index of this process in a multi-process cluster (with --addresses)")
    p.add_argument("--addresses", default=None,
                   help="semicolon-separated host:port of every process in the cluster")
    p.add_argument("--recovery-dir", type=Path, default=None,
                   help="Bytewax recovery directory (initialise once with "
                   "'python -m bytewax.recovery DIR N')")
    p.add_argument("--snapshot-interval", type=float, default=10.0,
                   help="seconds between state snapshots (epoch length)")
    p.add_argument("--backup-interval", type=float, default=30.0,
                   help="seconds snapshots are kept before being garbage-collected")
    p.add_argument("--drain", action="store_true",
                   help="stop at the end of the input topics instead of tailing them")
    p.add_argument("--no-slack", action="store_true", help="do not send escalations to Slack")
    p.add_argument("--metrics-port", type=_port, default=None, metavar="PORT",
                   help="serve /metrics, /healthz and /readyz on PORT ('off': not at all; "
                   "default: metrics.port, plus --process-id in a cluster)")
    p.set_defaults(func=cmd_run)


def check_kafka_client_settings(settings: Settings) -> None:
    """Raise :class:`ConfigError` (exit 2, ``file:line: field: message``) for every
    ``kafka.client`` setting librdkafka refuses: an unknown key, a bad value, a combination
    it rejects. Checked before any service is touched."""
    from ctrguard.config import issue_at
    from ctrguard.kafka_admin import client_setting_issues

    found = client_setting_issues(settings.kafka)
    if found:
        raise ConfigError([issue_at(settings, ("kafka", "client", key) if key else
                                    ("kafka", "client"), f"librdkafka: {message}")
                           for key, message in found])


def preflight(settings: Settings) -> list[tuple[str, int]]:
    """Fail fast (exit 3) when Redis or Kafka cannot be reached or a topic is missing.

    Input topics are never created: a missing one is an error that names it (a misspelt
    name must not start an empty topic and a flow that waits for it forever). Missing
    output topics are created only with ``kafka.create_topics: true`` (development).
    librdkafka settings are checked first (exit 2), then Redis, so an unreachable Redis
    leaves no topics behind; an unreachable Kafka is one line with the attempts made.
    """
    from ctrguard.flows.source import list_partitions
    from ctrguard.kafka_admin import check_reachable, ensure_topics, missing_topics
    from ctrguard.sinks.redis_client import make_redis

    check_kafka_client_settings(settings)
    client = make_redis(settings.redis)
    try:
        client.ping()
    except Exception as exc:
        raise RedisUnavailable(f"cannot reach Redis: {type(exc).__name__}") from None
    finally:
        client.close()
    log.info("connecting to Kafka at %s (up to %gs)", ",".join(settings.kafka.brokers),
             settings.kafka.connect_timeout_s)
    check_reachable(settings.kafka, timeout=settings.kafka.connect_timeout_s)
    topics = settings.kafka.topics
    timeout = settings.kafka.connect_timeout_s
    inputs = {"impressions": topics.impressions, "clicks": topics.clicks}
    outputs = {"figures": topics.figures, "alerts": topics.alerts,
               "deadletter": topics.deadletter}
    missing = missing_topics(settings.kafka, [*inputs.values(), *outputs.values()],
                             timeout=timeout)
    if any(t in missing for t in inputs.values()):
        raise KafkaUnavailable(
            f"input topic(s) missing: {_named(inputs, missing)}; ctrguard run never creates "
            "input topics (check the name, or create the topic)", retryable=False)
    if missing and settings.kafka.create_topics:
        ensure_topics(settings.kafka, list(outputs.values()), timeout=timeout)
    elif missing:
        raise KafkaUnavailable(
            f"output topic(s) missing: {_named(outputs, missing)}; create them, or set "
            "kafka.create_topics: true (development)", retryable=False)
    return list_partitions(settings.kafka, timeout=timeout)


def _named(topics: dict[str, str], missing: list[str]) -> str:
    return ", ".join(f"{name!r} (kafka.topics.{key})" for key, name in topics.items()
                     if name in missing)


def metrics_port(settings: Settings, args: argparse.Namespace) -> int | None:
    """The endpoint's port: ``--metrics-port``, else ``metrics.port`` plus the process id,
    so that the processes of a cluster on one host do not collide."""
    if args.metrics_port is not None:
        return None if args.metrics_port == "off" else int(args.metrics_port)
    if settings.metrics.port is None:
        return None
    return settings.metrics.port + (args.process_id or 0)


def _port(text: str) -> str:
    if text.strip().lower() == "off":
        return "off"
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {text!r} (a number, or 'off')") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return str(port)


def ctrguard_cause(exc: BaseException) -> CtrGuardError | None:
    """The first :class:`CtrGuardError` in ``exc``'s chain of causes, if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, CtrGuardError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def cmd_run(args: argparse.Namespace) -> int:
    from ctrguard.health import Monitoring

    settings = load_config(args.config)
    if args.drain:
        settings = settings.model_copy(
            update={"kafka": settings.kafka.model_copy(update={"tail": False})})
    # The endpoint answers from the start (/readyz: not ready); the probe, which talks to
    # Redis and Kafka, starts once the checks before any service is touched have passed.
    monitoring = Monitoring(settings, port=metrics_port(settings, args)).start(probe=False)
    try:
        return _run(settings, args, monitoring)
    finally:
        monitoring.stop()


def _run(settings: Settings, args: argparse.Namespace, monitoring: Any) -> int:
    partitions = preflight(settings)
    if not partitions:
        raise KafkaUnavailable("no input partitions", retryable=False)
    monitoring.start_probe()
    from ctrguard.flows import ctr_flow

    recovery = args.recovery_dir is not None
    # Without a recovery directory Bytewax drops every snapshot: don't pickle the state.
    flow = ctr_flow.get_flow(settings, slack=not args.no_slack, partitions=partitions,
                             snapshots=recovery)
    addresses = args.addresses.split(";") if args.addresses else None
    from ctrguard import events, native

    log.info("running ctrguard on %d input partitions (%s), %d worker(s)%s; detector core: %s;"
             " event scanner: %s", len(partitions), settings.source, args.workers,
             f", recovery in {args.recovery_dir}" if recovery else "", native.status(),
             "on" if events._SCANNER is not None else "off")
    from ctrguard import stopping

    # Ctrl-C and SIGTERM stop the flow at a batch boundary (and snapshot), not mid-batch.
    with stopping.install() as stop:
        try:
            ctr_flow.run(flow, workers=args.workers, process_id=args.process_id,
                         addresses=addresses, snapshot_interval_s=args.snapshot_interval,
                         recovery_dir=args.recovery_dir,
                         backup_interval_s=args.backup_interval)
        except Exception as exc:
            # Bytewax wraps what a step raised (BytewaxRuntimeError, the original as a
            # cause): one of ours is reported as such, with its exit code (cli.main).
            cause = ctrguard_cause(exc)
            if cause is None:
                raise
            raise cause from None
    if stop.requested is not None:
        log.info("stopped on %s%s", stop.requested,
                 "; state snapshotted" if recovery is not None else "")
    return stop.exit_code

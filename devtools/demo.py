"""``ctrguard demo``: the whole product on this machine, in a few minutes, then it cleans up.

1. starts an embedded Kafka-protocol broker (tansu) and a ``redis-server`` on free loopback
   ports, unless ``CTRGUARD_KAFKA_BROKERS`` / ``CTRGUARD_REDIS_URL`` point at real ones;
2. generates a labelled synthetic stream with injected incidents (a click-tracking outage,
   bot clicks on one segment, duplicated impression logging) and produces it to the input
   topics;
3. runs the live dataflow until the topics are drained;
4. shows every escalation as it appears in Slack (or posts it when ``SLACK_BOT_TOKEN`` /
   ``SLACK_WEBHOOK_URL`` is set), the quarantine flags in Redis, and a table of incidents
   injected vs detected;
5. releases the windows of the incident holding the most with one command,
   ``ctrguard quarantine release --incident ID``.
6. writes the HTML report of the run (``ctrguard report``) and prints its path.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

DEMO_INCIDENTS = ("click_outage", "bot_clicks", "duplicate_impressions")
DEMO_TRAPS = ("volume_surge", "redelivery", "internal_traffic", "crawler_clicks", "late_events")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on a synthetic stream with injected incidents",
        description="Start an embedded broker and Redis (unless configured), produce a "
        "synthetic stream with injected incidents, run the flow until drained, show the "
        "Slack escalations, the quarantine flags and incidents injected vs detected.",
    )
    p.add_argument("--config", type=Path, default=None, help="YAML configuration")
    p.add_argument("--campaigns", type=int, default=8, help="campaigns to simulate")
    p.add_argument("--hours", type=float, default=30.0, help="hours of event time to simulate")
    p.add_argument("--seed", type=int, default=3, help="random seed of the scenario")
    p.add_argument("--volume-scale", type=float, default=2.0,
                   help="multiplier of impression volumes")
    p.add_argument("--report-dir", type=Path, default=Path(".demo"),
                   help="where the run's files and report.html go (default .demo)")
    p.set_defaults(func=cmd_demo)


def say(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def _scenario(args: argparse.Namespace):
    from ctrguard.replay.generator import simulate

    return simulate(seed=args.seed, campaigns=args.campaigns, hours=args.hours,
                    volume_scale=args.volume_scale, incident_kinds=DEMO_INCIDENTS,
                    trap_kinds=DEMO_TRAPS)


def match_incidents(labels, alerts: list[dict[str, Any]], window_s: int,
                    tolerance_windows: int = 3) -> list[tuple[Any, list[dict]]]:
    """Pair each labelled incident with the alerts of its campaign that overlap it."""
    rows = []
    for lab in labels:
        hits = [a for a in alerts
                if a["campaign_id"] == lab.campaign_id
                and lab.start_s - window_s <= a["window_start_s"]
                < lab.end_s + tolerance_windows * window_s]
        rows.append((lab, hits))
    return rows


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def _serve_metrics(stack: contextlib.ExitStack, settings: Any) -> None:
    """The flow's /metrics, /healthz and /readyz on a free loopback port, as ``ctrguard
    run`` serves them, for as long as the demo runs."""
    from ctrguard.health import Monitoring
    from devtools import services

    monitoring = stack.enter_context(
        Monitoring(settings, port=services.free_port(), host="127.0.0.1"))
    say(f"metrics while the demo runs: {monitoring.url}/metrics "
        f"(health: {monitoring.url}/healthz, {monitoring.url}/readyz)")


def cmd_demo(args: argparse.Namespace) -> int:
    from bytewax.testing import run_main

    from ctrguard.config import load_config
    from ctrguard.flows.ctr_flow import get_flow
    from ctrguard.flows.source import list_partitions
    from ctrguard.replay.generator import render_lines
    from ctrguard.sinks.quarantine import QuarantineStore
    from ctrguard.sinks.redis_client import make_redis
    from devtools import services

    started = time.monotonic()
    # The demo shows what users see; routine operational logging would drown it.
    logging.getLogger().setLevel(logging.WARNING)
    with contextlib.ExitStack() as stack:
        env = dict(os.environ)
        if not env.get("CTRGUARD_KAFKA_BROKERS"):
            say("starting an embedded Kafka-protocol broker (tansu)")
            broker = stack.enter_context(services.start_broker())
            env["CTRGUARD_KAFKA_BROKERS"] = broker.bootstrap
            print(f"broker at {broker.bootstrap}")
        if not env.get("CTRGUARD_REDIS_URL"):
            say("starting redis-server")
            redis_server = stack.enter_context(services.start_redis())
            env["CTRGUARD_REDIS_URL"] = redis_server.url
            print(f"redis at 127.0.0.1:{redis_server.port}")
        os.environ.update({k: env[k] for k in ("CTRGUARD_KAFKA_BROKERS", "CTRGUARD_REDIS_URL")})
        settings = load_config(args.config)
        # The demo drains the topics and stops instead of tailing them.
        settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(
            update={"tail": False, "starting_offset": "beginning"})})
        _serve_metrics(stack, settings)
        topics = settings.kafka.topics
        bootstrap = ",".join(settings.kafka.brokers)
        client_conf = {k: v for k, v in settings.kafka.client_config().items()
                       if k != "bootstrap.servers"}
        services.ensure_topics(bootstrap, [topics.impressions, topics.clicks, topics.figures,
                                           topics.alerts, topics.deadletter],
                               client_config=client_conf)

        say(f"simulating {args.campaigns} campaigns over {args.hours:g} h (seed {args.seed})")
        sim = _scenario(args)
        incidents = list(sim.incidents)
        print(f"{sim.impressions.size:,} impressions, {sim.clicks.size:,} clicks, "
              f"{len(incidents)} incidents injected, {len(sim.traps)} traps that must not alert")
        rendered: dict[str, list[bytes]] = {}
        for name, topic in (("impressions", topics.impressions), ("clicks", topics.clicks)):
            lines = rendered[name] = render_lines(sim, name)
            t0 = time.monotonic()
            n = services.produce_all(bootstrap, topic, lines, client_config=client_conf,
                                     timeout=300)
            print(f"produced {n:,} {name} to {topic} in {time.monotonic() - t0:.1f}s")

        say("running the dataflow until the stream is drained (Slack messages appear below)")
        partitions = list_partitions(settings.kafka)
        t0 = time.monotonic()
        from ctrguard import stopping

        with stopping.install() as stop:  # Ctrl-C: stop at a batch boundary, no panic
            run_main(get_flow(settings, partitions=partitions))
        if stop.requested is not None:
            print("interrupted: the demo stops here (its services are stopped too)")
            return stop.exit_code
        flow_s = time.monotonic() - t0
        total = sim.impressions.size + sim.clicks.size
        print(f"\nflow drained {total:,} events in {flow_s:.1f}s ({total / flow_s:,.0f} events/s)")

        alerts = [msgspec.json.decode(m.value()) for m in services.consume_to_eof(
            bootstrap, topics.alerts, client_config=client_conf)]
        figures = services.consume_to_eof(bootstrap, topics.figures, client_config=client_conf)
        dead = services.consume_to_eof(bootstrap, topics.deadletter, client_config=client_conf)

        say("quarantine flags in Redis (what a reporting pipeline sees)")
        client = make_redis(settings.redis)
        store = QuarantineStore(client, settings.quarantine, settings.redis.key_prefix,
                                window_length_s=settings.windows.length)
        flags = store.list_flags(limit=10_000)
        # One row per quarantined series: its windows run from first to last.
        series: dict[tuple[str, str], list] = {}
        for f in flags:
            series.setdefault((f.campaign_id, f.segment), []).append(f)
        rows = []
        for (cid, seg), fs in sorted(series.items()):
            starts = sorted(f.window_start_s for f in fs)
            kinds = sorted({k for f in fs for k in (f.kind or "").split(",") if k})
            rows.append([cid, seg, time.strftime("%m-%d %H:%M", time.gmtime(starts[0])),
                         time.strftime("%m-%d %H:%M", time.gmtime(starts[-1] + 300)),
                         str(len(fs)), ",".join(sorted({f.state for f in fs})),
                         ",".join(kinds)[:40]])
        print(_table(rows[:30], ["campaign", "segment", "from (UTC)", "to", "windows", "state",
                                 "kinds"]))
        if len(rows) > 30:
            print(f"... and {len(rows) - 30} more series (ctrguard quarantine list)")
        print(f"{len(flags)} series-windows quarantined; a reporting pipeline holds these "
              "figures back until someone runs 'ctrguard quarantine release'")

        say("incidents injected vs detected")
        window_s = settings.windows.length
        matched = match_incidents(incidents, alerts, window_s)
        rows = []
        for lab, hits in matched:
            first = min((h["window_start_s"] for h in hits), default=None)
            delay = "" if first is None else f"{max(0, (first - lab.start_s)) // window_s} windows"
            causes = sorted({h["suspected_cause"] for h in hits})
            rows.append([lab.kind, lab.campaign_id, lab.segment,
                         time.strftime("%m-%d %H:%M", time.gmtime(lab.start_s)),
                         "yes" if hits else "NO", delay, ",".join(causes)[:40]])
        print(_table(rows, ["incident", "campaign", "segment", "start", "detected", "delay",
                            "suspected cause"]))
        unmatched = [a for a in alerts
                     if not any(a in hits for _, hits in matched)]
        detected = sum(1 for _, hits in matched if hits)
        print(f"\n{detected}/{len(matched)} incidents detected; {len(alerts)} alerts, "
              f"{len(unmatched)} outside any incident; {len(figures):,} figures published; "
              f"{len(dead):,} events dead-lettered; {len(flags)} windows quarantined")
        release_one_incident(store, args.config)
        say("the HTML report of the run")
        report = write_demo_report(args.report_dir, rendered, incidents, settings, alerts)
        print(f"report: {report.resolve()}")
        print(f"demo finished in {time.monotonic() - started:.0f}s; stopping services")
    return 0


def release_one_incident(store: Any, config: Path | None) -> None:
    """A person looked at the incident holding the most windows and releases
    all of them with one command (through the CLI, as a person would run it)."""
    import shlex
    import subprocess

    from ctrguard.sinks.quarantine_incidents import list_incidents

    say("releasing one incident's windows in one command")
    incidents = [i for i in list_incidents(store, include_resolved=True, limit=1000) if i.held]
    if not incidents:
        print("no incident holds a window: nothing to release")
        return
    biggest = max(incidents, key=lambda i: (len(i.held), i.incident_id))
    print(f"{len(incidents)} incidents hold windows; incident {biggest.incident_id} "
          f"({biggest.campaign_id}, {','.join(biggest.kinds)}) holds {len(biggest.held)}")
    argv = ["ctrguard", "quarantine", "release", "--incident", biggest.incident_id,
            "--by", "demo", "--reason", "checked in the demo: figures verified"]
    if config is not None:
        argv += ["--config", str(config)]
    print(f"$ {shlex.join(argv)}")
    done = subprocess.run([sys.executable, "-m", *argv], check=False, text=True,
                          capture_output=True)
    lines = done.stdout.splitlines()
    shown = lines if len(lines) <= 12 else [*lines[:9], "...", *lines[-2:]]
    print("\n".join(shown))
    if done.returncode != 0:
        print(done.stderr.strip(), file=sys.stderr)
    still = len(store.list_flags(state="quarantined", limit=100_000))
    print(f"exit code {done.returncode}; {still} series-windows still quarantined "
          "(ctrguard quarantine incidents lists the rest)")


def write_demo_report(out: Path, rendered: dict[str, list[bytes]], incidents: list[Any],
                      settings: Any, live_alerts: list[dict[str, Any]]) -> Path:
    """Replay the demo's stream with bands (the same engine as the live flow) into ``out``,
    say whether its alerts are the live flow's, and write ``out/report.html``."""
    import gzip

    from ctrguard.replay.generator import write_labels
    from ctrguard.replay.report import write_report
    from ctrguard.replay.run import run_replay

    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, lines in rendered.items():
        paths[name] = out / f"{name}.jsonl.gz"
        with gzip.open(paths[name], "wb", compresslevel=1) as fh:
            fh.write(b"\n".join(lines) + b"\n")
    write_labels(out / "incidents.csv", incidents)
    run = run_replay(paths["impressions"], paths["clicks"], settings, out / "run", bands=True)
    replayed = {msgspec.json.decode(x)["alert_id"] for x in run.alerts_path.read_bytes().splitlines()
                if x.strip()}
    live = {a["alert_id"] for a in live_alerts}
    same = "the same alerts as" if replayed == live else "alerts that differ from"
    print(f"a replay of the same stream (with the expected bands) gives {same} the live "
          f"flow ({len(replayed)} and {len(live)})")
    return write_report(out / "run", out / "report.html", labels=out / "incidents.csv",
                        settings=settings, title="ctrguard demo")


def main(argv: list[str] | None = None) -> int:
    """``python -m devtools.demo [ARGS]`` (``make demo``): the ``demo`` command run by the
    product's CLI (its logging, exit codes, ``--log-format``), with this module's command
    added to the product's."""
    from ctrguard.cli import SUBCOMMAND_MODULES
    from ctrguard.cli import main as cli_main

    args = sys.argv[1:] if argv is None else argv
    return cli_main(["demo", *args], commands=(*SUBCOMMAND_MODULES, "devtools.demo"))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Subcommands ``report``, ``tune`` and ``diff``: see a replay, sweep settings, compare configs.

Exit codes follow :mod:`ctrguard.cli`: 0 ok; 1 failure; 2 usage error, invalid configuration
or malformed input (with its file and line); 130 interrupted. Progress goes to stderr;
tables and paths to stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ctrguard.replay.evaluate import ReplayInputError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

_EPILOG = ("Exit codes: 0 ok, 1 failure, 2 usage error, invalid configuration or malformed "
           "input (with file and line), 130 interrupted.")


def register(sub: argparse._SubParsersAction) -> None:
    _register_report(sub)
    for name in ("ctrguard.replay.tune", "ctrguard.replay.diff"):
        try:
            module = __import__(name, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)


def _err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _register_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write a self-contained HTML report of a replay's output directory",
        description="Read RUN_DIR (as written by 'ctrguard replay', best with --bands) and "
        "write one HTML file that needs no network to view: incidents, alerts and "
        "quarantined windows per campaign, dead letters, excluded traffic; a chart per "
        "incident and for the most quarantined campaigns (CTR with its expected band, "
        "alerts, quarantined windows, labels, impressions and clicks), any campaign on "
        "demand; with --labels the evaluation and a table of misses and false alarms.",
        epilog=_EPILOG,
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="replay output directory")
    p.add_argument("--labels", type=Path, default=None, metavar="PATH",
                   help="incidents.csv: overlay labels and evaluate (uses RUN_DIR/"
                   "evaluation.json when replay wrote one)")
    p.add_argument("--traps", type=Path, default=None, metavar="PATH",
                   help="traps.csv, for the evaluation (with --labels)")
    p.add_argument("--config", type=Path, default=None, metavar="PATH",
                   help="the YAML configuration of the run (window length, incident grouping)")
    p.add_argument("--out", type=Path, default=None, metavar="PATH",
                   help="where to write the HTML (default RUN_DIR/report.html)")
    p.add_argument("--worst", type=_positive_int, default=10, metavar="N",
                   help="chart the N campaigns with the most quarantined windows (default 10)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from ctrguard.config import load_config
    from ctrguard.replay.report import write_report

    for flag, path in (("--labels", args.labels), ("--traps", args.traps),
                       ("--config", args.config)):
        if path is not None and not path.is_file():
            _err(f"{flag}: no such file: {path}")
            return EXIT_USAGE
    if not args.run_dir.is_dir():
        _err(f"RUN_DIR: no such directory: {args.run_dir}")
        return EXIT_USAGE
    if args.traps is not None and args.labels is None:
        _err("--traps needs --labels")
        return EXIT_USAGE
    settings = load_config(args.config)
    started = time.perf_counter()
    progress = None if args.quiet else (lambda m: _say(f"report: {m}"))
    try:
        path = write_report(args.run_dir, args.out, labels=args.labels, traps=args.traps,
                            settings=settings, worst=args.worst, progress=progress)
    except ReplayInputError as exc:
        _err(str(exc))
        return EXIT_USAGE
    if not args.quiet:
        _say(f"report: done in {time.perf_counter() - started:.1f}s "
             f"({path.stat().st_size / 2**20:.1f} MiB)")
    print(path)
    return EXIT_OK


__all__ = ["register", "cmd_report"]

"""The ``ctrguard`` command line.

Exit codes: 0 success; 1 runtime failure; 2 usage error or invalid configuration;
3 a required service (Kafka, Redis) is unreachable; 130 interrupted.

Each subcommand lives next to the code it drives and registers itself here through a
``register(subparsers)`` function; this module only dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ctrguard import __version__
from ctrguard.errors import ConfigError, CtrGuardError, ServiceError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_SERVICE = 3
EXIT_INTERRUPTED = 130

#: Modules that contribute subcommands, in the order they appear in ``--help``.
SUBCOMMAND_MODULES = (
    "flows.run_cmd",          # run
    "replay.cli",             # replay, generate, score-series
    "replay.workbench_cli",   # report, tune, diff
    "sinks.quarantine_cli",   # quarantine list | show | release
    "ctrguard.demo",          # demo
    "sinks.annotations_cli",  # annotate add | list | remove | audit
    "sinks.feedback_server",  # serve, feedback export | list
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctrguard",
        description="Real-time anomaly detection for advertising click-through rate.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage or configuration error, "
        "3 service unreachable, 130 interrupted.",
    )
    from detectors import native

    parser.add_argument("--version", action="version",
                        version=f"ctrguard {__version__} (detector core: {native.status()})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # subcommand not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SERVICE
    except CtrGuardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

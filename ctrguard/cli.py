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

from ctrguard import __version__, logs
from ctrguard.errors import ConfigError, CtrGuardError, ServiceError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_SERVICE = 3
EXIT_INTERRUPTED = 130

#: Modules that contribute subcommands, in the order they appear in ``--help``.
SUBCOMMAND_MODULES = (
    "ctrguard.flows.run_cmd",          # run
    "ctrguard.replay.cli",             # replay, generate, score-series
    "ctrguard.replay.workbench_cli",   # report, tune, diff
    "ctrguard.sinks.quarantine_cli",   # quarantine list | show | release
    "ctrguard.sinks.annotations_cli",  # annotate add | list | remove | audit
    "ctrguard.sinks.feedback_server",  # serve, feedback export | list
)


def build_parser(commands: tuple[str, ...] = SUBCOMMAND_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctrguard",
        description="Real-time anomaly detection for advertising click-through rate.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage or configuration error, "
        "3 service unreachable, 130 interrupted.",
    )
    from ctrguard import native

    parser.add_argument("--version", action="version",
                        version=f"ctrguard {__version__} (detector core: {native.status()})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--log-format", choices=logs.FORMATS, default=logs.default_format(),
                        help="log lines as text or as one JSON object per line "
                        "(default: $CTRGUARD_LOG_FORMAT or text)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in commands:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # subcommand not built yet
            raise
        module.register(sub)
    _add_log_format(sub)
    return parser


def _add_log_format(sub: argparse._SubParsersAction) -> None:
    """``--log-format`` after any subcommand too (``ctrguard run --log-format json``)."""
    for parser in {id(p): p for p in sub.choices.values()}.values():
        if not any("--log-format" in a.option_strings for a in parser._actions):
            parser.add_argument("--log-format", choices=logs.FORMATS,
                                default=argparse.SUPPRESS,
                                help="log lines as text or as JSON objects, one a line")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_log_format(action)


def main(argv: list[str] | None = None, *,
         commands: tuple[str, ...] = SUBCOMMAND_MODULES) -> int:
    """Run a ``ctrguard`` command; ``commands`` are the modules whose subcommands it knows
    (development tools add theirs: ``python -m devtools.demo``)."""
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    logs.configure(logging.DEBUG if args.verbose else logging.INFO, args.log_format)
    report = _reporter(args.log_format)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        report(str(exc), exc)
        return EXIT_USAGE
    except ServiceError as exc:
        report(f"error: {exc}", exc)
        return EXIT_SERVICE
    except CtrGuardError as exc:
        report(f"error: {exc}", exc)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        report("interrupted", None)
        return EXIT_INTERRUPTED
    except Exception as exc:
        # Ctrl-C inside a Bytewax step arrives wrapped in a BytewaxRuntimeError.
        if not _interrupted(exc):
            raise
        report("interrupted", None)
        return EXIT_INTERRUPTED


def _interrupted(exc: BaseException) -> bool:
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _reporter(log_format: str):
    """How the final error reaches stderr: as printed text, or as one more JSON log line
    (so that stderr stays one JSON object per line)."""
    if log_format != "json":
        return lambda text, _exc: print(text, file=sys.stderr)
    log = logging.getLogger("ctrguard")

    def report(text: str, exc: BaseException | None) -> None:
        fields = {"error": type(exc).__name__} if exc is not None else {}
        log.error(text, extra=fields)

    return report


if __name__ == "__main__":
    sys.exit(main())

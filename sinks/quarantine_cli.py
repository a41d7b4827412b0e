"""``ctrguard quarantine list | show | release | audit``: inspect and release flags.

Exit codes: 0 done; 1 no such flag or the release was refused; 2 bad arguments or
configuration; 3 Redis unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from datetime import datetime
from typing import Any

from ctrguard.errors import QuarantineError

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2

_WINDOW_START_HELP = ("start of the window: epoch seconds (1767225600) or ISO-8601 with a "
                      "time zone (2026-01-01T00:00:00Z)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quarantine",
        help="list, show and release quarantine flags in Redis",
        description="Inspect the quarantine flags ctrguard keeps in Redis and release them. "
        "Every release is kept in the audit trail with who and why.",
        epilog="Exit codes: 0 ok, 1 not found or refused, 2 usage or configuration error, "
        "3 Redis unreachable.",
    )
    actions = parser.add_subparsers(dest="quarantine_action", metavar="ACTION")
    actions.required = True

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH",
                        help="configuration file (default: the embedded defaults)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = actions.add_parser("list", parents=[common], help="list flags, newest window first",
                           description="List quarantine flags, newest window first.")
    p.add_argument("--state", choices=("quarantined", "released"), help="only this state")
    p.add_argument("--campaign", metavar="C", help="only this campaign id")
    p.add_argument("--limit", type=_positive_int, default=100, metavar="N",
                   help="at most N flags (default 100)")
    p.set_defaults(func=cmd_list)

    window_args = argparse.ArgumentParser(add_help=False)
    window_args.add_argument("campaign", metavar="CAMPAIGN", help="campaign id")
    window_args.add_argument("segment", metavar="SEGMENT",
                             help="segment, e.g. all or device=mobile")
    window_args.add_argument("window_start", metavar="WINDOW_START", help=_WINDOW_START_HELP)

    p = actions.add_parser(
        "show", parents=[common, window_args],
        help="status of one series in one window, with its audit history",
        description="Show the status of one series in one window (quarantined, released, "
        "clean, pending or expired) and the audit history of its flag.")
    p.set_defaults(func=cmd_show)

    p = actions.add_parser(
        "release", parents=[common, window_args], help="release a quarantined flag",
        description="Release a quarantined flag so that the window's figure counts as "
        "valid. The release is recorded in the audit trail.")
    p.add_argument("--by", required=True, metavar="NAME", help="who releases (kept in audit)")
    p.add_argument("--reason", required=True, metavar="TEXT", help="why (kept in audit)")
    p.set_defaults(func=cmd_release)

    p = actions.add_parser("audit", parents=[common], help="latest audit entries",
                           description="Print the latest entries of the audit trail, newest "
                           "first.")
    p.add_argument("--limit", type=_positive_int, default=50, metavar="N",
                   help="at most N entries (default 50)")
    p.set_defaults(func=cmd_audit)


# --------------------------------------------------------------------------- commands


def cmd_list(args: argparse.Namespace) -> int:
    with _store(args) as (store, _settings):
        flags = store.list_flags(state=args.state, campaign=args.campaign, limit=args.limit)
    if args.json:
        _print_json([f.to_dict() for f in flags])
        return EXIT_OK
    _print_table(
        ["STATE", "CAMPAIGN", "SEGMENT", "WINDOW_START", "SEVERITY", "DETECTOR", "RELEASED_BY",
         "REASON"],
        [[f.state, f.campaign_id, f.segment, _iso(f.window_start_s), f.severity or "",
          f.detector or "", f.released_by or "", f.reason or ""] for f in flags],
    )
    if not flags:
        print("(no flags)")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    with _store(args) as (store, settings):
        start = _window_start(args.window_start, settings.windows.length_s)
        if start is None:
            return EXIT_USAGE
        status, history = store.show(args.campaign, args.segment, start)
    if args.json:
        _print_json({"status": status.to_dict(), "history": [e.to_dict() for e in history]})
        return EXIT_OK
    rows = [
        ("state", status.state), ("publishable", "yes" if status.publishable else "no"),
        ("campaign", status.campaign_id), ("segment", status.segment),
        ("window", f"{_iso(status.window_start_s)} .. "
                   f"{_iso(status.window_end_s) if status.window_end_s else '?'}"),
    ]
    if status.key is not None:
        rows += [
            ("key", status.key), ("reason", status.reason), ("detector", status.detector),
            ("kind", status.kind), ("severity", status.severity),
            ("alert_ids", ",".join(status.alert_ids)), ("incident_id", status.incident_id),
            ("flagged_at", status.flagged_at), ("updated_at", status.updated_at),
            ("released_by", status.released_by), ("release_reason", status.release_reason),
            ("released_at", status.released_at),
        ]
    else:
        checked = status.checked_through_s
        rows.append(("checked_through", _iso(checked) if checked is not None else "never"))
    for name, value in rows:
        print(f"{name + ':':<16}{_cell(value or '')}")
    if history:
        print("\nhistory:")
        _print_table(["AT", "ACTION", "WHO", "WHY"],
                     [[e.at, e.action, e.who, e.why] for e in history])
    return EXIT_OK


def cmd_release(args: argparse.Namespace) -> int:
    with _store(args) as (store, settings):
        start = _window_start(args.window_start, settings.windows.length_s)
        if start is None:
            return EXIT_USAGE
        try:
            status = store.release(args.campaign, args.segment, start, by=args.by,
                                   reason=args.reason)
        except QuarantineError as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return EXIT_REFUSED
    if args.json:
        _print_json(status.to_dict())
    else:
        print(f"released {_cell(status.campaign_id)} {_cell(status.segment)} "
              f"{_iso(status.window_start_s)} by {_cell(status.released_by or '')}")
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    with _store(args) as (store, _settings):
        entries = store.audit(limit=args.limit)
    if args.json:
        _print_json([e.to_dict() for e in entries])
        return EXIT_OK
    _print_table(
        ["AT", "ACTION", "WHO", "CAMPAIGN", "SEGMENT", "WINDOW_START", "WHY"],
        [[e.at, e.action, e.who, e.campaign_id, e.segment, _iso(e.window_start_s), e.why]
         for e in entries],
    )
    if not entries:
        print("(no audit entries)")
    return EXIT_OK


# --------------------------------------------------------------------------- helpers


class _store:
    """Context manager: (QuarantineStore, Settings) from ``--config``; closes the client."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.client: Any = None

    def __enter__(self):
        from ctrguard.config import load_config
        from sinks.quarantine import QuarantineStore
        from sinks.redis_client import make_redis

        settings = load_config(self.args.config)
        self.client = make_redis(settings.redis)
        store = QuarantineStore(self.client, settings.quarantine, settings.redis.key_prefix,
                                window_length_s=settings.windows.length_s, actor="cli")
        return store, settings

    def __exit__(self, *exc_info: object) -> None:
        if self.client is not None:
            self.client.close()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def parse_window_start(text: str) -> int:
    """Epoch seconds from ``1767225600`` or an ISO-8601 time with a time zone.

    >>> parse_window_start("1767225600"), parse_window_start("2026-01-01T01:00:00+01:00")
    (1767225600, 1767225600)
    """
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not epoch seconds or ISO-8601: {text!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"ISO-8601 time needs a time zone (Z or +HH:MM): {text!r}")
    seconds = parsed.timestamp()
    if seconds != int(seconds):
        raise ValueError(f"window start must be a whole second: {text!r}")
    return int(seconds)


def _window_start(text: str, length_s: int) -> int | None:
    try:
        start = parse_window_start(text)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    if start % length_s:
        print(f"error: {_iso(start)} is not the start of a window (windows are {length_s} s "
              "long, aligned to the epoch)", file=sys.stderr)
        return None
    return start


def _iso(epoch_s: int | None) -> str:
    from sinks.quarantine import iso_utc

    return iso_utc(epoch_s) if epoch_s is not None else ""


def _cell(value: Any) -> str:
    """Printable text: ids are untrusted and may hold tabs, newlines or escape codes."""
    text = str(value)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _width(text: str) -> int:
    """Terminal columns of ``text`` (East Asian wide characters take two)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def _print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([_width(h)] + [_width(r[i]) for r in cells]) for i, h in enumerate(headers)]
    # The last column (free text) is not padded.
    widths[-1] = 0
    print("  ".join(_pad(h, w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(_pad(v, w) for v, w in zip(row, widths, strict=True)).rstrip())


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")

"""``ctrguard quarantine list | show | release | incidents | check | audit``: inspect,
check and release flags.

Exit codes: 0 done; 1 no such flag, incident or campaign, or nothing released; 2 bad
arguments, configuration or CSV; 3 Redis unreachable; ``check`` also 4 (a figure is held:
quarantined or expired) and 5 (none held, but a figure is still pending).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import unicodedata
from collections import Counter
from datetime import datetime
from typing import Any

from ctrguard.errors import QuarantineError

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
#: ``check``: at least one figure may not be published (quarantined or expired).
EXIT_HELD = 4
#: ``check``: nothing held, but at least one figure is not decided yet: ask again later.
EXIT_PENDING = 5

#: Columns ``check --csv`` writes.
CHECK_COLUMNS = ("campaign_id", "segment", "window_start_s", "window_start", "state",
                 "publishable", "incident_id")

_WINDOW_START_HELP = ("start of the window: epoch seconds (1767225600) or ISO-8601 with a "
                      "time zone (2026-01-01T00:00:00Z)")
_TIME_HELP = "epoch seconds or ISO-8601 with a time zone"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quarantine",
        help="list, show and release quarantine flags in Redis",
        description="Inspect the quarantine flags ctrguard keeps in Redis and release them. "
        "Every release is kept in the audit trail with who and why.",
        epilog="Exit codes: 0 ok, 1 not found, refused or nothing released, 2 usage or "
        "configuration error, 3 Redis unreachable; check: 4 a figure is held, 5 a figure is "
        "pending.",
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
        "release", parents=[common], help="release quarantined flags: one, an incident's, "
        "or a campaign's over a time range",
        description="Release quarantined flags so that their figures count as valid: one "
        "series-window (CAMPAIGN SEGMENT WINDOW_START), every window an incident holds "
        "(--incident), or a campaign's (or one segment's) windows starting in [--from, --to). "
        "Every flag released gets its own audit entry with who and why.",
        epilog="Exit codes: 0 at least one flag released (or, with --dry-run, would be), "
        "1 nothing released (no such flag or incident, or every flag skipped), 2 usage, "
        "3 Redis unreachable.")
    p.add_argument("campaign", metavar="CAMPAIGN", nargs="?", help="campaign id (one flag)")
    p.add_argument("segment", metavar="SEGMENT", nargs="?",
                   help="segment, e.g. all or device=mobile (one flag)")
    p.add_argument("window_start", metavar="WINDOW_START", nargs="?",
                   help=_WINDOW_START_HELP + " (one flag)")
    p.add_argument("--incident", metavar="ID",
                   help="release every window this incident holds (ids: 'ctrguard quarantine "
                   "incidents'); a window also held by another alarm is skipped")
    p.add_argument("--campaign", dest="range_campaign", metavar="C",
                   help="release this campaign's windows from --from to --to")
    p.add_argument("--segment", dest="range_segment", metavar="S",
                   help="with --campaign: only this segment")
    p.add_argument("--from", dest="range_from", metavar="TIME",
                   help="with --campaign: first window start (inclusive); " + _TIME_HELP)
    p.add_argument("--to", dest="range_to", metavar="TIME",
                   help="with --campaign: windows starting before this (exclusive); "
                   + _TIME_HELP)
    p.add_argument("--dry-run", action="store_true",
                   help="list what would be released, change nothing")
    p.add_argument("--by", required=True, metavar="NAME", help="who releases (kept in audit)")
    p.add_argument("--reason", required=True, metavar="TEXT", help="why (kept in audit)")
    p.set_defaults(func=cmd_release)

    p = actions.add_parser(
        "incidents", parents=[common], help="open incidents and the windows they hold",
        description="List incidents (open ones, or with --all every one within the "
        "retention period), most recently updated first, with how many of their "
        "series-windows are held (quarantined) and released.")
    p.add_argument("--all", action="store_true", help="resolved incidents too")
    p.add_argument("--windows", action="store_true", help="list each held series-window")
    p.add_argument("--limit", type=_positive_int, default=100, metavar="N",
                   help="at most N incidents (default 100)")
    p.set_defaults(func=cmd_incidents)

    p = actions.add_parser(
        "check", parents=[common], help="check a CSV of figures: may they be published?",
        description="Read a CSV of figures (header with campaign_id, segment and "
        "window_start or window_start_s: epoch seconds or ISO-8601 with a time zone; other "
        "columns are ignored) and write one row per figure: "
        + ",".join(CHECK_COLUMNS) + " (publishable is true or false). One Redis round "
        "trip per 1,000 figures. A summary goes to stderr.",
        epilog="Exit codes: 0 every figure may be published; 4 at least one is held "
        "(quarantined, or expired: decided longer ago than the retention period); 5 none is "
        "held but at least one is pending (not decided yet: ask again later); 2 bad CSV "
        "(file:line: column: message) or usage; 3 Redis unreachable (publish nothing).")
    p.add_argument("--csv", required=True, metavar="PATH", help="the figures ('-': stdin)")
    p.add_argument("--out", metavar="PATH", help="write the result here (default stdout)")
    p.add_argument("--only-held", action="store_true",
                   help="write only the figures that may not be published")
    p.set_defaults(func=cmd_check)

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
    if status.key is None and status.checked_through_s is None:
        # No flag and no watermark: ctrguard decided nothing of this campaign within the
        # retention period. "pending" would wrongly suggest it is on its way.
        print(f"unknown: no flag for campaign {_cell(args.campaign)!r} segment "
              f"{_cell(args.segment)!r} window {_iso(start)}, and the campaign has no "
              "'checked through' watermark: ctrguard decided none of its windows within the "
              "retention period (check the campaign id)", file=sys.stderr)
        return EXIT_REFUSED
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
            ("incidents", ",".join(status.incident_ids)),
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
    mode = _release_mode(args)
    if mode is None:
        return EXIT_USAGE
    if mode != "one":
        return _release_many(args, mode)
    with _store(args) as (store, settings):
        start = _window_start(args.window_start, settings.windows.length_s)
        if start is None:
            return EXIT_USAGE
        if args.dry_run:
            status = store.status(args.campaign, args.segment, start)
            if status.state != "quarantined":
                print(f"refused: nothing to release: the figure is {status.state}",
                      file=sys.stderr)
                return EXIT_REFUSED
            print(f"would release {_cell(status.campaign_id)} {_cell(status.segment)} "
                  f"{_iso(status.window_start_s)}")
            return EXIT_OK
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


def _release_mode(args: argparse.Namespace) -> str | None:
    """``one``, ``incident`` or ``range``; None (after saying why) for a bad combination."""
    positional = [args.campaign, args.segment, args.window_start]
    ranged = [args.range_campaign, args.range_segment, args.range_from, args.range_to]
    modes = []
    if any(v is not None for v in positional):
        modes.append("one")
    if args.incident is not None:
        modes.append("incident")
    if any(v is not None for v in ranged):
        modes.append("range")
    problem = None
    if len(modes) != 1:
        problem = ("give exactly one of: CAMPAIGN SEGMENT WINDOW_START, --incident ID, or "
                   "--campaign C [--segment S] --from TIME --to TIME")
    elif modes[0] == "one" and None in positional:
        problem = "one flag needs CAMPAIGN SEGMENT WINDOW_START"
    elif modes[0] == "range" and (args.range_campaign is None or args.range_from is None
                                  or args.range_to is None):
        problem = "--campaign needs --from and --to (--segment is optional)"
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return None
    return modes[0]


def _release_many(args: argparse.Namespace, mode: str) -> int:
    from ctrguard.sinks.quarantine_incidents import release_incident, release_range

    with _store(args) as (store, _settings):
        try:
            if mode == "incident":
                what = f"incident {args.incident}"
                result = release_incident(store, args.incident, by=args.by,
                                          reason=args.reason, dry_run=args.dry_run)
            else:
                try:
                    start = parse_window_start(args.range_from)
                    stop = parse_window_start(args.range_to)
                except ValueError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return EXIT_USAGE
                what = (f"campaign {_cell(args.range_campaign)!r}"
                        + (f" segment {_cell(args.range_segment)!r}"
                           if args.range_segment is not None else "")
                        + f" windows from {_iso(start)} to {_iso(stop)}")
                result = release_range(store, args.range_campaign, args.range_segment, start,
                                       stop, by=args.by, reason=args.reason,
                                       dry_run=args.dry_run)
        except QuarantineError as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return EXIT_REFUSED
    verb = "would release" if result.dry_run else "released"
    if args.json:
        _print_json({"dry_run": result.dry_run,
                     "released": [f.to_dict() for f in result.released],
                     "skipped": [{**f.to_dict(), "why": why} for f, why in result.skipped]})
    else:
        rows = [[verb, f.campaign_id, f.segment, _iso(f.window_start_s), ""]
                for f in result.released]
        rows += [["skipped", f.campaign_id, f.segment, _iso(f.window_start_s), why]
                 for f, why in result.skipped]
        if rows:
            _print_table(["ACTION", "CAMPAIGN", "SEGMENT", "WINDOW_START", "WHY"], rows)
        print(f"{verb} {len(result.released)} series-window(s) of {what}"
              + (f"; {len(result.skipped)} skipped" if result.skipped else ""))
    if not result.released:
        print(f"refused: nothing to release for {what}", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


def cmd_incidents(args: argparse.Namespace) -> int:
    from ctrguard.sinks.quarantine_incidents import list_incidents

    with _store(args) as (store, _settings):
        incidents = list_incidents(store, include_resolved=args.all, limit=args.limit)
    if args.json:
        _print_json([i.to_dict() for i in incidents])
        return EXIT_OK
    _print_table(
        ["INCIDENT", "STATUS", "CAMPAIGN", "FROM", "TO", "HELD", "RELEASED", "SEVERITY",
         "KINDS"],
        [[i.incident_id, i.status, i.campaign_id, _iso(i.first_window_start_s),
          _iso(i.last_window_end_s), str(len(i.held)), str(i.released), i.severity,
          ",".join(i.kinds)] for i in incidents])
    if args.windows:
        for i in incidents:
            if i.held:
                print(f"\n{i.incident_id} holds:")
                _print_table(["CAMPAIGN", "SEGMENT", "WINDOW_START"],
                             [[f.campaign_id, f.segment, _iso(f.window_start_s)]
                              for f in i.held])
    if not incidents:
        print("(no open incidents)" if not args.all else "(no incidents)")
    else:
        print("release one with: ctrguard quarantine release --incident ID --by NAME "
              "--reason TEXT [--dry-run]")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from ctrguard.sinks.quarantine import QuarantineReader

    try:
        rows = _read_figures_csv(args.csv)
    except _CsvProblems as exc:
        for line in exc.problems[:20]:
            print(line, file=sys.stderr)
        if len(exc.problems) > 20:
            print(f"... and {len(exc.problems) - 20} more", file=sys.stderr)
        return EXIT_USAGE
    with _store(args) as (store, settings):
        reader = QuarantineReader(store.client, settings.redis.key_prefix)
        length = _meta_window_length(reader) or settings.windows.length_s
        misaligned = [f"{args.csv}:{line}: window_start: {_iso(ws)} is not the start of a "
                      f"window ({length} s windows, aligned to the epoch)"
                      for line, (_c, _s, ws) in rows if ws % length]
        if misaligned:
            for line in misaligned[:20]:
                print(line, file=sys.stderr)
            return EXIT_USAGE
        figures = [(c, s, ws, ws + length) for _line, (c, s, ws) in rows]
        statuses = []
        for i in range(0, len(figures), _CHECK_PROGRESS):
            statuses += reader.check_many(figures[i:i + _CHECK_PROGRESS])
            if len(figures) > _CHECK_PROGRESS:
                print(f"checked {len(statuses):,} of {len(figures):,} figures",
                      file=sys.stderr)
    counts = Counter(st.state for st in statuses)
    try:
        out = open(args.out, "w", newline="", encoding="utf-8") if args.out \
            else sys.stdout  # noqa: SIM115 - closed below
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CHECK_COLUMNS)
        for st in statuses:
            if args.only_held and st.publishable:
                continue
            writer.writerow([st.campaign_id, st.segment, st.window_start_s,
                             _iso(st.window_start_s), st.state,
                             "true" if st.publishable else "false", st.incident_id or ""])
    finally:
        if args.out:
            out.close()
    publishable = counts["clean"] + counts["released"]
    print(f"checked {len(statuses):,} figures: {publishable:,} publishable "
          f"({counts['clean']:,} clean, {counts['released']:,} released), "
          f"{counts['quarantined']:,} quarantined, {counts['expired']:,} expired, "
          f"{counts['pending']:,} pending", file=sys.stderr)
    if counts["quarantined"] or counts["expired"]:
        return EXIT_HELD
    if counts["pending"]:
        return EXIT_PENDING
    return EXIT_OK


#: ``check`` reports progress every this many figures.
_CHECK_PROGRESS = 100_000


class _CsvProblems(Exception):
    def __init__(self, problems: list[str]):
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = problems


def _read_figures_csv(path: str) -> list[tuple[int, tuple[str, str, int]]]:
    """``(line, (campaign_id, segment, window_start_s))`` of every row; every problem is
    reported (``file:line: column: message``) before anything is asked of Redis."""
    name = "<stdin>" if path == "-" else path
    try:
        handle = sys.stdin if path == "-" else open(path, newline="", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise _CsvProblems([f"{name}: cannot read: {exc.strerror}"]) from None
    problems: list[str] = []
    rows = []
    try:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        start_col = "window_start_s" if "window_start_s" in header else "window_start"
        missing = [c for c in ("campaign_id", "segment", start_col) if c not in header]
        if missing:
            raise _CsvProblems([f"{name}:1: header: missing column(s) {', '.join(missing)} "
                                "(needs campaign_id, segment and window_start or "
                                "window_start_s)"])
        for row in reader:
            line = reader.line_num
            values = {c: row.get(c) for c in ("campaign_id", "segment", start_col)}
            bad = [c for c, v in values.items() if v is None or v == ""]
            if bad:
                problems.append(f"{name}:{line}: {bad[0]}: missing value")
                continue
            try:
                start = parse_window_start(values[start_col])
            except ValueError as exc:
                problems.append(f"{name}:{line}: {start_col}: {exc}")
                continue
            rows.append((line, (values["campaign_id"], values["segment"], start)))
    except UnicodeDecodeError as exc:
        problems.append(f"{name}: not UTF-8 ({exc.reason} at byte {exc.start})")
    except csv.Error as exc:
        problems.append(f"{name}: not a CSV file: {exc}")
    finally:
        if handle is not sys.stdin:
            handle.close()
    if problems:
        raise _CsvProblems(problems)
    return rows


def _meta_window_length(reader: Any) -> int | None:
    from ctrguard.sinks.quarantine import _redis_errors

    with _redis_errors(reader.client, "reading P:meta"):
        value = reader.client.hget(reader.meta_key, "window_length_s")
    try:
        return int(value) if value else None
    except ValueError:
        return None


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
        from ctrguard.sinks.quarantine import QuarantineStore
        from ctrguard.sinks.redis_client import make_redis

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
    from ctrguard.sinks.quarantine import iso_utc

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

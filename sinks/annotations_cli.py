"""``ctrguard annotate add | list | remove | audit``: declare planned changes.

Alerts of matching campaigns whose window overlaps a planned change are marked expected and
do not quarantine (the running flow picks changes up within ``annotations.refresh_s``).
Exit codes: 0 done; 1 refused (unknown id); 2 bad arguments or configuration; 3 Redis
unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ctrguard.sinks.annotations import KINDS, AnnotationError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "annotate",
        help="declare planned changes (launch, budget change, promotion, holiday)",
        description="Declare planned changes per campaign (glob patterns) and event-time "
        "range. Alerts inside them are marked expected and do not quarantine. Kept in Redis "
        "with an audit trail; the configuration's annotations.planned_changes apply too.",
        epilog="Exit codes: 0 ok, 1 refused, 2 usage or configuration error, "
        "3 Redis unreachable.")
    actions = parser.add_subparsers(dest="annotate_action", metavar="ACTION")
    actions.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", help="configuration file")
    common.add_argument("--json", action="store_true", help="print JSON")

    p = actions.add_parser("add", parents=[common], help="declare a planned change",
                           description="Declare a planned change; prints its id.")
    p.add_argument("--campaign", action="append", required=True, metavar="PATTERN",
                   help="campaign id or glob pattern (shop-*); repeat for more")
    p.add_argument("--start", required=True, help="ISO-8601 with a time zone, or epoch seconds")
    p.add_argument("--end", required=True, help="ISO-8601 with a time zone, or epoch seconds")
    p.add_argument("--kind", choices=KINDS, default="other", help="what changes")
    p.add_argument("--reason", default="", help="what people should read in Slack")
    p.add_argument("--by", required=True, metavar="NAME", help="who declares it (audited)")
    p.set_defaults(func=cmd_add)

    p = actions.add_parser("list", parents=[common], help="planned changes in force",
                           description="List the planned changes: the configuration's and "
                           "Redis's.")
    p.add_argument("--campaign", metavar="ID", help="only those matching this campaign id")
    p.set_defaults(func=cmd_list)

    p = actions.add_parser("remove", parents=[common], help="withdraw a planned change",
                           description="Withdraw a planned change declared with add.")
    p.add_argument("id", metavar="ID")
    p.add_argument("--by", required=True, metavar="NAME", help="who (audited)")
    p.add_argument("--reason", required=True, metavar="TEXT", help="why (audited)")
    p.set_defaults(func=cmd_remove)

    p = actions.add_parser("audit", parents=[common], help="latest audit entries",
                           description="Latest additions and removals, newest first.")
    p.add_argument("--limit", type=int, default=50, metavar="N")
    p.set_defaults(func=cmd_audit)


def _time(text: str, flag: str) -> int | None:
    from ctrguard.sinks.quarantine_cli import parse_window_start

    try:
        return parse_window_start(text)
    except ValueError as exc:
        print(f"error: {flag}: {exc}", file=sys.stderr)
        return None


class _store:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.client: Any = None

    def __enter__(self) -> Any:
        from ctrguard.config import load_config
        from ctrguard.sinks.annotations import AnnotationStore
        from ctrguard.sinks.redis_client import make_redis

        self.settings = load_config(self.args.config)
        self.client = make_redis(self.settings.redis)
        return AnnotationStore(self.client, self.settings.redis.key_prefix,
                               retention_s=self.settings.feedback.retention_days * 86400)

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()


def _show(anns: list[Any], as_json: bool) -> None:
    if as_json:
        json.dump([a.to_json() for a in anns], sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
        return
    if not anns:
        print("(no planned changes)")
    for a in anns:
        d = a.to_json()
        print(f"{d['id']:<14} {d['start']} .. {d['end']}  {d['kind']:<13} "
              f"{_cell(','.join(a.campaigns)):<24} {_cell(a.reason)}"
              + (f" (by {_cell(a.by)})" if a.by else ""))


def cmd_add(args: argparse.Namespace) -> int:
    start, end = _time(args.start, "--start"), _time(args.end, "--end")
    if start is None or end is None:
        return 2
    with _store(args) as store:
        try:
            ann = store.add(args.campaign, start, end, kind=args.kind, reason=args.reason,
                            by=args.by)
        except AnnotationError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.json:
        _show([ann], True)
    else:
        print(ann.id)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from ctrguard.sinks.annotations import annotations_from_settings

    ctx = _store(args)
    with ctx as store:
        anns = [*annotations_from_settings(ctx.settings), *store.list()]
    if args.campaign:
        anns = [a for a in anns if a.covers(args.campaign, -(2**62), 2**62)]
    _show(sorted(anns, key=lambda a: (a.start_s, a.id)), args.json)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    with _store(args) as store:
        try:
            ann = store.remove(args.id, by=args.by, reason=args.reason)
        except AnnotationError as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 1
    print(f"removed {ann.id}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    with _store(args) as store:
        entries = store.audit(limit=max(args.limit, 1))
    if args.json:
        json.dump(entries, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
        return 0
    if not entries:
        print("(no audit entries)")
    for e in entries:
        print(f"{e.get('at', '')}  {e.get('action', ''):<8} {e.get('id', ''):<14} "
              f"{_cell(e.get('who', '')):<16} {_cell(e.get('why', ''))}")
    return 0


def _cell(value: Any) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))

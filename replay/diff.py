"""``ctrguard diff --config A --config B``: what a configuration change would have fired.

One replay of the input (decoded and windowed once, :mod:`ctrguard.replay.recorded`; twice only when
the two configurations window differently), the detectors of A and of B over it, and the
difference: incidents added, removed and changed (matched by campaign and overlapping time;
changed means another start, end, kind, cause, driving segment or number of windows held)
and quarantined series-windows added and removed. Writes both runs (``DIR/a``, ``DIR/b``,
each a replay output directory with bands), ``DIR/diff.json``, and ``DIR/report.html``: the
report of B with the diff (and, with labels, the evaluation of both).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from ctrguard.records import encode_pretty
from ctrguard.replay.evaluate import ReplayInputError

__all__ = ["register", "diff_incidents", "settings_changed", "run_diff"]

#: What makes two matched incidents "changed".
_COMPARED = ("start_s", "end_s", "kinds", "cause", "segment", "windows_held")


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings_changed(a: Any, b: Any) -> dict[str, list[Any]]:
    """Dotted settings whose values differ: ``{key: [a, b]}``.

    >>> from ctrguard.config import load_config_text
    >>> settings_changed(load_config_text(""), load_config_text("detectors:\\n  warmup_windows: 3"))
    {'detectors.warmup_windows': [6, 3]}
    """
    fa = _flat(a.model_dump(mode="json", exclude={"source"}))
    fb = _flat(b.model_dump(mode="json", exclude={"source"}))
    return {k: [fa.get(k), fb.get(k)] for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def _change_note(a: Mapping[str, Any], b: Mapping[str, Any], window_s: int) -> str:
    notes = []
    if a["start_s"] != b["start_s"]:
        d = (b["start_s"] - a["start_s"]) // window_s
        notes.append(f"starts {abs(d)} window{'s' * (abs(d) != 1)} "
                     f"{'later' if d > 0 else 'earlier'}")
    if a["end_s"] != b["end_s"]:
        d = (b["end_s"] - a["end_s"]) // window_s
        notes.append(f"ends {abs(d)} window{'s' * (abs(d) != 1)} "
                     f"{'later' if d > 0 else 'earlier'}")
    for key, name in (("kinds", "kind"), ("cause", "cause"), ("segment", "driving segment")):
        if a[key] != b[key]:
            va = ", ".join(a[key]) if isinstance(a[key], list) else a[key]
            vb = ", ".join(b[key]) if isinstance(b[key], list) else b[key]
            notes.append(f"{name} {va} → {vb}")
    if a["windows_held"] != b["windows_held"]:
        notes.append(f"windows held {a['windows_held']} → {b['windows_held']}")
    return "; ".join(notes)


def diff_incidents(inc_a: Sequence[Mapping[str, Any]], inc_b: Sequence[Mapping[str, Any]],
                   window_s: int) -> dict[str, Any]:
    """Incidents of B against A, matched by campaign and overlapping span.

    >>> a = [{"campaign_id": "c", "start_s": 0, "end_s": 600, "kinds": ["ctr_drop"],
    ...       "cause": "x", "segment": "all", "windows_held": 2},
    ...      {"campaign_id": "d", "start_s": 0, "end_s": 300, "kinds": ["ctr_drop"],
    ...       "cause": "x", "segment": "all", "windows_held": 1}]
    >>> b = [dict(a[0], start_s=300, windows_held=1),
    ...      {"campaign_id": "e", "start_s": 0, "end_s": 300, "kinds": ["silence"],
    ...       "cause": "silence", "segment": "all", "windows_held": 1}]
    >>> d = diff_incidents(a, b, 300)
    >>> [r["campaign_id"] for r in d["added"]], [r["campaign_id"] for r in d["removed"]]
    (['e'], ['d'])
    >>> d["changed"][0]["note"], d["unchanged"]
    ('starts 1 window later; windows held 2 → 1', 0)
    """
    by_campaign: dict[str, list[int]] = {}
    for i, a in enumerate(inc_a):
        by_campaign.setdefault(a["campaign_id"], []).append(i)
    matched_a: set[int] = set()
    added, changed = [], []
    unchanged = 0
    for b in inc_b:
        overlaps = [(min(a["end_s"], b["end_s"]) - max(a["start_s"], b["start_s"]), i)
                    for i in by_campaign.get(b["campaign_id"], ())
                    for a in (inc_a[i],)
                    if a["start_s"] < b["end_s"] and b["start_s"] < a["end_s"]]
        if not overlaps:
            added.append({**b, "windows_held_b": b["windows_held"], "note": "new in B"})
            continue
        matched_a.update(i for _, i in overlaps)
        best = inc_a[max(overlaps)[1]]
        if len(overlaps) == 1 and all(best[k] == b[k] for k in _COMPARED):
            unchanged += 1
            continue
        note = _change_note(best, b, window_s)
        if len(overlaps) > 1:
            note = f"merges {len(overlaps)} incidents of A" + (f"; {note}" if note else "")
        changed.append({**b, "windows_held_a": best["windows_held"],
                        "windows_held_b": b["windows_held"], "note": note,
                        "a": {k: best[k] for k in _COMPARED}})
    removed = [{**a, "windows_held_a": a["windows_held"], "note": "gone in B"}
               for i, a in enumerate(inc_a) if i not in matched_a]
    return {"added": added, "removed": removed, "changed": changed, "unchanged": unchanged}


def _quarantined(alerts: Sequence[Mapping[str, Any]]) -> set[tuple[str, str, int]]:
    return {(a["campaign_id"], a["segment"], int(a["window_start_s"])) for a in alerts
            if a.get("quarantine")}


def run_diff(impressions: Path, clicks: Path, config_a: Path, config_b: Path, out: Path, *,
             labels: Path | None = None, traps: Path | None = None,
             say: Any = lambda m: None) -> dict[str, Any]:
    """Both runs, ``diff.json`` and ``report.html`` in ``out``; returns the diff."""
    from ctrguard.config import load_config
    from ctrguard.replay.evaluate import evaluate_many, load_labels
    from ctrguard.replay.recorded import WINDOWING, record, write_run
    from ctrguard.replay.report import _incidents, write_report

    sa, sb = load_config(config_a), load_config(config_b)
    same_windows = all(getattr(sa, k) == getattr(sb, k) for k in WINDOWING)
    t0 = time.perf_counter()
    stream_a = record(impressions, clicks, sa)
    say(f"decoded and windowed in {time.perf_counter() - t0:.1f}s "
        f"({stream_a.summary.get('events_read', 0):,} events)")
    stream_b = stream_a if same_windows else record(impressions, clicks, sb)
    if not same_windows:
        say("the two configurations window differently: recorded a second time")
    runs = {}
    for name, stream, settings in (("a", stream_a, sa), ("b", stream_b, sb)):
        write_run(stream, settings, out / name)
        alerts = [msgspec.json.decode(x) for x in (out / name / "alerts.jsonl").read_bytes()
                  .splitlines() if x.strip()]
        runs[name] = (settings, alerts, _incidents(alerts, settings.windows.length,
                                                   settings.slack.incident_gap_windows))
    window_s = sb.windows.length
    qa, qb = _quarantined(runs["a"][1]), _quarantined(runs["b"][1])
    result: dict[str, Any] = {
        "a": {"config": str(config_a), "alerts": len(runs["a"][1]),
              "incidents": len(runs["a"][2])},
        "b": {"config": str(config_b), "alerts": len(runs["b"][1]),
              "incidents": len(runs["b"][2])},
        "settings_changed": settings_changed(sa, sb),
        "incidents": diff_incidents(runs["a"][2], runs["b"][2], window_s),
        "quarantined_windows": {"a": len(qa), "b": len(qb),
                                "added": sorted(qb - qa), "removed": sorted(qa - qb)},
    }
    if labels is not None:
        label_list = load_labels(labels)
        trap_list = load_labels(traps) if traps else []
        ev = evaluate_many({"B": runs["b"][1], "A": runs["a"][1]}, label_list,
                           stream_b.figure_index(), window_s=window_s, traps=trap_list,
                           oracle_budget=sb.detectors.false_alarms_per_campaign_day)
        (out / "b" / "evaluation.json").write_bytes(encode_pretty(ev))
        for side in ("a", "b"):
            r = ev[side.upper()]
            result[side]["evaluation"] = {k: r.get(k) for k in (
                "recall", "recall_decidable", "episode_precision",
                "false_alarms_per_100_campaign_days", "median_delay_windows")}
    (out / "diff.json").write_bytes(encode_pretty(result))
    write_report(out / "b", out / "report.html", labels=labels, traps=traps, settings=sb,
                 diff=result, title=f"ctrguard diff: {config_a.name} → {config_b.name}")
    return result


def format_diff(d: Mapping[str, Any]) -> str:
    from ctrguard.replay.report import _iso

    lines = [f"A {d['a']['config']}: {d['a']['incidents']} incidents, {d['a']['alerts']} alerts",
             f"B {d['b']['config']}: {d['b']['incidents']} incidents, {d['b']['alerts']} alerts"]
    for key, (va, vb) in d["settings_changed"].items():
        lines.append(f"  {key}: {va} -> {vb}")
    for side in ("a", "b"):
        ev = d[side].get("evaluation")
        if ev:
            lines.append(f"{side.upper()}: recall {ev['recall']}, decidable "
                         f"{ev['recall_decidable']}, false alarms/100 campaign-days "
                         f"{ev['false_alarms_per_100_campaign_days']}")
    inc = d["incidents"]
    lines.append(f"incidents: {len(inc['added'])} added, {len(inc['removed'])} removed, "
                 f"{len(inc['changed'])} changed, {inc['unchanged']} unchanged")
    rows = [(side, r) for side in ("added", "removed", "changed") for r in inc[side]]
    if rows:
        lines.append(f"  {'change':<8} {'campaign':<12} {'start (UTC)':<17} {'kinds':<24} note")
        for side, r in rows:
            lines.append(f"  {side:<8} {r['campaign_id'][:12]:<12} {_iso(r['start_s']):<17} "
                         f"{', '.join(r['kinds'])[:24]:<24} {r.get('note', '')}")
    q = d["quarantined_windows"]
    lines.append(f"quarantined series-windows: {q['a']} -> {q['b']} ({len(q['added'])} added, "
                 f"{len(q['removed'])} removed)")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diff",
        help="what would have fired: incidents and quarantined windows under two configs",
        description="Replay one input once and run the detectors of two configurations over "
        "it: incidents added, removed and changed, quarantined series-windows added and "
        "removed, as a table and in DIR/report.html (the report of B with the diff). Also "
        "writes DIR/a and DIR/b (replay output directories) and DIR/diff.json.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage error, invalid configuration or "
        "malformed input (with file and line), 130 interrupted.",
    )
    p.add_argument("--config", type=Path, action="append", required=True, metavar="PATH",
                   help="give it twice: A (before) and B (after)")
    p.add_argument("--scenario", type=Path, default=None, metavar="DIR",
                   help="a directory as 'ctrguard generate' writes it (labels included)")
    p.add_argument("--impressions", type=Path, default=None, metavar="PATH")
    p.add_argument("--clicks", type=Path, default=None, metavar="PATH")
    p.add_argument("--labels", type=Path, default=None, metavar="PATH",
                   help="incidents.csv: evaluate both and overlay the labels")
    p.add_argument("--traps", type=Path, default=None, metavar="PATH")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_diff)


def cmd_diff(args: argparse.Namespace) -> int:
    def err(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    if len(args.config) != 2:
        return err("--config must be given exactly twice (A, then B)")
    imps, clicks, labels, traps = args.impressions, args.clicks, args.labels, args.traps
    if args.scenario is not None:
        if imps or clicks:
            return err("--scenario replaces --impressions/--clicks")
        imps = args.scenario / "impressions.jsonl.gz"
        clicks = args.scenario / "clicks.jsonl.gz"
        labels = labels or args.scenario / "incidents.csv"
        if traps is None and (args.scenario / "traps.csv").is_file():
            traps = args.scenario / "traps.csv"
    if imps is None or clicks is None:
        return err("give --scenario DIR or --impressions and --clicks")
    if traps is not None and labels is None:
        return err("--traps needs --labels")
    for flag, path in (("--config", args.config[0]), ("--config", args.config[1]),
                       ("--impressions", imps), ("--clicks", clicks), ("--labels", labels),
                       ("--traps", traps)):
        if path is not None and not path.is_file():
            return err(f"{flag}: no such file: {path}")
    from ctrguard.config import load_config

    for path in args.config:  # both are valid before anything is read
        load_config(path)

    def say(m: str) -> None:
        if not args.quiet:
            print(f"diff: {m}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    try:
        result = run_diff(imps, clicks, args.config[0], args.config[1], args.out,
                          labels=labels, traps=traps, say=say)
    except ReplayInputError as exc:
        return err(str(exc))
    print(format_diff(result))
    print(f"report: {args.out / 'report.html'} ({time.perf_counter() - started:.1f}s)")
    return 0

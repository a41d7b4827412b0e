"""Subcommands ``replay``, ``generate``, ``evaluate`` and ``score-series``.

Exit codes follow :mod:`ctrguard.cli`: 0 ok; 1 failure; 2 usage error, invalid configuration
or malformed input file (reported with its file and line); 130 interrupted.
Progress goes to stderr; tables and results to stdout.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ctrguard.records import encode_pretty
from ctrguard.replay.evaluate import ReplayInputError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

_EPILOG = ("Exit codes: 0 ok, 1 failure, 2 usage error, invalid configuration or malformed "
           "input (with file and line), 130 interrupted.")


def register(sub: argparse._SubParsersAction) -> None:
    _register_replay(sub)
    _register_generate(sub)
    _register_evaluate(sub)
    _register_score_series(sub)


def _err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _missing(paths: dict[str, Path | None]) -> int | None:
    for flag, path in paths.items():
        if path is not None and not path.is_file():
            _err(f"{flag}: no such file: {path}")
            return EXIT_USAGE
    return None


# --------------------------------------------------------------------------- replay


def _register_replay(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="replay recorded impression/click files through the detectors (no services)",
        description="Replay JSONL(.gz) impression and click files through the same "
        "preparation, windowing and detectors as the live flow. Writes alerts.jsonl, "
        "figures.jsonl, deadletter.jsonl and summary.json to --out (plus "
        "alerts_raw_river.jsonl and alerts_ztest.jsonl unless --no-baselines). With --labels, "
        "scores ctrguard and the baselines against the incidents and writes evaluation.json.",
        epilog=_EPILOG,
    )
    p.add_argument("--impressions", type=Path, required=True, metavar="PATH",
                   help="impression events, JSONL or JSONL.gz, in arrival order")
    p.add_argument("--clicks", type=Path, required=True, metavar="PATH",
                   help="click events, JSONL or JSONL.gz, in arrival order")
    p.add_argument("--config", type=Path, default=None, metavar="PATH",
                   help="YAML configuration (default: the embedded config/default.yaml)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    p.add_argument("--labels", type=Path, default=None, metavar="PATH",
                   help="incidents.csv (campaign_id,segment,kind,start,end) to evaluate against")
    p.add_argument("--traps", type=Path, default=None, metavar="PATH",
                   help="traps.csv: report which traps false alarms fell on (with --labels)")
    p.add_argument("--no-baselines", action="store_true",
                   help="do not run the raw-River and z-test baselines")
    p.add_argument("--annotations", type=Path, default=None, metavar="PATH",
                   help="planned changes (YAML/JSON list of campaigns, start, end, kind, "
                   "reason): alerts inside them are marked expected and do not quarantine "
                   "(besides the configuration's annotations.planned_changes)")
    p.add_argument("--bands", action="store_true",
                   help="also write bands.jsonl, the expected CTR and its band per "
                   "series-window, for 'ctrguard report' (costs about a fifth more CPU on "
                   "streams of many small campaigns)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    from ctrguard.config import load_config
    from ctrguard.replay.evaluate import evaluate_many, format_table, load_labels, require_eval

    bad = _missing({"--impressions": args.impressions, "--clicks": args.clicks,
                    "--labels": args.labels, "--traps": args.traps,
                    "--annotations": args.annotations})
    if bad is not None:
        return bad
    planned = _planned_changes(args.annotations)
    if planned is None:
        return EXIT_USAGE
    if args.traps is not None and args.labels is None:
        _err("--traps needs --labels")
        return EXIT_USAGE
    settings = load_config(args.config)
    try:
        # Validate the labels before a replay that may take minutes.
        labels = load_labels(args.labels) if args.labels else None
        traps = load_labels(args.traps) if args.traps else []
    except ReplayInputError as exc:
        _err(str(exc))
        return EXIT_USAGE
    if labels is not None:
        require_eval()  # before a replay that may take minutes
    from ctrguard.replay.run import run_replay

    started = time.perf_counter()
    result = run_replay(args.impressions, args.clicks, settings, args.out,
                        baselines=not args.no_baselines, progress=not args.quiet,
                        annotations=planned, bands=args.bands)
    s = result.summary
    if not args.quiet:
        _say(f"replay: done in {time.perf_counter() - started:.1f}s; "
             f"{s.get('events_read', 0):,} events read, {s.get('alerts', 0):,} alerts, "
             f"{s.get('dead_lettered', 0):,} dead-lettered; outputs in {args.out}")
    from ctrguard.flows.engine import format_conservation

    balance = format_conservation(s["conservation"])
    if not balance.startswith("conservation balanced"):
        _err(f"replay: {balance}")  # an event neither counted nor dead-lettered: a bug
        return EXIT_FAILURE
    if not args.quiet:
        _say(f"replay: {balance}")
    if labels is None:
        return EXIT_OK
    alert_sets: dict[str, Path] = {"ctrguard": Path(result.alerts_path)}
    alert_sets.update({name: Path(p) for name, p in result.baseline_alert_paths.items()})
    try:
        results = evaluate_many(
            alert_sets, labels, result.figures_path, window_s=settings.windows.length,
            traps=traps, oracle_budget=settings.detectors.false_alarms_per_campaign_day)
    except ReplayInputError as exc:
        _err(str(exc))
        return EXIT_FAILURE  # our own replay wrote it: a failure, not a usage error
    out_path = Path(args.out) / "evaluation.json"
    out_path.write_bytes(encode_pretty(results))
    print(format_table(results))
    print(f"(evaluation: {out_path})")
    return EXIT_OK


def _planned_changes(path: Path | None) -> list[Any] | None:
    """The planned changes of ``--annotations`` (None after printing an error)."""
    if path is None:
        return []
    from ctrguard.sinks.annotations import AnnotationError, load_annotation_file

    try:
        return load_annotation_file(str(path))
    except AnnotationError as exc:
        _err(str(exc))
        return None


# --------------------------------------------------------------------------- generate


def _register_generate(sub: argparse._SubParsersAction) -> None:
    from ctrguard.replay.generator import INCIDENT_KINDS, TRAP_KINDS

    p = sub.add_parser(
        "generate",
        help="write a seeded synthetic scenario with labelled incidents and traps",
        description="Write impressions.jsonl.gz, clicks.jsonl.gz, incidents.csv, traps.csv and "
        "scenario.json to --out. Same arguments and seed give byte-identical files. "
        f"Incident kinds: {', '.join(INCIDENT_KINDS)}. Trap kinds: {', '.join(TRAP_KINDS)}.",
        epilog=_EPILOG,
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--campaigns", type=_positive_int, default=40, help="campaigns (default 40)")
    p.add_argument("--hours", type=_positive_float, default=24.0,
                   help="length of the stream in hours (default 24)")
    p.add_argument("--start", default=None, metavar="ISO",
                   help="first event time, ISO-8601 with offset (default 2026-01-05T00:00:00Z)")
    p.add_argument("--volume-scale", type=_positive_float, default=1.0,
                   help="multiplies impression volumes (median campaign 20/min at 1.0)")
    p.add_argument("--incident-rate", type=_fraction, default=0.5,
                   help="fraction of campaigns with a labelled incident (default 0.5)")
    p.add_argument("--trap-rate", type=_fraction, default=0.15,
                   help="fraction of campaigns given each kind of trap (default 0.15)")
    p.add_argument("--late-fraction", type=_fraction, default=0.01,
                   help="events delivered 5-90 s late, within allowed lateness (default 0.01)")
    p.add_argument("--very-late-fraction", type=_fraction, default=0.0002,
                   help="events delivered 8-20 min late, beyond lateness (default 0.0002)")
    p.add_argument("--no-compress", action="store_true", help="write .jsonl instead of .jsonl.gz")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_generate)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def cmd_generate(args: argparse.Namespace) -> int:
    from ctrguard.replay.generator import generate

    started = time.perf_counter()
    try:
        scenario = generate(
            args.out, seed=args.seed, campaigns=args.campaigns, hours=args.hours,
            start=args.start, volume_scale=args.volume_scale, compress=not args.no_compress,
            incident_rate=args.incident_rate, trap_rate=args.trap_rate,
            late_fraction=args.late_fraction, very_late_fraction=args.very_late_fraction,
            progress=None if args.quiet else (lambda m: _say(f"generate: {m}")),
        )
    except ValueError as exc:  # e.g. a --start without an offset
        _err(str(exc))
        return EXIT_USAGE
    if not args.quiet:
        _say(f"generate: done in {time.perf_counter() - started:.1f}s")
    if scenario.end_s * 1000 > time.time() * 1000:
        # Replay rejects event times beyond the wall clock plus windows.future_tolerance.
        _say("generate: warning: the scenario ends in the future; replay will dead-letter "
             "events beyond now + windows.future_tolerance (use an earlier --start)")
    print(f"{scenario.n_impressions:,} impressions, {scenario.n_clicks:,} clicks, "
          f"{len(scenario.incidents)} incidents, {len(scenario.traps)} traps in {scenario.out_dir}")
    return EXIT_OK


# --------------------------------------------------------------------------- evaluate


def _register_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score alert files against labelled incidents",
        description="Score one or more alert files (JSONL, as written by replay) against "
        "incidents.csv, using figures.jsonl for decidability and campaign-days. Prints a "
        "table; --out writes the full JSON (per kind, per incident, false episodes).",
        epilog=_EPILOG,
    )
    p.add_argument("--alerts", action="append", required=True, metavar="[NAME=]PATH",
                   help="alerts JSONL; repeat to compare (NAME defaults to ctrguard for the "
                   "first, else the file name)")
    p.add_argument("--figures", type=Path, required=True, metavar="PATH", help="figures JSONL")
    p.add_argument("--labels", type=Path, required=True, metavar="PATH", help="incidents.csv")
    p.add_argument("--traps", type=Path, default=None, metavar="PATH", help="traps.csv")
    p.add_argument("--out", type=Path, default=None, metavar="PATH", help="write JSON here")
    p.add_argument("--window", type=_positive_int, default=None, metavar="SECONDS",
                   help="window length (default: windows.length of --config, 300)")
    p.add_argument("--config", type=Path, default=None, metavar="PATH",
                   help="YAML configuration, for the window length and the false-alarm "
                   "budget of the clairvoyant comparison")
    p.add_argument("--tolerance-windows", type=int, default=3,
                   help="windows after an incident's end an alert still counts (default 3)")
    p.add_argument("--merge-gap-windows", type=int, default=2,
                   help="largest gap, in windows, inside one alert episode (default 2)")
    p.add_argument("--campaign-days", type=_positive_float, default=None,
                   help="denominator of the false-alarm rate (default: from the figures)")
    p.add_argument("--strict-segments", action="store_true",
                   help="an alert on 'all' does not detect a one-segment incident")
    p.add_argument("--min-severity", choices=("info", "warning", "critical"), default=None,
                   help="ignore alerts below this severity")
    p.set_defaults(func=cmd_evaluate)


def _alert_sets(specs: list[str]) -> dict[str, Path]:
    sets: dict[str, Path] = {}
    for i, spec in enumerate(specs):
        name, sep, path = spec.partition("=")
        if not sep or "/" in name or not name:
            path = spec
            name = "ctrguard" if i == 0 else Path(spec).name.split(".")[0].removeprefix("alerts_")
        if name in sets:
            raise ValueError(f"alert set {name!r} given twice (use NAME=PATH)")
        sets[name] = Path(path)
    return sets


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ctrguard.replay.evaluate import evaluate_many, format_table, load_figures, load_labels

    try:
        sets = _alert_sets(args.alerts)
    except ValueError as exc:
        _err(str(exc))
        return EXIT_USAGE
    bad = _missing({**{f"--alerts {n}": p for n, p in sets.items()}, "--figures": args.figures,
                    "--labels": args.labels, "--traps": args.traps, "--config": args.config})
    if bad is not None:
        return bad
    from ctrguard.config import load_config

    config = load_config(args.config)
    window_s = args.window if args.window is not None else config.windows.length
    try:
        labels = load_labels(args.labels)
        traps = load_labels(args.traps) if args.traps else []
        _say(f"evaluate: loading figures from {args.figures}")
        figures = load_figures(args.figures)
        results = evaluate_many(
            sets, labels, figures, window_s=window_s, campaign_days=args.campaign_days,
            tolerance_windows=args.tolerance_windows, merge_gap_windows=args.merge_gap_windows,
            strict_segments=args.strict_segments, min_severity=args.min_severity, traps=traps,
            oracle_budget=config.detectors.false_alarms_per_campaign_day)
    except ReplayInputError as exc:
        _err(str(exc))
        return EXIT_USAGE
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(encode_pretty(results))
    print(format_table(results))
    return EXIT_OK


# --------------------------------------------------------------------------- score-series


def _register_score_series(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score-series",
        help="score a single numeric time series (CSV timestamp,value) for anomalies",
        description="Read a CSV with a header containing 'timestamp' and 'value' (timestamps "
        "ISO-8601 with an offset or epoch seconds, non-decreasing; values finite numbers) and "
        "write the same rows with two more columns, anomaly_score and alert (0/1). "
        "anomaly_score is 1 - p, p the tail probability of the point's residual under a robust "
        "model with daily and weekly cycles, measured against the recent residuals (uniform on "
        "[0, 1] for normal points; near 1 only as far as the tail allows, never a tie at 1); "
        "alert is p <= 1e-4. The first 48 points score 0 (warm-up). Malformed rows are "
        "reported with their line number.",
        epilog=_EPILOG,
    )
    p.add_argument("--csv", type=Path, required=True, metavar="PATH", help="input CSV")
    p.add_argument("--out", type=Path, required=True, metavar="PATH", help="output CSV")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_score_series)


class SeriesInputError(ReplayInputError):
    """A row of a score-series CSV is malformed."""


def parse_series_rows(fh: TextIO, path: str = "<csv>") -> tuple[list[str], list[list[str]],
                                                                list[tuple[float, float]]]:
    """Header, raw rows and ``(epoch_seconds, value)`` pairs of a ``timestamp,value`` CSV.

    >>> import io
    >>> h, rows, pts = parse_series_rows(io.StringIO("timestamp,value\\n"
    ...     "2026-01-01T00:00:00Z,1.5\\n1767225660,2\\n"))
    >>> pts
    [(1767225600.0, 1.5), (1767225660.0, 2.0)]
    >>> parse_series_rows(io.StringIO("timestamp,value\\n2026-01-01T00:00:00Z,x\\n"), "s.csv")
    Traceback (most recent call last):
    ...
    ctrguard.replay.cli.SeriesInputError: s.csv:2: value 'x' is not a number
    """
    from datetime import datetime

    reader = csv.reader(fh)
    header = next(reader, None)
    if header is None:
        raise SeriesInputError(path, 1, "empty file (expected a header timestamp,value)")
    names = [h.strip().lower() for h in header]
    if "timestamp" not in names or "value" not in names:
        raise SeriesInputError(path, 1, "header must contain 'timestamp' and 'value'")
    it, iv = names.index("timestamp"), names.index("value")
    rows: list[list[str]] = []
    points: list[tuple[float, float]] = []
    last = -math.inf
    for row in reader:
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise SeriesInputError(path, line, f"expected {len(header)} fields, got {len(row)}")
        ts_text, value_text = row[it].strip(), row[iv].strip()
        try:
            ts = float(ts_text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(ts_text.replace("Z", "+00:00"))
            except ValueError:
                raise SeriesInputError(path, line, f"timestamp {ts_text!r} is not ISO-8601 "
                                       "or epoch seconds") from None
            if parsed.tzinfo is None:
                raise SeriesInputError(path, line, f"timestamp {ts_text!r} has no timezone "
                                       "offset (use Z or +HH:MM)") from None
            ts = parsed.timestamp()
        if not math.isfinite(ts):
            raise SeriesInputError(path, line, f"timestamp {ts_text!r} is not finite")
        try:
            value = float(value_text)
        except ValueError:
            raise SeriesInputError(path, line, f"value {value_text!r} is not a number") from None
        if not math.isfinite(value):
            raise SeriesInputError(path, line, f"value {value_text!r} is not finite")
        if ts < last:
            raise SeriesInputError(path, line, "timestamps must not go backwards")
        last = ts
        rows.append(row)
        points.append((ts, value))
    return header, rows, points


def _scorer() -> Callable[[float, float], tuple[float, Any]]:
    from ctrguard.detectors.scalar import ScalarScorer

    return ScalarScorer().update


def cmd_score_series(args: argparse.Namespace) -> int:
    bad = _missing({"--csv": args.csv})
    if bad is not None:
        return bad
    try:
        with open(args.csv, newline="", encoding="utf-8") as fh:
            header, rows, points = parse_series_rows(fh, str(args.csv))
    except UnicodeDecodeError as exc:
        _err(f"{args.csv}: not UTF-8 text ({exc.reason})")
        return EXIT_USAGE
    except ReplayInputError as exc:
        _err(str(exc))
        return EXIT_USAGE
    try:
        update = _scorer()
    except ModuleNotFoundError as exc:
        if exc.name != "ctrguard.detectors.scalar":
            raise
        _err("score-series: the scalar scorer (detectors/scalar.py) is not available")
        return EXIT_FAILURE
    tmp = args.out.with_name(args.out.name + ".tmp")
    n_alerts = 0
    last_report = time.perf_counter()
    with open(tmp, "w", newline="", encoding="utf-8") as out:
        w = csv.writer(out, lineterminator="\n")
        w.writerow([*header, "anomaly_score", "alert"])
        for i, (row, (ts, value)) in enumerate(zip(rows, points, strict=True), 1):
            score, alert = update(ts, value)
            flag = 1 if alert else 0
            n_alerts += flag
            w.writerow([*row, _fmt_score(score), flag])
            if not args.quiet and time.perf_counter() - last_report > 1.0:
                last_report = time.perf_counter()
                _say(f"score-series: {i:,}/{len(rows):,} rows")
    tmp.replace(args.out)
    if not args.quiet:
        _say(f"score-series: {len(rows):,} rows, {n_alerts:,} alerts -> {args.out}")
    return EXIT_OK


def _fmt_score(score: Any) -> str:
    """A score as text, with enough digits that scores near 1 stay apart: ``1 - score``
    keeps three significant digits.

    >>> _fmt_score(0.5), _fmt_score(1 - 2.345e-9), _fmt_score(None)
    ('0.5', '0.999999997655', '')
    """
    if score is None:
        return ""
    value = float(score)
    if math.isnan(value):
        return ""
    if not 0.999 < value < 1.0:
        return f"{value:.6g}"
    digits = min(17, 3 - math.floor(math.log10(1.0 - value)))
    return f"{value:.{digits}f}"


__all__ = ["register", "cmd_replay", "cmd_generate", "cmd_evaluate", "cmd_score_series",
           "parse_series_rows", "SeriesInputError"]

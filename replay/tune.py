"""``ctrguard tune``: sweep detector settings over labelled replays, in processes.

Each input is decoded and windowed once (:func:`ctrguard.replay.recorded.record`); each setting then
runs only the detectors over the recorded windows (:func:`ctrguard.replay.recorded.detect`, exactly
the alerts a replay with that setting gives) and is scored by
:func:`ctrguard.replay.evaluate.evaluate_many`, as ``replay --labels`` scores it. The settings are
spread over worker processes (forked: they share the recordings without copying them).

Settings are named by their dotted path in the configuration, ``detectors.*`` only (the
windowing is shared), given as lists whose product is the grid::

    ctrguard tune --scenario scen --set detectors.false_alarms_per_campaign_day=0.01,0.02,0.05 \\
                  --set detectors.warmup_windows=4,6 --out tune

or in a YAML file (``--grid FILE``)::

    grid:                       # the product of these lists
      detectors.false_alarms_per_campaign_day: [0.01, 0.02, 0.05]
      detectors.warmup_windows: [4, 6]
    settings:                   # and these, each as given
      - {detectors.cooldown_windows: 3, detectors.warmup_windows: 4}

Outputs in ``--out``: ``tune.csv`` and ``tune.json`` (per setting: recall, recall on
decidable incidents, precision, false alarms per 100 campaign-days, median delay and median
excess delay over the clairvoyant test, Pareto membership), ``tune.html`` (the chart, with
the Pareto front marked) and ``chosen.yaml``: the configuration (``--config`` with the
chosen setting applied) that ``ctrguard run --config`` and ``ctrguard replay --config`` take.
The chosen setting is, among those with at most ``--max-false-alarms`` false alarms per 100
campaign-days, the one with the highest recall, then the smallest excess delay, then the
fewest false alarms (the fewest false alarms if none is within the limit).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import yaml

from ctrguard.config import Settings, load_config
from ctrguard.errors import ConfigError, ConfigIssue
from ctrguard.records import encode_pretty, encode_record
from ctrguard.replay.evaluate import ReplayInputError

__all__ = ["register", "parse_values", "expand_grid", "apply_setting", "pareto_front",
           "choose", "run_tune", "TuneInput"]

PREFIX = "detectors."
#: A setting's identity: its JSON with keys sorted.
_SORTED_KEYS = msgspec.json.Encoder(order="sorted").encode
#: Recall measures ``--recall`` can choose and the Pareto front is drawn over.
RECALL_KEYS = {"all": "recall", "decidable": "recall_decidable"}


# --------------------------------------------------------------------------- settings


def parse_values(text: str) -> list[Any]:
    """Values of one ``--set KEY=V1,V2`` as YAML scalars; commas inside brackets stay.

    >>> parse_values("0.01,0.02,5e-2")
    [0.01, 0.02, 0.05]
    >>> parse_values("[0.5, 2.0],[0.3,3],none")
    [[0.5, 2.0], [0.3, 3], 'none']
    """
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    values = []
    for p in parts:
        p = p.strip()
        if not p:
            raise ValueError(f"empty value in {text!r}")
        v = yaml.safe_load(p)
        # YAML reads 5e-2 as a string (it wants 5.0e-2); a number was meant.
        if isinstance(v, str):
            with contextlib.suppress(ValueError):
                v = float(v)
        values.append(v)
    return values


def expand_grid(grid: Mapping[str, Sequence[Any]],
                explicit: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """The product of ``grid``'s lists, then the ``explicit`` settings; duplicates once.

    >>> expand_grid({"detectors.a": [1, 2], "detectors.b": [3]}, [{"detectors.a": 1,
    ...                                                           "detectors.b": 3}])
    [{'detectors.a': 1, 'detectors.b': 3}, {'detectors.a': 2, 'detectors.b': 3}]
    """
    keys = list(grid)
    out: list[dict[str, Any]] = []
    seen: set[bytes] = set()
    combos = [dict(zip(keys, values, strict=True))
              for values in itertools.product(*(grid[k] for k in keys))] if keys else []
    for setting in [*combos, *(dict(s) for s in explicit)]:
        key = _SORTED_KEYS(setting)
        if key not in seen:
            seen.add(key)
            out.append(setting)
    return out


def apply_setting(base: Settings, setting: Mapping[str, Any], source: str = "<tune>",
                  lines: Mapping[str, int] | None = None) -> Settings:
    """``base`` with the dotted ``detectors.*`` keys of ``setting`` replaced, validated;
    :class:`ConfigError` (``file:line: key: message``) otherwise.

    >>> s = apply_setting(load_config(None), {"detectors.warmup_windows": 4})
    >>> s.detectors.warmup_windows
    4
    >>> apply_setting(load_config(None), {"detectors.warmup_windows": 0}, "g.yaml")
    Traceback (most recent call last):
    ...
    ctrguard.errors.ConfigError: invalid configuration:
      g.yaml: detectors.warmup_windows: Input should be greater than or equal to 1
    """
    from pydantic import ValidationError

    from ctrguard.detectors.settings import DetectorSettings

    issues = []
    data = base.detectors.model_dump()
    for key, value in setting.items():
        line = (lines or {}).get(key)
        if not key.startswith(PREFIX) or "." in key[len(PREFIX):]:
            issues.append(ConfigIssue(source, line, key, "only detectors.<setting> can be "
                                      "swept (the windowing is done once for all settings)"))
            continue
        name = key[len(PREFIX):]
        if name not in DetectorSettings.model_fields:
            issues.append(ConfigIssue(source, line, key, "unknown setting"))
            continue
        data[name] = value
    if not issues:
        try:
            det = DetectorSettings.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(p) for p in err.get("loc", ()))
                key = PREFIX + loc if loc else ", ".join(setting)
                msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
                issues.append(ConfigIssue(source, (lines or {}).get(key), key, msg))
    if issues:
        raise ConfigError(issues)
    return base.model_copy(update={"detectors": det})


def load_grid(path: Path) -> tuple[dict[str, list[Any]], list[dict[str, Any]], dict[str, int]]:
    """``grid``, ``settings`` and the line of each key, from a tune YAML file."""
    from ctrguard.config import _line_index

    try:
        text = path.read_text(encoding="utf-8")
        doc = yaml.safe_load(text) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([ConfigIssue(str(path), None, "<document>", str(exc))]) from None
    index = _line_index(text)
    lines = {}
    for loc, line in index.items():
        if len(loc) >= 2 and isinstance(loc[-1], str):
            lines.setdefault(str(loc[-1]), line)
    if not isinstance(doc, dict) or set(doc) - {"grid", "settings"}:
        raise ConfigError([ConfigIssue(str(path), 1, "<document>",
                                       "must be a mapping with 'grid' and/or 'settings'")])
    grid = doc.get("grid") or {}
    explicit = doc.get("settings") or []
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError([ConfigIssue(str(path), index.get(("grid",)), "grid",
                                       "must map each dotted setting to a non-empty list")])
    if not isinstance(explicit, list) or not all(isinstance(s, dict) for s in explicit):
        raise ConfigError([ConfigIssue(str(path), index.get(("settings",)), "settings",
                                       "must be a list of mappings of dotted settings")])
    return grid, explicit, lines


# --------------------------------------------------------------------------- scoring


@dataclass
class TuneInput:
    """One labelled stream: the two event files and the labels (traps optional)."""

    name: str
    impressions: Path
    clicks: Path
    labels: Path
    traps: Path | None = None


#: What the worker processes read (set before they are forked).
_SHARED: dict[str, Any] = {}


def _score_one(task: tuple[int, int]) -> tuple[int, int, dict[str, Any]]:
    """Detect and evaluate setting ``si`` on input ``ii`` (in a worker process)."""
    from ctrguard.replay.evaluate import evaluate_many
    from ctrguard.replay.recorded import detect

    si, ii = task
    settings = _SHARED["settings"][si]
    stream, labels, traps = _SHARED["inputs"][ii]
    started = time.process_time()
    found = detect(stream, settings)
    result = evaluate_many(
        {"ctrguard": found.alert_dicts()}, labels, stream.figure_index(),
        window_s=settings.windows.length, traps=traps,
        oracle_budget=settings.detectors.false_alarms_per_campaign_day)["ctrguard"]
    result["cpu_s"] = time.process_time() - started
    return si, ii, result


def _median(xs: Sequence[float]) -> float | None:
    return float(statistics.median(xs)) if xs else None


def pool_results(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One setting's evaluations over several inputs, pooled: sums of counts, medians over
    all incidents.

    >>> r = {"incidents": 2, "detected": 1, "decidable_incidents": 1, "detected_decidable": 1,
    ...      "episodes": 2, "true_episodes": 1, "false_episodes": 1, "campaign_days": 10.0,
    ...      "incident_details": [{"kind": "click_outage", "delay_windows": 3.0,
    ...                            "oracle_delay_windows": 1}]}
    >>> p = pool_results([r, r])
    >>> p["recall"], p["false_alarms_per_100_campaign_days"], p["median_excess_delay_windows"]
    (0.5, 10.0, 2.0)
    """
    from ctrguard.replay.generator import ABRUPT_FAULT_KINDS

    keys = ("incidents", "detected", "decidable_incidents", "detected_decidable", "episodes",
            "true_episodes", "false_episodes")
    sums = {k: sum(int(r.get(k) or 0) for r in results) for k in keys}
    days = sum(float(r.get("campaign_days") or 0.0) for r in results)
    delays, abrupt, excess = [], [], []
    for r in results:
        for row in r.get("incident_details", ()):
            d, o = row.get("delay_windows"), row.get("oracle_delay_windows")
            if d is None:
                continue
            delays.append(float(d))
            if row.get("kind") in ABRUPT_FAULT_KINDS:
                abrupt.append(float(d))
            if o is not None:
                excess.append(float(d) - float(o))

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    return {
        **sums, "campaign_days": round(days, 6),
        "recall": ratio(sums["detected"], sums["incidents"]),
        "recall_decidable": ratio(sums["detected_decidable"], sums["decidable_incidents"]),
        "episode_precision": ratio(sums["true_episodes"], sums["episodes"]),
        "false_alarms_per_100_campaign_days": (round(100 * sums["false_episodes"] / days, 4)
                                               if days > 0 else None),
        "median_delay_windows": _median(delays),
        "median_delay_windows_abrupt": _median(abrupt),
        "median_excess_delay_windows": _median(excess),
    }


def _objectives(row: Mapping[str, Any], recall_key: str) -> tuple[float, float, float]:
    """Minimised: (-recall, false alarms, excess delay); missing values are worst."""
    recall = row.get(recall_key)
    fa = row.get("false_alarms_per_100_campaign_days")
    ex = row.get("median_excess_delay_windows")
    return (-(recall if recall is not None else -1.0),
            fa if fa is not None else math.inf, ex if ex is not None else math.inf)


def pareto_front(rows: Sequence[Mapping[str, Any]], recall_key: str = "recall") -> list[int]:
    """Indices of the rows no other row beats on every objective (recall up, false alarms
    and excess delay down) and strictly on one.

    >>> rows = [{"recall": 0.9, "false_alarms_per_100_campaign_days": 2.0,
    ...          "median_excess_delay_windows": 1.0},
    ...         {"recall": 0.8, "false_alarms_per_100_campaign_days": 3.0,
    ...          "median_excess_delay_windows": 1.0},
    ...         {"recall": 0.7, "false_alarms_per_100_campaign_days": 0.5,
    ...          "median_excess_delay_windows": 2.0}]
    >>> pareto_front(rows)
    [0, 2]
    """
    objs = [_objectives(r, recall_key) for r in rows]
    front = []
    for i, a in enumerate(objs):
        dominated = any(all(x <= y for x, y in zip(b, a, strict=True)) and b != a
                        for j, b in enumerate(objs) if j != i)
        if not dominated:
            front.append(i)
    return front


def choose(rows: Sequence[Mapping[str, Any]], max_false_alarms: float,
           recall_key: str = "recall") -> int:
    """The chosen row (see the module doc).

    >>> rows = [{"recall": 0.9, "false_alarms_per_100_campaign_days": 4.0},
    ...         {"recall": 0.8, "false_alarms_per_100_campaign_days": 1.0},
    ...         {"recall": 0.6, "false_alarms_per_100_campaign_days": 0.5}]
    >>> choose(rows, 2.0), choose(rows, 0.1), choose(rows, 10)
    (1, 2, 0)
    """
    ok = [i for i, r in enumerate(rows)
          if r.get("false_alarms_per_100_campaign_days") is not None
          and r["false_alarms_per_100_campaign_days"] <= max_false_alarms]
    if ok:
        return min(ok, key=lambda i: (_objectives(rows[i], recall_key)[0],
                                      _objectives(rows[i], recall_key)[2],
                                      _objectives(rows[i], recall_key)[1], i))
    return min(range(len(rows)), key=lambda i: (_objectives(rows[i], recall_key)[1], i))


# --------------------------------------------------------------------------- running


def run_tune(inputs: Sequence[TuneInput], base: Settings, settings: Sequence[dict[str, Any]],
             *, processes: int | None = None, say: Callable[[str], None] = lambda m: None,
             ) -> list[dict[str, Any]]:
    """Score every setting on every input; one pooled row per setting, in order."""
    from ctrguard.replay.evaluate import load_labels, require_eval
    from ctrguard.replay.recorded import record

    require_eval()  # every setting is scored: stop before the recording if it cannot be
    resolved = [apply_setting(base, s) for s in settings]
    recorded = []
    for inp in inputs:
        t0 = time.perf_counter()
        stream = record(inp.impressions, inp.clicks, base)
        stream.figure_index()  # built once, before the workers are forked
        labels = load_labels(inp.labels)
        traps = load_labels(inp.traps) if inp.traps else []
        recorded.append((stream, labels, traps))
        say(f"{inp.name}: decoded and windowed once in {time.perf_counter() - t0:.1f}s "
            f"({stream.summary.get('events_read', 0):,} events, {stream.windows:,} "
            f"campaign-windows, {len(labels)} labels)")
    tasks = [(si, ii) for si in range(len(resolved)) for ii in range(len(recorded))]
    n_proc = max(1, min(processes or _cores(), len(tasks)))
    _SHARED.update(settings=resolved, inputs=recorded)
    results: dict[tuple[int, int], dict[str, Any]] = {}
    t0 = time.perf_counter()
    try:
        if n_proc == 1:
            outcomes = map(_score_one, tasks)
            for si, ii, res in outcomes:
                results[(si, ii)] = res
                say(f"{len(results)}/{len(tasks)} runs scored")
        else:
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(n_proc) as pool:
                for si, ii, res in pool.imap_unordered(_score_one, tasks):
                    results[(si, ii)] = res
                    say(f"{len(results)}/{len(tasks)} runs scored "
                        f"({time.perf_counter() - t0:.1f}s, {n_proc} processes)")
    finally:
        _SHARED.clear()
    rows = []
    for si, setting in enumerate(settings):
        per_input = [results[(si, ii)] for ii in range(len(recorded))]
        row = {"setting": setting, **pool_results(per_input),
               "cpu_s": round(sum(r["cpu_s"] for r in per_input), 3)}
        rows.append(row)
    return rows


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not on Linux)
        return os.cpu_count() or 1


def _label(setting: Mapping[str, Any]) -> str:
    return ", ".join(f"{k.removeprefix(PREFIX)}={v}" for k, v in setting.items()) or "(base)"


def format_table(rows: Sequence[Mapping[str, Any]], front: set[int], chosen: int) -> str:
    head = (f"{'':2} {'#':>3}  {'recall':>6} {'decid.':>6} {'prec.':>5} {'FA/100cd':>8} "
            f"{'delay':>5} {'excess':>6}  setting")
    lines = [head]

    def f(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for i, r in enumerate(rows):
        mark = ("*" if i == chosen else " ") + ("P" if i in front else " ")
        lines.append(
            f"{mark} {i + 1:>3}  {f(r['recall'], '.2f'):>6} {f(r['recall_decidable'], '.2f'):>6} "
            f"{f(r['episode_precision'], '.2f'):>5} "
            f"{f(r['false_alarms_per_100_campaign_days'], '.2f'):>8} "
            f"{f(r['median_delay_windows'], '.1f'):>5} "
            f"{f(r['median_excess_delay_windows'], '.1f'):>6}  {_label(r['setting'])}")
    lines.append("P: on the Pareto front (recall up, false alarms and excess delay down); "
                 "*: chosen")
    return "\n".join(lines)


def write_outputs(out: Path, rows: list[dict[str, Any]], front: list[int], chosen: int,
                  base_path: Path | None, recall_key: str, meta: dict[str, Any]) -> Path:
    """tune.csv, tune.json, tune.html, chosen.yaml; returns chosen.yaml's path."""
    out.mkdir(parents=True, exist_ok=True)
    cols = ["recall", "recall_decidable", "episode_precision",
            "false_alarms_per_100_campaign_days", "median_delay_windows",
            "median_delay_windows_abrupt", "median_excess_delay_windows", "incidents",
            "detected", "false_episodes", "campaign_days", "cpu_s"]
    keys = sorted({k for r in rows for k in r["setting"]})
    with open(out / "tune.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["n", *keys, *cols, "pareto", "chosen"])
        for i, r in enumerate(rows):
            w.writerow([i + 1, *(encode_record(r["setting"].get(k)).decode() for k in keys),
                        *("" if r.get(c) is None else r.get(c) for c in cols),
                        int(i in front), int(i == chosen)])
    (out / "tune.json").write_bytes(encode_pretty(
        {**meta, "recall_measure": recall_key, "rows": rows, "pareto": front,
         "chosen": chosen}))
    (out / "tune.html").write_text(_chart_html(rows, front, chosen, recall_key, meta),
                                   encoding="utf-8")
    return _write_chosen(out / "chosen.yaml", rows[chosen], base_path)


def _write_chosen(path: Path, row: Mapping[str, Any], base_path: Path | None) -> Path:
    data: dict[str, Any] = {}
    if base_path is not None:
        data = yaml.safe_load(base_path.read_text(encoding="utf-8")) or {}
    det = dict(data.get("detectors") or {})
    for key, value in row["setting"].items():
        det[key.removeprefix(PREFIX)] = value
    data["detectors"] = det

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    header = (f"# Written by ctrguard tune: {_label(row['setting'])}\n"
              f"# recall {fmt(row['recall'])}, decidable {fmt(row['recall_decidable'])}, "
              f"false alarms/100 campaign-days {fmt(row['false_alarms_per_100_campaign_days'])}, "
              f"median excess delay {fmt(row['median_excess_delay_windows'])} windows\n"
              f"# Based on {base_path or 'the embedded defaults'}.\n")
    path.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    load_config(path)  # what we hand over must load
    return path


def _chart_html(rows: Sequence[Mapping[str, Any]], front: list[int], chosen: int,
                recall_key: str, meta: Mapping[str, Any]) -> str:
    """A Plotly scatter (false alarms vs recall, colour: excess delay), front and choice
    marked; plotly.js inlined as in the report."""
    import html

    from ctrguard.replay.report import plotly_js

    js, version = plotly_js()
    pts = [{"i": i + 1, "fa": r["false_alarms_per_100_campaign_days"], "recall": r[recall_key],
            "excess": r["median_excess_delay_windows"], "label": _label(r["setting"]),
            "front": i in front, "chosen": i == chosen} for i, r in enumerate(rows)]
    data = encode_record({"points": pts, "recall": recall_key}).replace(b"<", b"\\u003c")
    script = """
var D = JSON.parse(document.getElementById("tune-data").textContent);
var P = D.points, F = P.filter(function (p) { return p.front; })
  .sort(function (a, b) { return a.fa - b.fa; });
var C = P.filter(function (p) { return p.chosen; });
Plotly.newPlot("tune-chart", [
  {x: P.map(function (p) { return p.fa; }), y: P.map(function (p) { return p.recall; }),
   text: P.map(function (p) { return "#" + p.i + " " + p.label + "<br>excess delay " +
     (p.excess === null ? "-" : p.excess); }),
   mode: "markers", name: "setting", hovertemplate: "%{text}<extra></extra>",
   marker: {size: 11, color: P.map(function (p) { return p.excess === null ? 0 : p.excess; }),
            colorscale: "Viridis", showscale: true,
            colorbar: {title: {text: "median excess<br>delay (windows)"}}}},
  {x: F.map(function (p) { return p.fa; }), y: F.map(function (p) { return p.recall; }),
   mode: "lines", name: "Pareto front", line: {color: "#d62728", dash: "dash"},
   hoverinfo: "skip"},
  {x: C.map(function (p) { return p.fa; }), y: C.map(function (p) { return p.recall; }),
   mode: "markers", name: "chosen", hoverinfo: "skip",
   marker: {size: 22, color: "rgba(0,0,0,0)", line: {color: "#d62728", width: 2}}}
], {height: 520, margin: {t: 30},
    xaxis: {title: {text: "false alarms per 100 campaign-days"}, rangemode: "tozero"},
    yaxis: {title: {text: D.recall === "recall" ? "recall" : "recall (decidable)"}},
    legend: {orientation: "h", y: -0.18}}, {displaylogo: false})
  .then(function () { document.body.dataset.ready = "1"; });
"""
    title = "ctrguard tune"
    inputs = ", ".join(html.escape(str(x)) for x in meta.get("inputs", []))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}'
            f'</title></head><body style="font-family:system-ui,sans-serif;margin:20px">'
            f"<h1 style=\"font-size:18px\">{title}: {len(rows)} settings over {inputs}</h1>"
            f'<p style="font-size:12px;color:#555">plotly.js {html.escape(version)}; hover a '
            f'point for its setting; the table is in tune.csv.</p><div id="tune-chart"></div>'
            f'<script type="application/json" id="tune-data">{data.decode()}</script>'
            f"<script>{js}</script><script>{script}</script></body></html>")


# --------------------------------------------------------------------------- CLI


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="sweep detector settings over labelled replays; write the chosen config",
        description="Decode and window each labelled input once, then run only the "
        "detectors for each setting (in processes) and score it as 'replay --labels' does. "
        "Settings are dotted detector names with lists of values (--set, or --grid FILE); "
        "their product is tried. Writes tune.csv, tune.json, tune.html (recall vs false "
        "alarms, colour: excess delay, the Pareto front marked) and chosen.yaml, a "
        "configuration for 'ctrguard run --config'.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage error, invalid setting or malformed "
        "input (with file and line), 130 interrupted.",
    )
    p.add_argument("--scenario", type=Path, action="append", default=[], metavar="DIR",
                   help="a directory as 'ctrguard generate' writes it (impressions.jsonl.gz, "
                   "clicks.jsonl.gz, incidents.csv, traps.csv); repeat for several")
    p.add_argument("--impressions", type=Path, default=None, metavar="PATH",
                   help="or one input given file by file (with --clicks and --labels)")
    p.add_argument("--clicks", type=Path, default=None, metavar="PATH")
    p.add_argument("--labels", type=Path, default=None, metavar="PATH")
    p.add_argument("--traps", type=Path, default=None, metavar="PATH")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a dotted detector setting and its values, e.g. "
                   "detectors.false_alarms_per_campaign_day=0.01,0.02,0.05; repeat: the "
                   "product is tried")
    p.add_argument("--grid", type=Path, default=None, metavar="PATH",
                   help="YAML with 'grid' (dotted setting -> list) and/or 'settings' (a list "
                   "of settings)")
    p.add_argument("--config", type=Path, default=None, metavar="PATH",
                   help="base configuration (default: the embedded defaults)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    p.add_argument("--max-false-alarms", type=float, default=2.0, metavar="N",
                   help="choose among settings with at most N false alarms per 100 "
                   "campaign-days (default 2)")
    p.add_argument("--recall", choices=sorted(RECALL_KEYS), default="all",
                   help="recall over all incidents or the decidable ones (default all)")
    p.add_argument("--processes", type=int, default=None, metavar="N",
                   help="worker processes (default: the cores available)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_tune)


def _inputs(args: argparse.Namespace) -> list[TuneInput]:
    inputs = []
    for d in args.scenario:
        traps = d / "traps.csv"
        inputs.append(TuneInput(str(d), d / "impressions.jsonl.gz", d / "clicks.jsonl.gz",
                                d / "incidents.csv", traps if traps.is_file() else None))
    if args.impressions or args.clicks or args.labels:
        if not (args.impressions and args.clicks and args.labels):
            raise ValueError("--impressions, --clicks and --labels go together")
        inputs.append(TuneInput(str(args.impressions.parent), args.impressions, args.clicks,
                                args.labels, args.traps))
    if not inputs:
        raise ValueError("give --scenario DIR or --impressions/--clicks/--labels")
    for inp in inputs:
        for path in (inp.impressions, inp.clicks, inp.labels, inp.traps):
            if path is not None and not path.is_file():
                raise ValueError(f"no such file: {path}")
    return inputs


def cmd_tune(args: argparse.Namespace) -> int:
    def say(m: str) -> None:
        if not args.quiet:
            print(f"tune: {m}", file=sys.stderr, flush=True)

    try:
        inputs = _inputs(args)
        grid: dict[str, list[Any]] = {}
        explicit: list[dict[str, Any]] = []
        lines: dict[str, int] = {}
        source = "--set"
        if args.grid is not None:
            if not args.grid.is_file():
                raise ValueError(f"--grid: no such file: {args.grid}")
            grid, explicit, lines = load_grid(args.grid)
            source = str(args.grid)
        for spec in args.sets:
            key, sep, values = spec.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"--set {spec!r}: expected KEY=V1,V2,...")
            grid[key.strip()] = parse_values(values)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.processes is not None and args.processes < 1:
        print("error: --processes must be at least 1", file=sys.stderr)
        return 2
    base = load_config(args.config)
    settings = expand_grid(grid, explicit) or [{}]
    for s in settings:  # every setting is checked before minutes of work
        apply_setting(base, s, source, lines)
    say(f"{len(settings)} settings x {len(inputs)} inputs")
    started = time.perf_counter()
    try:
        rows = run_tune(inputs, base, settings, processes=args.processes, say=say)
    except ReplayInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    recall_key = RECALL_KEYS[args.recall]
    front = pareto_front(rows, recall_key)
    chosen = choose(rows, args.max_false_alarms, recall_key)
    elapsed = time.perf_counter() - started
    meta = {"inputs": [i.name for i in inputs], "base_config": str(args.config or "defaults"),
            "max_false_alarms": args.max_false_alarms, "wall_s": round(elapsed, 3),
            "processes": args.processes or _cores()}
    path = write_outputs(args.out, rows, front, chosen, args.config, recall_key, meta)
    print(format_table(rows, set(front), chosen))
    print(f"{len(settings)} settings in {elapsed:.1f}s; chosen #{chosen + 1} written to {path} "
          f"(chart: {args.out / 'tune.html'})")
    return 0

"""``ctrguard report``: one self-contained HTML file from a replay's output directory.

What it shows (the README's "Report" section has a screenshot):

* an overview: the incidents (grouped as Slack groups them, :class:`ctrguard.sinks.incidents.
  IncidentTracker`, an ingestion stall as one incident, :class:`ctrguard.sinks.stalls.StallTracker`:
  kind, cause, campaign, driving segment, start, duration, windows held),
  alerts and quarantined windows per campaign, dead letters by reason, excluded traffic;
* a chart per incident and for the worst campaigns, and any campaign's series on demand:
  CTR over time with the expected band (``bands.jsonl``, written by ``replay --bands``),
  alerting windows marked, quarantined windows shaded, labels overlaid, impressions and
  clicks (observed and expected) beneath, so which side of the ratio broke is visible;
* with labels: the evaluation (``evaluation.json`` as ``replay --labels`` writes it, or
  computed by :func:`ctrguard.replay.evaluate.evaluate_many`), per kind, with the delay in excess of
  the clairvoyant test, and the misses and false alarms, each linking to its chart;
* with a diff (``ctrguard diff``): incidents and quarantined windows added, removed, changed.

Charts are drawn in the browser by Plotly (plotly.js from the ``plotly`` wheel on PyPI,
inlined with the data: the file needs no network to be viewed). A day of thousands of
campaigns stays small and fast: every campaign's ``all`` series is embedded, the segments
only for campaigns with incidents, labels or the most quarantined windows; charts are drawn
as they scroll into view.
"""

from __future__ import annotations

import html
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from ctrguard.replay.evaluate import ReplayInputError

__all__ = ["RunReport", "load_run", "render_html", "write_report", "plotly_js"]

ASSETS = Path(__file__).resolve().parent / "report_assets"
ALL = "all"
#: Windows shown either side of an incident in its chart (the rest by zooming out).
CONTEXT_WINDOWS = 36


def plotly_js() -> tuple[str, str]:
    """plotly.js as shipped in the ``plotly`` wheel, and its version."""
    try:
        import plotly
    except ImportError as exc:  # a dependency: only a broken install lacks it
        raise ReplayInputError("plotly", None, "the plotly package is needed for the "
                               "report's charts (pip install plotly)") from exc
    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    text = path.read_text(encoding="utf-8")
    match = re.search(r"plotly\.js v([\w.\-]+)", text[:400])
    return text, match.group(1) if match else "unknown"


# --------------------------------------------------------------------------- loading


@dataclass
class _Series:
    """One series' figures (and bands) by window start."""

    counts: dict[int, tuple[int, int, bool]] = field(default_factory=dict)  # n, k, quarantined
    bands: dict[int, list[float]] = field(default_factory=dict)


@dataclass
class RunReport:
    """Everything the page shows, read from a run directory."""

    run_dir: Path
    window_s: int
    summary: dict[str, Any]
    alerts: list[dict[str, Any]]
    incidents: list[dict[str, Any]]
    per_campaign: dict[str, dict[str, Any]]
    dead_letters: list[tuple[str, str, int, str]]   # stage, reason pattern, count, example
    series: dict[str, dict[str, _Series]]            # campaign -> segment -> series
    detailed: set[str]
    worst: list[str]
    labels: list[Any] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None
    diff: dict[str, Any] | None = None
    has_bands: bool = False
    load_s: float = 0.0


def _jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    from ctrguard.replay.run import open_lines

    with open_lines(path) as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield n, msgspec.json.decode(line)
                except msgspec.DecodeError as exc:
                    raise ReplayInputError(path, n, f"not JSON: {exc}") from None


_TIME_IN_REASON = re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+(?:Z|[+-]\d\d:\d\d)|\d+")


def _dead_letters(path: Path) -> list[tuple[str, str, int, str]]:
    """Dead letters counted by stage and reason (times and numbers in reasons folded)."""
    if not path.is_file():
        return []
    counts: Counter = Counter()
    example: dict[tuple[str, str], str] = {}
    for _, rec in _jsonl(path):
        reason = str(rec.get("reason", ""))
        key = (str(rec.get("stage", "")), _TIME_IN_REASON.sub("…", reason))
        counts[key] += 1
        example.setdefault(key, reason)
    return [(stage, pattern, n, example[(stage, pattern)])
            for (stage, pattern), n in counts.most_common()]


def _incidents(alerts: list[dict[str, Any]], window_s: int,
               gap_windows: int) -> list[dict[str, Any]]:
    """The alerts grouped into incidents as the Slack sink groups them: a campaign's alerts
    into its incidents, an ingestion stall's alerts (whatever their campaign) into one
    pipeline incident (:class:`ctrguard.sinks.stalls.StallTracker`) whose ``campaign_id`` is the
    stall's id, with ``campaigns`` the campaigns it affected and ``chart_campaign`` the one
    its chart shows (the most windows held)."""
    from ctrguard.records import Alert
    from ctrguard.sinks.incidents import IncidentTracker
    from ctrguard.sinks.stalls import StallTracker, is_stall

    names = [f.name for f in fields(Alert)]
    tracker = IncidentTracker(window_s=window_s, gap_windows=gap_windows)
    stalls = StallTracker(window_s=window_s, gap_windows=gap_windows)
    counted: dict[str, set[str]] = defaultdict(set)
    by_window: dict[int, list[Alert]] = defaultdict(list)
    for a in alerts:
        by_window[int(a["window_start_s"])].append(Alert(**{k: a[k] for k in names if k in a}))
    final: dict[str, Any] = {}
    for ws in sorted(by_window):
        batch = by_window[ws]
        stalled = [a for a in batch if is_stall(a)]
        for u in tracker.advance(ws) + stalls.advance(ws):
            final[u.incident.incident_id] = u.incident
        for u in tracker.observe([a for a in batch if not is_stall(a)] if stalled else batch):
            final[u.incident.incident_id] = u.incident
        if stalled:
            ups, added = stalls.observe(stalled, counted)
            for sid, cids in added.items():
                counted[sid].update(cids)
            for u in ups:
                final[u.incident.incident_id] = u.incident
    for inc in tracker.open_incidents():
        final[inc.incident_id] = inc
    held: dict[str, set[tuple[str, str, int]]] = defaultdict(set)
    stall_alerts: Counter = Counter()
    for a in alerts:
        # A stall's windows are its own, whatever their campaign (as its flags' links).
        scope = a.get("incident", "") if str(a.get("incident", "")).startswith("stall:") \
            else a["campaign_id"]
        if scope != a["campaign_id"]:
            stall_alerts[scope] += 1
        if a.get("quarantine"):
            held[scope].add((a["campaign_id"], a["segment"], int(a["window_start_s"])))
    out = []
    for inc in sorted(final.values(), key=lambda i: (i.first_window_start_s, i.campaign_id)):
        windows = [(cid, ws) for cid, _, ws in held[inc.campaign_id]
                   if inc.first_window_start_s <= ws < inc.last_window_end_s]
        row = {
            "id": inc.incident_id, "campaign_id": inc.campaign_id,
            "kinds": list(inc.kinds), "cause": inc.suspected_cause,
            "segment": inc.driving_segment, "segments": list(inc.segments),
            "severity": inc.severity, "start_s": inc.first_window_start_s,
            "end_s": inc.last_window_end_s, "duration_s": inc.duration_s,
            "alerts": inc.alert_count, "windows_held": len(windows),
            "clicks_delta": inc.clicks_delta,
        }
        if inc.scope == "pipeline":
            per = Counter(cid for cid, _ in windows)
            row.update(alerts=stall_alerts[inc.campaign_id],
                       campaigns=sorted(counted.get(inc.campaign_id, ())),
                       chart_campaign=min(per, key=lambda c: (-per[c], c)) if per else "")
        out.append(row)
    return out


def _figure_head(line: bytes) -> tuple[bytes, bytes]:
    """The raw JSON texts of a figure line's campaign id and segment (replay writes these
    two fields first; ``","segment":"`` cannot occur inside the id's text, whose quotes are
    escaped)."""
    cut = line.find(b',"segment":')
    end = line.find(b',"window_start"', cut)
    return line[15:cut], line[cut + 11:end]


def load_run(run_dir: str | Path, *, labels: str | Path | None = None,
             traps: str | Path | None = None, settings: Any = None,
             diff: Mapping[str, Any] | None = None, worst: int = 10,
             detail_limit: int = 300,
             progress: Callable[[str], None] | None = None) -> RunReport:
    """Read a replay's output directory (and labels) into a :class:`RunReport`."""
    from ctrguard.config import load_config
    from ctrguard.replay.evaluate import load_labels
    from ctrguard.replay.run import open_lines

    started = time.perf_counter()
    say = progress or (lambda _m: None)
    run = Path(run_dir)
    settings = settings or load_config(None)
    window_s = settings.windows.length
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise ReplayInputError(run, None, "not a replay output directory (no summary.json)")
    try:
        summary = msgspec.json.decode(summary_path.read_bytes())
    except msgspec.DecodeError as exc:
        raise ReplayInputError(summary_path, None, f"not JSON: {exc}") from None
    say("reading alerts")
    alerts = [a for _, a in _jsonl(run / "alerts.jsonl")] if (run / "alerts.jsonl").is_file() \
        else []
    incidents = _incidents(alerts, window_s, settings.slack.incident_gap_windows)
    label_list = load_labels(labels) if labels else []

    per_campaign: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"alerts": 0, "quarantined": set(), "incidents": 0, "series": set(),
                 "series_windows": 0})
    for a in alerts:
        pc = per_campaign[a["campaign_id"]]
        pc["alerts"] += 1
        if a.get("quarantine"):
            pc["quarantined"].add((a["segment"], int(a["window_start_s"])))
    for inc in incidents:
        for cid in inc.get("campaigns", (inc["campaign_id"],)):
            per_campaign[cid]["incidents"] += 1

    evaluation = None
    if label_list:
        evaluation = _evaluation(run, labels, traps, label_list, settings, say)

    ranked = sorted(per_campaign, key=lambda c: (-len(per_campaign[c]["quarantined"]),
                                                 -per_campaign[c]["alerts"], c))
    worst_ids = ranked[:worst]
    detailed: set[str] = {i.get("chart_campaign", i["campaign_id"]) for i in incidents} \
        | set(worst_ids)
    detailed |= {lab.campaign_id for lab in label_list}
    for side in ("added", "removed", "changed"):
        for row in (diff or {}).get("incidents", {}).get(side, []):
            detailed.add(row["campaign_id"])
    if len(detailed) > detail_limit:  # keep the most troubled
        order = {c: i for i, c in enumerate(ranked)}
        detailed = set(sorted(detailed, key=lambda c: order.get(c, len(order)))[:detail_limit])

    say("reading figures")
    series: dict[str, dict[str, _Series]] = defaultdict(dict)
    want = {msgspec.json.encode(c) for c in detailed}
    all_text = msgspec.json.encode(ALL)
    figures_path = run / "figures.jsonl"
    if not figures_path.is_file():
        raise ReplayInputError(run, None, "no figures.jsonl")
    raw_windows: Counter = Counter()       # by the campaign id's JSON text
    raw_series: dict[bytes, set[bytes]] = defaultdict(set)
    with open_lines(figures_path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            cid_text, seg_text = _figure_head(line)
            raw_windows[cid_text] += 1
            raw_series[cid_text].add(seg_text)
            if seg_text != all_text and cid_text not in want:
                continue  # counted, not parsed
            try:
                f = msgspec.json.decode(line)
                cid, seg = f["campaign_id"], f["segment"]
                ws = int(f["window_start_s"])
                rec = (int(f["impressions"]), int(f["clicks"]), f["status"] == "quarantined")
            except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
                raise ReplayInputError(figures_path, n, f"bad figure: {exc!r}") from None
            s = series[cid].get(seg)
            if s is None:
                s = series[cid][seg] = _Series()
            s.counts[ws] = rec
    for cid_text, windows in raw_windows.items():
        try:
            pc = per_campaign[msgspec.json.decode(cid_text)]
        except msgspec.DecodeError:
            raise ReplayInputError(figures_path, None, "a line does not start with "
                                   '{"campaign_id":...,"segment":... as replay writes '
                                   "figures") from None
        pc["series_windows"] = windows
        pc["series"] = raw_series[cid_text]

    bands_path = run / "bands.jsonl"
    has_bands = bands_path.is_file()
    if has_bands:
        from ctrguard.replay.bands import load_bands

        say("reading bands")
        for cid, ws, by_seg in load_bands(bands_path):
            camp = series.get(cid)
            if camp is None:
                continue
            keep = by_seg.items() if cid in detailed else ((ALL, by_seg.get(ALL)),)
            for seg, band in keep:
                s = camp.get(seg)
                if s is not None and band is not None:
                    s.bands[ws] = band
    for pc in per_campaign.values():
        pc["quarantined_windows"] = len(pc.pop("quarantined"))
        pc["series_count"] = len(pc.pop("series"))
    return RunReport(run, window_s, summary, alerts, incidents, dict(per_campaign),
                     _dead_letters(run / "deadletter.jsonl"), dict(series), detailed,
                     worst_ids, label_list, evaluation, dict(diff) if diff else None,
                     has_bands, time.perf_counter() - started)


def _evaluation(run: Path, labels: Any, traps: Any, label_list: list[Any], settings: Any,
                say: Callable[[str], None]) -> dict[str, Any]:
    """``evaluation.json`` of the run when replay wrote one, else computed the same way."""
    from ctrguard.replay.evaluate import evaluate_many, load_labels

    path = run / "evaluation.json"
    if path.is_file():
        return msgspec.json.decode(path.read_bytes())
    say("evaluating against the labels")
    sets: dict[str, Path] = {"ctrguard": run / "alerts.jsonl"}
    for p in sorted(run.glob("alerts_*.jsonl")):
        sets[p.stem.removeprefix("alerts_")] = p
    return evaluate_many(sets, label_list, run / "figures.jsonl",
                         window_s=settings.windows.length,
                         traps=load_labels(traps) if traps else [],
                         oracle_budget=settings.detectors.false_alarms_per_campaign_day)


# --------------------------------------------------------------------------- page data


def _round(a: np.ndarray, decimals: int) -> np.ndarray:
    return np.round(a, decimals)


def _campaign_data(camp: dict[str, _Series], alerts: list[dict[str, Any]],
                   window_s: int) -> dict[str, Any]:
    """Dense per-window arrays of each series, from the first to the last window seen."""
    starts = [ws for s in camp.values() for ws in s.counts]
    starts += [ws for s in camp.values() for ws in s.bands]
    t0, t1 = min(starts), max(starts)
    length = (t1 - t0) // window_s + 1
    by_seg: dict[str, list[list[Any]]] = defaultdict(list)
    for a in alerts:
        i = (int(a["window_start_s"]) - t0) // window_s
        if 0 <= i < length:
            by_seg[a["segment"]].append([i, a["kind"], a["suspected_cause"], a["severity"]])
    out: dict[str, Any] = {}
    # ``all`` first, then segments by name: the order of the series pickers.
    for seg in sorted(camp, key=lambda s: (s != ALL, s)):
        s = camp[seg]
        n = np.zeros(length, dtype=np.int64)
        k = np.zeros(length, dtype=np.int64)
        q = []
        for ws, (imp, clk, quarantined) in s.counts.items():
            i = (ws - t0) // window_s
            n[i], k[i] = imp, clk
            if quarantined:
                q.append(i)
        rec: dict[str, Any] = {"n": n, "k": k, "q": sorted(q), "a": sorted(by_seg.get(seg, []))}
        if s.bands:
            b = np.full((length, 4), np.nan)
            for ws, band in s.bands.items():
                i = (ws - t0) // window_s
                if 0 <= i < length:
                    b[i] = band
            rec["e"], rec["lo"], rec["hi"] = (_round(b[:, j], 7) for j in range(3))
            rec["m"] = _round(b[:, 3], 1)
        out[seg] = rec
    return {"t0": t0, "series": out}


def _numpy_as_json(obj: Any) -> Any:
    """Arrays as lists and numpy numbers as Python's (what JSON of the page data needs)."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise NotImplementedError(f"{type(obj).__name__} in the report's data")


_PAGE_ENCODER = msgspec.json.Encoder(enc_hook=_numpy_as_json)


def page_data(r: RunReport, eager_charts: int) -> dict[str, Any]:
    alerts_by_campaign: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in r.alerts:
        alerts_by_campaign[a["campaign_id"]].append(a)
    campaigns = {cid: _campaign_data(camp, alerts_by_campaign.get(cid, []), r.window_s)
                 for cid, camp in sorted(r.series.items()) if camp}
    labels: dict[str, list[list[Any]]] = defaultdict(list)
    for lab in r.labels:
        labels[lab.campaign_id].append([lab.segment, lab.kind, lab.start_s, lab.end_s])
    return {"window_s": r.window_s, "campaigns": campaigns, "labels": labels,
            "eager_charts": eager_charts}


# --------------------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _iso(s: int) -> str:
    return datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%d %H:%M")


def _dur(seconds: int) -> str:
    minutes = seconds // 60
    return f"{minutes // 60}h{minutes % 60:02d}" if minutes >= 60 else f"{minutes}m"


def _num(value: Any, spec: str = ",") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return format(value, spec)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "",
           row_classes: Sequence[str] | None = None) -> str:
    """A table from already escaped cells (``<td class=num>`` for numbers)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        rc = f' class="{row_classes[i]}"' if row_classes else ""
        body.append(f"<tr{rc}>" + "".join(row) + "</tr>")
    return (f'<div class="scroll {cls}"><table><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _td(value: Any, numeric: bool = False) -> str:
    return f'<td class="num">{_e(value)}</td>' if numeric else f"<td>{_e(value)}</td>"


def _explore_link(cid: str, seg: str, start_s: int, end_s: int, window_s: int,
                  text: str = "chart") -> str:
    from urllib.parse import urlencode

    q = urlencode({"c": cid, "s": "all" if seg == "*" else seg,
                   "from": start_s - CONTEXT_WINDOWS * window_s,
                   "to": end_s + CONTEXT_WINDOWS * window_s})
    return f'<a href="#explore?{_e(q)}">{_e(text)}</a>'


def _tiles(r: RunReport) -> str:
    s = r.summary
    tiles = [("events read", s.get("events_read")), ("events counted", s.get("events_counted")),
             ("excluded", s.get("excluded_total")), ("duplicates", s.get("duplicates")),
             ("dead-lettered", s.get("dead_lettered")), ("campaigns", s.get("campaigns")),
             ("series-windows", s.get("windows")),
             ("quarantined windows", s.get("quarantined_windows")),
             ("alerts", s.get("alerts")), ("incidents", len(r.incidents))]
    return '<div class="tiles">' + "".join(
        f'<div class="tile"><b>{_e(_num(v))}</b><span>{_e(k)}</span></div>'
        for k, v in tiles) + "</div>"


def _incident_table(r: RunReport) -> str:
    if not r.incidents:
        return '<p class="note">No incidents.</p>'
    rows = []
    for i, inc in enumerate(r.incidents, 1):
        rows.append([
            f'<td class="num"><a href="#inc-{i}">{i}</a></td>', _td(", ".join(inc["kinds"])),
            _td(inc["cause"]), _td(inc["campaign_id"]), _td(inc["segment"]),
            f'<td class="sev-{_e(inc["severity"])}">{_e(inc["severity"])}</td>',
            _td(_iso(inc["start_s"])), _td(_dur(inc["duration_s"]), True),
            _td(inc["windows_held"], True), _td(inc["alerts"], True),
            _td(_num(round(inc["clicks_delta"], 1), ",.1f"), True),
        ])
    return _table(["#", "kind", "suspected cause", "campaign", "driving segment", "severity",
                   "start (UTC)", "duration", "series-windows held", "alerts", "clicks Δ"], rows)


def _campaign_table(r: RunReport) -> str:
    order = sorted(r.per_campaign, key=lambda c: (-r.per_campaign[c]["quarantined_windows"],
                                                  -r.per_campaign[c]["alerts"], c))
    rows = []
    for cid in order:
        pc = r.per_campaign[cid]
        rows.append([_td(cid), _td(pc["series_count"], True), _td(pc["series_windows"], True),
                     _td(pc["alerts"], True), _td(pc["quarantined_windows"], True),
                     _td(pc["incidents"], True),
                     f'<td><button class="explore" data-cid="{_e(cid)}">chart</button></td>'])
    return _table(["campaign", "series", "series-windows", "alerts", "quarantined windows",
                   "incidents", ""], rows)


def _dead_letter_table(r: RunReport) -> str:
    if not r.dead_letters:
        return '<p class="note">No dead letters.</p>'
    rows = [[_td(stage), _td(pattern), _td(n, True), _td(example[:160])]
            for stage, pattern, n, example in r.dead_letters[:40]]
    more = len(r.dead_letters) - 40
    note = f'<p class="note">and {more} more reasons</p>' if more > 0 else ""
    return _table(["stage", "reason", "count", "example"], rows) + note


def _excluded_table(r: RunReport) -> str:
    excluded = r.summary.get("excluded") or {}
    if not excluded:
        return '<p class="note">No traffic excluded.</p>'
    return _table(["reason", "events"], [[_td(k), _td(_num(v), True)]
                                         for k, v in sorted(excluded.items())])


def excess_delays(result: Mapping[str, Any]) -> list[float]:
    """Per detected incident with a clairvoyant delay: detection delay minus it (windows)."""
    out = []
    for row in result.get("incident_details", ()):
        d, o = row.get("delay_windows"), row.get("oracle_delay_windows")
        if d is not None and o is not None:
            out.append(float(d) - float(o))
    return out


def _median(xs: Sequence[float]) -> float | None:
    return float(np.median(xs)) if xs else None


def _evaluation_html(r: RunReport) -> str:
    ev = r.evaluation or {}
    if not ev:
        return ""
    rows = []
    for name, res in ev.items():
        rows.append([
            _td(name),
            _td(f'{_num(res.get("recall"), ".2f")} ({res.get("detected")}/{res.get("incidents")})'),
            _td(f'{_num(res.get("recall_decidable"), ".2f")} '
                f'({res.get("detected_decidable")}/{res.get("decidable_incidents")})'),
            _td(f'{_num(res.get("episode_precision"), ".2f")} ({res.get("episodes")})'),
            _td(_num(res.get("false_alarms_per_100_campaign_days"), ".1f"), True),
            _td(_num(res.get("median_delay_windows"), ".1f"), True),
            _td(_num(res.get("median_delay_windows_abrupt"), ".1f"), True),
            _td(_num(_median(excess_delays(res)), ".1f"), True),
        ])
    parts = ["<h3>Headline</h3>", _table(
        ["system", "recall", "recall, decidable", "episode precision",
         "false alarms / 100 campaign-days", "median delay (windows)", "median delay, abrupt",
         "median excess over clairvoyant"], rows)]
    main = ev.get("ctrguard") or next(iter(ev.values()))
    oracle = main.get("oracle") or {}
    if oracle:
        parts.append(f'<p class="note">Clairvoyant test: alarms when its log-likelihood ratio '
                     f'reaches {_e(oracle.get("threshold_nats"))} nats, the threshold of a '
                     f'false-alarm budget of {_e(oracle.get("false_alarm_budget"))} per '
                     f'campaign-day; excess = delay − its delay, per incident.</p>')
    by_kind_excess: dict[str, list[float]] = defaultdict(list)
    for row in main.get("incident_details", ()):
        d, o = row.get("delay_windows"), row.get("oracle_delay_windows")
        if d is not None and o is not None:
            by_kind_excess[row["kind"]].append(float(d) - float(o))
    krows = [[_td(kind), _td(k.get("incidents"), True), _td(k.get("detected"), True),
              _td(_num(k.get("recall"), ".2f"), True), _td(k.get("decidable"), True),
              _td(_num(k.get("recall_decidable"), ".2f"), True),
              _td(_num(k.get("median_delay_windows"), ".1f"), True),
              _td(_num(_median(by_kind_excess.get(kind, [])), ".1f"), True)]
             for kind, k in sorted((main.get("per_kind") or {}).items())]
    parts += ["<h3>Per kind (ctrguard)</h3>", _table(
        ["kind", "incidents", "detected", "recall", "decidable", "recall, decidable",
         "median delay", "median excess"], krows)]
    w = r.window_s
    misses = [row for row in main.get("incident_details", ()) if not row.get("detected")]
    label_time = {(lab.campaign_id, lab.segment, lab.kind): (lab.start_s, lab.end_s)
                  for lab in r.labels}
    mrows = []
    for row in misses:
        start_s, end_s = label_time.get((row["campaign_id"], row["segment"], row["kind"]),
                                        (0, 0))
        mrows.append([_td(row["campaign_id"]), _td(row["segment"]), _td(row["kind"]),
                      _td(row["start"]), _td(row["end"]),
                      _td({True: "yes", False: "no"}.get(row.get("decidable"), "–")),
                      _td(_num(row.get("oracle_delay_windows"))),
                      f"<td>{_explore_link(row['campaign_id'], row['segment'], start_s, end_s, w)}</td>"])
    parts += [f"<h3 id=\"misses\">Misses ({len(misses)})</h3>",
              _table(["campaign", "segment", "kind", "start", "end", "decidable",
                      "clairvoyant delay", ""], mrows) if mrows else
              '<p class="note">None.</p>']
    false = main.get("false_episode_details", ())
    frows = [[_td(e["campaign_id"]), _td(", ".join(e.get("segments", ()))),
              _td(_iso(e["start_s"])), _td(_dur(e["end_s"] - e["start_s"]), True),
              _td(e.get("alerts"), True),
              f"<td>{_explore_link(e['campaign_id'], (e.get('segments') or ['all'])[0], e['start_s'], e['end_s'], w)}</td>"]
             for e in false]
    parts += [f"<h3 id=\"false-alarms\">False alarms ({len(frows)})</h3>",
              _table(["campaign", "segments", "start (UTC)", "span", "alerts", ""], frows)
              if frows else '<p class="note">None.</p>']
    return "\n".join(parts)


def _diff_html(r: RunReport) -> str:
    d = r.diff
    if not d:
        return ""
    w = r.window_s
    parts = [f'<p>From <code>{_e(d.get("a", {}).get("config"))}</code> (A) to '
             f'<code>{_e(d.get("b", {}).get("config"))}</code> (B); the charts show B.</p>']
    changes = d.get("settings_changed") or {}
    if changes:
        parts.append(_table(["setting", "A", "B"], [[_td(k), _td(v[0]), _td(v[1])]
                                                     for k, v in sorted(changes.items())]))
    rows, classes = [], []
    for side in ("added", "removed", "changed"):
        for inc in d.get("incidents", {}).get(side, []):
            rows.append([_td(side), _td(inc["campaign_id"]), _td(inc.get("segment", "")),
                         _td(", ".join(inc.get("kinds", []))), _td(_iso(inc["start_s"])),
                         _td(_dur(inc["end_s"] - inc["start_s"]), True),
                         _td(inc.get("windows_held_a", ""), True),
                         _td(inc.get("windows_held_b", ""), True), _td(inc.get("note", "")),
                         f"<td>{_explore_link(inc['campaign_id'], inc.get('segment', 'all'), inc['start_s'], inc['end_s'], w)}</td>"])
            classes.append(side)
    q = d.get("quarantined_windows", {})
    parts.append(f'<p>Quarantined series-windows: {_e(q.get("a", 0))} with A, '
                 f'{_e(q.get("b", 0))} with B: {_e(len(q.get("added", [])))} added, '
                 f'{_e(len(q.get("removed", [])))} removed.</p>')
    parts.append(_table(["change", "campaign", "segment", "kinds", "start (UTC)", "span",
                         "windows held (A)", "windows held (B)", "note", ""], rows,
                        row_classes=classes) if rows else
                 '<p class="note">No incident changed.</p>')
    return "\n".join(parts)


def _chart_cards(r: RunReport) -> tuple[str, str]:
    w = r.window_s
    inc_cards = []
    for i, inc in enumerate(r.incidents, 1):
        cid = inc.get("chart_campaign", inc["campaign_id"])
        if cid not in r.series:
            continue
        # A stall is many campaigns': its chart shows the one with the most windows held.
        scope = (f'{_e(inc["campaign_id"])} ({len(inc["campaigns"])} campaigns; chart of '
                 f'{_e(cid)})' if "campaigns" in inc else _e(cid))
        inc_cards.append(
            f'<div class="chart-card" id="inc-{i}" data-cid="{_e(cid)}" '
            f'data-segment="{_e(inc["segment"])}" '
            f'data-from="{inc["start_s"] - CONTEXT_WINDOWS * w}" '
            f'data-to="{inc["end_s"] + CONTEXT_WINDOWS * w}">'
            f'<div class="meta">Incident {i}: <b>{_e(", ".join(inc["kinds"]))}</b> · '
            f'{_e(inc["cause"])} · {scope} · driving segment '
            f'{_e(inc["segment"])} · {_e(_iso(inc["start_s"]))} for {_e(_dur(inc["duration_s"]))} '
            f'· {inc["windows_held"]} series-windows held · series '
            f'<select class="series"></select></div><div class="chart"></div></div>')
    worst_cards = []
    for cid in r.worst:
        if cid not in r.series:
            continue
        pc = r.per_campaign[cid]
        worst_cards.append(
            f'<div class="chart-card" data-cid="{_e(cid)}" data-segment="all">'
            f'<div class="meta"><b>{_e(cid)}</b>: {pc["quarantined_windows"]} quarantined '
            f'windows, {pc["alerts"]} alerts · series <select class="series"></select></div>'
            f'<div class="chart"></div></div>')
    return "\n".join(inc_cards), "\n".join(worst_cards)


def render_html(r: RunReport, *, eager_charts: int = 4, title: str | None = None) -> str:
    """The page: overview tables, evaluation, diff, charts; scripts and data inline."""
    js, js_version = plotly_js()
    data = _PAGE_ENCODER.encode(page_data(r, eager_charts))
    # "<" only occurs inside JSON strings, where \u003c means the same: no "</script>".
    data_text = data.replace(b"<", b"\\u003c").decode("utf-8")
    own_js = (ASSETS / "report.js").read_text(encoding="utf-8")
    css = (ASSETS / "report.css").read_text(encoding="utf-8")
    inc_cards, worst_cards = _chart_cards(r)
    title = title or f"ctrguard report: {r.run_dir.name}"
    band_note = "" if r.has_bands else (
        '<p class="note">This run has no bands.jsonl: charts show the observed series '
        'without the expected band (replay with <code>--bands</code> to add it).</p>')
    detail_note = ""
    if len(r.detailed) < len(r.per_campaign):
        detail_note = (f'<p class="note">Segments are embedded for {len(r.detailed)} of '
                       f'{len(r.per_campaign)} campaigns (incidents, labels, the most '
                       f'quarantined); the others show their <code>all</code> series.</p>')
    sections = []
    if r.diff:  # what a diff report is for comes first
        sections += ['<section id="diff"><h2>What would have fired: configuration diff</h2>',
                     _diff_html(r), "</section>"]
    sections += [
        '<section id="overview"><h2>Overview</h2>', _tiles(r),
        "<h3>Incidents</h3>", _incident_table(r),
        "<h3>Alerts and quarantined windows per campaign</h3>", _campaign_table(r),
        "<h3>Dead letters by reason</h3>", _dead_letter_table(r),
        "<h3>Excluded traffic</h3>", _excluded_table(r), "</section>",
    ]
    if r.evaluation:
        sections += ['<section id="evaluation"><h2>Evaluation against the labels</h2>',
                     _evaluation_html(r), "</section>"]
    sections += ['<section id="incidents"><h2>Incident charts</h2>', band_note,
                 inc_cards or '<p class="note">No incidents.</p>', "</section>",
                 '<section id="worst"><h2>Most quarantined campaigns</h2>', worst_cards,
                 "</section>",
                 '<section id="explorer"><h2>Any campaign</h2>', detail_note,
                 '<p>Campaign <select id="explore-campaign"></select> series '
                 '<select id="explore-series"></select></p>'
                 '<div class="chart" id="explore-chart"></div></section>']
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{_e(title)}</title><style>{css}</style></head><body>",
        f"<header><h1>{_e(title)}</h1><p>{_e(r.run_dir)} · window {r.window_s // 60} min · "
        f"generated {generated} · charts: plotly.js {_e(js_version)}</p></header>",
        '<div id="report-errors" hidden></div><main>', "\n".join(sections), "</main>",
        f'<script type="application/json" id="ctrguard-data">{data_text}</script>',
        f"<script>{js}</script><script>{own_js}</script></body></html>",
    ])


def write_report(run_dir: str | Path, out: str | Path | None = None, *,
                 progress: Callable[[str], None] | None = None, **options: Any) -> Path:
    """Write the report of ``run_dir`` (to ``run_dir/report.html`` by default)."""
    eager = options.pop("eager_charts", 4)
    title = options.pop("title", None)
    report = load_run(run_dir, progress=progress, **options)
    page = render_html(report, eager_charts=eager, title=title)
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path

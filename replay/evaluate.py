"""Score alert sets against labelled incidents: recall, decidability, episode precision, delay.

Definitions (``window_s`` is the window length, 300 s by default)

Match
    An alert matches an incident when it is on the incident's campaign, its window
    ``[window_start_s, window_start_s + window_s)`` overlaps ``[start, end + tolerance)``
    (``tolerance_windows`` windows after the end, 3 by default, since detectors need a window
    or two of evidence), and its segment fits: a label segment ``*`` fits every alert segment;
    a label on one segment (``device=mobile``) fits alerts on that segment and, unless
    ``strict_segments``, on ``all`` (the aggregate contains the broken segment, so an alarm
    there is a detection, if a less precise one).
Recall
    Detected incidents / incidents, overall and per kind.
Decidable incidents
    An incident is decidable when the clicks observed over it would be a less-than-1-in-100,000
    event (``decidable_p``) at the series' normal CTR, by a one-sided Poisson test in the
    direction of the change. Computed from the figures of the series the label names (``all``
    for ``*``): observed clicks O and impressions I over the windows lying wholly inside the
    incident (the overlapping ones if none does); expected clicks E = I x normal CTR, where the
    normal CTR is pooled over up to ``reference_windows`` windows on each side of the incident
    (36 = 3 hours by default) that overlap no labelled incident of the campaign. Neighbouring
    windows rather than the same hours of other days because replays are often shorter than a
    day and the CTR's daily cycle is mild; pooling both sides cancels a linear trend. Using the
    CTR (not the click rate) makes doubled impressions, at normal clicks, decidable too. The
    reference CTR is treated as known; with few reference clicks the test is optimistic.
    Incidents without reference impressions have ``decidable: null`` and count as undecidable.
Episodes
    The alerts of one campaign, sorted by window, merged while the gap between one alert's
    window end and the next alert's window start is at most ``merge_gap_windows`` windows.
    An episode is true when at least one of its alerts matches an incident. Episode precision
    = true / all episodes; false alarms are reported per 100 campaign-days.
Detection delay
    Whole windows from the window containing the incident start to the first matching
    alert's window (0 = alarm in the window where it began; alarms in earlier windows that
    overlap the incident count as 0). Medians overall and over abrupt faults
    (:data:`ctrguard.replay.generator.ABRUPT_FAULT_KINDS`).

>>> from ctrguard.replay.generator import Label
>>> labels = [Label("c1", "*", "click_outage", 3000, 6000)]
>>> alerts = [{"campaign_id": "c1", "segment": "all", "window_start_s": 3600},
...           {"campaign_id": "c2", "segment": "all", "window_start_s": 900}]
>>> r = evaluate(alerts, labels, [], window_s=300, campaign_days=2)
>>> r["recall"], r["episodes"], r["episode_precision"], r["false_alarms_per_100_campaign_days"]
(1.0, 2, 0.5, 50.0)
>>> r["median_delay_windows"]
2.0
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from ctrguard.errors import CtrGuardError
from ctrguard.replay.generator import (
    ABRUPT_FAULT_KINDS,
    CAUSE_OF_KIND,
    GRADUAL_KINDS,
    LABEL_HEADER,
    Label,
)

#: What installs what scoring labels needs (SciPy), for offline evaluation only.
EVAL_INSTALL = "pip install 'ctrguard[eval]'"

__all__ = [
    "ReplayInputError", "FigureIndex", "load_labels", "load_alerts", "load_figures",
    "decidability", "evaluate", "evaluate_many", "format_table", "require_eval",
]

ALL = "all"
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


class ReplayInputError(CtrGuardError):
    """An input file of replay or evaluation is unreadable or malformed (with file and line)."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


# --------------------------------------------------------------------------- loading


def _open_text_lines(path: str | Path) -> Iterable[tuple[int, bytes]]:
    from ctrguard.replay.run import open_lines

    try:
        fh = open_lines(path)
    except OSError as exc:
        raise ReplayInputError(path, None, f"cannot read: {exc.strerror}") from None
    with fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                yield n, line


def load_labels(path: str | Path) -> list[Label]:
    """Read ``campaign_id,segment,kind,start,end`` (times ISO-8601 with offset or epoch s)."""
    try:
        fh = open(path, newline="", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise ReplayInputError(path, None, f"cannot read: {exc.strerror}") from None
    labels = []
    with fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != LABEL_HEADER:
            raise ReplayInputError(path, 1, f"header must be {','.join(LABEL_HEADER)}")
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(LABEL_HEADER):
                raise ReplayInputError(path, line, f"expected 5 fields, got {len(row)}")
            cid, seg, kind, start, end = (c.strip() for c in row)
            if not cid or not seg or not kind:
                raise ReplayInputError(path, line, "campaign_id, segment and kind are required")
            try:
                start_s, end_s = _label_time(start), _label_time(end)
            except ValueError as exc:
                raise ReplayInputError(path, line, str(exc)) from None
            if end_s <= start_s:
                raise ReplayInputError(path, line, "end must be after start")
            labels.append(Label(cid, seg, kind, start_s, end_s))
    return labels


def _iso_to_s(text: str) -> int:
    """Epoch seconds from ISO-8601 with an offset (``Z`` allowed); ValueError otherwise."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"bad time {text!r}: not ISO-8601") from None
    if parsed.tzinfo is None:
        raise ValueError(f"bad time {text!r}: no timezone offset (use Z or +HH:MM)")
    return int(parsed.timestamp())


def _label_time(text: str) -> int:
    return int(text) if text.isdigit() else _iso_to_s(text)


def _window_start(obj: Mapping[str, Any]) -> int:
    ws = obj.get("window_start_s")
    if isinstance(ws, int) and not isinstance(ws, bool):
        return ws
    text = obj.get("window_start")
    if isinstance(text, str):
        return _iso_to_s(text)
    raise ValueError("needs window_start_s (epoch seconds) or window_start (ISO-8601)")


def _alert_record(obj: Any) -> tuple[str, str, int, str]:
    if not isinstance(obj, Mapping):
        raise ValueError("not a JSON object")
    cid, seg = obj.get("campaign_id"), obj.get("segment", ALL)
    if not isinstance(cid, str) or not isinstance(seg, str):
        raise ValueError("campaign_id and segment must be strings")
    return cid, seg, _window_start(obj), str(obj.get("severity") or "")


def load_alerts(path: str | Path) -> list[dict[str, Any]]:
    """Alerts from a JSONL(.gz) file, each reduced to campaign, segment, window, severity,
    suspected cause and incident id."""
    out = []
    for n, line in _open_text_lines(path):
        try:
            obj = msgspec.json.decode(line)
            cid, seg, ws, sev = _alert_record(obj)
        except (msgspec.DecodeError, ValueError) as exc:
            raise ReplayInputError(path, n, f"bad alert: {exc}") from None
        out.append({"campaign_id": cid, "segment": seg, "window_start_s": ws, "severity": sev,
                     "suspected_cause": str(obj.get("suspected_cause") or ""),
                     "incident": str(obj.get("incident") or "")})
    return out


class FigureIndex:
    """Impressions and clicks per series and window start, from figure records.

    Windows without a figure count as zero (the engine omits empty series-windows).
    A window reported twice keeps the last report.
    """

    def __init__(self, figures: Iterable[Mapping[str, Any]] = ()):
        self._series: dict[tuple[str, str], dict[int, tuple[int, int]]] = defaultdict(dict)
        self._span: dict[str, list[int]] = {}
        for fig in figures:
            self.add(fig["campaign_id"], fig.get("segment", ALL), _window_start(fig),
                     int(fig["impressions"]), int(fig["clicks"]))

    def add(self, campaign_id: str, segment: str, window_start_s: int, impressions: int,
            clicks: int) -> None:
        self._series[(campaign_id, segment)][window_start_s] = (impressions, clicks)
        span = self._span.get(campaign_id)
        if span is None:
            self._span[campaign_id] = [window_start_s, window_start_s]
        else:
            span[0] = min(span[0], window_start_s)
            span[1] = max(span[1], window_start_s)

    def has_series(self, campaign_id: str, segment: str) -> bool:
        return (campaign_id, segment) in self._series

    def counts(self, campaign_id: str, segment: str, window_start_s: int) -> tuple[int, int]:
        return self._series.get((campaign_id, segment), {}).get(window_start_s, (0, 0))

    def series_per_campaign(self) -> float:
        """Median number of series (``all`` and segments) per campaign."""
        per: Counter = Counter(cid for cid, _ in self._series)
        return float(statistics.median(per.values())) if per else 0.0

    def campaign_days(self, window_s: int) -> float:
        """Observed campaign-days: per campaign, first window start to last window end."""
        return sum((hi + window_s - lo) for lo, hi in self._span.values()) / 86400

    def __len__(self) -> int:
        return sum(len(s) for s in self._series.values())


def load_figures(path: str | Path) -> FigureIndex:
    """Figures from a JSONL(.gz) file (as written by replay)."""
    index = FigureIndex()
    for n, line in _open_text_lines(path):
        try:
            fig = msgspec.json.decode(line)
            index.add(fig["campaign_id"], fig.get("segment", ALL), _window_start(fig),
                      int(fig["impressions"]), int(fig["clicks"]))
        except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
            raise ReplayInputError(path, n, f"bad figure: {exc!r}") from None
    return index


# --------------------------------------------------------------------------- decidability


def _windows_of(lab: Label, window_s: int) -> list[int]:
    """Window starts lying wholly inside the label, or overlapping it if none does."""
    first_full = -(-lab.start_s // window_s) * window_s
    inside = list(range(first_full, lab.end_s - window_s + 1, window_s))
    if inside:
        return inside
    return list(range(lab.start_s // window_s * window_s, lab.end_s, window_s))


def decidability(
    labels: Sequence[Label],
    figures: FigureIndex | Iterable[Mapping[str, Any]],
    *,
    window_s: int = 300,
    reference_windows: int = 36,
    decidable_p: float = 1e-5,
    oracle_nats: float | None = None,
) -> list[dict[str, Any]]:
    """Per label (same order): observed and expected clicks, p-value and ``decidable``.

    With ``oracle_nats``, also ``oracle_delay_windows``: the delay of a clairvoyant test
    that knows the incident's start and its size in hindsight (the ratio observed/expected
    over the incident) and alarms when its log-likelihood ratio reaches ``oracle_nats``
    (the threshold a detector needs for its false-alarm budget). No online detector at that
    budget can be expected to be faster on average; ``None`` if even it never decides.

    >>> from ctrguard.replay.generator import Label
    >>> figs = [{"campaign_id": "c1", "segment": "all", "window_start_s": w * 300,
    ...          "impressions": 1000, "clicks": 0 if 10 <= w < 14 else 20} for w in range(30)]
    >>> d = decidability([Label("c1", "*", "click_outage", 3000, 4200)], figs)
    >>> d[0]["observed"], d[0]["expected"], d[0]["decidable"], d[0]["p_value"] < 1e-30
    (0, 80.0, True, True)
    """
    index = figures if isinstance(figures, FigureIndex) else FigureIndex(figures)
    busy: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for lab in labels:
        busy[lab.campaign_id].append((lab.start_s, lab.end_s))
    out = []
    for lab in labels:
        segment = ALL if lab.segment in ("*", ALL) else lab.segment
        note = None
        if not index.has_series(lab.campaign_id, segment) and segment != ALL:
            note = f"no figures for segment {segment}; tested on {ALL}"
            segment = ALL
        wins = _windows_of(lab, window_s)
        obs_i = obs_c = 0
        for ws in wins:
            i, c = index.counts(lab.campaign_id, segment, ws)
            obs_i += i
            obs_c += c
        ref_i = ref_c = ref_n = 0
        spans = busy[lab.campaign_id]
        # A gradual change (creative fatigue) may leave the CTR low after it: its normal
        # level is the one before it.
        sides = ((-1, wins[0]),) if lab.kind in GRADUAL_KINDS else ((-1, wins[0]),
                                                                     (1, wins[-1]))
        for direction, origin in sides:
            for k in range(1, reference_windows + 1):
                ws = origin + direction * k * window_s
                if any(ws < e and ws + window_s > s for s, e in spans):
                    continue
                i, c = index.counts(lab.campaign_id, segment, ws)
                ref_i += i
                ref_c += c
                ref_n += 1
        record: dict[str, Any] = {
            "series": segment, "windows": len(wins), "impressions": obs_i, "observed": obs_c,
            "reference_windows": ref_n, "reference_impressions": ref_i,
            "reference_clicks": ref_c,
        }
        if ref_i == 0 or obs_i == 0:
            record.update(reference_ctr=None, expected=None, p_value=None, decidable=None,
                          note=note or ("no impressions in the reference windows" if ref_i == 0
                                        else "no impressions during the incident"))
            out.append(record)
            continue
        ctr = ref_c / ref_i
        expected = ctr * obs_i
        if oracle_nats is not None:
            record["oracle_delay_windows"] = _oracle_delay(
                index, lab, segment, window_s, ctr, obs_c / expected if expected > 0 else 1.0,
                oracle_nats, gradual=lab.kind in GRADUAL_KINDS)
        poisson = require_eval()
        if obs_c < expected:
            p = float(poisson.cdf(obs_c, expected))
        else:
            p = float(poisson.sf(obs_c - 1, expected)) if expected > 0 else (
                1.0 if obs_c == 0 else 0.0)
        record.update(reference_ctr=ctr, expected=round(expected, 6), p_value=p,
                      decidable=p < decidable_p)
        if note:
            record["note"] = note
        out.append(record)
    return out


def require_eval() -> Any:
    """SciPy's Poisson distribution, which scoring labels needs (:func:`decidability`); a
    :class:`CtrGuardError` naming the ``eval`` extra where SciPy is not installed.

    Imported when a label is scored, not on every ``ctrguard`` command that builds its
    parser (SciPy costs seconds to import); commands that replay before they score call it
    first, so a missing extra stops them before the replay.
    """
    try:
        from scipy.stats import poisson
    except ImportError as exc:
        raise CtrGuardError(f"scoring labels needs SciPy ({exc}); install the evaluation "
                            f"extra: {EVAL_INSTALL}") from None
    return poisson


def _oracle_delay(index: FigureIndex, lab: Label, segment: str, window_s: int, ctr: float,
                  ratio: float, nats: float, gradual: bool = False) -> int | None:
    """Windows from the one holding the start until a clairvoyant LLR reaches ``nats``.

    The test knows the start and, in hindsight, the size: a step to ``ratio`` times the
    normal CTR, or with ``gradual`` a linear path from the normal CTR at the start to the
    ratio that, along that path, gives the clicks observed over the incident.

    >>> from ctrguard.replay.generator import Label
    >>> idx = FigureIndex([{"campaign_id": "c", "segment": "all", "window_start_s": w * 300,
    ...                     "impressions": 100, "clicks": 0} for w in range(10)])
    >>> _oracle_delay(idx, Label("c", "*", "click_outage", 0, 3000), "all", 300, 0.02, 0.0, 5.0)
    2
    >>> fade = FigureIndex([{"campaign_id": "c", "segment": "all", "window_start_s": w * 300,
    ...                      "impressions": 10_000, "clicks": 200 - 10 * w} for w in range(12)])
    >>> lab = Label("c", "*", "creative_fatigue", 0, 3600)
    >>> _oracle_delay(fade, lab, "all", 300, 0.02, 0.725, 11.7, gradual=True)
    5
    """
    if ratio == 1.0 or ctr <= 0:
        return None
    first = lab.start_s // window_s * window_s
    starts = list(range(first, lab.end_s, window_s))
    counts = [index.counts(lab.campaign_id, segment, ws) for ws in starts]
    if gradual:
        # r_j = 1 + slope * (j + 0.5) / T, the slope fitted to the clicks observed.
        T = len(starts)
        e1 = sum(i * ctr for i, _ in counts)
        ef = sum(i * ctr * (j + 0.5) / T for j, (i, _) in enumerate(counts))
        observed = sum(c for _, c in counts)
        slope = (observed - e1) / ef if ef > 0 else 0.0
        path = [max(1.0 + slope * (j + 0.5) / T, 1e-3) for j in range(T)]
    else:
        path = [ratio] * len(starts)
    total = 0.0
    for j, ((i, c), r) in enumerate(zip(counts, path, strict=True)):
        if r == 1.0:
            continue
        total += (c * math.log(r) if r > 0 and c else 0.0) - (r - 1.0) * i * ctr
        if total >= nats:
            return j
    return None


# --------------------------------------------------------------------------- evaluation


#: Incident ids of pipeline-level incidents (an ingestion stall) start with this.
PIPELINE_INCIDENT_PREFIX = "stall:"


@dataclass(frozen=True, slots=True)
class _Alert:
    campaign_id: str
    segment: str
    ws: int
    cause: str = ""
    incident: str = ""

    @property
    def pipeline(self) -> bool:
        """An alert of a pipeline-level incident: it belongs to campaign ``*`` episodes."""
        return self.incident.startswith(PIPELINE_INCIDENT_PREFIX)

    @property
    def scope(self) -> str:
        return "*" if self.pipeline else self.campaign_id


def _coerce_alerts(alerts: Iterable[Mapping[str, Any]], min_severity: str | None) -> list[_Alert]:
    floor = SEVERITY_RANK.get(min_severity, -1) if min_severity else -1
    out = []
    for n, obj in enumerate(alerts, 1):
        try:
            cid, seg, ws, sev = _alert_record(obj)
        except ValueError as exc:
            raise ReplayInputError("<alerts>", n, f"bad alert: {exc}") from None
        if floor >= 0 and sev and SEVERITY_RANK.get(sev, 99) < floor:
            continue
        out.append(_Alert(cid, seg, ws, str(obj.get("suspected_cause") or ""),
                          str(obj.get("incident") or "")))
    return out


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def evaluate(
    alerts: Iterable[Mapping[str, Any]],
    labels: Sequence[Label],
    figures: FigureIndex | Iterable[Mapping[str, Any]],
    *,
    window_s: int = 300,
    campaign_days: float | None = None,
    tolerance_windows: int = 3,
    merge_gap_windows: int = 2,
    reference_windows: int = 36,
    decidable_p: float = 1e-5,
    strict_segments: bool = False,
    min_severity: str | None = None,
    traps: Sequence[Label] = (),
    decided: list[dict[str, Any]] | None = None,
    details: bool = True,
) -> dict[str, Any]:
    """Score one alert set; the definitions are in the module docstring.

    Parameters
    ----------
    alerts
        Mappings with ``campaign_id``, ``segment`` and ``window_start_s`` (or an ISO
        ``window_start``); ``severity`` is used with ``min_severity``.
    labels
        The incidents (:func:`load_labels`).
    figures
        Figure mappings or a :class:`FigureIndex`, for decidability and campaign-days.
    campaign_days
        Denominator of the false-alarm rate; computed from the figures when None.
    traps
        Optional trap labels: false episodes overlapping a trap of their campaign are
        counted per trap kind, to show which trap fooled the detector.
    decided
        Precomputed :func:`decidability` output (``evaluate_many`` shares it).
    """
    index = figures if isinstance(figures, FigureIndex) else FigureIndex(figures)
    if decided is None:
        decided = decidability(labels, index, window_s=window_s,
                               reference_windows=reference_windows, decidable_p=decidable_p)
    if campaign_days is None:
        campaign_days = index.campaign_days(window_s)
    tol_s = tolerance_windows * window_s
    recs = sorted(_coerce_alerts(alerts, min_severity), key=lambda a: (a.scope, a.ws))

    by_campaign: dict[str, list[tuple[int, Label]]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_campaign[lab.campaign_id].append((i, lab))

    def matches(a: _Alert, lab: Label) -> bool:
        if a.ws >= lab.end_s + tol_s or a.ws + window_s <= lab.start_s:
            return False
        if lab.campaign_id == "*":
            # A pipeline incident is detected by a pipeline-level alert only: N campaign
            # incidents for one stall are N false escalations, not a detection.
            return a.pipeline
        if lab.segment == "*" or a.segment == lab.segment:
            return True
        return not strict_segments and a.segment == ALL

    first_ws: dict[int, int] = {}
    causes: dict[int, Counter] = defaultdict(Counter)
    # Episodes: per campaign, and one scope ``*`` for the alerts of pipeline incidents.
    episodes: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    gap_s = merge_gap_windows * window_s
    for a in recs:
        cands = by_campaign.get(a.campaign_id, []) + by_campaign.get("*", [])
        hit = [i for i, lab in cands if matches(a, lab)]
        for i in hit:
            if i not in first_ws or a.ws < first_ws[i]:
                first_ws[i] = a.ws
            causes[i][a.cause] += 1
        if (current is not None and current["campaign_id"] == a.scope
                and a.ws <= current["end_s"] + gap_s):
            current["end_s"] = max(current["end_s"], a.ws + window_s)
            current["alerts"] += 1
            current["true"] = current["true"] or bool(hit)
            current["segments"].add(a.segment)
        else:
            current = {"campaign_id": a.scope, "start_s": a.ws, "end_s": a.ws + window_s,
                       "alerts": 1, "true": bool(hit), "segments": {a.segment}}
            episodes.append(current)
    n_true = sum(1 for e in episodes if e["true"])
    n_false = len(episodes) - n_true

    trap_hits: Counter = Counter()
    if traps:
        traps_by_campaign: dict[str, list[Label]] = defaultdict(list)
        for t in traps:
            traps_by_campaign[t.campaign_id].append(t)
        for e in episodes:
            if e["true"]:
                continue
            for t in traps_by_campaign.get(e["campaign_id"], []) + (
                    traps_by_campaign.get("*", []) if e["campaign_id"] != "*" else []):
                if e["start_s"] < t.end_s + tol_s and e["end_s"] > t.start_s:
                    trap_hits[t.kind] += 1

    # Incidents
    per_kind: dict[str, dict[str, Any]] = {}
    incident_rows = []
    delays: list[float] = []
    delays_abrupt: list[float] = []
    oracle_abrupt: list[float] = []
    excess: list[float] = []
    n_detected = n_dec = n_dec_detected = n_oracle = n_oracle_detected = 0
    n_caused = n_cause_right = 0
    kind_acc: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"incidents": 0, "detected": 0, "decidable": 0, "detected_decidable": 0,
                 "clairvoyant": 0, "detected_clairvoyant": 0, "cause_right": 0,
                 "delays": [], "excess": []})
    for i, lab in enumerate(labels):
        d = decided[i]
        detected = i in first_ws
        delay = None
        if detected:
            delay = float(max(0, (first_ws[i] - lab.start_s // window_s * window_s) // window_s))
            delays.append(delay)
            if lab.kind in ABRUPT_FAULT_KINDS:
                delays_abrupt.append(delay)
        acc = kind_acc[lab.kind]
        acc["incidents"] += 1
        acc["detected"] += detected
        n_detected += detected
        oracle = d.get("oracle_delay_windows")
        if lab.kind in ABRUPT_FAULT_KINDS and oracle is not None:
            oracle_abrupt.append(float(oracle))
        if oracle is not None:
            # Decidable at the online threshold: the clairvoyant test decides within it.
            n_oracle += 1
            acc["clairvoyant"] += 1
            if detected:
                n_oracle_detected += 1
                acc["detected_clairvoyant"] += 1
                assert delay is not None
                excess.append(delay - oracle)
                acc["excess"].append(delay - oracle)
        if d.get("decidable"):
            n_dec += 1
            acc["decidable"] += 1
            n_dec_detected += detected
            acc["detected_decidable"] += detected
        if delay is not None:
            acc["delays"].append(delay)
        cause = None
        if detected:
            # The cause the incident's alerts name most often (first named on a tie).
            cause = causes[i].most_common(1)[0][0]
            right = CAUSE_OF_KIND.get(lab.kind)
            if right is not None:
                n_caused += 1
                n_cause_right += cause in right
                acc["cause_right"] += cause in right
        if details:
            incident_rows.append({
                "campaign_id": lab.campaign_id, "segment": lab.segment, "kind": lab.kind,
                "start": lab.row()[3], "end": lab.row()[4], "detected": detected,
                "delay_windows": delay, "decidable": d.get("decidable"),
                "p_value": d.get("p_value"), "observed_clicks": d.get("observed"),
                "expected_clicks": d.get("expected"), "series": d.get("series"),
                "suspected_cause": cause,
            })
            if "oracle_delay_windows" in d:
                incident_rows[-1]["oracle_delay_windows"] = d["oracle_delay_windows"]
    for kind in sorted(kind_acc):
        acc = kind_acc[kind]
        per_kind[kind] = {
            "incidents": acc["incidents"], "detected": acc["detected"],
            "recall": _ratio(acc["detected"], acc["incidents"]),
            "decidable": acc["decidable"], "detected_decidable": acc["detected_decidable"],
            "recall_decidable": _ratio(acc["detected_decidable"], acc["decidable"]),
            "clairvoyant_decidable": acc["clairvoyant"],
            "detected_clairvoyant_decidable": acc["detected_clairvoyant"],
            "recall_clairvoyant_decidable": _ratio(acc["detected_clairvoyant"],
                                                   acc["clairvoyant"]),
            "median_delay_windows": _median(acc["delays"]),
            "median_excess_delay_windows": _median(acc["excess"]),
            "cause_right": acc["cause_right"],
            "cause_accuracy": (_ratio(acc["cause_right"], acc["detected"])
                               if kind in CAUSE_OF_KIND else None),
        }
    result: dict[str, Any] = {
        "alerts": len(recs),
        "incidents": len(labels),
        "detected": n_detected,
        "recall": _ratio(n_detected, len(labels)),
        "decidable_incidents": n_dec,
        "detected_decidable": n_dec_detected,
        "recall_decidable": _ratio(n_dec_detected, n_dec),
        "clairvoyant_decidable_incidents": n_oracle,
        "detected_clairvoyant_decidable": n_oracle_detected,
        "recall_clairvoyant_decidable": _ratio(n_oracle_detected, n_oracle),
        "median_excess_delay_windows": _median(excess),
        "cause_right": n_cause_right,
        "cause_judged": n_caused,
        "cause_accuracy": _ratio(n_cause_right, n_caused),
        "episodes": len(episodes),
        "true_episodes": n_true,
        "false_episodes": n_false,
        "episode_precision": _ratio(n_true, len(episodes)),
        "campaign_days": round(campaign_days, 6),
        "false_alarms_per_100_campaign_days": (
            round(100 * n_false / campaign_days, 6) if campaign_days > 0 else None),
        "median_delay_windows": _median(delays),
        "median_delay_windows_abrupt": _median(delays_abrupt),
        "per_kind": per_kind,
    }
    if any("oracle_delay_windows" in d for d in decided):
        result["median_oracle_delay_windows_abrupt"] = _median(oracle_abrupt)
    if traps:
        result["false_episodes_on_traps"] = dict(sorted(trap_hits.items()))
    if details:
        result["incident_details"] = incident_rows
        result["false_episode_details"] = [
            {"campaign_id": e["campaign_id"], "start_s": e["start_s"], "end_s": e["end_s"],
             "alerts": e["alerts"], "segments": sorted(e["segments"])}
            for e in episodes if not e["true"]
        ]
    result["params"] = {
        "window_s": window_s, "tolerance_windows": tolerance_windows,
        "merge_gap_windows": merge_gap_windows, "reference_windows": reference_windows,
        "decidable_p": decidable_p, "strict_segments": strict_segments,
        "min_severity": min_severity,
    }
    return result


def evaluate_many(
    alert_sets: Mapping[str, Iterable[Mapping[str, Any]] | str | Path],
    labels: Sequence[Label],
    figures: FigureIndex | Iterable[Mapping[str, Any]] | str | Path,
    **options: Any,
) -> dict[str, dict[str, Any]]:
    """Evaluate several alert sets side by side: ``{"ctrguard": {...}, "ztest": {...}}``.

    Values of ``alert_sets`` and ``figures`` may be paths to JSONL(.gz) files. Decidability
    is computed once from the figures and shared.
    """
    if isinstance(figures, str | Path):
        index = load_figures(figures)
    elif isinstance(figures, FigureIndex):
        index = figures
    else:
        index = FigureIndex(figures)
    window_s = options.get("window_s", 300)
    budget = options.pop("oracle_budget", None)
    nats = None
    if budget:
        # The threshold of a test that spends the budget over every series of a campaign:
        # P(false alarm per series-window) = budget / (windows per day * series).
        nats = math.log(max(86400 / window_s, 1.0) * max(index.series_per_campaign(), 1.0)
                        / budget)
    decided = decidability(labels, index, window_s=window_s,
                           reference_windows=options.get("reference_windows", 36),
                           decidable_p=options.get("decidable_p", 1e-5), oracle_nats=nats)
    out = {}
    for name, alerts in alert_sets.items():
        if isinstance(alerts, str | Path):
            alerts = load_alerts(alerts)
        out[name] = evaluate(alerts, labels, index, decided=decided, **options)
        if nats is not None:
            out[name]["oracle"] = {"threshold_nats": round(nats, 4), "false_alarm_budget": budget,
                                   "series_per_campaign": index.series_per_campaign()}
    return out


def fmt_figure(value: float | None, spec: str) -> str:
    """A figure for a table: ``-`` when there is none (``None`` or NaN).

    >>> fmt_figure(0.8731, ".2f"), fmt_figure(None, ".2f"), fmt_figure(float("nan"), ".1f")
    ('0.87', '-', '-')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A short fixed-width table of the headline metrics, one row per alert set.

    >>> print(format_table({"x": {"recall": 0.5, "recall_decidable": 1.0,
    ...     "episode_precision": 0.25, "false_alarms_per_100_campaign_days": 12.5,
    ...     "median_delay_windows": 1.0, "median_delay_windows_abrupt": None,
    ...     "detected": 1, "incidents": 2, "detected_decidable": 1, "decidable_incidents": 1,
    ...     "episodes": 4}}))
    system     recall        decidable     precision  FA/100cd  delay  delay(abrupt)
    x          0.50 (1/2)    1.00 (1/1)    0.25 (4)       12.5    1.0              -
    """
    lines = ["system     recall        decidable     precision  FA/100cd  delay  delay(abrupt)"]
    for name, r in results.items():
        recall = f"{fmt_figure(r.get('recall'), '.2f')} ({r.get('detected')}/{r.get('incidents')})"
        dec = (f"{fmt_figure(r.get('recall_decidable'), '.2f')} "
               f"({r.get('detected_decidable')}/{r.get('decidable_incidents')})")
        prec = f"{fmt_figure(r.get('episode_precision'), '.2f')} ({r.get('episodes')})"
        lines.append(
            f"{name:<10} {recall:<13} {dec:<13} {prec:<10} "
            f"{fmt_figure(r.get('false_alarms_per_100_campaign_days'), '8.1f'):>8} "
            f"{fmt_figure(r.get('median_delay_windows'), '6.1f'):>6} "
            f"{fmt_figure(r.get('median_delay_windows_abrupt'), '14.1f'):>14}"
        )
    oracle = next((r for r in results.values() if "median_oracle_delay_windows_abrupt" in r),
                  None)
    if oracle is not None:
        nats = oracle.get("oracle", {}).get("threshold_nats")
        lines.append(f"clairvoyant test at the same false-alarm budget ({fmt_figure(nats, '.1f')} "
                     f"nats): median abrupt delay "
                     f"{fmt_figure(oracle['median_oracle_delay_windows_abrupt'], '.1f')} windows")
    return "\n".join(lines)

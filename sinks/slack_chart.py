"""A chart of an incident's driving series for its Slack thread: CTR, expected band, alerts.

Two halves, on two threads:

* :class:`SeriesHistory` (the Slack sink, on the dataflow thread): keeps the counts of the
  last ``charts.windows`` windows of every series of the campaigns it sees, in fixed-size
  integer arrays (three 4-byte slots per series and window: no object per figure), and the
  expected band the detectors stated in alerting windows. :meth:`SeriesHistory.series_for`
  cuts the driving series of an incident out of it as a small JSON document that travels
  with the incident update through the outbox (bounded: at most ``charts.windows`` points).
  Nothing is rendered there.
* :func:`render_chart` (the delivery thread): draws that document with matplotlib's Agg
  canvas (no pyplot, no global state) into PNG bytes, which the notifier uploads with
  ``files_upload_v2``.

The detectors state an expected CTR and its interval only in windows where they alert, so
the band is drawn there; other windows show the observed CTR only. The history lives in the
process: after a restart a chart starts at the restart.

>>> h = SeriesHistory(windows=4, window_s=300)
>>> from ctrguard.records import Figure, WindowDecision
>>> def dec(w, clicks):
...     f = Figure("c1", "all", "", "", w * 300, 1000, clicks, clicks / 1000, "ok")
...     return WindowDecision("c1", w * 300, w * 300 + 300, (f,), ())
>>> h.observe([dec(w, 20) for w in range(6)] + [dec(6, 2)])
>>> [p[0] // 300 for p in h.points("c1", "all")], h.points("c1", "all")[-1]
([3, 4, 5, 6], [1800, 1000, 2])
"""

from __future__ import annotations

import io
import math
from array import array
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from ctrguard.records import Alert, WindowDecision

__all__ = ["SeriesHistory", "render_chart", "series_document"]

_MAX_U32 = 0xFFFFFFFF


class _Campaign:
    __slots__ = ("last_wid", "segs", "bands")

    def __init__(self) -> None:
        self.last_wid = -1
        #: segment -> [wid, impressions, clicks] * windows, as unsigned 32-bit integers.
        self.segs: dict[str, array] = {}
        #: window start -> segment -> [baseline, low, high, severity, kind]; alerts only.
        self.bands: dict[int, dict[str, list[Any]]] = {}


class SeriesHistory:
    """The recent windows of every series, per campaign (bounded; evicts idle campaigns).

    Parameters
    ----------
    windows
        Windows kept per series (``charts.windows``).
    window_s
        Window length in seconds.
    """

    def __init__(self, windows: int, window_s: int):
        self.windows = windows
        self.window_s = window_s
        self._camps: dict[str, _Campaign] = {}
        self._empty = array("I", [0]) * (3 * windows)
        self._latest_wid = 0
        self._next_evict_wid = 0

    def __len__(self) -> int:
        return len(self._camps)

    def observe(self, items: Iterable[Any]) -> None:
        """Take a batch of the Slack sink (``WindowDecision`` records; other items ignored)."""
        camps = self._camps
        window_s, k = self.window_s, self.windows
        latest = self._latest_wid
        for d in items:
            if type(d) is not WindowDecision:
                continue
            wid = d.window_start_s // window_s
            c = camps.get(d.campaign_id)
            if c is None:
                c = camps[d.campaign_id] = _Campaign()
            if wid > c.last_wid:
                c.last_wid = wid
                if wid > latest:
                    latest = wid
            slot = (wid % k) * 3
            segs = c.segs
            for f in d.figures:
                arr = segs.get(f.segment)
                if arr is None:
                    arr = segs[f.segment] = array("I", self._empty)
                try:
                    arr[slot] = wid
                    arr[slot + 1] = f.impressions
                    arr[slot + 2] = f.clicks
                except OverflowError:  # (over 4e9 in a window: drawn at the cap)
                    arr[slot + 1] = min(max(f.impressions, 0), _MAX_U32)
                    arr[slot + 2] = min(max(f.clicks, 0), _MAX_U32)
            if d.alerts:
                self._bands(c, d.alerts, wid)
        self._latest_wid = latest
        if latest >= self._next_evict_wid:
            self._evict(latest)

    def _bands(self, c: _Campaign, alerts: Iterable[Alert], wid: int) -> None:
        for a in alerts:
            c.bands.setdefault(a.window_start_s, {})[a.segment] = [
                a.baseline_ctr, a.ctr_low, a.ctr_high, a.severity, a.kind]
        floor = (c.last_wid - self.windows + 1) * self.window_s
        for ws in [ws for ws in c.bands if ws < floor]:
            del c.bands[ws]

    def _evict(self, latest: int) -> None:
        """Forget campaigns with no window among the last ``windows`` (once per period)."""
        floor = latest - self.windows
        for cid in [cid for cid, c in self._camps.items() if c.last_wid < floor]:
            del self._camps[cid]
        self._next_evict_wid = latest + self.windows

    def points(self, campaign_id: str, segment: str) -> list[list[int]]:
        """``[window_start_s, impressions, clicks]`` of the last windows, oldest first
        (windows without events are left out)."""
        c = self._camps.get(campaign_id)
        arr = None if c is None else c.segs.get(segment)
        if c is None or arr is None:
            return []
        k = self.windows
        out = []
        for wid in range(c.last_wid - k + 1, c.last_wid + 1):
            slot = (wid % k) * 3
            if wid >= 0 and arr[slot] == wid and (arr[slot + 1] or arr[slot + 2]):
                out.append([wid * self.window_s, int(arr[slot + 1]), int(arr[slot + 2])])
        return out

    def series_for(self, incident: Any) -> dict[str, Any] | None:
        """The chart's data for an incident (None when nothing is known of its series)."""
        segment = incident.driving_segment
        points = self.points(incident.campaign_id, segment)
        c = self._camps.get(incident.campaign_id)
        if not points or c is None:
            return None
        first = points[0][0]
        bands = [[ws, *segs[segment][:3]] for ws, segs in sorted(c.bands.items())
                 if segment in segs and ws >= first]
        return series_document(incident, segment, self.window_s, points, bands)


def series_document(incident: Any, segment: str, window_s: int, points: list[list[int]],
                    bands: list[list[Any]]) -> dict[str, Any]:
    """What a chart is drawn from (JSON-ready; travels in the outbox entry)."""
    return {"v": 1, "campaign_id": incident.campaign_id, "segment": segment,
            "window_s": window_s, "status": incident.status,
            "incident_start_s": incident.first_window_start_s,
            "incident_end_s": incident.last_window_end_s,
            "points": points, "bands": [[int(b[0]), *(float(x) for x in b[1:4])]
                                        for b in bands]}


def _dt(epoch_s: int) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=UTC)


def render_chart(doc: dict[str, Any], *, title: str = "", dpi: int = 100) -> bytes:
    """PNG bytes of the chart: observed CTR per window, the expected CTR and its interval
    where the detectors stated them, the incident's span shaded, alerting windows marked,
    and impressions beneath (so a drop of clicks and a flood of impressions look different).

    Uses matplotlib's object API with the Agg canvas: safe on a background thread.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import DateFormatter
    from matplotlib.figure import Figure

    window_s = int(doc["window_s"])
    pts = doc["points"]
    xs = [_dt(p[0] + window_s / 2) for p in pts]
    ctr = [100.0 * p[2] / p[1] if p[1] > 0 else math.nan for p in pts]
    fig = Figure(figsize=(8, 4.2), dpi=dpi)
    FigureCanvasAgg(fig)
    ax, vol = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    start, end = _dt(doc["incident_start_s"]), _dt(doc["incident_end_s"])
    ax.axvspan(start, end, color="#f4c7c3", alpha=0.5, lw=0, label="incident")
    bands = doc.get("bands") or []
    if bands:
        bx = [_dt(b[0] + window_s / 2) for b in bands]
        ax.fill_between(bx, [100 * b[2] for b in bands], [100 * b[3] for b in bands],
                        color="#9ecae1", alpha=0.6, step="mid", label="expected interval")
        ax.plot(bx, [100 * b[1] for b in bands], ls="--", color="#3182bd", lw=1,
                label="expected CTR")
        alert_x = set(bx)
        ax.scatter([x for x in xs if x in alert_x],
                   [c for x, c in zip(xs, ctr, strict=True) if x in alert_x],
                   color="#d62728", zorder=5, s=24, label="alerting window")
    ax.plot(xs, ctr, color="#222222", lw=1.5, marker="o", ms=2.5, label="observed CTR")
    ax.set_ylabel("CTR (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7, ncol=3, framealpha=0.8)
    ax.set_title(title or f"{doc['campaign_id']} · {doc['segment']}", fontsize=10, loc="left")
    # One step-filled area, not one bar patch per window (a patch each costs more to draw).
    vol.fill_between(xs, [p[1] for p in pts], step="mid", color="#bbbbbb", lw=0,
                     label="impressions")
    vol.set_ylim(bottom=0)
    vol2 = vol.twinx()
    vol2.plot(xs, [p[2] for p in pts], color="#ff7f0e", lw=1, label="clicks")
    vol.set_ylabel("impr.", fontsize=8)
    vol2.set_ylabel("clicks", fontsize=8, color="#ff7f0e")
    vol.xaxis.set_major_formatter(DateFormatter("%H:%M", tz=UTC))
    vol.set_xlabel("UTC")
    # Fixed margins that fit the labels above: tight_layout would draw the figure once more
    # to measure them (a third of the chart's time).
    fig.subplots_adjust(left=0.08, right=0.92, top=0.93, bottom=0.12, hspace=0.08)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": "ctrguard"})
    return buf.getvalue()

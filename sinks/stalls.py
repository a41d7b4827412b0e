"""Pipeline-level incidents: a source that stalls for most campaigns at once is one incident.

When a Kafka source stops delivering for most campaigns at once, the detectors emit one alert
per affected campaign-window with ``kind``, ``suspected_cause`` and ``detector`` equal to
``ingestion_stall`` and ``incident = "stall:<source>:<window_start_s>"`` (``source`` is
``impressions`` or ``clicks``, the window the first stalled one; the same string from every
shard and worker). Those alerts are not campaign incidents: :class:`StallTracker` (pure, no
I/O) folds all alerts of one stall id into **one** :class:`~ctrguard.sinks.incidents.Incident` of scope
``pipeline`` that names the topic, the time and how many campaigns are affected, grows as
campaigns and windows are added, and resolves once ``gap_windows`` windows have closed after
its last stalled window without another one.

The campaigns already counted live outside the state (a Redis set per stall in the sink), so
a re-delivered alert adds nothing: :meth:`StallTracker.observe` takes the campaigns known to
be counted and returns the new ones to add.

>>> from ctrguard.records import Alert
>>> from ctrguard.sinks.incidents import iso
>>> def stall(cid, ws, first=0):
...     return Alert(f"{cid}{ws}", cid, "all", iso(ws), iso(ws + 300), ws, 0, 0, 0.0,
...                  "ingestion_stall", "critical", "ingestion_stall", 0.02, 0.0, 0.0, 0.0,
...                  1.0, 0.0, 900.0, "ingestion_stall", True, f"stall:impressions:{first}")
>>> t = StallTracker(window_s=300, gap_windows=3, topics={"impressions": "ctr.impressions"})
>>> ups, new = t.observe([stall("c1", 0), stall("c2", 0)], {})
>>> [(u.kind, u.incident.topic, u.incident.campaigns_affected) for u in ups], new
([('open', 'ctr.impressions', 2)], {'stall:impressions:0': ['c1', 'c2']})
>>> t.observe([stall("c1", 0)], {"stall:impressions:0": {"c1"}})   # re-delivered
([], {})
>>> ups, _ = t.observe([stall("c3", 300)], {})
>>> [(u.kind, u.revision, u.incident.campaigns_affected) for u in ups]
[('update', 2, 3)]
>>> t.advance(600 + 2 * 300)                  # two quiet windows after the last stalled one
[]
>>> (u,) = t.advance(600 + 3 * 300)
>>> u.kind, u.incident.status, u.incident.resolved_at
('resolve', 'resolved', '1970-01-01T00:25:00Z')
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ctrguard.records import Alert
from ctrguard.sinks.incidents import (
    SEVERITY_RANK,
    Incident,
    IncidentUpdate,
    SeriesFigure,
    _end_s,
    _figure_json,
    iso,
    make_incident_id,
)

__all__ = ["STALL_CAUSE", "StallTracker", "is_stall", "parse_stall_id"]

STALL_CAUSE = "ingestion_stall"
STATE_VERSION = 1
_STALL_ID = re.compile(r"stall:([a-z][a-z_]{0,31}):(-?\d{1,15})")


def parse_stall_id(incident: str) -> tuple[str, int] | None:
    """``(source, window_start_s)`` of a stall incident id, or None for any other id.

    >>> parse_stall_id("stall:clicks:1767225600"), parse_stall_id("1767225600:bot_clicks")
    (('clicks', 1767225600), None)
    """
    m = _STALL_ID.fullmatch(incident)
    return None if m is None else (m[1], int(m[2]))


def is_stall(a: Alert) -> bool:
    """An alert of a pipeline-level stall (grouped by its incident id, not its campaign)."""
    return a.incident.startswith("stall:") and parse_stall_id(a.incident) is not None


class StallTracker:
    """Groups stall alerts into one pipeline incident per stall id. Pure; state is JSON.

    Parameters
    ----------
    window_s
        Window length in seconds.
    gap_windows
        Windows closed after the last stalled one, without another, that end the stall.
    topics
        Source name (``impressions``, ``clicks``) -> Kafka topic (``kafka.topics``).
    """

    def __init__(self, window_s: int = 300, gap_windows: int = 3,
                 topics: Mapping[str, str] | None = None):
        if window_s <= 0 or gap_windows < 1:
            raise ValueError("window_s and gap_windows must be positive")
        self.window_s = window_s
        self.gap_windows = gap_windows
        self.topics = dict(topics or {})
        self._states: dict[str, dict[str, Any]] = {}
        self.stale_alerts = 0
        #: ``(alert, incident_id)`` of every stall alert observed, for the quarantine flags
        #: (:meth:`ctrguard.sinks.quarantine.QuarantineStore.link`), as ``IncidentTracker.assigned``.
        #: Re-delivered alerts and alerts of a stall already over are linked too: the id
        #: follows from the alert alone, and linking is idempotent.
        self.assigned: list[tuple[Alert, str]] = []

    # ------------------------------------------------------------------ state

    def import_state(self, stall_id: str, state: dict[str, Any] | None) -> None:
        if state is None:
            self._states.pop(stall_id, None)
            return
        if state.get("v") != STATE_VERSION or state.get("stall_id") != stall_id:
            raise ValueError(f"unsupported stall state for {stall_id!r}")
        self._states[stall_id] = dict(state)

    def export_state(self, stall_id: str) -> dict[str, Any] | None:
        st = self._states.get(stall_id)
        return None if st is None else dict(st)

    def stall_ids(self) -> list[str]:
        """The stalls this tracker holds state for, sorted."""
        return sorted(self._states)

    def open_stalls(self) -> dict[str, int]:
        """Stall id -> end of its last stalled window, for the stalls still open."""
        return {sid: st["last_end_s"] for sid, st in self._states.items()
                if st["status"] == "open"}

    def resolve_due_s(self, last_end_s: int) -> int:
        return last_end_s + self.gap_windows * self.window_s

    # ------------------------------------------------------------------ updates

    def observe(self, alerts: Iterable[Alert], counted: Mapping[str, set[str]]
                ) -> tuple[list[IncidentUpdate], dict[str, list[str]]]:
        """Fold stall alerts in; return the updates (at most one per stall) and, per stall,
        the campaigns newly counted (to add to what ``counted`` holds)."""
        by_id: dict[str, list[Alert]] = {}
        for a in alerts:
            by_id.setdefault(a.incident, []).append(a)
        updates: list[IncidentUpdate] = []
        added: dict[str, list[str]] = {}
        for sid in sorted(by_id):
            parsed = parse_stall_id(sid)
            if parsed is None:
                raise ValueError(f"not a stall incident id: {sid!r}")
            batch = sorted(by_id[sid], key=lambda a: (a.window_start_s, a.campaign_id))
            incident_id = make_incident_id(sid, parsed[1])
            self.assigned.extend((a, incident_id) for a in batch)
            st = self._states.get(sid)
            if st is not None and st["status"] != "open":
                self.stale_alerts += len(batch)      # a stall already over: said and done
                continue
            opened = st is None
            if st is None:
                first = batch[0]
                st = self._states[sid] = {
                    "v": STATE_VERSION, "stall_id": sid, "source": parsed[0],
                    "topic": self.topics.get(parsed[0], parsed[0]), "status": "open",
                    "revision": 0, "first_s": parsed[1], "last_s": first.window_start_s,
                    "last_end_s": _end_s(first), "severity": first.severity,
                    "campaigns": 0, "kinds": [], "detectors": [], "resolved_at": None,
                    "headline": _figure_json(SeriesFigure.of(first))}
            known = counted.get(sid, set())
            new = sorted({a.campaign_id for a in batch} - known)
            changed = bool(new)
            for a in batch:
                if _end_s(a) > st["last_end_s"]:
                    st["last_s"], st["last_end_s"] = a.window_start_s, _end_s(a)
                    changed = True
                if SEVERITY_RANK.get(a.severity, 0) > SEVERITY_RANK.get(st["severity"], 0):
                    st["severity"] = a.severity
                    changed = True
                for key, value in (("kinds", a.kind), ("detectors", a.detector)):
                    if value not in st[key]:
                        st[key] = sorted([*st[key], value])
            if new:
                st["campaigns"] += len(new)
                added[sid] = new
            if opened or changed:
                st["revision"] += 1
                updates.append(IncidentUpdate("open" if opened else "update",
                                              self._snapshot(st)))
        return updates, added

    def advance(self, clock_end_s: int, stall_ids: Iterable[str] | None = None
                ) -> list[IncidentUpdate]:
        """Event time reached ``clock_end_s``: resolve the open stalls quiet long enough."""
        ids = sorted(self._states) if stall_ids is None else sorted(set(stall_ids))
        updates = []
        for sid in ids:
            st = self._states.get(sid)
            if st is None or st["status"] != "open":
                continue
            due = self.resolve_due_s(st["last_end_s"])
            if clock_end_s >= due:
                st["status"], st["resolved_at"] = "resolved", iso(due)
                st["revision"] += 1
                updates.append(IncidentUpdate("resolve", self._snapshot(st)))
        return updates

    def _snapshot(self, st: dict[str, Any]) -> Incident:
        sid = st["stall_id"]
        return Incident(
            incident_id=make_incident_id(sid, st["first_s"]), campaign_id=sid,
            status="open" if st["status"] == "open" else "resolved",
            revision=st["revision"], severity=st["severity"], suspected_cause=STALL_CAUSE,
            driving_segment="all", segments=("all",), kinds=tuple(st["kinds"]),
            detectors=tuple(st["detectors"]), alert_count=st["campaigns"],
            first_window_start=iso(st["first_s"]), last_window_end=iso(st["last_end_s"]),
            first_window_start_s=st["first_s"], last_window_end_s=st["last_end_s"],
            clicks_delta=0.0, revenue_delta=None,
            headline=SeriesFigure(**st["headline"]), resolved_at=st["resolved_at"],
            duration_s=st["last_end_s"] - st["first_s"], scope="pipeline",
            topic=st["topic"], source=st["source"], campaigns_affected=st["campaigns"])

"""Quarantine by incident: which flags an incident holds, and releasing many flags at once.

The Slack step groups alerts into incidents (:mod:`ctrguard.sinks.incidents`) and, through
:class:`IncidentFlagLinks`, records in Redis which incident each quarantining alert belongs
to (:meth:`ctrguard.sinks.quarantine.QuarantineStore.link`); the flags holding those alerts carry
the incident's id, in console mode as with Slack. With ``quarantine.auto_release`` a flag
is released when every incident of its alerts is resolved.

People release by incident (:func:`release_incident`) or by campaign and time range
(:func:`release_range`), with one audit entry per flag, and list open incidents with the
windows they hold (:func:`list_incidents`).

Keys (``P`` = ``redis.key_prefix``; incident ids are hex digests, a stall's too, written as
they are; a stall's ``campaign_id`` is its ``stall:<source>:<start>``):

- ``P:link:ALERT_ID`` string, the incident of a quarantining alert (expires with the
  retention period);
- ``P:incident:ID`` hash: ``incident_id``, ``status`` (``open`` / ``resolved``),
  ``revision``, ``campaign_id``, ``first_window_start_s``, ``last_window_end_s``,
  ``severity``, ``kinds``, ``resolved_at`` (event time), ``updated_at`` (writer's clock);
- ``P:incflags:ID`` set of the flag keys holding an alert of the incident;
- ``P:incidents`` sorted set of incident ids, scored by the writer's clock at their last
  update (epoch seconds); members older than the retention period are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from ctrguard.errors import QuarantineError
from ctrguard.sinks.quarantine import (
    QUARANTINED,
    RELEASED,
    FlagStatus,
    QuarantineReader,
    QuarantineStore,
    _redis_errors,
    _text,
    encode_key_part,
)

if TYPE_CHECKING:
    from ctrguard.config import Settings

log = logging.getLogger(__name__)

#: Flags read or released per round trip.
PAGE = 500


# --------------------------------------------------------------------------- the Slack hook


class IncidentFlagLinks:
    """The Slack step's link to the quarantine flags: queued on the step's own transaction,
    so an incident's state and its links are written together (or not at all).

    Parameters
    ----------
    settings
        The whole configuration (``redis.key_prefix``, ``quarantine``, ``windows``).
    client
        The Slack step's Redis client.
    """

    def __init__(self, settings: Settings, client: redis.Redis):
        self.store = QuarantineStore(client, settings.quarantine, settings.redis.key_prefix,
                                     window_length_s=settings.windows.length_s, actor="slack")

    def queue(self, pipeline: redis.client.Pipeline, tracker: Any,
              updates: Sequence[Any], *more: Any) -> None:
        """Queue the links of the alerts ``tracker`` (and the trackers in ``more``, such as
        the stalls') put in incidents and the incidents of ``updates`` on ``pipeline``
        (nothing when there are neither)."""
        links = [*tracker.assigned, *(pair for t in more for pair in t.assigned)]
        self.store.link(links, [u.incident for u in updates], pipeline=pipeline)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class IncidentSummary:
    """An incident as the quarantine sees it: its windows held and released."""

    incident_id: str
    status: str
    campaign_id: str
    first_window_start_s: int | None
    last_window_end_s: int | None
    severity: str
    kinds: tuple[str, ...]
    resolved_at: str | None
    updated_at: str | None
    #: The incident's flags still quarantined, newest window first.
    held: tuple[FlagStatus, ...] = ()
    released: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "incident_id": self.incident_id, "status": self.status,
            "campaign_id": self.campaign_id,
            "first_window_start_s": self.first_window_start_s,
            "last_window_end_s": self.last_window_end_s, "severity": self.severity,
            "kinds": list(self.kinds), "resolved_at": self.resolved_at,
            "updated_at": self.updated_at, "held_count": len(self.held),
            "released_count": self.released,
            "held": [{"campaign_id": f.campaign_id, "segment": f.segment,
                      "window_start_s": f.window_start_s} for f in self.held],
        }


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def incident_key(prefix: str, incident_id: str) -> str:
    return f"{prefix}:incident:{incident_id}"


def incident_flags_key(prefix: str, incident_id: str) -> str:
    return f"{prefix}:incflags:{incident_id}"


def _read_flags(reader: QuarantineReader, keys: Sequence[str]
                ) -> list[tuple[str, dict[str, str]]]:
    """``(key, fields)`` of the flags at ``keys`` that still exist, in order."""
    out = []
    for i in range(0, len(keys), PAGE):
        chunk = keys[i:i + PAGE]
        with _redis_errors(reader.client, f"reading {len(chunk)} flags"):
            pipe = reader.client.pipeline(transaction=False)
            for k in chunk:
                pipe.hgetall(k)
            rows = pipe.execute()
        for k, row in zip(chunk, rows, strict=True):
            if row:
                out.append((k, {_text(a): _text(b) for a, b in row.items()}))
    return out


def _links(fields: dict[str, str]) -> dict[str, str]:
    """alert id -> incident id of a flag's ``links`` field."""
    return dict(p.split("=", 1) for p in fields.get("links", "").split(",") if "=" in p)


def _summary(incident_id: str, fields: dict[str, str],
             flags: list[tuple[str, dict[str, str]]], reader: QuarantineReader
             ) -> IncidentSummary:
    statuses = sorted((reader._flag_status(k, f) for k, f in flags),
                      key=lambda f: (-f.window_start_s, f.campaign_id, f.segment))
    return IncidentSummary(
        incident_id=incident_id, status=fields.get("status", "unknown"),
        campaign_id=fields.get("campaign_id", ""),
        first_window_start_s=_int(fields.get("first_window_start_s")),
        last_window_end_s=_int(fields.get("last_window_end_s")),
        severity=fields.get("severity", ""),
        kinds=tuple(k for k in fields.get("kinds", "").split(",") if k),
        resolved_at=fields.get("resolved_at") or None,
        updated_at=fields.get("updated_at") or None,
        held=tuple(f for f in statuses if f.state == QUARANTINED),
        released=sum(1 for f in statuses if f.state == RELEASED),
    )


def get_incident(reader: QuarantineReader, incident_id: str
                 ) -> tuple[IncidentSummary, list[tuple[str, dict[str, str]]]] | None:
    """The incident and its flags (``(key, fields)``), or None if Redis knows neither."""
    prefix = reader.key_prefix
    with _redis_errors(reader.client, f"reading incident {incident_id}"):
        pipe = reader.client.pipeline(transaction=True)
        pipe.hgetall(incident_key(prefix, incident_id))
        pipe.smembers(incident_flags_key(prefix, incident_id))
        fields, members = pipe.execute()
    fields = {_text(a): _text(b) for a, b in fields.items()}
    flags = _read_flags(reader, sorted(_text(m) for m in members))
    if not fields and not flags:
        return None
    return _summary(incident_id, fields, flags, reader), flags


def list_incidents(reader: QuarantineReader, *, include_resolved: bool = False,
                   limit: int = 100) -> list[IncidentSummary]:
    """Incidents, most recently updated first: open ones only, or all within retention."""
    prefix = reader.key_prefix
    index = f"{prefix}:incidents"
    with _redis_errors(reader.client, "listing incidents"):
        ids = [_text(i) for i in reader.client.zrevrange(index, 0, -1)]
        pipe = reader.client.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(incident_key(prefix, i))
            pipe.smembers(incident_flags_key(prefix, i))
        rows = pipe.execute()
    out: list[IncidentSummary] = []
    gone = []
    for n, incident_id in enumerate(ids):
        fields = {_text(a): _text(b) for a, b in rows[2 * n].items()}
        if not fields:
            gone.append(incident_id)   # expired: drop it from the index too
            continue
        if not include_resolved and fields.get("status") != "open":
            continue
        flags = _read_flags(reader, sorted(_text(m) for m in rows[2 * n + 1]))
        out.append(_summary(incident_id, fields, flags, reader))
        if len(out) >= limit:
            break
    if gone:
        with _redis_errors(reader.client, "listing incidents"):
            reader.client.zrem(index, *gone)
    return out


# --------------------------------------------------------------------------- releasing


@dataclass
class BulkRelease:
    """What a bulk release did (or, with ``dry_run``, would do)."""

    dry_run: bool
    #: Flags released (or that would be), in the order they were considered.
    released: list[FlagStatus] = field(default_factory=list)
    #: Flags left as they are, with the reason.
    skipped: list[tuple[FlagStatus, str]] = field(default_factory=list)


def release_incident(store: QuarantineStore, incident_id: str, *, by: str, reason: str,
                     dry_run: bool = False) -> BulkRelease:
    """Release every window an incident holds: its quarantined flags whose alerts all
    belong to it (a flag that also holds another alarm stays quarantined and is listed
    as skipped). One audit entry per flag released, ``incident_id`` set.

    Raises :class:`QuarantineError` for an incident Redis does not know and for a release
    without ``by`` or ``reason``.
    """
    by, reason = _who_why(by, reason)
    found = get_incident(store, incident_id)
    if found is None:
        raise QuarantineError(f"no incident {incident_id!r} in Redis (ids are listed by "
                              "'ctrguard quarantine incidents --all')")
    _, flags = found
    result = BulkRelease(dry_run=dry_run)
    plan: list[tuple[FlagStatus, tuple[str, ...]]] = []
    for key, fields in flags:
        st = store._flag_status(key, fields)
        if st.state != QUARANTINED:
            result.skipped.append((st, f"already released by {st.released_by}"))
            continue
        links = _links(fields)
        others = sorted({links.get(a, "") for a in st.alert_ids} - {incident_id})
        if others:
            held_by = ", ".join(f"incident {o}" if o else "an alert in no incident"
                                for o in others)
            result.skipped.append((st, f"also held by {held_by}"))
            continue
        plan.append((st, st.alert_ids))
    _apply(store, plan, result, by=by, reason=reason, incident_id=incident_id)
    return result


def release_range(store: QuarantineStore, campaign_id: str, segment: str | None,
                  from_s: int, to_s: int, *, by: str, reason: str,
                  dry_run: bool = False) -> BulkRelease:
    """Release the quarantined flags of a campaign (one segment, or all) whose windows
    start in ``[from_s, to_s)``. One audit entry per flag released."""
    by, reason = _who_why(by, reason)
    if to_s <= from_s:
        raise QuarantineError("--to must be after --from")
    head = f"{store.key_prefix}:flag:{encode_key_part(campaign_id)}:"
    if segment is not None:
        head += f"{encode_key_part(segment)}:"
    with _redis_errors(store.client, "listing flags"):
        keys = [_text(k) for k in store.client.zrangebyscore(store.index_key, from_s,
                                                             f"({to_s}")]
    keys = sorted(k for k in keys if k.startswith(head))
    result = BulkRelease(dry_run=dry_run)
    plan = []
    for key, fields in _read_flags(store, keys):
        st = store._flag_status(key, fields)
        if st.state != QUARANTINED:
            result.skipped.append((st, f"already released by {st.released_by}"))
        else:
            plan.append((st, ()))
    _apply(store, plan, result, by=by, reason=reason, incident_id="")
    return result


def _who_why(by: str, reason: str) -> tuple[str, str]:
    if not by.strip() or not reason.strip():
        raise QuarantineError("a release needs a name (--by) and a reason (--reason)")
    return by.strip(), reason.strip()


def _apply(store: QuarantineStore, plan: Iterable[tuple[FlagStatus, tuple[str, ...]]],
           result: BulkRelease, *, by: str, reason: str, incident_id: str) -> None:
    """Release the planned flags, ``PAGE`` scripts a round trip (each atomic on its own:
    a flag that changed since it was read is refused by the script and listed as skipped).
    """
    plan = list(plan)
    if result.dry_run:
        result.released.extend(st for st, _ in plan)
        return
    for i in range(0, len(plan), PAGE):
        chunk = plan[i:i + PAGE]
        with _redis_errors(store.client, f"releasing {len(chunk)} flags"):
            pipe = store.client.pipeline(transaction=False)
            for st, covering in chunk:
                store._release_pipelined(pipe, st.key or "", by=by, reason=reason,
                                         incident_id=incident_id, covering=covering)
            answers = pipe.execute()
        for (st, _), answer in zip(chunk, answers, strict=True):
            answer = [_text(a) for a in answer]
            if answer[0] == "ok":
                result.released.append(st)
            elif answer[0] == "already":
                result.skipped.append((st, f"already released by {answer[1]}"))
            elif answer[0] == "not_covered":
                result.skipped.append((st, f"a new alert {answer[1]} arrived meanwhile"))
            else:
                result.skipped.append((st, "the flag expired meanwhile"))
    if result.released:
        log.info("quarantine: %d flag(s) released by %s", len(result.released), by)

"""Planned changes: alerts people expect are marked *expected* and do not quarantine.

People declare planned changes (a launch, a budget change, a promotion, a holiday) per
campaign (glob patterns, as in ``slack.routes``) and event-time range, in the configuration
(``annotations.planned_changes``) or with ``ctrguard annotate add`` (kept in Redis, every
change in an audit stream). An alert whose window overlaps ``[start, end)`` of a planned
change of its campaign gets ``expected = "<kind>: <reason>"`` and ``quarantine = False``;
the figures of its series in that window are then not quarantined either, unless another
alert of the same series and window (there is none for an expected campaign-window: the
match is per campaign) still quarantines it.

Where it applies
----------------
* Live: the release sink (``sinks/release.py``) marks each batch's decisions before it
  writes flags and publishes figures and alerts, so an expected alert never becomes a flag.
  It reads the planned changes through an :class:`AnnotationCache`: the configuration's,
  plus Redis's re-read at most every ``annotations.refresh_s`` seconds (one ``HGETALL`` per
  period, never a Redis call per event or window). If Redis cannot be read, the last set
  read stays in force (an alert then quarantines rather than being waved through).
* Slack: an incident whose span overlaps a planned change of its campaign says so in its
  message (``sinks/slack.py``, on the delivery thread).
* Replay: ``ctrguard replay --annotations FILE`` and the configuration's planned changes
  (``replay/run.py``), from files only.

Redis keys (``P`` = ``redis.key_prefix``)
-----------------------------------------
``P:annotations``        hash: annotation id -> JSON (campaigns, start_s, end_s, kind, ...)
``P:annotations:audit``  stream: ``added`` / ``removed`` entries with who, why, when

>>> from ctrguard.records import Alert, Figure, WindowDecision
>>> launch = Annotation("a1", ("shop-*",), 600, 1200, "launch", "new creative")
>>> s = AnnotationSet([launch])
>>> s.match("shop-1", 300, 600), s.match("shop-1", 900, 1200).id, s.match("blog", 900, 1200)
(None, 'a1', None)
>>> a = Alert("x", "shop-1", "all", "t0", "t1", 900, 100, 1, 0.01, "ctr_drop", "warning",
...           "d", 0.02, 3.0, 0.9, 0.015, 0.025, 2.0, 100.0, "click_tracking", True)
>>> f = Figure("shop-1", "all", "t0", "t1", 900, 100, 1, 0.01, "quarantined", ("x",))
>>> (d,), n = mark_expected([WindowDecision("shop-1", 900, 1200, (f,), (a,))], s)
>>> n, d.alerts[0].quarantine, d.alerts[0].expected, d.figures[0].status
(1, False, 'launch: new creative', 'ok')
"""

from __future__ import annotations

import fnmatch
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from ctrguard.errors import CtrGuardError, RedisUnavailable
from ctrguard.records import STATUS_OK, STATUS_QUARANTINED, WindowDecision

if TYPE_CHECKING:
    import redis

    from ctrguard.config import Settings

__all__ = [
    "Annotation",
    "AnnotationCache",
    "AnnotationError",
    "AnnotationSet",
    "AnnotationStore",
    "annotations_from_settings",
    "expected_part",
    "load_annotation_file",
    "mark_expected",
]

log = logging.getLogger("ctrguard.annotations")

KINDS = ("launch", "budget_change", "promotion", "holiday", "other")


class AnnotationError(CtrGuardError):
    """A planned change was refused (bad range, unknown id, unreadable file)."""


def _iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Annotation:
    """One planned change: campaigns (glob patterns) and an event-time range ``[start, end)``."""

    id: str
    campaigns: tuple[str, ...]
    start_s: int
    end_s: int
    kind: str = "other"
    reason: str = ""
    by: str = ""
    created_at: str = ""
    #: Where it was declared: ``config``, ``redis`` or ``file``.
    source: str = "config"

    @property
    def label(self) -> str:
        """What an expected alert carries: ``"launch: new creative"`` (or just the kind)."""
        return f"{self.kind}: {self.reason}" if self.reason else self.kind

    def covers(self, campaign_id: str, start_s: int, end_s: int) -> bool:
        return (start_s < self.end_s and end_s > self.start_s
                and any(fnmatch.fnmatchcase(campaign_id, p) for p in self.campaigns))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "campaigns": list(self.campaigns), "start_s": self.start_s,
                "end_s": self.end_s, "start": _iso(self.start_s), "end": _iso(self.end_s),
                "kind": self.kind, "reason": self.reason, "by": self.by,
                "created_at": self.created_at, "source": self.source}

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str = "redis") -> Annotation:
        return cls(id=str(d["id"]), campaigns=tuple(str(p) for p in d["campaigns"]),
                   start_s=int(d["start_s"]), end_s=int(d["end_s"]),
                   kind=str(d.get("kind") or "other"), reason=str(d.get("reason") or ""),
                   by=str(d.get("by") or ""), created_at=str(d.get("created_at") or ""),
                   source=source)


class AnnotationSet:
    """An immutable index of planned changes: exact campaign ids in a dict, patterns in a
    list (few), so a match costs a dict lookup plus the handful of wildcard patterns."""

    def __init__(self, annotations: Iterable[Annotation] = ()):
        self.annotations = tuple(sorted(annotations, key=lambda a: (a.start_s, a.id)))
        self._exact: dict[str, list[Annotation]] = {}
        self._globs: list[Annotation] = []
        for a in self.annotations:
            if any(_is_glob(p) for p in a.campaigns):
                self._globs.append(a)
            else:
                for p in a.campaigns:
                    self._exact.setdefault(p, []).append(a)

    def __bool__(self) -> bool:
        return bool(self.annotations)

    def __len__(self) -> int:
        return len(self.annotations)

    def match(self, campaign_id: str, start_s: int, end_s: int) -> Annotation | None:
        """The first planned change (by start) of the campaign overlapping ``[start, end)``."""
        found = None
        for a in self._exact.get(campaign_id, ()):
            if a.covers(campaign_id, start_s, end_s):
                found = a
                break
        for a in self._globs:
            if (found is None or (a.start_s, a.id) < (found.start_s, found.id)) \
                    and a.covers(campaign_id, start_s, end_s):
                found = a
                break
        return found


def expected_part(annotations: AnnotationSet, campaign_id: str, start_s: int, end_s: int,
                  window_s: int) -> tuple[Annotation, list[tuple[int, int]] | None] | None:
    """How much of an incident's span ``[start_s, end_s)`` lies in planned changes.

    Alerts are marked expected window by window (:func:`mark_expected`), so an incident that
    runs past the end of a planned change has expected windows *and* quarantined ones.
    Returns None when no window is inside one; ``(first planned change, None)`` when every
    window is; else ``(first planned change, spans)``, the expected windows merged into
    ``[start, end)`` spans.

    >>> s = AnnotationSet([Annotation("a1", ("shop-*",), 600, 1200, "launch", "new creative")])
    >>> expected_part(s, "shop-1", 900, 1200, 300)[1] is None
    True
    >>> expected_part(s, "shop-1", 900, 1800, 300)[1]
    [(900, 1200)]
    >>> expected_part(s, "shop-1", 1200, 1800, 300) is None
    True
    """
    first: Annotation | None = None
    spans: list[tuple[int, int]] = []
    whole = True
    ws = start_s
    while ws < end_s:
        ann = annotations.match(campaign_id, ws, ws + window_s)
        if ann is None:
            whole = False
        else:
            if first is None:
                first = ann
            if spans and spans[-1][1] == ws:
                spans[-1] = (spans[-1][0], ws + window_s)
            else:
                spans.append((ws, ws + window_s))
        ws += window_s
    if first is None:
        return None
    return first, None if whole else spans


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def mark_expected(decisions: Sequence[WindowDecision],
                  annotations: AnnotationSet) -> tuple[list[WindowDecision], int]:
    """Decisions with the alerts inside a planned change marked expected (pure).

    Returns the decisions (the same objects where nothing changed) and the number of alerts
    newly marked. Only decisions with alerts are looked at: the rest pass untouched.
    """
    if not annotations:
        return list(decisions), 0
    out = list(decisions)
    marked = 0
    for i in [i for i, d in enumerate(out) if d.alerts]:
        d = out[i]
        ann = annotations.match(d.campaign_id, d.window_start_s, d.window_end_s)
        if ann is None:
            continue
        alerts = []
        for a in d.alerts:
            if a.expected:
                alerts.append(a)
                continue
            alerts.append(replace(a, quarantine=False, expected=ann.label))
            marked += 1
        held = {a.segment for a in alerts if a.quarantine}
        figures = tuple(
            msgspec.structs.replace(f, status=STATUS_OK)
            if f.status == STATUS_QUARANTINED and f.segment not in held else f
            for f in d.figures)
        out[i] = replace(d, alerts=tuple(alerts), figures=figures)
    return out, marked


def _config_annotations(changes: Iterable[Any], source: str = "config",
                        prefix: str = "config") -> list[Annotation]:
    return [Annotation(id=f"{prefix}:{i}", campaigns=tuple(c.campaigns),
                       start_s=int(c.start.timestamp()), end_s=int(c.end.timestamp()),
                       kind=c.kind, reason=c.reason, source=source)
            for i, c in enumerate(changes)]


def annotations_from_settings(settings: Settings) -> list[Annotation]:
    """The planned changes of the configuration (``annotations.planned_changes``)."""
    return _config_annotations(settings.annotations.planned_changes)


def load_annotation_file(path: str) -> list[Annotation]:
    """Planned changes from a YAML or JSON file: a list of mappings with the fields of
    ``annotations.planned_changes`` (``campaigns``, ``start``, ``end``, ``kind``, ``reason``),
    or a mapping with that list under ``planned_changes``. Errors name the file and item."""
    import yaml
    from pydantic import TypeAdapter, ValidationError

    from ctrguard.sinks.settings import PlannedChange

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise AnnotationError(f"{path}: not YAML or JSON: {exc}") from None
    if isinstance(data, dict):
        data = data.get("planned_changes", data.get("annotations"))
    if data is None:
        data = []
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a list of planned changes")
    try:
        changes = TypeAdapter(list[PlannedChange]).validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        raise AnnotationError(f"{path}: item {where}: {msg}") from None
    return _config_annotations(changes, source="file", prefix="file")


# --------------------------------------------------------------------------- Redis


class AnnotationStore:
    """Planned changes declared at run time, in Redis, with an audit trail.

    Parameters
    ----------
    client
        A :class:`redis.Redis` (``decode_responses=True``).
    key_prefix
        ``redis.key_prefix``.
    retention_s
        How long audit entries are kept.
    """

    def __init__(self, client: redis.Redis, key_prefix: str = "ctrguard", *,
                 retention_s: int = 365 * 86400, clock: Callable[[], float] = time.time):
        self.client = client
        self.key = f"{key_prefix}:annotations"
        self.audit_key = f"{key_prefix}:annotations:audit"
        self.retention_s = retention_s
        self.clock = clock

    def _now(self) -> str:
        return _iso(int(self.clock()))

    def add(self, campaigns: Sequence[str], start_s: int, end_s: int, *, kind: str,
            reason: str, by: str) -> Annotation:
        campaigns = tuple(p.strip() for p in campaigns if p.strip())
        if not campaigns:
            raise AnnotationError("a planned change needs at least one campaign pattern")
        if end_s <= start_s:
            raise AnnotationError("end must be after start")
        if kind not in KINDS:
            raise AnnotationError(f"kind must be one of {', '.join(KINDS)}")
        if not by.strip():
            raise AnnotationError("a planned change needs a name (--by)")
        ann = Annotation(id=uuid.uuid4().hex[:12], campaigns=campaigns, start_s=start_s,
                         end_s=end_s, kind=kind, reason=reason.strip()[:200], by=by.strip(),
                         created_at=self._now(), source="redis")
        body = json.dumps(ann.to_json(), ensure_ascii=False, separators=(",", ":"))
        with _errors("declaring a planned change"):
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(self.key, ann.id, body)
            self._audit(pipe, "added", ann, by.strip(), reason.strip())
            pipe.execute()
        return ann

    def remove(self, annotation_id: str, *, by: str, reason: str) -> Annotation:
        if not by.strip() or not reason.strip():
            raise AnnotationError("a removal needs a name (--by) and a reason (--reason)")
        with _errors("removing a planned change"):
            raw = self.client.hget(self.key, annotation_id)
            if raw is None:
                raise AnnotationError(f"no planned change with id {annotation_id!r}")
            ann = Annotation.from_json(json.loads(raw))
            pipe = self.client.pipeline(transaction=True)
            pipe.hdel(self.key, annotation_id)
            self._audit(pipe, "removed", ann, by.strip(), reason.strip())
            pipe.execute()
        return ann

    def _audit(self, pipe: Any, action: str, ann: Annotation, who: str, why: str) -> None:
        minid = f"{max(int(self.clock()) - self.retention_s, 0) * 1000}"
        pipe.xadd(self.audit_key, {
            "action": action, "id": ann.id, "who": who, "why": why, "at": self._now(),
            "annotation": json.dumps(ann.to_json(), ensure_ascii=False)},
            minid=minid, approximate=False)

    def list(self) -> list[Annotation]:
        """Every planned change in Redis (malformed entries are skipped with a warning)."""
        with _errors("reading planned changes"):
            raw = self.client.hgetall(self.key)
        out = []
        for key, value in raw.items():
            try:
                out.append(Annotation.from_json(json.loads(value)))
            except (ValueError, KeyError, TypeError):
                log.warning("annotations: skipping malformed entry %r", key)
        return sorted(out, key=lambda a: (a.start_s, a.id))

    def audit(self, limit: int = 50) -> list[dict[str, str]]:
        with _errors("reading the annotation audit"):
            entries = self.client.xrevrange(self.audit_key, "+", "-", count=limit)
        return [dict(fields) for _, fields in entries]


class _errors:
    """Redis errors as :class:`RedisUnavailable` (exit code 3 on the command line)."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        import redis  # (here, not at the top: replay marks alerts without Redis)

        if isinstance(exc, redis.RedisError):
            raise RedisUnavailable(f"{self.what}: {type(exc).__name__}: {exc}") from None
        return False


class AnnotationCache:
    """The planned changes in force: the configuration's, plus Redis's re-read at most every
    ``refresh_s`` seconds (bounded cost whatever the event rate).

    ``current()`` never raises: when Redis cannot be read, the last set read stays in force.
    """

    def __init__(self, settings: Settings, client: redis.Redis | None, *,
                 clock: Callable[[], float] = time.monotonic):
        self._config = annotations_from_settings(settings)
        self._store = None if client is None else AnnotationStore(
            client, settings.redis.key_prefix)
        self._refresh_s = settings.annotations.refresh_s
        self._clock = clock
        self._next = float("-inf")
        self._set = AnnotationSet(self._config)

    def current(self) -> AnnotationSet:
        now = self._clock()
        if self._store is not None and now >= self._next:
            self._next = now + self._refresh_s
            try:
                self._set = AnnotationSet([*self._config, *self._store.list()])
            except RedisUnavailable as exc:
                log.warning("annotations: %s; keeping the %d planned change(s) read before",
                            exc, len(self._set))
        return self._set

    def apply(self, decisions: Sequence[WindowDecision]) -> list[WindowDecision]:
        """:func:`mark_expected` with the planned changes in force."""
        current = self.current()
        if not current:
            return decisions  # type: ignore[return-value]  (the common case: no copy)
        out, marked = mark_expected(decisions, current)
        if marked:
            log.info("annotations: %d alert(s) inside planned changes marked expected "
                     "(not quarantined)", marked)
        return out

"""Quarantine flags in Redis: the status of every window's CTR figure, per series.

A window's figure may be published as clean only once its status is *decided*. The
detector side (:class:`QuarantineStore`) writes, for every closed window of a campaign,
flags for the series an alert quarantined and then a per-campaign "checked through"
watermark; reporting pipelines (:class:`QuarantineReader`) ask for the status of a series
in a window and get one of:

``quarantined``
    a flag exists and nobody released it;
``released``
    a flag exists and a person (or an incident's resolution) released it;
``clean``
    no flag, and the campaign's watermark has passed the window's end;
``pending``
    no flag and the window is not checked yet: wait;
``expired``
    no flag, and the window was decided longer ago than the retention period, so a flag
    may have existed and expired: the answer is no longer known (treat as not released).
    "Decided" is estimated from the window's end plus the smallest lag ever seen between
    the writer's clock and event time (``min_lag_s`` in ``P:meta``), so replays of old
    data stay readable for the retention period after they were written.

Only ``released`` and ``clean`` mean "publish". The key layout is documented in
``docs/redis-keys.md`` so that any Redis client can read it; this module keeps its imports
light (redis-py and the standard library) so reporting pipelines can use it directly.

Keys (``P`` is the key prefix, ``C`` and ``S`` the encoded campaign id and segment,
see :func:`encode_key_part`):

- ``P:flag:C:S:WINDOW_START_S`` hash, one per flagged series and window, expires after
  the retention period;
- ``P:flags`` sorted set of flag keys scored by window start (listing);
- ``P:checked`` sorted set, member campaign id (raw), score window end in epoch seconds:
  every window of the campaign ending at or before it is decided. Only ever increases
  (``ZADD GT``);
- ``P:audit`` stream of every change (``XADD ... MINID``), trimmed to the retention period;
- ``P:meta`` hash with ``retention_s``, ``window_length_s`` and ``min_lag_s`` for readers.

``P:flags``, ``P:checked``, ``P:audit`` and ``P:meta`` expire after the retention period
with no write, so a deployment that stops leaves nothing behind.

>>> encode_key_part("acme:spring 25%")
'acme%3Aspring%2025%25'
>>> decode_key_part(encode_key_part("café:ü/x"))
'café:ü/x'
>>> flag_key("ctrguard", "c:1", "device=mobile", 1767225600)
'ctrguard:flag:c%3A1:device=mobile:1767225600'
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, unquote

import redis
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    NoPermissionError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ctrguard.errors import QuarantineError, RedisUnavailable, ServiceError

try:  # only the writer uses it, and falls back to json: readers need nothing beyond redis-py
    import orjson
except ImportError:  # pragma: no cover
    orjson = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from ctrguard.records import WindowDecision
    from sinks.settings import QuarantineSettings

log = logging.getLogger(__name__)

State = Literal["quarantined", "released", "clean", "pending", "expired"]
QUARANTINED: State = "quarantined"
RELEASED: State = "released"
CLEAN: State = "clean"
PENDING: State = "pending"
EXPIRED: State = "expired"
FLAG_STATES = (QUARANTINED, RELEASED)
STATES = (QUARANTINED, RELEASED, CLEAN, PENDING, EXPIRED)

DEFAULT_KEY_PREFIX = "ctrguard"
#: Used by readers when ``P:meta`` holds no retention (nothing was ever recorded).
DEFAULT_RETENTION_S = 30 * 86400
DEFAULT_ACTOR = "ctrguard"

#: Characters kept as they are in key parts; everything else is percent-encoded as UTF-8.
#: ``:`` (our separator), ``%`` (the escape), spaces, control and glob characters
#: (``*?[]\\``, which SCAN MATCH would interpret) are never among them.
KEY_SAFE = "-._~=,+@|!"


# --------------------------------------------------------------------------- keys


def encode_key_part(text: str) -> str:
    """Percent-encode a campaign id or segment for use between ``:`` in a key.

    ASCII letters, digits and ``-._~=,+@|!`` stay as they are; every other character is
    written as the ``%XX`` escapes of its UTF-8 bytes (as JavaScript's
    ``encodeURIComponent`` does, apart from the slightly different safe set).
    """
    return quote(text, safe=KEY_SAFE, encoding="utf-8", errors="strict")


def decode_key_part(part: str) -> str:
    """Inverse of :func:`encode_key_part`."""
    return unquote(part, encoding="utf-8", errors="strict")


def flag_key(prefix: str, campaign_id: str, segment: str, window_start_s: int) -> str:
    """Key of the flag hash of one series (campaign, segment) in one window."""
    return (f"{prefix}:flag:{encode_key_part(campaign_id)}:{encode_key_part(segment)}"
            f":{int(window_start_s)}")


def parse_flag_key(prefix: str, key: str) -> tuple[str, str, int]:
    """``(campaign_id, segment, window_start_s)`` of a flag key made by :func:`flag_key`.

    >>> parse_flag_key("ctrguard", "ctrguard:flag:c%3A1:all:1767225600")
    ('c:1', 'all', 1767225600)
    """
    head = f"{prefix}:flag:"
    if not key.startswith(head):
        raise ValueError(f"not a flag key of prefix {prefix!r}: {key!r}")
    campaign, segment, start = key[len(head):].split(":")
    return decode_key_part(campaign), decode_key_part(segment), int(start)


def iso_utc(epoch_s: float) -> str:
    """ISO-8601 UTC with ``Z``, to the second.

    >>> iso_utc(1767225600)
    '2026-01-01T00:00:00Z'
    """
    return datetime.fromtimestamp(int(epoch_s), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class FlagStatus:
    """The status of one series' figure in one window.

    ``state`` is one of :data:`STATES`; the other fields are set when a flag exists
    (``None`` or empty otherwise). ``checked_through_s``, the campaign's watermark, is set
    only when no flag exists. ``publishable`` is True for ``released`` and ``clean``.
    """

    state: State
    campaign_id: str
    segment: str
    window_start_s: int
    window_end_s: int | None = None
    key: str | None = None
    reason: str | None = None
    detector: str | None = None
    kind: str | None = None
    severity: str | None = None
    incident_id: str | None = None
    alert_ids: tuple[str, ...] = ()
    flagged_at: str | None = None
    updated_at: str | None = None
    released_by: str | None = None
    release_reason: str | None = None
    released_at: str | None = None
    checked_through_s: int | None = None

    @property
    def publishable(self) -> bool:
        return self.state in (RELEASED, CLEAN)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["alert_ids"] = list(self.alert_ids)
        d["publishable"] = self.publishable
        return d


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change of a flag, as kept in the audit stream."""

    entry_id: str
    at: str
    action: str           # flagged | alert_added | requarantined | released | auto_released
    key: str
    campaign_id: str
    segment: str
    window_start_s: int
    who: str
    why: str
    alert_ids: tuple[str, ...] = ()
    incident_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["alert_ids"] = list(self.alert_ids)
        return d


# --------------------------------------------------------------------------- scripts

# Everything a record() call writes, in one script so that a failure writing a flag stops
# the script before any watermark moves: a window is never reported clean because its flag
# could not be written. Re-running the same payload changes nothing (at-least-once input).
_RECORD_LUA = r"""
local p = cjson.decode(ARGV[1])
local index, audit, checked, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rank = {info = 1, warning = 2, critical = 3}
-- Stream ids come from the server's clock, so the trimming threshold does too.
local minid = string.format('%.0f', (tonumber(redis.call('TIME')[1]) - p.retention_s) * 1000)

local function split(s)
  local t = {}
  if s then for item in string.gmatch(s, '[^,]+') do t[#t + 1] = item end end
  return t
end
local function add_unique(list, value)
  for _, v in ipairs(list) do if v == value then return end end
  list[#list + 1] = value
end

local changed = 0
for _, f in ipairs(p.flags) do
  local key = KEYS[f.k]
  local cur = redis.call('HMGET', key, 'state', 'alert_ids', 'detector', 'kind', 'severity',
                         'reason')
  local state = cur[1]
  local ids, dets, kinds = split(cur[2]), split(cur[3]), split(cur[4])
  local severity, reason = cur[5] or '', cur[6] or ''
  local known = {}
  for _, v in ipairs(ids) do known[v] = true end
  local added, why = {}, {}
  for _, a in ipairs(f.alerts) do
    if not known[a.id] then
      known[a.id] = true
      ids[#ids + 1] = a.id
      added[#added + 1] = a.id
      add_unique(dets, a.detector)
      add_unique(kinds, a.kind)
      if (rank[a.severity] or 0) > (rank[severity] or 0) then severity = a.severity end
      why[#why + 1] = a.reason
    end
  end
  if #added > 0 then
    changed = changed + 1
    table.sort(ids)
    local action
    if not state then
      action = 'flagged'
      redis.call('HSET', key, 'state', 'quarantined', 'campaign_id', f.campaign,
                 'segment', f.segment, 'window_start', f.ws_iso, 'window_end', f.we_iso,
                 'window_start_s', f.ws, 'window_end_s', f.we, 'flagged_at', p.now,
                 'incident_id', '', 'released_by', '', 'release_reason', '',
                 'released_at', '')
    elseif state == 'released' then
      -- A different alarm than the one a person released: quarantine again.
      action = 'requarantined'
      redis.call('HSET', key, 'state', 'quarantined', 'released_by', '',
                 'release_reason', '', 'released_at', '')
    else
      action = 'alert_added'
    end
    local added_reason = table.concat(why, '; ')
    if reason ~= '' then reason = reason .. '; ' .. added_reason else reason = added_reason end
    redis.call('HSET', key, 'alert_ids', table.concat(ids, ','),
               'detector', table.concat(dets, ','), 'kind', table.concat(kinds, ','),
               'severity', severity, 'reason', reason, 'updated_at', p.now)
    redis.call('EXPIRE', key, p.ttl)
    redis.call('ZADD', index, f.ws, key)
    redis.call('XADD', audit, 'MINID', '=', minid, '*', 'action', action, 'key', key,
               'campaign_id', f.campaign, 'segment', f.segment, 'window_start_s', f.ws,
               'who', p.actor, 'why', added_reason, 'alert_ids', table.concat(added, ','),
               'incident_id', '', 'at', p.now)
  end
end
-- p.checked is end, campaign, end, campaign, ...: ZADD's arguments as they are (a call per
-- campaign, and a table per pair to decode, were most of the script's time), in chunks, as
-- unpack's results go on Lua's C stack.
local c = p.checked
for i = 1, #c, 2000 do
  redis.call('ZADD', checked, 'GT', unpack(c, i, math.min(i + 1999, #c)))
end
-- How far event time trails the writer's clock, at least: the smallest lag ever seen.
-- Every flag of a window W was written at or after W's end plus this lag, so a window is
-- past its retention (its flag may have expired) once end + lag + retention < now.
local lag = p.now_s - p.max_end
local seen = redis.call('HGET', meta, 'min_lag_s')
if seen and tonumber(seen) < lag then lag = tonumber(seen) end
local cutoff = p.now_s - p.retention_s - lag
redis.call('ZREMRANGEBYSCORE', checked, '-inf', '(' .. string.format('%.0f', cutoff))
redis.call('ZREMRANGEBYSCORE', index, '-inf',
           '(' .. string.format('%.0f', cutoff - p.window_length_s))
redis.call('HSET', meta, 'retention_s', p.retention_s, 'min_lag_s', string.format('%.0f', lag),
           'updated_at', p.now)
if p.window_length_s > 0 then
  redis.call('HSET', meta, 'window_length_s', p.window_length_s)
end
-- A deployment that stops writing leaves nothing behind after the retention period.
for _, k in ipairs({index, audit, checked, meta}) do
  if redis.call('EXISTS', k) == 1 then redis.call('EXPIRE', k, p.retention_s) end
end
return changed
"""

# Release one flag. ARGV: who, why, now, ttl (retention, seconds), action, incident_id,
# covering ids (comma-separated; when not empty, release only if the flag's alerts are all
# among them).
_RELEASE_LUA = r"""
local key, audit = KEYS[1], KEYS[2]
local cur = redis.call('HMGET', key, 'state', 'alert_ids', 'released_by', 'campaign_id',
                       'segment', 'window_start_s', 'incident_id')
if not cur[1] then return {'missing'} end
if cur[1] == 'released' then return {'already', cur[3] or ''} end
if ARGV[7] ~= '' then
  local cover = {}
  for id in string.gmatch(ARGV[7], '[^,]+') do cover[id] = true end
  for id in string.gmatch(cur[2] or '', '[^,]+') do
    if not cover[id] then return {'not_covered', id} end
  end
end
local incident = cur[7] or ''
if ARGV[6] ~= '' then incident = ARGV[6] end
local minid = string.format('%.0f', (tonumber(redis.call('TIME')[1]) - tonumber(ARGV[4])) * 1000)
redis.call('HSET', key, 'state', 'released', 'released_by', ARGV[1], 'release_reason', ARGV[2],
           'released_at', ARGV[3], 'updated_at', ARGV[3], 'incident_id', incident)
redis.call('EXPIRE', key, ARGV[4])
redis.call('XADD', audit, 'MINID', '=', minid, '*', 'action', ARGV[5], 'key', key,
           'campaign_id', cur[4], 'segment', cur[5], 'window_start_s', cur[6],
           'who', ARGV[1], 'why', ARGV[2], 'alert_ids', cur[2] or '', 'incident_id', incident,
           'at', ARGV[3])
redis.call('EXPIRE', audit, ARGV[4])
return {'ok'}
"""

# Attach an incident id to an existing flag (no state change, no audit entry).
_LINK_LUA = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'incident_id', ARGV[1])
return 1
"""


# --------------------------------------------------------------------------- errors


def _text(value: Any) -> Any:
    """Decoded text from a reply of a client made with or without ``decode_responses``."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


@contextmanager
def _redis_errors(client: redis.Redis, operation: str) -> Iterator[None]:
    """Turn redis-py errors into ctrguard's, without ever showing a password.

    Outages, timeouts, a loading or read-only server and a flushed script cache are
    :class:`RedisUnavailable` (retrying helps); refused credentials and any other error
    are a non-retryable :class:`ServiceError` (retrying the same call cannot help).
    """
    try:
        yield
    except (AuthenticationError, AuthorizationError, NoPermissionError) as exc:
        raise ServiceError(
            "redis", _scrub(client, f"{operation}: {type(exc).__name__}: {exc} (check "
                            "redis.username and the password, CTRGUARD_REDIS_PASSWORD)"),
            retryable=False) from exc
    except (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ReadOnlyError,
            NoScriptError, OSError) as exc:
        raise RedisUnavailable(_scrub(client, f"{operation}: {type(exc).__name__}: {exc}")) \
            from exc
    except RedisError as exc:
        raise ServiceError("redis", _scrub(client, f"{operation}: {type(exc).__name__}: {exc}"),
                           retryable=False) from exc


def _scrub(client: redis.Redis, message: str) -> str:
    # redis-py's messages hold host and port, not credentials; this is a second guard.
    try:
        password = client.connection_pool.connection_kwargs.get("password")
    except AttributeError:
        password = None
    if password:
        message = message.replace(str(password), "***")
    return message


# --------------------------------------------------------------------------- reader


class QuarantineReader:
    """Read window statuses, flags and the audit trail. Needs only redis-py.

    Parameters
    ----------
    client
        A :class:`redis.Redis` (either ``decode_responses`` setting works) or a URL;
        a URL gets a client with explicit timeouts (:func:`sinks.redis_client.redis_from_url`).
    key_prefix
        The ``redis.key_prefix`` of the ctrguard deployment that writes the flags.
    window_length_s
        Window length, to compute a window's end from its start. When ``None``, the value
        the writer stored in ``P:meta`` is used.
    retention_days
        Retention of flags, for the ``expired`` state. When ``None``, the writer's value
        stored in ``P:meta`` is used (30 days if nothing was ever recorded).
    clock
        Wall-clock time in epoch seconds, for the ``expired`` state (tests pass their own).
    """

    def __init__(
        self,
        client: redis.Redis | str,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        *,
        window_length_s: int | None = None,
        retention_days: int | None = None,
        clock: Callable[[], float] = time.time,
    ):
        if isinstance(client, str):
            from sinks.redis_client import redis_from_url

            client = redis_from_url(client)
        if not key_prefix or any(c in key_prefix for c in " {}*?[]\\"):
            raise ValueError(f"invalid key prefix {key_prefix!r}")
        if window_length_s is not None and window_length_s <= 0:
            raise ValueError("window_length_s must be positive")
        self.client = client
        self.key_prefix = key_prefix
        self.window_length_s = window_length_s
        self.retention_days = retention_days
        self.clock = clock
        self.index_key = f"{key_prefix}:flags"
        self.audit_key = f"{key_prefix}:audit"
        self.checked_key = f"{key_prefix}:checked"
        self.meta_key = f"{key_prefix}:meta"

    # -- keys --------------------------------------------------------------------------

    def flag_key(self, campaign_id: str, segment: str, window_start_s: int) -> str:
        return flag_key(self.key_prefix, campaign_id, segment, window_start_s)

    # -- status ------------------------------------------------------------------------

    def status(self, campaign_id: str, segment: str, window_start_s: int,
               window_end_s: int | None = None) -> FlagStatus:
        """Status of the figure of series (``campaign_id``, ``segment``) in a window.

        ``window_end_s`` defaults to ``window_start_s`` plus the window length (given to
        the constructor or stored by the writer). Raises :class:`RedisUnavailable` when
        Redis cannot be read: the caller must not publish then (fail closed).
        """
        window_start_s = int(window_start_s)
        key = self.flag_key(campaign_id, segment, window_start_s)
        with _redis_errors(self.client, f"status of {key}"):
            pipe = self.client.pipeline(transaction=True)
            pipe.hgetall(key)
            pipe.zscore(self.checked_key, campaign_id)
            pipe.hgetall(self.meta_key)
            flag, checked, meta = pipe.execute()
        meta = {_text(k): _text(v) for k, v in meta.items()}
        checked_s = int(checked) if checked is not None else None
        if flag:
            return self._flag_status(key, flag)
        if window_end_s is None:
            length = self.window_length_s or _int_or_none(meta.get("window_length_s"))
            if length is None:
                raise ValueError("window_end_s is needed: no window length is known")
            if window_start_s % length:
                raise ValueError(
                    f"window start {window_start_s} is not aligned to the window length "
                    f"{length}s"
                )
            window_end_s = window_start_s + length
        if self.retention_days is not None:
            retention_s = self.retention_days * 86400
        else:
            retention_s = _int_or_none(meta.get("retention_s")) or DEFAULT_RETENTION_S
        lag_s = _int_or_none(meta.get("min_lag_s")) or 0
        if window_end_s + lag_s + retention_s < self.clock():
            state: State = EXPIRED
        elif checked_s is not None and checked_s >= window_end_s:
            state = CLEAN
        else:
            state = PENDING
        return FlagStatus(state=state, campaign_id=campaign_id, segment=segment,
                          window_start_s=window_start_s, window_end_s=int(window_end_s),
                          checked_through_s=checked_s)

    def is_released(self, campaign_id: str, segment: str, window_start_s: int,
                    window_end_s: int | None = None) -> tuple[bool, FlagStatus]:
        """``(publishable, status)``: True only for ``released`` and ``clean``."""
        st = self.status(campaign_id, segment, window_start_s, window_end_s)
        return st.publishable, st

    def show(self, campaign_id: str, segment: str, window_start_s: int,
             window_end_s: int | None = None, *, history: int = 100
             ) -> tuple[FlagStatus, list[AuditEntry]]:
        """The status of a window and the audit entries of its flag (oldest first)."""
        st = self.status(campaign_id, segment, window_start_s, window_end_s)
        key = self.flag_key(campaign_id, segment, window_start_s)
        entries = [e for e in self._scan_audit(scan_limit=None) if e.key == key]
        return st, list(reversed(entries[:history]))

    def checked_through(self, campaign_id: str) -> int | None:
        """The campaign's watermark: every window ending at or before it is decided."""
        with _redis_errors(self.client, "reading watermark"):
            score = self.client.zscore(self.checked_key, campaign_id)
        return int(score) if score is not None else None

    # -- listing -----------------------------------------------------------------------

    def list_flags(self, state: str | None = None, campaign: str | None = None,
                   limit: int = 100) -> list[FlagStatus]:
        """Flags, newest window first, optionally of one state and one campaign."""
        if state is not None and state not in FLAG_STATES:
            raise ValueError(f"state must be one of {', '.join(FLAG_STATES)}")
        if limit <= 0:
            return []
        head = None
        if campaign is not None:
            head = f"{self.key_prefix}:flag:{encode_key_part(campaign)}:"
        found: list[FlagStatus] = []
        page = max(limit, 100)
        offset = 0
        with _redis_errors(self.client, "listing flags"):
            while len(found) < limit:
                keys = [_text(k) for k in self.client.zrevrange(self.index_key, offset,
                                                                offset + page - 1)]
                if not keys:
                    break
                offset += len(keys)
                if head is not None:
                    keys = [k for k in keys if k.startswith(head)]
                pipe = self.client.pipeline(transaction=False)
                for k in keys:
                    pipe.hgetall(k)
                gone = []
                for k, flag in zip(keys, pipe.execute(), strict=True):
                    if not flag:
                        gone.append(k)   # expired: drop it from the index too
                        continue
                    st = self._flag_status(k, flag)
                    if state is None or st.state == state:
                        found.append(st)
                if gone:
                    self.client.zrem(self.index_key, *gone)
                    offset -= len(gone)
        return found[:limit]

    def audit(self, limit: int = 50) -> list[AuditEntry]:
        """The latest audit entries, newest first."""
        return list(self._scan_audit(scan_limit=limit))

    def _scan_audit(self, scan_limit: int | None) -> Iterator[AuditEntry]:
        last = "+"
        remaining = scan_limit
        page = 500
        while remaining is None or remaining > 0:
            count = page if remaining is None else min(page, remaining)
            with _redis_errors(self.client, "reading audit"):
                rows = self.client.xrevrange(self.audit_key, max=last, min="-", count=count)
            if not rows:
                return
            for entry_id, fields in rows:
                yield _audit_entry(_text(entry_id), fields)
            if remaining is not None:
                remaining -= len(rows)
            if len(rows) < count:
                return
            last = "(" + _text(rows[-1][0])

    # -- helpers -----------------------------------------------------------------------

    def _flag_status(self, key: str, flag: dict[Any, Any]) -> FlagStatus:
        f = {_text(k): _text(v) for k, v in flag.items()}
        state = f.get("state")
        if state not in FLAG_STATES:
            raise QuarantineError(f"flag {key} has an unknown state {state!r}", key=key)
        return FlagStatus(
            state=state,  # type: ignore[arg-type]
            campaign_id=f.get("campaign_id", ""),
            segment=f.get("segment", ""),
            window_start_s=int(f.get("window_start_s", "0")),
            window_end_s=_int_or_none(f.get("window_end_s")),
            key=key,
            reason=f.get("reason") or None,
            detector=f.get("detector") or None,
            kind=f.get("kind") or None,
            severity=f.get("severity") or None,
            incident_id=f.get("incident_id") or None,
            alert_ids=tuple(a for a in f.get("alert_ids", "").split(",") if a),
            flagged_at=f.get("flagged_at") or None,
            updated_at=f.get("updated_at") or None,
            released_by=f.get("released_by") or None,
            release_reason=f.get("release_reason") or None,
            released_at=f.get("released_at") or None,
        )


def _int_or_none(value: Any) -> int | None:
    if value in (None, ""):
        return None
    return int(float(value))


def _audit_entry(entry_id: str, fields: dict[Any, Any]) -> AuditEntry:
    f = {_text(k): _text(v) for k, v in fields.items()}
    return AuditEntry(
        entry_id=entry_id,
        at=f.get("at", ""),
        action=f.get("action", ""),
        key=f.get("key", ""),
        campaign_id=f.get("campaign_id", ""),
        segment=f.get("segment", ""),
        window_start_s=int(f.get("window_start_s", "0") or 0),
        who=f.get("who", ""),
        why=f.get("why", ""),
        alert_ids=tuple(a for a in f.get("alert_ids", "").split(",") if a),
        incident_id=f.get("incident_id") or None,
    )


# --------------------------------------------------------------------------- store


class QuarantineStore(QuarantineReader):
    """Write quarantine flags and watermarks; release flags. Everything a reader does too.

    Parameters
    ----------
    client
        A :class:`redis.Redis` (see :func:`sinks.redis_client.make_redis`).
    settings
        The ``quarantine`` section of the configuration (retention, auto-release).
    key_prefix
        ``redis.key_prefix``.
    window_length_s
        ``windows.length``: lets :meth:`status` compute a window's end, and is stored for
        readers in ``P:meta``.
    actor
        Name written as ``who`` in the audit entries of flags this store creates.
    """

    def __init__(
        self,
        client: redis.Redis,
        settings: QuarantineSettings,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        *,
        window_length_s: int | None = None,
        actor: str = DEFAULT_ACTOR,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(client, key_prefix, window_length_s=window_length_s,
                         retention_days=settings.retention_days, clock=clock)
        self.settings = settings
        self.actor = actor
        self.retention_s = settings.retention_days * 86400
        self._record_script = client.register_script(_RECORD_LUA)
        self._release_script = client.register_script(_RELEASE_LUA)
        self._link_script = client.register_script(_LINK_LUA)

    # -- writing -----------------------------------------------------------------------

    def record(self, decisions: Sequence[WindowDecision]) -> None:
        """Write the flags of every quarantining alert, then advance the watermarks.

        One MULTI/EXEC per call. Idempotent: recording the same decisions again (a
        re-delivery after a restart) changes nothing, adds no audit entry, never turns a
        released flag back to quarantined and never moves a watermark backwards. An alert
        id the flag has not seen before does re-quarantine a released flag.

        Raises :class:`RedisUnavailable` when Redis cannot be reached or times out; then
        nothing or everything of this call was written, and the caller retries the call.
        """
        if not decisions:
            return
        keys = [self.index_key, self.audit_key, self.checked_key, self.meta_key]
        slots: dict[str, dict[str, Any]] = {}
        # Usually one decision per campaign: then its window end is the watermark.
        checked: dict[str, int] = {d.campaign_id: d.window_end_s for d in decisions}
        if len(checked) < len(decisions):
            checked = {}
            for d in decisions:
                checked[d.campaign_id] = max(checked.get(d.campaign_id, d.window_end_s),
                                             d.window_end_s)
        for d in [d for d in decisions if d.alerts]:
            for a in d.alerts:
                if not a.quarantine:
                    continue
                if a.campaign_id != d.campaign_id or a.window_start_s != d.window_start_s:
                    raise ValueError(f"alert {a.alert_id} does not belong to its decision")
                key = self.flag_key(a.campaign_id, a.segment, a.window_start_s)
                slot = slots.get(key)
                if slot is None:
                    keys.append(key)
                    slot = slots[key] = {
                        "k": len(keys), "campaign": a.campaign_id, "segment": a.segment,
                        "ws": str(d.window_start_s), "we": str(d.window_end_s),
                        "ws_iso": iso_utc(d.window_start_s), "we_iso": iso_utc(d.window_end_s),
                        "alerts": [],
                    }
                slot["alerts"].append({
                    "id": a.alert_id, "detector": a.detector, "kind": a.kind,
                    "severity": a.severity, "reason": _alert_reason(a),
                })
        # The script's ZADD arguments: end, campaign, end, campaign, ...
        watermarks: list[str] = [""] * (2 * len(checked))
        watermarks[0::2] = map(str, checked.values())
        watermarks[1::2] = checked
        now = self.clock()
        payload = {
            "flags": list(slots.values()),
            "checked": watermarks,
            "max_end": max(checked.values()),
            "now": iso_utc(now),
            "now_s": math.floor(now),
            "ttl": str(self.retention_s),
            "actor": self.actor,
            "retention_s": self.retention_s,
            "window_length_s": self.window_length_s or 0,
        }
        with _redis_errors(self.client, f"recording {len(decisions)} window decision(s)"):
            pipe = self.client.pipeline(transaction=True)
            self._record_script(keys=keys, args=[_payload_json(payload)], client=pipe)
            (changed,) = pipe.execute()
        if changed:
            log.debug("quarantine: %d flag(s) written or changed", changed)

    def release(self, campaign_id: str, segment: str, window_start_s: int, *, by: str,
                reason: str) -> FlagStatus:
        """Release a quarantined flag; the release is kept in the audit trail.

        Raises :class:`QuarantineError` when there is no such flag or it is already released.
        """
        if not by.strip() or not reason.strip():
            raise QuarantineError("a release needs a name (--by) and a reason (--reason)")
        key = self.flag_key(campaign_id, segment, window_start_s)
        result = self._release(key, by=by.strip(), reason=reason.strip(), action="released",
                               incident_id="", covering=())
        if result[0] == "missing":
            raise QuarantineError(
                f"no quarantine flag for campaign {campaign_id!r} segment {segment!r} "
                f"window {iso_utc(window_start_s)}", key=key)
        if result[0] == "already":
            raise QuarantineError(f"already released by {result[1]}", key=key)
        log.info("quarantine: released %s by %s", key, by)
        return self.status(campaign_id, segment, window_start_s)

    def link_incident(self, incident_id: str, alerts: Iterable[Any]) -> int:
        """Record ``incident_id`` on the flags of ``alerts``; returns how many exist."""
        linked = 0
        for key in {self.flag_key(a.campaign_id, a.segment, a.window_start_s) for a in alerts}:
            with _redis_errors(self.client, f"linking incident to {key}"):
                linked += int(self._link_script(keys=[key], args=[incident_id]))
        return linked

    def auto_release(self, incident_id: str, alerts: Iterable[Any], *,
                     reason: str = "incident resolved") -> list[str]:
        """Release the flags of a resolved incident, when ``auto_release`` is configured.

        ``alerts`` are the incident's alerts (anything with ``alert_id``, ``campaign_id``,
        ``segment`` and ``window_start_s``). A flag is released only when every alert on it
        belongs to the incident, so an unrelated alarm on the same window keeps it
        quarantined. Returns the keys released (none when auto-release is off).
        """
        alerts = list(alerts)
        if not self.settings.auto_release:
            log.debug("quarantine: auto-release is off; incident %s leaves flags as they are",
                      incident_id)
            return []
        covering = tuple(sorted({a.alert_id for a in alerts}))
        released = []
        for key in sorted({self.flag_key(a.campaign_id, a.segment, a.window_start_s)
                           for a in alerts}):
            result = self._release(key, by=f"auto:incident:{incident_id}", reason=reason,
                                   action="auto_released", incident_id=incident_id,
                                   covering=covering)
            if result[0] == "ok":
                released.append(key)
        return released

    def _release(self, key: str, *, by: str, reason: str, action: str, incident_id: str,
                 covering: Sequence[str]) -> list[str]:
        now = self.clock()
        with _redis_errors(self.client, f"releasing {key}"):
            result = self._release_script(
                keys=[key, self.audit_key],
                args=[by, reason, iso_utc(now), self.retention_s, action, incident_id,
                      ",".join(covering)],
            )
        return [_text(r) for r in result]


#: orjson options that make it refuse what json would write differently or not at all.
_AS_JSON_WRITES = 0 if orjson is None else (orjson.OPT_PASSTHROUGH_SUBCLASS
                                            | orjson.OPT_PASSTHROUGH_DATETIME
                                            | orjson.OPT_PASSTHROUGH_DATACLASS)


def _payload_json(payload: dict[str, Any]) -> bytes | str:
    """The record script's argument, written by orjson (a fraction of json's time for
    thousands of watermarks) where the script decodes it to the same values as the json
    text it replaces: the payload is strings and integers (watermarks travel as strings), and
    orjson writes non-ASCII as UTF-8 where json writes ``\\u`` escapes, which cjson decodes
    to the same bytes. Whatever orjson refuses is written by json, as before: a lone
    surrogate, an integer beyond 64 bits, and with these options subclasses of str, int,
    dict and list, dates and dataclasses, which json writes its own way or refuses.

    >>> _payload_json({"checked": ["300", "café"], "max_end": 300})
    b'{"checked":["300","caf\\xc3\\xa9"],"max_end":300}'
    >>> _payload_json({"checked": ["300", "\\udc80"], "max_end": 300})
    '{"checked": ["300", "\\\\udc80"], "max_end": 300}'
    """
    if orjson is not None and type(payload["max_end"]) is int:
        try:
            return orjson.dumps(payload, option=_AS_JSON_WRITES)
        except orjson.JSONEncodeError:
            pass
    return json.dumps(payload)


def _alert_reason(alert: Any) -> str:
    text = f"{alert.kind} ({alert.detector}, {alert.severity})"
    cause = getattr(alert, "suspected_cause", "")
    return f"{text}: {cause}" if cause else text

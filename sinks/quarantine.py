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
- ``P:checked:v2`` sorted set, member campaign id **encoded as in flag keys**, score window
  end in epoch seconds: every window of the campaign ending at or before it is decided.
  Only ever increases (``ZADD GT``). A reader that encodes a campaign id differently from
  the writer finds neither the flag nor the watermark, so its answer is ``pending``, never
  ``clean`` (key layout version 2; version 1 kept raw ids in ``P:checked``);
- ``P:audit`` stream of every change (``XADD ... MINID``), trimmed to the retention period;
- ``P:meta`` hash with ``key_version``, ``retention_s``, ``window_length_s`` and
  ``min_lag_s`` for readers;
- incidents (written by the Slack step, see :mod:`ctrguard.sinks.quarantine_incidents`):
  ``P:link:ALERT_ID`` (the incident of a quarantining alert), ``P:incident:ID`` (hash:
  status, campaign, windows), ``P:incflags:ID`` (set of the incident's flag keys) and
  ``P:incidents`` (sorted set of incident ids by last update).

``P:flags``, ``P:checked:v2``, ``P:audit`` and ``P:meta`` expire after the retention period
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
    import msgspec
except ImportError:  # pragma: no cover
    msgspec = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from ctrguard.records import WindowDecision
    from ctrguard.sinks.settings import QuarantineSettings

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
#: The key layout written (``P:meta`` ``key_version``). 2: ``P:checked:v2`` holds encoded
#: campaign ids, flags carry incident links. Readers refuse a version they do not know.
KEY_VERSION = 2
#: Figures a reader checks in one MULTI/EXEC round trip (:meth:`QuarantineReader.check_many`).
CHECK_CHUNK = 1000
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
    #: Every incident an alert on the flag belongs to (``incident_id`` is the first).
    incident_ids: tuple[str, ...] = ()

    @property
    def publishable(self) -> bool:
        return self.state in (RELEASED, CLEAN)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["alert_ids"] = list(self.alert_ids)
        d["incident_ids"] = list(self.incident_ids)
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

# Shared by the record and link scripts. A flag's ``links`` field maps each of its alerts
# that belongs to an incident to that incident ("alert=incident,..."). Either side may run
# first: the Slack step links alerts to incidents (P:link:ALERT) and links the flags it
# finds; the release step, writing a flag, links the alerts that are already linked.
_LINK_HELPERS_LUA = r"""
local function links_of(s)
  local t = {}
  if s then for a, i in string.gmatch(s, '([^,=]+)=([^,]+)') do t[a] = i end end
  return t
end
local function links_text(t)
  local parts = {}
  for a, i in pairs(t) do parts[#parts + 1] = a .. '=' .. i end
  table.sort(parts)
  return table.concat(parts, ',')
end
-- Link alert -> incident on the flag at key (which holds that alert).
local function link_flag(P, key, alert, incident, ttl)
  local cur = redis.call('HMGET', key, 'links', 'incident_id')
  local t = links_of(cur[1])
  if t[alert] == incident then return false end
  t[alert] = incident
  redis.call('HSET', key, 'links', links_text(t))
  if not cur[2] or cur[2] == '' then redis.call('HSET', key, 'incident_id', incident) end
  local set = P .. ':incflags:' .. incident
  redis.call('SADD', set, key)
  redis.call('EXPIRE', set, ttl)
  return true
end
-- Release the flag at key when every alert on it belongs to an incident and every one of
-- those incidents is resolved: an alarm outside them keeps the figure held.
local function try_auto_release(P, key, trigger, now, ttl, minid)
  local cur = redis.call('HMGET', key, 'state', 'alert_ids', 'links', 'campaign_id',
                         'segment', 'window_start_s')
  if cur[1] ~= 'quarantined' then return false end
  local t = links_of(cur[3])
  local seen, any = {}, false
  for id in string.gmatch(cur[2] or '', '[^,]+') do
    local inc = t[id]
    if not inc then return false end
    if not seen[inc] then
      seen[inc] = true
      any = true
      if redis.call('HGET', P .. ':incident:' .. inc, 'status') ~= 'resolved' then
        return false
      end
    end
  end
  if not any then return false end
  local who, why = 'auto:incident:' .. trigger, 'incident ' .. trigger .. ' resolved'
  redis.call('HSET', key, 'state', 'released', 'released_by', who, 'release_reason', why,
             'released_at', now, 'updated_at', now)
  redis.call('EXPIRE', key, ttl)
  local audit = P .. ':audit'
  redis.call('XADD', audit, 'MINID', '=', minid, '*', 'action', 'auto_released', 'key', key,
             'campaign_id', cur[4], 'segment', cur[5], 'window_start_s', cur[6], 'who', who,
             'why', why, 'alert_ids', cur[2] or '', 'incident_id', trigger, 'at', now)
  redis.call('EXPIRE', audit, ttl)
  return true
end
"""

# Everything a record() call writes, in one script so that a failure writing a flag stops
# the script before any watermark moves: a window is never reported clean because its flag
# could not be written. Re-running the same payload changes nothing (at-least-once input).
_RECORD_LUA = _LINK_HELPERS_LUA + r"""
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
    -- The Slack step may have put these alerts in an incident already (it runs beside
    -- this step, in either order): link them now, and release when that incident is over.
    local linked
    for _, id in ipairs(added) do
      local inc = redis.call('GET', p.P .. ':link:' .. id)
      if inc then
        link_flag(p.P, key, id, inc, p.ttl)
        linked = inc
      end
    end
    if linked and p.auto_release then
      try_auto_release(p.P, key, linked, p.now, p.ttl, minid)
    end
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
           'updated_at', p.now, 'key_version', p.key_version)
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

# Incidents and their alerts, from the Slack step (or QuarantineStore.link): records each
# incident (a newer revision wins, so a late older update cannot reopen a resolved one),
# links each quarantining alert to its incident and the flag holding it, and with
# auto_release releases the flags whose incidents are all resolved. Returns
# {flags linked, keys released}. No state change but releases, so no audit entry but theirs.
_LINK_LUA = _LINK_HELPERS_LUA + r"""
local p = cjson.decode(ARGV[1])
local P = p.P
local minid = string.format('%.0f', (tonumber(redis.call('TIME')[1]) - p.retention_s) * 1000)
local index = P .. ':incidents'
for _, inc in ipairs(p.incidents) do
  local k = P .. ':incident:' .. inc.id
  local rev = tonumber(redis.call('HGET', k, 'revision') or '-1')
  if inc.revision >= rev then
    redis.call('HSET', k, 'incident_id', inc.id, 'status', inc.status, 'revision', inc.revision,
               'campaign_id', inc.campaign_id, 'first_window_start_s', inc.first_s,
               'last_window_end_s', inc.last_end_s, 'severity', inc.severity,
               'kinds', inc.kinds, 'resolved_at', inc.resolved_at, 'updated_at', p.now)
  end
  redis.call('EXPIRE', k, p.ttl)
  redis.call('ZADD', index, p.now_s, inc.id)
end
local linked, released = 0, {}
for _, l in ipairs(p.links) do
  redis.call('SET', P .. ':link:' .. l.a, l.i, 'EX', p.ttl)
  local ids = redis.call('HGET', l.k, 'alert_ids')
  -- (Not written yet, or not with this alert: the record script links it when it is.)
  if ids and string.find(',' .. ids .. ',', ',' .. l.a .. ',', 1, true) then
    link_flag(P, l.k, l.a, l.i, p.ttl)
    linked = linked + 1
    if p.auto_release and try_auto_release(P, l.k, l.i, p.now, p.ttl, minid) then
      released[#released + 1] = l.k
    end
  end
end
if p.auto_release then
  for _, inc in ipairs(p.incidents) do
    if inc.status == 'resolved' then
      for _, key in ipairs(redis.call('SMEMBERS', P .. ':incflags:' .. inc.id)) do
        if try_auto_release(P, key, inc.id, p.now, p.ttl, minid) then
          released[#released + 1] = key
        end
      end
    end
  end
end
redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. string.format('%.0f', p.now_s - p.retention_s))
if redis.call('EXISTS', index) == 1 then redis.call('EXPIRE', index, p.retention_s) end
return {linked, released}
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
        a URL gets a client with explicit timeouts (:func:`ctrguard.sinks.redis_client.redis_from_url`).
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
            from ctrguard.sinks.redis_client import redis_from_url

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
        self.checked_key = f"{key_prefix}:checked:v2"
        #: Key layout 1 (no ``key_version`` in ``P:meta``): raw campaign ids. Read only
        #: where a writer of that version wrote, so a reader can be upgraded first.
        self.legacy_checked_key = f"{key_prefix}:checked"
        self.meta_key = f"{key_prefix}:meta"
        self._encoded: dict[str, str] = {}

    # -- keys --------------------------------------------------------------------------

    def flag_key(self, campaign_id: str, segment: str, window_start_s: int) -> str:
        return flag_key(self.key_prefix, campaign_id, segment, window_start_s)

    # -- status ------------------------------------------------------------------------

    def encode(self, campaign_id: str) -> str:
        """:func:`encode_key_part` of a campaign id, remembered (the writer encodes the
        same few thousand ids at every window close)."""
        enc = self._encoded.get(campaign_id)
        if enc is None:
            if len(self._encoded) >= 200_000:
                self._encoded.clear()
            enc = self._encoded[campaign_id] = encode_key_part(campaign_id)
        return enc

    def status(self, campaign_id: str, segment: str, window_start_s: int,
               window_end_s: int | None = None) -> FlagStatus:
        """Status of the figure of series (``campaign_id``, ``segment``) in a window.

        ``window_end_s`` defaults to ``window_start_s`` plus the window length (given to
        the constructor or stored by the writer). Raises :class:`RedisUnavailable` when
        Redis cannot be read: the caller must not publish then (fail closed).
        """
        return self._check_chunk([(campaign_id, segment, int(window_start_s), window_end_s)])[0]

    def check_many(self, figures: Iterable[Any], *, chunk_size: int = CHECK_CHUNK
                   ) -> list[FlagStatus]:
        """Statuses of many figures, in their order: one ``MULTI``/``EXEC`` round trip per
        ``chunk_size`` figures (each answer as consistent as :meth:`status`'s).

        A figure is a tuple ``(campaign_id, segment, window_start_s)`` (or with
        ``window_end_s`` after it), a mapping with those keys, or an object with those
        attributes (a :class:`~ctrguard.records.Figure`). Raises :class:`RedisUnavailable`
        when Redis cannot be read (publish nothing then), ``ValueError`` for a window
        start that is not aligned to the window length.
        """
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        items = [_figure_args(f) for f in figures]
        out: list[FlagStatus] = []
        for i in range(0, len(items), chunk_size):
            out.extend(self._check_chunk(items[i:i + chunk_size]))
        return out

    def _check_chunk(self, items: list[tuple[str, str, int, int | None]]) -> list[FlagStatus]:
        keys = [self.flag_key(c, s, ws) for c, s, ws, _ in items]
        unique = list(dict.fromkeys(keys))
        campaigns = list(dict.fromkeys(c for c, *_ in items))
        what = f"status of {keys[0]}" if len(items) == 1 else f"status of {len(items)} figures"
        with _redis_errors(self.client, what):
            # Flags and watermarks in one transaction: the record script writes a window's
            # flags before (and atomically with) its watermark.
            pipe = self.client.pipeline(transaction=True)
            pipe.hgetall(self.meta_key)
            pipe.zmscore(self.checked_key, [self.encode(c) for c in campaigns])
            pipe.zmscore(self.legacy_checked_key, campaigns)
            for k in unique:
                pipe.hgetall(k)
            meta, scores, legacy, *flags = pipe.execute()
        meta = {_text(k): _text(v) for k, v in meta.items()}
        version = meta.get("key_version")
        if version is None:
            scores = legacy    # written by a writer of layout 1 (or nothing written at all)
        elif version != str(KEY_VERSION):
            raise QuarantineError(
                f"{self.meta_key} says key layout version {version}; this reader knows "
                f"{KEY_VERSION}: upgrade it (nothing is reported publishable meanwhile)")
        checked = {c: (int(v) if v is not None else None)
                   for c, v in zip(campaigns, scores, strict=True)}
        flag_of = dict(zip(unique, flags, strict=True))
        length = self.window_length_s or _int_or_none(meta.get("window_length_s"))
        if self.retention_days is not None:
            retention_s = self.retention_days * 86400
        else:
            retention_s = _int_or_none(meta.get("retention_s")) or DEFAULT_RETENTION_S
        lag_s = _int_or_none(meta.get("min_lag_s")) or 0
        now = self.clock()
        out = []
        for (campaign_id, segment, window_start_s, window_end_s), key in zip(items, keys,
                                                                             strict=True):
            flag = flag_of[key]
            if flag:
                out.append(self._flag_status(key, flag))
                continue
            if window_end_s is None:
                if length is None:
                    raise ValueError("window_end_s is needed: no window length is known")
                if window_start_s % length:
                    raise ValueError(
                        f"window start {window_start_s} is not aligned to the window length "
                        f"{length}s"
                    )
                window_end_s = window_start_s + length
            checked_s = checked[campaign_id]
            if window_end_s + lag_s + retention_s < now:
                state: State = EXPIRED
            elif checked_s is not None and checked_s >= window_end_s:
                state = CLEAN
            else:
                state = PENDING
            out.append(FlagStatus(state=state, campaign_id=campaign_id, segment=segment,
                                  window_start_s=window_start_s, window_end_s=int(window_end_s),
                                  checked_through_s=checked_s))
        return out

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
            pipe = self.client.pipeline(transaction=True)
            pipe.hget(self.meta_key, "key_version")
            pipe.zscore(self.checked_key, self.encode(campaign_id))
            pipe.zscore(self.legacy_checked_key, campaign_id)
            version, score, legacy = pipe.execute()
        if version is None:
            score = legacy
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
        links = dict(link.split("=", 1) for link in f.get("links", "").split(",") if "=" in link)
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
            incident_ids=tuple(sorted(set(links.values()))),
        )


def _figure_args(figure: Any) -> tuple[str, str, int, int | None]:
    """``(campaign_id, segment, window_start_s, window_end_s or None)`` of a figure given
    as a tuple, a mapping or an object with those attributes."""
    if isinstance(figure, tuple | list):
        if len(figure) not in (3, 4):
            raise ValueError(f"a figure is (campaign_id, segment, window_start_s[, "
                             f"window_end_s]), not {figure!r}")
        campaign, segment, start, *end = figure
    elif isinstance(figure, Mapping):
        campaign, segment, start = (figure["campaign_id"], figure["segment"],
                                    figure["window_start_s"])
        end = [figure.get("window_end_s")]
    else:
        campaign, segment, start = figure.campaign_id, figure.segment, figure.window_start_s
        end = [getattr(figure, "window_end_s", None)]
    stop = end[0] if end else None
    return str(campaign), str(segment), int(start), None if stop is None else int(stop)


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
        A :class:`redis.Redis` (see :func:`ctrguard.sinks.redis_client.make_redis`).
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
        try:
            keys, payload = self._record_payload(decisions)
        except UnicodeEncodeError as exc:
            # (msgspec refuses lone surrogates in events: only a caller of this API has one)
            raise QuarantineError(f"a campaign id or segment is not valid Unicode: {exc}") \
                from None
        with _redis_errors(self.client, f"recording {len(decisions)} window decision(s)"):
            pipe = self.client.pipeline(transaction=True)
            self._record_script(keys=keys, args=[_payload_json(payload)], client=pipe)
            (changed,) = pipe.execute()
        if changed:
            log.debug("quarantine: %d flag(s) written or changed", changed)

    def _record_payload(self, decisions: Sequence[WindowDecision]
                        ) -> tuple[list[str], dict[str, Any]]:
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
        # The script's ZADD arguments: end, campaign, end, campaign, ... (campaigns encoded
        # as in flag keys: a reader that encodes otherwise finds no watermark either).
        watermarks: list[str] = [""] * (2 * len(checked))
        watermarks[0::2] = map(str, checked.values())
        members = list(map(self._encoded.get, checked))   # (a C loop: ~2,000 a window)
        if None in members:
            members = [m if m is not None else self.encode(c)
                       for m, c in zip(members, checked, strict=True)]
        watermarks[1::2] = members
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
            "P": self.key_prefix,
            "auto_release": bool(self.settings.auto_release),
            "key_version": KEY_VERSION,
        }
        return keys, payload

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

    def link(self, links: Sequence[tuple[Any, str]], incidents: Sequence[Any] = (), *,
             pipeline: redis.client.Pipeline | None = None) -> tuple[int, list[str]] | None:
        """Record incidents and which incident each quarantining alert belongs to.

        ``links`` are ``(alert, incident_id)`` pairs (alerts as :class:`~ctrguard.records.
        Alert`; those with ``quarantine`` false are skipped), ``incidents`` are
        :class:`~ctrguard.sinks.incidents.Incident` snapshots (the newest revision of each is kept).
        Flags holding a linked alert get the link now; a flag written later gets it when
        it is written. With ``quarantine.auto_release``, a flag whose alerts all belong to
        resolved incidents is released (``released_by`` ``auto:incident:<id>``, one audit
        entry each). Idempotent.

        With ``pipeline`` the script is queued on it (in the Slack step's transaction) and
        None is returned; otherwise it runs now and ``(flags linked, keys released)`` is
        returned.
        """
        payload = self._link_payload(links, incidents)
        if payload is None:
            return None if pipeline is not None else (0, [])
        if pipeline is not None:
            self._link_script(keys=[self.index_key, self.audit_key], args=[payload],
                              client=pipeline)
            return None
        with _redis_errors(self.client, "linking incidents to flags"):
            linked, released = self._link_script(keys=[self.index_key, self.audit_key],
                                                 args=[payload])
        return int(linked), [_text(k) for k in released]

    def _link_payload(self, links: Sequence[tuple[Any, str]],
                      incidents: Sequence[Any]) -> str | None:
        latest: dict[str, Any] = {}
        for inc in incidents:
            if not _valid_incident_id(inc.incident_id):
                continue
            prev = latest.get(inc.incident_id)
            if prev is None or inc.revision >= prev.revision:
                latest[inc.incident_id] = inc
        rows = [{"a": a.alert_id, "i": inc_id,
                 "k": self.flag_key(a.campaign_id, a.segment, a.window_start_s)}
                for a, inc_id in links
                if getattr(a, "quarantine", True) and _valid_incident_id(inc_id)]
        if not rows and not latest:
            return None
        now = self.clock()
        return json.dumps({
            "P": self.key_prefix, "now": iso_utc(now), "now_s": math.floor(now),
            "ttl": self.retention_s, "retention_s": self.retention_s,
            "auto_release": bool(self.settings.auto_release),
            "links": rows,
            "incidents": [{
                "id": i.incident_id, "status": i.status, "revision": int(i.revision),
                "campaign_id": i.campaign_id, "first_s": int(i.first_window_start_s),
                "last_end_s": int(i.last_window_end_s), "severity": i.severity or "",
                "kinds": ",".join(i.kinds), "resolved_at": i.resolved_at or ""}
                for i in latest.values()],
        })

    def link_incident(self, incident_id: str, alerts: Iterable[Any]) -> int:
        """Link the quarantining ``alerts`` to ``incident_id``; returns how many of their
        flags exist (the others are linked when they are written)."""
        result = self.link([(a, incident_id) for a in alerts])
        assert result is not None
        return result[0]

    def auto_release(self, incident_id: str, alerts: Iterable[Any], *,
                     reason: str = "incident resolved") -> list[str]:
        """Mark ``incident_id`` resolved with ``alerts`` as its alerts and, when
        ``auto_release`` is configured, release its flags (see :meth:`link`): a flag is
        released only when every alert on it belongs to a resolved incident, so an
        unrelated alarm on the same window keeps it quarantined. Returns the keys released
        (none when auto-release is off). ``reason`` is kept for compatibility; the audit
        says ``incident <id> resolved``.
        """
        alerts = list(alerts)
        if not _valid_incident_id(incident_id):
            raise ValueError(f"invalid incident id {incident_id!r}")
        starts = [a.window_start_s for a in alerts] or [0]
        resolved = _ResolvedIncident(
            incident_id=incident_id, status="resolved", revision=2**31,
            campaign_id=alerts[0].campaign_id if alerts else "",
            first_window_start_s=min(starts),
            last_window_end_s=max(starts) + (self.window_length_s or 0),
            severity="", kinds=(), resolved_at=iso_utc(self.clock()))
        result = self.link([(a, incident_id) for a in alerts], [resolved])
        assert result is not None
        if not self.settings.auto_release:
            log.debug("quarantine: auto-release is off; incident %s leaves flags as they are",
                      incident_id)
        return sorted(set(result[1]))

    def _release_pipelined(self, pipe: redis.client.Pipeline, key: str, *, by: str,
                           reason: str, incident_id: str, covering: Sequence[str]) -> None:
        """Queue a person's release of one flag on ``pipe`` (answers as :meth:`_release`)."""
        self._release_script(
            keys=[key, self.audit_key],
            args=[by, reason, iso_utc(self.clock()), self.retention_s, "released",
                  incident_id, ",".join(covering)],
            client=pipe)

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


@dataclass(frozen=True, slots=True)
class _ResolvedIncident:
    """The fields of :class:`~ctrguard.sinks.incidents.Incident` that :meth:`QuarantineStore.link`
    reads, for an incident resolved through :meth:`QuarantineStore.auto_release`."""

    incident_id: str
    status: str
    revision: int
    campaign_id: str
    first_window_start_s: int
    last_window_end_s: int
    severity: str
    kinds: tuple[str, ...]
    resolved_at: str


_INCIDENT_ID_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                              "0123456789-._:")


def _valid_incident_id(incident_id: str) -> bool:
    """Incident ids go into key names and the flags' ``links`` field as they are: ours are
    hex digests (or ``stall:<kind>:<start>``); anything else is not linked (its flags stay
    held), with a warning."""
    ok = 0 < len(incident_id) <= 200 and set(incident_id) <= _INCIDENT_ID_SAFE
    if not ok:
        log.warning("quarantine: incident id %r is not linked to flags (unexpected "
                    "characters); its windows stay held", incident_id)
    return ok


#: msgspec's JSON encoder, which refuses subclasses of str, int, dict and list (json writes
#: them its own way) and lone surrogates.
_ENCODE = None if msgspec is None else msgspec.json.Encoder().encode


def _payload_json(payload: dict[str, Any]) -> bytes | str:
    """The record script's argument, written by msgspec (a fraction of json's time for
    thousands of watermarks) where the script decodes it to the same values as the json
    text it replaces: the payload is strings and integers built here (watermarks travel as
    strings), and msgspec writes non-ASCII as UTF-8 where json writes ``\\u`` escapes, which
    cjson decodes to the same bytes. Whatever msgspec refuses is written by json, as before
    orjson's refusals were: a lone surrogate, and subclasses of str, int, dict and list.

    >>> _payload_json({"checked": ["300", "café"], "max_end": 300})
    b'{"checked":["300","caf\\xc3\\xa9"],"max_end":300}'
    >>> _payload_json({"checked": ["300", "\\udc80"], "max_end": 300})
    '{"checked": ["300", "\\\\udc80"], "max_end": 300}'
    """
    if _ENCODE is not None and type(payload["max_end"]) is int:
        try:
            return _ENCODE(payload)
        except (TypeError, ValueError):  # (UnicodeEncodeError is a ValueError)
            pass
    return json.dumps(payload)


def _alert_reason(alert: Any) -> str:
    text = f"{alert.kind} ({alert.detector}, {alert.severity})"
    cause = getattr(alert, "suspected_cause", "")
    return f"{text}: {cause}" if cause else text

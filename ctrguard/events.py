"""The event contract: parsing and validating impression and click events.

One JSON object per Kafka message (or per line of a replay file). Required fields:
``event_id`` (string), ``ts`` (ISO-8601 with an offset or ``Z``, or integer epoch
milliseconds) and ``campaign_id`` (string). Optional fields used when present:
``creative_id``, ``channel``, ``device``, ``geo``, ``user_id``, ``is_internal`` (bool),
``user_agent``; clicks may carry ``impression_id``. Unknown fields are ignored.

>>> ev = parse_event(b'{"event_id":"e1","ts":"2026-01-01T00:00:05Z","campaign_id":"c1",'
...                  b'"device":"mobile","extra":1}', CLICK)
>>> ev.ts_ms, ev.kind, ev.event_id, ev.campaign_id, ev.attrs["device"]
(1767225605000, 1, 'e1', 'c1', 'mobile')
>>> parse_event(b'{"event_id":"e1","ts":1767225605000}', IMPRESSION)
Traceback (most recent call last):
...
ctrguard.errors.EventError: missing required field 'campaign_id'
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from ctrguard.errors import EventError

IMPRESSION = 0
CLICK = 1
KIND_NAMES = ("impression", "click")

#: Event times outside this range are rejected as absurd (epoch milliseconds).
MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z

OPTIONAL_STR_FIELDS = (
    "creative_id", "channel", "device", "geo", "user_id", "user_agent", "impression_id",
)
MAX_ID_CHARS = 256
MAX_ATTR_CHARS = 1024
DEFAULT_MAX_EVENT_BYTES = 64 * 1024


class Event(NamedTuple):
    """A validated event. ``attrs`` holds the optional string fields that were present."""

    ts_ms: int
    kind: int
    event_id: str
    campaign_id: str
    attrs: dict[str, str]
    is_internal: bool


def _has_control_chars(text: str) -> bool:
    # Fast path: printable ASCII has no control characters.
    if text.isascii() and text.isprintable():
        return False
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in text)


def _require_id(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if value is None:
        raise EventError(f"missing required field {name!r}", field=name)
    if not isinstance(value, str):
        raise EventError(f"field {name!r} must be a string, got {type(value).__name__}", field=name)
    if not value:
        raise EventError(f"field {name!r} is empty", field=name)
    if len(value) > MAX_ID_CHARS:
        raise EventError(f"field {name!r} is longer than {MAX_ID_CHARS} characters", field=name)
    if _has_control_chars(value):
        raise EventError(f"field {name!r} contains control characters", field=name)
    return value


def parse_ts(value: Any) -> int:
    """Parse an event time into epoch milliseconds (UTC).

    >>> parse_ts("2026-01-01T01:00:00+01:00")
    1767225600000
    >>> parse_ts(1767225600000)
    1767225600000
    >>> parse_ts("2026-01-01T00:00:00")
    Traceback (most recent call last):
    ...
    ctrguard.errors.EventError: field 'ts' has no timezone offset (use Z or +HH:MM)
    """
    if isinstance(value, bool):
        raise EventError("field 'ts' must be an ISO-8601 string or epoch milliseconds", field="ts")
    if isinstance(value, int):
        ts_ms = value
    elif isinstance(value, str):
        if len(value) > 64:
            raise EventError("field 'ts' is not a timestamp", field="ts")
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise EventError(f"field 'ts' is not ISO-8601: {value[:40]!r}", field="ts") from None
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise EventError("field 'ts' has no timezone offset (use Z or +HH:MM)", field="ts")
        ts_ms = int(parsed.timestamp() * 1000)
    elif value is None:
        raise EventError("missing required field 'ts'", field="ts")
    else:
        raise EventError(
            f"field 'ts' must be an ISO-8601 string or epoch milliseconds, got {type(value).__name__}",
            field="ts",
        )
    if not MIN_TS_MS <= ts_ms < MAX_TS_MS:
        raise EventError(f"field 'ts' is out of range (2000..2100): {ts_ms}", field="ts")
    return ts_ms


def parse_event(raw: bytes, kind: int, *, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> Event:
    """Parse and validate one raw message into an :class:`Event`.

    Raises :class:`~ctrguard.errors.EventError` with a reason for anything that breaks the
    contract.
    """
    if raw is None:
        raise EventError("empty message (no value)")
    if len(raw) > max_bytes:
        raise EventError(f"message is larger than {max_bytes} bytes ({len(raw)})")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventError(f"not valid JSON (or not UTF-8): {str(exc)[:120]}") from None
    if not isinstance(obj, dict):
        raise EventError(f"not a JSON object but {type(obj).__name__}")
    event_id = _require_id(obj, "event_id")
    campaign_id = _require_id(obj, "campaign_id")
    if "ts" not in obj:
        raise EventError("missing required field 'ts'", field="ts")
    ts_ms = parse_ts(obj["ts"])
    attrs: dict[str, str] = {}
    for name in OPTIONAL_STR_FIELDS:
        value = obj.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise EventError(
                f"field {name!r} must be a string, got {type(value).__name__}", field=name
            )
        if len(value) > MAX_ATTR_CHARS:
            raise EventError(f"field {name!r} is longer than {MAX_ATTR_CHARS} characters",
                             field=name)
        if name != "user_agent" and _has_control_chars(value):
            raise EventError(f"field {name!r} contains control characters", field=name)
        attrs[name] = value
    internal = obj.get("is_internal", False)
    if internal is None:
        internal = False
    if not isinstance(internal, bool):
        raise EventError(
            f"field 'is_internal' must be a boolean, got {type(internal).__name__}",
            field="is_internal",
        )
    return Event(ts_ms, kind, event_id, campaign_id, attrs, internal)


def ms_to_iso(ts_ms: int) -> str:
    """Format epoch milliseconds as ISO-8601 UTC with a ``Z``.

    >>> ms_to_iso(1767225600000)
    '2026-01-01T00:00:00Z'
    """
    secs, ms = divmod(ts_ms, 1000)
    text = datetime.fromtimestamp(secs, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ms:03d}Z" if ms else f"{text}Z"


def iso_to_ms(text: str) -> int:
    """Inverse of :func:`ms_to_iso` (accepts any ISO-8601 with an offset).

    >>> iso_to_ms("2026-01-01T00:00:00Z")
    1767225600000
    """
    return parse_ts(text)


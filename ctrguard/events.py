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

from datetime import UTC, datetime
from typing import Annotated, Any, NamedTuple

import msgspec

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


# Control and format characters (C0, DEL, C1, zero-width and bidi controls, BOM): refused in
# ids and segment values, checked in C by msgspec together with the types.
_NO_CONTROL = "^[^\\x00-\\x1f\\x7f-\\x9f\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u206f\\ufeff]*$"
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS, pattern=_NO_CONTROL)]
_Attr = Annotated[str, msgspec.Meta(max_length=MAX_ATTR_CHARS, pattern=_NO_CONTROL)]
_Text = Annotated[str, msgspec.Meta(max_length=MAX_ATTR_CHARS)]
_EpochMs = Annotated[int, msgspec.Meta(ge=MIN_TS_MS, lt=MAX_TS_MS)]


class EventWire(msgspec.Struct, gc=False):
    """The JSON shape of an event; decoding type-checks it. Unknown fields are ignored."""

    event_id: _Id
    ts: _EpochMs | str
    campaign_id: _Id
    creative_id: _Attr | None = None
    channel: _Attr | None = None
    device: _Attr | None = None
    geo: _Attr | None = None
    user_id: _Attr | None = None
    user_agent: _Text | None = None
    impression_id: _Attr | None = None
    is_internal: bool | None = None


class _DatetimeEventWire(EventWire, gc=False):
    """``ts`` parsed in C when it is RFC 3339 (the common ISO-8601 profile)."""

    ts: _EpochMs | datetime


class _PlainEventWire(_DatetimeEventWire, gc=False):
    """Same fields without the control-character patterns, for bytes that cannot hold any."""

    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
    campaign_id: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
    creative_id: _Text | None = None
    channel: _Text | None = None
    device: _Text | None = None
    geo: _Text | None = None
    user_id: _Text | None = None
    impression_id: _Text | None = None


_DECODER = msgspec.json.Decoder(EventWire)
_DATETIME_DECODER = msgspec.json.Decoder(_DatetimeEventWire)
_PLAIN_DECODER = msgspec.json.Decoder(_PlainEventWire)


def _wire_error(exc: msgspec.ValidationError) -> EventError:
    text = str(exc)
    if text.startswith("Object missing required field `"):
        name = text.split("`")[1]
        return EventError(f"missing required field {name!r}", field=name)
    field = None
    if " - at `$." in text:
        field = text.rsplit("`$.", 1)[1].rstrip("`").split("[")[0].split(".")[0]
    if field is not None and "matching regex" in text:
        return EventError(f"field {field!r} contains control characters", field=field)
    if field is not None and "length" in text:
        return EventError(f"field {field!r} is empty or too long ({text.split(' - ')[0]})",
                          field=field)
    if field == "ts" and ("<" in text or ">" in text):
        return EventError("field 'ts' is out of range (2000..2100)", field="ts")
    return EventError(f"wrong type: {text}", field=field)


def decode_event(raw: bytes, *, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> EventWire:
    r"""Decode and validate one message; ``ts`` is returned as epoch milliseconds.

    The fast path used by the dataflow; :func:`parse_event` wraps it.

    >>> decode_event(b'{"event_id":"a\\u0007","ts":1767225600000,"campaign_id":"c"}')
    Traceback (most recent call last):
    ...
    ctrguard.errors.EventError: field 'event_id' contains control characters
    """
    if raw is None:
        raise EventError("empty message (no value)")
    if len(raw) > max_bytes:
        raise EventError(f"message is larger than {max_bytes} bytes ({len(raw)})")
    # JSON cannot carry a raw character below 0x20; every other refused character is either
    # non-ASCII, DEL, or written as an escape. Bytes with none of those skip the patterns.
    plain = raw.isascii() and b"\\" not in raw and b"\x7f" not in raw
    try:
        try:
            ev = (_PLAIN_DECODER if plain else _DATETIME_DECODER).decode(raw)
        except msgspec.ValidationError as exc:
            if "RFC3339" not in str(exc):
                raise
            ev = _DECODER.decode(raw)  # other ISO-8601 forms: parsed below, in Python
    except msgspec.ValidationError as exc:
        raise _wire_error(exc) from None
    except msgspec.DecodeError as exc:
        raise EventError(f"not valid JSON: {str(exc)[:120]}") from None
    except UnicodeDecodeError:
        raise EventError("not valid UTF-8") from None
    ts = ev.ts
    if ts.__class__ is datetime:
        if ts.tzinfo is None:
            raise EventError("field 'ts' has no timezone offset (use Z or +HH:MM)", field="ts")
        ts_ms = int(ts.timestamp() * 1000)
        if not MIN_TS_MS <= ts_ms < MAX_TS_MS:
            raise EventError(f"field 'ts' is out of range (2000..2100): {ts_ms}", field="ts")
        ev.ts = ts_ms
    elif ts.__class__ is str:
        ev.ts = parse_ts(ts)
    return ev


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
    ev = decode_event(raw, max_bytes=max_bytes)
    attrs = {name: getattr(ev, name) for name in OPTIONAL_STR_FIELDS if getattr(ev, name) is not None}
    return Event(ev.ts, kind, ev.event_id, ev.campaign_id, attrs, bool(ev.is_internal))


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


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

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from operator import attrgetter
from typing import Annotated, Any, NamedTuple

import msgspec
import numpy as np

from ctrguard import reasons
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


#: Unicode general categories refused in ids and segment values: controls (Cc: C0, DEL, C1),
#: format characters (Cf: bidi marks, embeddings, overrides and isolates, zero-width
#: characters, the soft hyphen, BOM, tags, ...), surrogates (Cs: only an unpaired one can be
#: in a ``str``) and the line and paragraph separators (Zl, Zp). This is the one predicate of
#: the event contract (:func:`is_refused_char`); both decoding paths apply it (see
#: :data:`_REFUSED_CLASS`).
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

#: The code points of :data:`REFUSED_CATEGORIES`, as inclusive ranges (Unicode 14.0, the
#: ``unicodedata`` of Python 3.11; ``tests/test_format_controls.py`` recomputes them from
#: the running Python's ``unicodedata`` and fails when they differ). Listed rather than
#: computed at import, which would cost 0.2 s.
REFUSED_RANGES = (
    (0x0000, 0x001F), (0x007F, 0x009F), (0x00AD, 0x00AD), (0x0600, 0x0605),
    (0x061C, 0x061C), (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891),
    (0x08E2, 0x08E2), (0x180E, 0x180E), (0x200B, 0x200F), (0x2028, 0x202E),
    (0x2060, 0x2064), (0x2066, 0x206F), (0xD800, 0xDFFF), (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB), (0x110BD, 0x110BD), (0x110CD, 0x110CD), (0x13430, 0x13438),
    (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0001, 0xE0001), (0xE0020, 0xE007F),
)

#: :data:`REFUSED_RANGES` as a regular-expression class body. msgspec checks it in C with the
#: types (the ``_NO_CONTROL`` pattern of ids and segment values), on every message that
#: could hold such a character; a message that cannot (printable ASCII without escapes: the
#: C scanner's and :func:`_is_plain`'s alphabet, whose ASCII part is exactly the refused
#: one's complement, which the tests check) skips the pattern.
_REFUSED_CLASS = "".join(
    f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in REFUSED_RANGES)
_REFUSED_RE = re.compile(f"[{_REFUSED_CLASS}]")


def is_refused_char(ch: str) -> bool:
    """Whether a character may not appear in an id or a segment value.

    >>> [is_refused_char(c) for c in ("a", "\\n", "\\u061c", "\\u202e", "\\ud800", "\\u00e9")]
    [False, True, True, True, True, False]
    """
    return _REFUSED_RE.match(ch) is not None


# msgspec runs the pattern with re.search, where "$" also matches before a final "\n": "\Z"
# is the end.
_NO_CONTROL = f"^[^{_REFUSED_CLASS}]*\\Z"
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS, pattern=_NO_CONTROL)]
_Attr = Annotated[str, msgspec.Meta(max_length=MAX_ATTR_CHARS, pattern=_NO_CONTROL)]
_Text = Annotated[str, msgspec.Meta(max_length=MAX_ATTR_CHARS)]
_EpochMs = Annotated[int, msgspec.Meta(ge=MIN_TS_MS, lt=MAX_TS_MS)]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be used, with why. ``raw`` is the original bytes; ``None``
    for a late event whose chunk crossed processes without them
    (``ctrguard.flows.engine.Chunk``): the dead-letter sink reads them back from the source
    partition at ``offset``."""

    stage: str            # "parse" | "future" | "past" | "late" | "crash"
    reason: str
    topic: str
    partition: int
    offset: int
    raw: bytes | None
    #: One of :data:`ctrguard.reasons.REASON_CODES`; ``None``: the stage's own code.
    code: str | None = None


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


class _BatchEventWire(_PlainEventWire, gc=False):
    """Plain bytes, ``ts`` kept as text: a whole batch's times are parsed at once."""

    ts: _EpochMs | str


_DECODER = msgspec.json.Decoder(EventWire)
_DATETIME_DECODER = msgspec.json.Decoder(_DatetimeEventWire)
_PLAIN_DECODER = msgspec.json.Decoder(_PlainEventWire)
_BATCH_DECODER = msgspec.json.Decoder(_BatchEventWire)


def _wire_error(exc: msgspec.ValidationError) -> EventError:
    text = str(exc)
    if text.startswith("Object missing required field `"):
        name = text.split("`")[1]
        return EventError(f"missing required field {name!r}", field=name,
                          code=reasons.MISSING_FIELD)
    field = None
    if " - at `$." in text:
        field = text.rsplit("`$.", 1)[1].rstrip("`").split("[")[0].split(".")[0]
    if field is not None and "matching regex" in text:
        return EventError(f"field {field!r} contains control characters", field=field,
                          code=reasons.BAD_TEXT)
    if field is not None and "length" in text:
        return EventError(f"field {field!r} is empty or too long ({text.split(' - ')[0]})",
                          field=field, code=reasons.BAD_LENGTH)
    if field == "ts" and ("<" in text or ">" in text):
        return EventError("field 'ts' is out of range (2000..2100)", field="ts",
                          code=reasons.BAD_TIME)
    code = reasons.NOT_JSON if field is None else reasons.WRONG_TYPE
    return EventError(f"wrong type: {text}", field=field, code=code)


#: Events nested deeper than this (``{}`` is one level, ``{"a": [1]}`` two) are refused as
#: ``too_deep``. msgspec recurses per level and raises RecursionError somewhere under
#: Python's recursion limit, at a depth that depends on the caller's stack; a fixed bound
#: gives every message the same verdict wherever it is decoded.
MAX_JSON_DEPTH = 64

# A JSON string, escapes included; what is left after removing them is structure.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPEN = np.zeros(256, dtype=np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


def _openings(raw: bytes) -> int:
    return raw.count(b"{") + raw.count(b"[")


def json_depth(raw: bytes) -> int:
    """How deep the brackets of a JSON text nest, outside strings (an unterminated string
    runs to the end). The text need not be valid JSON.

    >>> json_depth(b'{"a":[1,{"b":"[[["}]}'), json_depth(b'{"a":"x\\\\"}]]'), json_depth(b"[[[")
    (3, 1, 3)
    """
    body = _JSON_STRING.sub(b"", raw)
    cut = body.find(b'"')
    if cut >= 0:
        body = body[:cut]
    if not body:
        return 0
    steps = _OPEN[np.frombuffer(body, dtype=np.uint8)].astype(np.int64)
    return max(0, int(np.cumsum(steps).max()))


def _check_depth(raw: bytes) -> None:
    # A text nested d levels deep has at least d opening brackets: counting them (in C)
    # clears almost every message without looking closer.
    if _openings(raw) > MAX_JSON_DEPTH and json_depth(raw) > MAX_JSON_DEPTH:
        raise EventError(f"nested deeper than {MAX_JSON_DEPTH} levels", code=reasons.TOO_DEEP)


def decode_event(raw: bytes, *, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> EventWire:
    r"""Decode and validate one message; ``ts`` is returned as epoch milliseconds.

    The fast path used by the dataflow; :func:`parse_event` wraps it. Raises
    :class:`EventError` for anything that is not a valid event, and nothing else: whatever
    else decoding raises (RecursionError included) becomes an EventError too.

    >>> decode_event(b'{"event_id":"a\\u0007","ts":1767225600000,"campaign_id":"c"}')
    Traceback (most recent call last):
    ...
    ctrguard.errors.EventError: field 'event_id' contains control characters
    >>> decode_event(b'{"event_id":"a","ts":1767225600000,"campaign_id":"c","x":' + b"[" * 99)
    Traceback (most recent call last):
    ...
    ctrguard.errors.EventError: nested deeper than 64 levels
    """
    try:
        return _decode_event(raw, max_bytes)
    except EventError:
        raise
    except RecursionError:
        raise EventError(f"nested too deeply to decode (over {MAX_JSON_DEPTH} levels)",
                         code=reasons.TOO_DEEP) from None
    except Exception as exc:  # noqa: BLE001 - a message must never stop the flow
        raise EventError(f"cannot be decoded: {type(exc).__name__}: {str(exc)[:120]}",
                         code=reasons.INVALID) from None


def _decode_event(raw: bytes, max_bytes: int) -> EventWire:
    if raw is None:
        raise EventError("empty message (no value)", code=reasons.NO_VALUE)
    if len(raw) > max_bytes:
        raise EventError(f"message is larger than {max_bytes} bytes ({len(raw)})",
                         code=reasons.TOO_LARGE)
    _check_depth(raw)
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
        text = str(exc)
        code = reasons.NOT_UTF8 if "UTF-8" in text else reasons.NOT_JSON
        raise EventError(f"not valid JSON: {text[:120]}", code=code) from None
    except UnicodeDecodeError:
        raise EventError("not valid UTF-8", code=reasons.NOT_UTF8) from None
    ts = ev.ts
    if ts.__class__ is datetime:
        if ts.tzinfo is None:
            raise EventError("field 'ts' has no timezone offset (use Z or +HH:MM)", field="ts",
                             code=reasons.BAD_TIME)
        ts_ms = _epoch_ms(ts)
        if not MIN_TS_MS <= ts_ms < MAX_TS_MS:
            raise EventError(f"field 'ts' is out of range (2000..2100): {ts_ms}", field="ts",
                             code=reasons.BAD_TIME)
        ev.ts = ts_ms
    elif ts.__class__ is str:
        ev.ts = parse_ts(ts)
    return ev


_TS = attrgetter("ts")


def _is_plain(raw: bytes) -> bool:
    return raw.isascii() and b"\\" not in raw and b"\x7f" not in raw


class DecodedBatch(NamedTuple):
    """The valid events of a batch of messages (see :func:`decode_batch`)."""

    events: list[Any]            # decoded structs; use ``ts_ms``, not their ``ts``
    ts_ms: np.ndarray            # int64 event times, one per event
    positions: list[int] | None  # index in the batch of each event; None: all, in order
    errors: list[tuple[int, EventError]]  # (index in the batch, why), in batch order


def decode_batch(values: Sequence[bytes | None], *,
                 max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> DecodedBatch:
    r"""Decode and validate a batch of messages; same verdicts as :func:`decode_event`.

    The common case (ASCII messages without escapes, times as epoch milliseconds or
    ``YYYY-MM-DDTHH:MM:SS[.fff]Z``) costs one C call per message and a few numpy operations
    per batch; every message off that path goes through :func:`decode_event`, so its
    acceptance and its error reason are exactly those of a message decoded alone.

    >>> out = decode_batch([b'{"event_id":"a","ts":"2026-01-01T00:00:00.250Z","campaign_id":"c"}',
    ...                     b'{"event_id":"b"}',
    ...                     b'{"event_id":"c","ts":1767225600000,"campaign_id":"c"}'])
    >>> [e.event_id for e in out.events], out.ts_ms.tolist(), out.positions
    (['a', 'c'], [1767225600250, 1767225600000], [0, 2])
    >>> [(i, e.reason) for i, e in out.errors]
    [(1, "missing required field 'ts'")]
    """
    n = len(values)
    events: list[Any] | None = None
    if n:
        try:
            joined = b"".join(values)  # type: ignore[arg-type]  # None: TypeError
        except TypeError:
            joined = None
        # Every message decoded as an event has an opening brace; a message nested deeper
        # than MAX_JSON_DEPTH has more than that many brackets: below this total, none does.
        if joined is not None and _is_plain(joined) and max(map(len, values)) <= max_bytes \
                and _openings(joined) < n + MAX_JSON_DEPTH:
            try:
                events = list(map(_BATCH_DECODER.decode, values))
            except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
                events = None
    positions: list[int] | None = None
    errors: list[tuple[int, EventError]] = []
    if events is None:
        events, positions = [], []
        decode = _BATCH_DECODER.decode
        for i, raw in enumerate(values):
            if raw is not None and len(raw) <= max_bytes and _is_plain(raw) \
                    and _openings(raw) <= MAX_JSON_DEPTH:
                try:
                    events.append(decode(raw))
                    positions.append(i)
                    continue
                except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
                    pass  # decoded again below, for the exact reason
            try:
                events.append(decode_event(raw, max_bytes=max_bytes))  # type: ignore[arg-type]
            except EventError as exc:
                errors.append((i, exc))
                continue
            positions.append(i)
    m = len(events)
    ts_list = list(map(_TS, events))
    kinds = np.fromiter(map(type, ts_list), dtype=object, count=m)
    is_text = kinds == str  # noqa: E721 - elementwise over a numpy array of types
    if not is_text.any():
        return DecodedBatch(events, np.array(ts_list, dtype=np.int64), positions, errors)
    values_arr = np.array(ts_list, dtype=object)
    ts_ms = np.empty(m, dtype=np.int64)
    is_int = ~is_text
    if is_int.any():
        ts_ms[is_int] = values_arr[is_int].astype(np.int64)
    ts_ms[is_text] = _rfc3339_z_to_ms(values_arr[is_text].tolist())
    failed = np.flatnonzero(ts_ms < 0).tolist()  # epoch-ms integers are validated positive
    if failed:
        # Other ISO-8601 forms and invalid times: the single-message path decides.
        dropped = set()
        for j in failed:
            i = positions[j] if positions is not None else j
            try:
                ts_ms[j] = decode_event(values[i], max_bytes=max_bytes).ts  # type: ignore[arg-type]
            except EventError as exc:
                errors.append((i, exc))
                dropped.add(j)
        if dropped:
            keep = [j for j in range(m) if j not in dropped]
            events = [events[j] for j in keep]
            ts_ms = ts_ms[keep]
            positions = [positions[j] if positions is not None else j for j in keep]
            errors.sort(key=_first)
    return DecodedBatch(events, ts_ms, positions, errors)


def _first(pair: tuple[int, Any]) -> int:
    return pair[0]


#: Set (to anything but ``0``) to decode every batch with msgspec: A/B runs, or to rule the
#: scanner out when investigating a decoding question.
NO_SCANNER_ENV = "CTRGUARD_NO_SCANNER"


def _load_module() -> Any:
    """The compiled ``ctrguard/_scan.c`` if built, matching its source and not disabled
    (``CTRGUARD_PURE_PYTHON``); else ``None`` (see :mod:`ctrguard.native`)."""
    from ctrguard import native

    return native.load_extension("ctrguard._scan")


#: The compiled module, for :func:`line_bounds` (reading lines is not decoding: it does
#: not depend on :data:`NO_SCANNER_ENV`).
_LINES = _load_module()
#: The same module for :func:`scan_batch`, unless :data:`NO_SCANNER_ENV` switches it off.
_SCANNER = None if os.environ.get(NO_SCANNER_ENV, "") not in ("", "0") else _LINES


_WHITE_SPACE = b" \t\n\r\x0b\x0c"   # what bytes.strip() removes


def _line_bounds_py(buffer: bytes, pos: int, limit: int
                    ) -> tuple[bytes, bytes | None, int, int]:
    """The reference of the compiled ``line_bounds``; see :func:`line_bounds`."""
    if not 0 <= pos <= len(buffer) or limit < 0:
        raise ValueError("pos outside the buffer, or a negative limit")
    bounds: list[int] = []
    numbers: list[int] = []
    seen = 0
    while seen < limit:
        nl = buffer.find(b"\n", pos)
        if nl < 0:
            break
        end = nl
        while end > pos and buffer[end - 1] == 0x0D:  # trailing "\r"s
            end -= 1
        if buffer[pos:end].strip(_WHITE_SPACE):
            bounds += (pos, end)
            numbers.append(seen)
        seen += 1
        pos = nl + 1
    packed = np.array(bounds, dtype=np.int64).tobytes()
    kept = None if len(numbers) == seen else np.array(numbers, dtype=np.int64).tobytes()
    return packed, kept, pos, seen


def line_bounds(buffer: bytes, pos: int, limit: int) -> tuple[bytes, bytes | None, int, int]:
    r"""The next lines of ``buffer`` from ``pos``, as a readline loop over a file sees them,
    without a bytes object per line: ``(bounds, numbers, consumed, seen)``.

    Up to ``limit`` lines, each ended by ``\n`` (an unterminated rest is not a line yet),
    each without its trailing ``\r`` characters; blank lines (white space only) are skipped but
    counted. ``bounds``: native int64 ``(start, end)`` pairs of the kept lines (a
    :class:`LineBlock`'s); ``numbers``: native int64 index among the ``seen`` lines of each
    kept one, ``None`` when all were kept; ``consumed``: the position after the last line.

    >>> bounds, numbers, consumed, seen = line_bounds(b'{"a":1}\r\n \n{"b":2}\n{"c"', 0, 9)
    >>> list(LineBlock(b'{"a":1}\r\n \n{"b":2}\n{"c"', bounds)), consumed, seen
    ([b'{"a":1}', b'{"b":2}'], 19, 3)
    >>> np.frombuffer(numbers, dtype=np.int64).tolist()
    [0, 2]
    """
    if _LINES is not None:
        return _LINES.line_bounds(buffer, pos, limit)
    return _line_bounds_py(buffer, pos, limit)


class LineBlock(Sequence[bytes]):
    r"""Messages that are slices of one buffer (the lines of a file block, see
    :func:`line_bounds`), held as offsets: a batch's raw messages without a bytes object per
    message. The scanner reads them in place; a message is made only when asked for (a
    dead letter, a batch the scanner refuses). Pickles as a list of bytes.

    >>> lines = LineBlock(b"ab\ncd\n", np.array([0, 2, 3, 5], dtype=np.int64).tobytes())
    >>> len(lines), lines[1], lines[-1], list(lines), lines[0:1]
    (2, b'cd', b'cd', [b'ab', b'cd'], [b'ab'])
    """

    __slots__ = ("buffer", "bounds", "_pairs")

    def __init__(self, buffer: bytes, bounds: bytes):
        self.buffer = buffer
        self.bounds = bounds
        self._pairs = np.frombuffer(bounds, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        start, end = self._pairs[i].tolist()
        return self.buffer[start:end]

    def __iter__(self) -> Iterator[bytes]:
        buf = self.buffer
        return (buf[s:e] for s, e in self._pairs.tolist())

    def __reduce__(self):
        return list, (list(self),)

    def __repr__(self) -> str:
        return f"LineBlock({len(self)} lines)"


class ScannedBatch(NamedTuple):
    """A batch of messages that were all valid, as columns (see :func:`scan_batch`)."""

    campaign_ids: list[str]
    event_ids: list[str]
    ts_ms: np.ndarray                    # int64
    dims: tuple[list[str | None], ...]   # one column per dimension asked for
    user_agents: list[str | None] | None  # when asked for
    internal: list[int]                  # positions of events with ``is_internal: true``
    keys: np.ndarray                     # uint64 de-duplication keys (ctrguard.flows.engine.dedup_keys)
    #: With ``refs``: per event the uint64 key of its ``user_id`` and of its
    #: ``impression_id`` (``ctrguard.flows.engine.ref_keys``: 0 when absent, null or empty).
    users: np.ndarray | None = None
    refs: np.ndarray | None = None


def scan_batch(values: Sequence[bytes | None], dims: tuple[str, ...], *,
               user_agents: bool = False,
               max_bytes: int = DEFAULT_MAX_EVENT_BYTES,
               refs: bool = False) -> ScannedBatch | None:
    r"""The fast path of :func:`decode_batch`, in C: the columns the dataflow uses when
    *every* message of the batch is a valid, plain event (printable ASCII, no escapes, no
    nested values, no repeated field); ``None`` otherwise, and also when the scanner is
    not built: the caller then decodes with :func:`decode_batch`, which gives every
    message its own verdict. Where it answers, it answers what :func:`decode_batch` would.

    >>> out = scan_batch([b'{"event_id":"a","ts":1767225600000,"campaign_id":"c",'
    ...                   b'"device":"mobile","x":[1]}'], ("device",))
    >>> out is None  # a nested unknown field: not plain, msgspec decides
    True
    >>> out = scan_batch([b'{"event_id":"a","ts":"2026-01-01T00:00:00.250Z","campaign_id":"c",'
    ...                   b'"device":"mobile","is_internal":true}'], ("device",))
    >>> out is None or (out.event_ids, out.ts_ms.tolist(), out.dims, out.internal) == (
    ...     ["a"], [1767225600250], (["mobile"],), [0])  # None where it is not built
    True
    """
    scanner = _SCANNER
    if scanner is None or not values:
        return None
    if values.__class__ is LineBlock:
        values = (values.buffer, values.bounds)  # type: ignore[attr-defined,assignment]
    elif values.__class__ is not list:
        values = list(values)
    # The scanner refuses a message without a value (None) or longer than max_bytes itself,
    # in the pass that reads them (a Python pass over their lengths costs more).
    out = scanner.scan(values, dims, user_agents, MIN_TS_MS, MAX_TS_MS, MAX_ID_CHARS,
                       MAX_ATTR_CHARS, max_bytes, refs)
    if out is None:
        return None
    cids, eids, ts_buf, dim_cols, agents, internal, keys_buf = out[:7]
    ts = np.frombuffer(ts_buf, dtype=np.int64)
    users = ref = None
    if refs:
        users = np.frombuffer(out[7], dtype=np.uint64)
        ref = np.frombuffer(out[8], dtype=np.uint64)
    return ScannedBatch(cids, eids, ts, dim_cols, agents, internal,
                        np.frombuffer(keys_buf, dtype=np.uint64), users, ref)


# Offsets in "YYYY-MM-DDTHH:MM:SS.fffZ" (24 characters) and "YYYY-MM-DDTHH:MM:SSZ" (20).
_DIGITS_20 = np.array([0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18])
_DIGITS_24 = np.append(_DIGITS_20, [20, 21, 22])
_SEPARATORS = {20: ((4, "-"), (7, "-"), (10, "T"), (13, ":"), (16, ":"), (19, "Z")),
               24: ((4, "-"), (7, "-"), (10, "T"), (13, ":"), (16, ":"), (19, "."), (23, "Z"))}
_MONTH_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def _rfc3339_z_to_ms(texts: list[str]) -> np.ndarray:
    """Epoch milliseconds of UTC times in the two canonical forms, -1 where not one of them.

    Vectorised; anything unusual (other lengths, offsets, lower-case letters, impossible
    dates, leap seconds, years outside 2000..2099) is left to the careful path (-1).

    >>> _rfc3339_z_to_ms(["2026-01-01T00:00:00Z", "2024-02-29T23:59:59.999Z",
    ...                   "2026-02-29T00:00:00Z", "2026-01-01T00:00:00+00:00"]).tolist()
    [1767225600000, 1709251199999, -1, -1]
    """
    out = np.full(len(texts), -1, dtype=np.int64)
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    for length in (24, 20):
        idx = np.flatnonzero(lengths == length)
        if idx.size == 0:
            continue
        sub = texts if idx.size == len(texts) else [texts[i] for i in idx.tolist()]
        try:
            buf = "".join(sub).encode("ascii")
        except UnicodeEncodeError:
            continue
        a = np.frombuffer(buf, dtype=np.uint8).reshape(idx.size, length)
        ok = np.ones(idx.size, dtype=bool)
        for pos, char in _SEPARATORS[length]:
            ok &= a[:, pos] == ord(char)
        d = a[:, _DIGITS_24 if length == 24 else _DIGITS_20].astype(np.int64) - ord("0")
        ok &= ((d >= 0) & (d <= 9)).all(axis=1)
        year = d[:, 0] * 1000 + d[:, 1] * 100 + d[:, 2] * 10 + d[:, 3]
        month = d[:, 4] * 10 + d[:, 5]
        day = d[:, 6] * 10 + d[:, 7]
        hour = d[:, 8] * 10 + d[:, 9]
        minute = d[:, 10] * 10 + d[:, 11]
        sec = d[:, 12] * 10 + d[:, 13]
        frac = d[:, 14] * 100 + d[:, 15] * 10 + d[:, 16] if length == 24 else 0
        ok &= (year >= 2000) & (year <= 2099) & (month >= 1) & (month <= 12)
        leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
        mdays = _MONTH_DAYS[np.clip(month, 0, 12)] + ((month == 2) & leap)
        ok &= (day >= 1) & (day <= mdays) & (hour <= 23) & (minute <= 59) & (sec <= 59)
        # Days from the civil date (H. Hinnant's algorithm; years >= 2000 are positive).
        y = year - (month <= 2)
        era = y // 400
        yoe = y - era * 400
        doy = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
        days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
        ms = (((days * 24 + hour) * 60 + minute) * 60 + sec) * 1000 + frac
        out[idx[ok]] = ms[ok]
    return out


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_ms(dt: datetime) -> int:
    """Epoch milliseconds of an aware datetime, exactly (``timestamp() * 1000`` goes through
    a float and can land one millisecond low)."""
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


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
        ts_ms = _epoch_ms(parsed)
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


@lru_cache(maxsize=8192)
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


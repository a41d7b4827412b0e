"""Dead-letter reason codes: the closed set carried by the ``ctrguard-reason-code`` header.

``ctrguard-reason`` is free text for people (it names the field and the value's problem);
``ctrguard-reason-code`` is one of the codes below, for programs that count, route or replay
dead letters. A new code is a documented change (README, "Event contract").

>>> sorted(REASON_CODES)[:4]
['bad_length', 'bad_text', 'bad_time', 'crash']
>>> reason_code("late", None), reason_code("parse", TOO_DEEP), reason_code("brand-new", None)
('late', 'too_deep', 'other')
"""

from __future__ import annotations

NO_VALUE = "no_value"
TOO_LARGE = "too_large"
NOT_UTF8 = "not_utf8"
NOT_JSON = "not_json"
TOO_DEEP = "too_deep"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
BAD_TEXT = "bad_text"
BAD_LENGTH = "bad_length"
BAD_TIME = "bad_time"
INVALID = "invalid"
FUTURE = "future"
PAST = "past"
LATE = "late"
CRASH = "crash"
OTHER = "other"

#: Every code, with what it means.
REASON_CODES: dict[str, str] = {
    NO_VALUE: "the message has no value (a tombstone) or an empty one",
    TOO_LARGE: "the message is larger than max_event_bytes",
    NOT_UTF8: "the message is not valid UTF-8",
    NOT_JSON: "the message is not one JSON object (malformed, truncated, another type)",
    TOO_DEEP: "JSON nested deeper than events.MAX_JSON_DEPTH levels",
    MISSING_FIELD: "a required field is missing",
    WRONG_TYPE: "a field has the wrong JSON type",
    BAD_TEXT: "an id or segment value holds a control, format or separator character",
    BAD_LENGTH: "an id is empty or a text field is too long",
    BAD_TIME: "ts is not a time, has no offset, or lies outside 2000..2100",
    INVALID: "any other breach of the event contract",
    FUTURE: "event time too far ahead (stage 'future')",
    PAST: "event time too far behind (stage 'past')",
    LATE: "event later than the allowed lateness (stage 'late')",
    CRASH: "a step raised an exception on this message; the exception's type is in "
           "ctrguard-reason",
    OTHER: "a stage this version does not list (never written by ctrguard itself)",
}


def reason_code(stage: str, code: str | None) -> str:
    """The code of a dead letter: its own, else its stage's, else ``other``."""
    if code:
        return code
    return stage if stage in REASON_CODES else OTHER

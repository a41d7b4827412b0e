"""Logging set-up shared by every command: plain text for people, JSON lines for machines.

``ctrguard --log-format json COMMAND`` (or ``CTRGUARD_LOG_FORMAT=json``) writes one JSON
object per line to stderr with the keys ``time`` (ISO-8601 UTC, milliseconds), ``level``,
``logger``, ``message`` and ``fields``: whatever the call passed as ``extra=`` (and the
traceback as ``exception``), so a log pipeline can filter on values without parsing text.

>>> import logging
>>> record = logging.LogRecord("ctrguard.run", logging.INFO, __file__, 1,
...                            "caught up on %d partitions", (3,), None)
>>> record.created = 1767225600.25
>>> record.lag_messages = 0
>>> print(JsonFormatter().format(record))
{"time": "2026-01-01T00:00:00.250Z", "level": "INFO", "logger": "ctrguard.run", "message": "caught up on 3 partitions", "fields": {"lag_messages": 0}}
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
FORMATS: tuple[str, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName"}


def default_format() -> str:
    """The format when no ``--log-format`` is given: ``$CTRGUARD_LOG_FORMAT`` or text."""
    value = os.environ.get("CTRGUARD_LOG_FORMAT", "").strip().lower()
    return value if value in FORMATS else "text"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in record.__dict__.items()
                  if k not in _STANDARD and not k.startswith("_")}
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        when = datetime.fromtimestamp(record.created, UTC)
        doc = {"time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
               "level": record.levelname, "logger": record.name,
               "message": record.getMessage(), "fields": fields}
        return json.dumps(doc, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (not at set-up)."""

    _ctrguard = True

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure(level: int = logging.INFO, fmt: str = "text") -> None:
    """Send log records to stderr in ``fmt`` (``text`` or ``json``) from ``level`` up.

    Like :func:`logging.basicConfig`, it leaves a root logger that someone else has given
    handlers (an application embedding ctrguard, pytest's capture) alone apart from the
    level; calling it again replaces only the handler it installed itself.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    root = logging.getLogger()
    root.setLevel(level)
    ours = [h for h in root.handlers if getattr(h, "_ctrguard", False)]
    if len(ours) < len(root.handlers):
        return
    for h in ours:
        root.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)


__all__ = ["FORMATS", "JsonFormatter", "configure", "default_format"]

"""librdkafka's own log, through Python logging, one line per broker and kind per interval.

Left alone, librdkafka writes every event to stderr: a broker that cannot be reached gives
a ``Connect to ... failed`` line for every reconnection attempt, about 290 lines in 15 s.
Every client ctrguard makes (consumers, producers, admin clients: all take their settings
from :meth:`ctrguard.config.KafkaSettings.client_config`) hands its log and its error
callback to :data:`ROUTER` instead. The router logs to ``ctrguard.kafka.librdkafka`` at the
level librdkafka gave, and says a thing about a broker once per :data:`INTERVAL_S`: the
first occurrence at once, the next one after the interval with how many were left out
meanwhile. Debug lines (``kafka.client.debug``) pass through unlimited.

>>> router = KafkaLogRouter(interval_s=30, clock=iter([0, 1, 2, 40]).__next__)
>>> line = "[thrd:b1:9092/bootstrap]: b1:9092/bootstrap: Connect to ipv4#10.0.0.1:9092 failed: "
>>> for ms in (0, 50, 100, 150):
...     router.log(40, "%s [%s] %s", "FAIL", "rdkafka#consumer-1",
...                line + f"Connection refused (after {ms}ms in state CONNECT)")
>>> [(r.levelname, r.getMessage()) for r in router.emitted]  # doctest: +NORMALIZE_WHITESPACE
[('ERROR', 'kafka b1:9092: Connect to ipv4#10.0.0.1:9092 failed: Connection refused'),
 ('ERROR', 'kafka b1:9092: Connect to ipv4#10.0.0.1:9092 failed: Connection refused
            (2 more in the last 40s)')]
>>> router.failures()
{'b1:9092': 4}
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

log = logging.getLogger("ctrguard.kafka.librdkafka")

#: Seconds between two lines about the same broker and kind of event.
INTERVAL_S = 30.0

# "[thrd:b1:9092/bootstrap]: " (the thread), then "b1:9092/bootstrap: " or
# "sasl_ssl://b1:9093/1: " (the broker and its node id), then what happened.
_THREAD = re.compile(r"^\[thrd:[^\]]*\]:\s*")
_BROKER = re.compile(r"^(?P<broker>\S+?)/(?:\w+): (?P<rest>.*)$", re.DOTALL)
# What varies between two reports of the same thing: "(after 0ms in state CONNECT)",
# "(..., 3 identical error(s) suppressed)", numbers.
_TAIL = re.compile(r"\s*\((?:after \d+ms|\d+ identical)[^)]*\)\s*$")
_DIGITS = re.compile(r"\d+")
# Events that are a failed attempt to talk to a broker (counted by failures()).
_FAILURE_FACILITIES = {"FAIL", "ERROR", "CONNECT"}


def split_broker(message: str) -> tuple[str, str]:
    """``(broker, text)`` of a librdkafka log or error message (broker ``-`` if none).

    >>> split_broker("[thrd:ssl://k1:9093/1]: ssl://k1:9093/1: Disconnected (after 5ms in state UP)")
    ('ssl://k1:9093', 'Disconnected')
    >>> split_broker("1/1 brokers are down")
    ('-', '1/1 brokers are down')
    """
    text = _THREAD.sub("", message, count=1)
    match = _BROKER.match(text)
    broker = "-"
    if match is not None and ":" in match.group("broker"):
        broker, text = match.group("broker"), match.group("rest")
    return broker, _TAIL.sub("", text).strip()


class KafkaLogRouter:
    """The ``logger`` and ``error_cb`` of every librdkafka client (see the module notes).

    ``emitted`` keeps the last records logged (tests, and the preflight's summary).
    """

    def __init__(self, interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger = log):
        self.interval_s = interval_s
        self._clock = clock
        self._logger = logger
        self._lock = threading.Lock()
        # (broker, facility, kind) -> [time last logged, left out since]
        self._seen: dict[tuple[str, str, str], list[Any]] = {}
        self._failures: Counter = Counter()
        self._last_failure: dict[str, str] = {}
        self.emitted: list[logging.LogRecord] = []

    # confluent_kafka calls logger.log(level, "%s [%s] %s", facility, client name, message)
    def log(self, level: int, fmt: str, *args: Any, **_: Any) -> None:
        facility, message = (str(args[0]), str(args[-1])) if len(args) >= 3 else ("", fmt % args)
        self._route(level, facility, message)

    def error(self, err: Any) -> None:
        """``error_cb``: errors the application should know about. A failed connection is
        also logged (facility FAIL) and counted there, so only other errors pass."""
        name = err.name() if hasattr(err, "name") else str(err)
        if name == "_TRANSPORT" and not err.fatal():
            return
        level = logging.CRITICAL if err.fatal() else logging.WARNING
        self._route(level, name, err.str())

    def _route(self, level: int, facility: str, message: str) -> None:
        broker, text = split_broker(message)
        if level < logging.INFO:
            if self._logger.isEnabledFor(level):
                self._emit(level, f"kafka {broker}: {text} [{facility}]")
            return
        key = (broker, facility, _DIGITS.sub("N", text))
        now = self._clock()
        with self._lock:
            if facility in _FAILURE_FACILITIES and level >= logging.WARNING:
                self._failures[broker] += 1
                self._last_failure[broker] = text
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.interval_s:
                seen[1] += 1
                return
            left_out = seen[1] if seen is not None else 0
            since = now - seen[0] if seen is not None else 0.0
            if len(self._seen) > 10_000:
                self._seen.clear()
            self._seen[key] = [now, 0]
        suffix = f" ({left_out} more in the last {since:.0f}s)" if left_out else ""
        self._emit(level, f"kafka {broker}: {text}{suffix}")

    def _emit(self, level: int, message: str) -> None:
        record = self._logger.makeRecord(self._logger.name, level, __file__, 0, message, (),
                                         None)
        if self._logger.isEnabledFor(level):
            self._logger.handle(record)
        self.emitted.append(record)
        del self.emitted[:-100]

    def failures(self) -> dict[str, int]:
        """Failed attempts to reach each broker so far (a copy)."""
        with self._lock:
            return dict(self._failures)

    def last_failure(self, broker: str) -> str | None:
        """What the last failed attempt to reach ``broker`` said."""
        with self._lock:
            return self._last_failure.get(broker)


#: The router of the process: one rate limit shared by all clients.
ROUTER = KafkaLogRouter()


def client_logging() -> dict[str, Any]:
    """The librdkafka settings that send a client's log and errors to :data:`ROUTER`.

    Logs are handed over when the client is polled (consumers while consuming, producers
    when flushing; an admin client only when its ``poll`` is called).
    """
    return {"logger": ROUTER, "error_cb": ROUTER.error}

"""Clean stops of the live flow on SIGINT (Ctrl-C) and SIGTERM.

Bytewax 0.21 runs Python's signal handlers from its run loop; the default SIGINT handler
raises KeyboardInterrupt there, which Bytewax turns into a Rust panic and a
``BytewaxRuntimeError`` (exit 1), and SIGTERM's default action kills the process without a
word (exit 143). :func:`install` replaces both handlers for the duration of the run: the
first signal only records a stop request and logs it. The flow's input partitions then end
at their next poll (a batch boundary: the batch already read goes all the way through), the
shards keep their open windows instead of closing them as at the end of a drained stream,
and Bytewax ends the epoch, which writes the snapshot when recovery is on. ``ctrguard run``
then exits 130 after Ctrl-C and 0 after SIGTERM (a requested stop, as by a service
manager). A second signal exits at once (130 or 143) without a snapshot: what a crash
leaves, which recovery handles.

>>> stop = StopRequest()
>>> stop.requested, stop.exit_code
(None, 0)
>>> stop.request(signal.SIGINT, exit_now=lambda code: None)
>>> stop.requested, stop.exit_code
('SIGINT', 130)
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("ctrguard.run")

#: Exit status after a stop by signal (``ctrguard.cli`` documents the codes).
EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 0}
#: Exit status when a second signal cuts the stop short.
EXIT_AT_ONCE = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopRequest:
    """Whether, and by which signal, a stop was asked for."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._signal: int | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_STATUS.get(self._signal, 0) if self._signal is not None else 0

    def request(self, signum: int, exit_now: Callable[[int], None] = os._exit) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            log.warning("%s again: exiting now, without a snapshot (recovery resumes from the "
                        "last one)", name)
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stderr.flush()
            exit_now(EXIT_AT_ONCE.get(signum, 1))
            return
        self.requested = name
        self._signal = signum
        log.warning("%s received: stopping at the end of the current batch (%s again to "
                    "exit at once)", name, name)


#: The stop request of this process, read by the flow's input partitions and shards.
STOP = StopRequest()


def requested() -> bool:
    """Whether a stop was asked for (cheap: read once per poll, not per event)."""
    return STOP.requested is not None


def _handler(signum: int, _frame: object) -> None:
    STOP.request(signum)


@contextmanager
def install(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[StopRequest]:
    """Handle ``signals`` as stop requests inside the block; the previous handlers after."""
    previous = {s: signal.signal(s, _handler) for s in signals}
    try:
        yield STOP
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

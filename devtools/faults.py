"""Fault injection for the reliability tests: crash the process at a named point
(a :mod:`ctrguard.probes` point of the product).

``CTRGUARD_CRASH_AT=release.after_redis:3`` makes the process exit at once with status 137
(what ``kill -9`` leaves) the 3rd time :func:`point` is called with that name. Several
points may be given, comma-separated: ``release.after_redis:3,slack.after_call:1``. No
cleanup runs (``os._exit``): no ``finally``, no atexit, no flush of Kafka producers, no
Bytewax snapshot; exactly a crash.

:func:`install_from_env` installs the crasher into :mod:`ctrguard.probes`; a process
started with ``python -m devtools.ctrguard ...`` (``ctrguard`` with fault injection) does
that before running the command. The product itself never imports this module.

Points placed in the code (see ``docs/reliability.md``):

``release.after_redis``      flags and watermark are in Redis, the figures not yet in Kafka
``release.after_publish``    figures and alerts published, before Bytewax moves on
``deadletter.after_produce`` a batch of dead letters is in Kafka, before the next batch
``slack.after_call``         a Slack call succeeded and was recorded, the outbox entry not
                             yet marked done (mid delivery)

>>> parse_spec("release.after_redis:3, slack.after_call")
{'release.after_redis': 3, 'slack.after_call': 1}

``CTRGUARD_RAISE_ON=TEXT`` makes the prepare step raise :class:`InjectedFault` on any batch
holding a message that contains ``TEXT`` (:func:`raise_on`): a stand-in for a bug that some
input reaches, to test that such a batch is split and only the guilty message
dead-lettered (``ctrguard.flows.ctr_flow.bisect_batch``).

``CTRGUARD_BREAK_AFTER=N`` makes the prepare step raise :class:`InjectedFault` on every
batch of messages after its first ``N`` (whatever the messages; empty polls are let
through): a step that a bad deploy broke, to test that the flow stops rather than
dead-letter valid events (``ctrguard.flows.ctr_flow.PrepareStep``'s canary).
"""

from __future__ import annotations

import os
import sys
import threading

ENV = "CTRGUARD_CRASH_AT"
EXIT_STATUS = 137


def parse_spec(spec: str) -> dict[str, int]:
    """``"name:N,other"`` -> ``{"name": N, "other": 1}``."""
    targets: dict[str, int] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, count = part.partition(":")
        targets[name.strip()] = int(count) if count.strip() else 1
    return targets


class _Crasher:
    def __init__(self, targets: dict[str, int]):
        self._targets = targets
        self._hits: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str) -> None:
        target = self._targets.get(name)
        if target is None:
            return
        with self._lock:
            hits = self._hits[name] = self._hits.get(name, 0) + 1
        if hits == target:
            sys.stderr.write(f"devtools.faults: crashing at {name} (hit {hits})\n")
            sys.stderr.flush()
            os._exit(EXIT_STATUS)


RAISE_ENV = "CTRGUARD_RAISE_ON"


class InjectedFault(RuntimeError):
    """Raised by the batch observer ``$CTRGUARD_RAISE_ON`` installs."""


class _Raiser:
    def __init__(self, marker: bytes):
        self._marker = marker

    def __call__(self, values: object) -> None:
        marker = self._marker
        for value in values:  # type: ignore[attr-defined]
            if value is not None and marker in value:
                raise InjectedFault(f"injected fault: a message contains {marker!r}")


BREAK_ENV = "CTRGUARD_BREAK_AFTER"


class _Breaker:
    def __init__(self, after: int):
        self._left = after

    def __call__(self, values: object) -> None:
        if not values:  # (an empty poll: a broken step that raised here would stop the
            return      # flow at once, with nothing to dead-letter; not the case tested)
        if self._left <= 0:
            raise InjectedFault("injected fault: the step is broken")
        self._left -= 1


def install_from_env() -> bool:
    """Crash at the points ``$CTRGUARD_CRASH_AT`` names, and make the prepare step raise on
    any batch holding a message that contains ``$CTRGUARD_RAISE_ON``, or on every batch
    after the first ``$CTRGUARD_BREAK_AFTER``; True if any is set."""
    from ctrguard import probes

    spec = os.environ.get(ENV, "")
    marker = os.environ.get(RAISE_ENV, "")
    after = os.environ.get(BREAK_ENV, "")
    if spec:
        probes.install(_Crasher(parse_spec(spec)))
    observers = ([_Raiser(marker.encode())] if marker else []) + (
        [_Breaker(int(after))] if after else [])
    if observers:  # (both set: each sees every batch)
        def observe_batch(values: object) -> None:
            for observe in observers:
                observe(values)

        probes.install_batch(observe_batch)
    return bool(spec or marker or after)


__all__ = ["install_from_env", "parse_spec", "InjectedFault", "ENV", "RAISE_ENV",
           "BREAK_ENV", "EXIT_STATUS"]

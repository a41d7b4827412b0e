"""Named points on the delivery path where an observer may act.

The sinks call :func:`point` at the moments that matter for at-least-once delivery (flags
in Redis but figures not yet in Kafka, a Slack call made but not yet recorded, ...). In
production nothing is installed and a call does nothing. The reliability tests install a
handler that crashes the process at a chosen point (``devtools/faults.py``), which is how
they prove that a crash anywhere loses and duplicates nothing.

Points (see ``docs/reliability.md``):

``release.after_redis``      flags and watermark are in Redis, the figures not yet in Kafka
``release.after_publish``    figures and alerts published, before Bytewax moves on
``deadletter.after_produce`` a batch of dead letters is in Kafka, before the next batch
``slack.after_call``         a Slack call succeeded and was recorded, the outbox entry not
                             yet marked done (mid delivery)

>>> from ctrguard import probes
>>> seen = []
>>> probes.install(seen.append)
>>> probes.point("release.after_redis"); seen
['release.after_redis']
>>> probes.install(None); probes.point("release.after_redis"); seen
['release.after_redis']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["batch", "install", "install_batch", "point"]


def _noop(name: str) -> None:
    return None


#: ``point(name)``: let the installed observer act here (nothing by default). Callers look
#: it up on the module at each call (``probes.point(...)``), so :func:`install` takes effect.
point: Callable[[str], None] = _noop


def _no_batch(values: Sequence[bytes | None]) -> None:
    return None


#: ``batch(values)``: the observer sees each batch of raw messages before it is prepared
#: (the reliability tests make the prepare step raise on a marked message here, to show
#: that a batch which makes a step raise loses only the messages that do).
batch: Callable[[Sequence[bytes | None]], None] = _no_batch


def install_batch(handler: Callable[[Sequence[bytes | None]], None] | None) -> None:
    """Call ``handler(values)`` with every batch before it is prepared (``None``: stop)."""
    global batch
    batch = handler if handler is not None else _no_batch


def install(handler: Callable[[str], None] | None) -> None:
    """Call ``handler(name)`` at every point from now on (``None``: nothing again)."""
    global point
    point = handler if handler is not None else _noop

"""Ingestion stalls: a source that stops delivering for most campaigns at once.

When every source stalls and the events of the meantime are lost (a collector down, a
topic mis-routed), the windows of the stall close with no impressions for every campaign,
and each campaign's detectors see a silence (or, when only the click source stalls, a
click outage). That is one fault of the pipeline, not N faults of campaigns: it gets one
incident, ``stall:<impressions|clicks>:<window_start_s of its first window>``, the same
id in every shard and worker (the id follows from event time alone), and its alerts are
``ingestion_stall`` alerts, one per affected campaign-window, in place of the campaigns'
``silence`` or ``click_outage`` alerts of those windows.

A window is stalled for a kind of event when the whole pipeline received almost none of
that kind in it (at most :data:`STALL_FRACTION` of its usual volume, when that volume is at
least :data:`MIN_EVENTS` a window), and the window after the stall, in which the sources
resume, is the stall's too while it holds at most :data:`RESUME_FRACTION`: a campaign that
goes quiet on its own leaves the volume almost where it was; a stall of a source empties it.
The usual volume is a slow average of the windows that were not stalled. Too little traffic
to tell, or traffic of one campaign only, leaves the campaigns' own alerts as they are.

Every shard judges from the same figures: each chunk it receives carries its whole batch's
events per window (``Chunk.volume``, ``Chunk.spread`` in :mod:`ctrguard.flows.engine`), so
the judgement does not depend on how campaigns are sharded, and a replay (one state for
every campaign) judges as the running flow does.

>>> w = StallWatch()
>>> [w.observe(t * 300, (1000, 20)) for t in range(10)][-1]
(None, None, False, False)
>>> w.observe(3000, (400, 20))
(None, None, True, False)
>>> w.observe(3300, (3, 0)), w.observe(3600, (0, 0)), w.observe(3900, (700, 21))
((3300, 3300, False, False), (3300, 3300, False, False), (3300, None, False, False))
>>> w.observe(4200, (700, 21)), w.observe(4500, (990, 21))
((None, None, False, False), (None, None, False, False))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ctrguard.detectors.base import ALL, Verdict

__all__ = ["StallWatch", "STALL_FRACTION", "MIN_EVENTS", "SOURCE_NAMES", "STALL",
           "scope_verdicts"]

#: Kind, suspected cause and detector of a stall's alerts.
STALL = "ingestion_stall"

#: A window holding at most this fraction of a shard's usual events of a kind is stalled.
STALL_FRACTION = 0.05
#: The window after a stalled one is still the stall's (the one in which the sources
#: resume, partial) when it holds at most this fraction of the usual volume.
RESUME_FRACTION = 0.8
#: A window dips when it holds at most this fraction of the usual volume.
DIP_FRACTION = 0.5
#: Usual events of a kind per window below which a shard does not judge stalls.
MIN_EVENTS = 20.0
#: Weight of a window in the usual volume (per window that is not stalled).
_ALPHA = 0.1
#: Windows of a kind's traffic before its usual volume is trusted.
_WARMUP = 6
#: Per kind of event (``ctrguard.events.IMPRESSION``, ``CLICK``), its name in incident ids.
SOURCE_NAMES = ("impressions", "clicks")


class StallWatch:
    """Per shard: the usual events per window of each kind, and the stall open on each.

    Pickles with the shard's state (six small lists) and continues identically.
    """

    __slots__ = ("usual", "seen", "first", "tail", "low", "spread", "current")

    def __init__(self) -> None:
        self.usual = [0.0, 0.0]     # per kind: events a window, slow average
        self.seen = [0, 0]          # per kind: windows averaged
        self.first: list[int | None] = [None, None]  # per kind: first window of the stall
        self.tail = [False, False]  # per kind: the last window judged was a resume window
        self.low = [False, False]   # per kind: the last window held at most DIP_FRACTION
        self.spread = [0, 0]        # per kind: campaigns with events in the last usual window
        #: The judgement of the window being closed (not pickled: it lives for one close):
        #: per kind the first window of its stall or None, then per kind whether it dips.
        self.current: tuple = _QUIET

    def __getstate__(self) -> tuple:
        return self.usual, self.seen, self.first, self.tail, self.low, self.spread

    def __setstate__(self, state: tuple) -> None:
        self.usual, self.seen, self.first, self.tail, self.low, self.spread = (
            list(x) for x in state)
        self.current = _QUIET

    def observe(self, start_s: int, events: tuple[int, int],
                campaigns: tuple[int, int] = (2, 2)
                ) -> tuple[int | None, int | None, bool, bool]:
        """Judge one closing window (its start, events admitted per kind, campaigns with
        events per kind): per kind, the first window of the stall it belongs to (or
        ``None``), then per kind whether the window is the first to dip below
        :data:`DIP_FRACTION` of the usual volume. A shard whose usual window had events of
        fewer than two campaigns judges no stall: one campaign's silence is its own."""
        out: list[Any] = [None, None, False, False]
        for kind in (0, 1):
            n = events[kind]
            usual = self.usual[kind]
            judged = (self.seen[kind] >= _WARMUP and usual >= MIN_EVENTS
                      and self.spread[kind] >= 2)
            low = judged and n <= DIP_FRACTION * usual
            if judged and n <= STALL_FRACTION * usual:
                if self.first[kind] is None:
                    self.first[kind] = start_s
                self.tail[kind] = False
                self.low[kind] = True
                out[kind] = self.first[kind]
                continue
            if (judged and self.first[kind] is not None and not self.tail[kind]
                    and n <= RESUME_FRACTION * usual):
                # The window in which the sources resume is partial: its silences (and a
                # segment's that has not seen an event yet) are the stall's. One window only.
                self.tail[kind] = True
                self.low[kind] = low
                out[kind] = self.first[kind]
                continue
            # The window in which the sources stop is partial too, and not yet known to be
            # a stall's: its silences are not judged (the campaign's go on and are reported
            # with the next window, as the stall's or as its own).
            out[2 + kind] = low and not self.low[kind]
            self.low[kind] = low
            if not low:
                self.spread[kind] = campaigns[kind]
            self.first[kind] = None
            self.tail[kind] = False
            if self.seen[kind] == 0:
                self.usual[kind] = float(n)
            else:
                self.usual[kind] = usual + _ALPHA * (n - usual)
            self.seen[kind] += 1
        return out[0], out[1], out[2], out[3]


#: No stall, no dip.
_QUIET: tuple = (None, None, False, False)


def _is_silence(v: Verdict) -> bool:
    return v.kind == "silence"


def _is_click_loss(v: Verdict) -> bool:
    return v.suspected_cause == "click_tracking"


def scope_verdicts(verdicts: Sequence[Verdict], stalled: tuple,
                   draining: bool = False) -> list[Verdict]:
    """One campaign-window's verdicts in the right scope.

    ``draining``: the window is closed by a drain (end of a replay, of a bounded run): it is
    partial, and a silence in it says nothing; its ``silence`` verdicts go. ``stalled``: per
    kind (impressions, clicks) the first window of the stall this window belongs to
    (:meth:`StallWatch.observe`), or ``None``, then per kind whether the window dips. A
    campaign's silences in an impressions stall, or its click losses in a clicks stall,
    become one ``ingestion_stall`` verdict on ``all`` under the stall's pipeline-wide
    incident; in a window that dips they are not judged (they go).

    >>> from ctrguard.detectors.base import Verdict
    >>> def v(seg, kind, cause):
    ...     return Verdict(seg, "silence", kind, "critical", True, 20.0, 0.99, 0.02, 0.01,
    ...                    0.03, 4.0, 200.0, cause, "3000:silence")
    >>> out = scope_verdicts([v("all", "silence", "silence"),
    ...                       v("device=mobile", "silence", "silence")],
    ...                      (3000, None, False, False))
    >>> [(x.segment, x.kind, x.incident) for x in out]
    [('all', 'ingestion_stall', 'stall:impressions:3000')]
    >>> scope_verdicts([v("all", "silence", "silence")], (None, None, False, False),
    ...                draining=True)
    []
    >>> scope_verdicts([v("all", "silence", "silence")], (None, None, True, False))
    []
    """
    out = list(verdicts)
    if draining:
        out = [v for v in out if not _is_silence(v)]
    for kind, lost in ((0, _is_silence), (1, _is_click_loss)):
        first = stalled[kind]
        if first is None:
            if stalled[2 + kind]:
                out = [v for v in out if not lost(v)]
            continue
        hit = [v for v in out if lost(v)]
        if not hit:
            continue
        base = next((v for v in hit if v.segment == ALL), hit[0])
        stall = replace(base, segment=ALL, detector=STALL, kind=STALL, suspected_cause=STALL,
                        severity="critical", quarantine=True,
                        incident=f"stall:{SOURCE_NAMES[kind]}:{first}")
        gone = {id(v) for v in hit}
        out = [v for v in out if id(v) not in gone]
        out.insert(0, stall)
    return out

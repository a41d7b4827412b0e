"""Incidents: an open alarm on one series, the evidence that holds it open, and how that
evidence is banked, capped and judged window by window (docs/detection.md, "Incident
lifecycle"). :class:`ctrguard.detectors.monitor.CampaignMonitor` opens, continues and
closes them.

An incident opens at a quarter of the threshold ``h`` (or its cap, if lower) and holds
while its evidence is positive; each window adds its log-likelihood ratios on the fired
ratio's side of 1:

>>> from ctrguard.detectors.incidents import _CTR, _Incident, _start_at_cap
>>> grid = (0.05, 0.3, 0.5, 2.5)
>>> inc = _Incident(_CTR, 0.3, 10.0 / 4.0, "ctr_drop", "behaviour_change", "k", "d", grid)
>>> inc.ev
[None, 2.5, 2.5, None]
>>> inc.info = 20.0; _start_at_cap(inc, 10.0, grid); inc.evidence
2.5
>>> inc.add([0.0, -3.0, -1.0, 0.0], 0, 10.0, grid); inc.ev, inc.evidence
([None, -0.5, 1.5, None], 1.5)
"""

from __future__ import annotations

import math
from typing import Final

from ctrguard.detectors.stats import fmax, fmin

# Incident families.
_CTR: Final = 0
_VOL: Final = 1
_SIL: Final = 2
_DRIFT: Final = 3
#: Most evidence (in thresholds) an open incident banks: how long a fault must look
#: over before it closes, at any volume.
_INCIDENT_CAP: Final = 0.5
#: ... and at most what a normal series gives back in this many windows (its expected
#: evidence against the fault per window): a sparse series, whose windows say little
#: either way, does not hold an incident open for hours after the fault ended.
_CLOSE_WINDOWS: Final = 4.0
_CLOSE_FLOOR: Final = 0.5


class _Incident:
    """An open alarm on one series: what fired and how much evidence still holds it."""

    __slots__ = ("family", "ratio", "evidence", "windows", "kind", "cause", "key", "detector",
                 "ev", "sus", "exc", "info")

    def __init__(self, family: int, ratio: float, evidence: float, kind: str, cause: str,
                 key: str, detector: str, ratios: tuple[float, ...] = ()):
        self.family = family
        self.ratio = ratio
        self.evidence = evidence
        self.windows = 0
        self.kind = kind
        self.cause = cause
        self.key = key
        self.detector = detector
        # A CTR rise: the suspicious clicks (beyond the background) and the extra clicks
        # of its windows so far (:meth:`CampaignMonitor.revise`).
        self.sus = 0.0
        self.exc = 0.0
        #: Expected clicks per window of the series during the incident (average).
        self.info = 0.0
        # Evidence per ratio on the fired ratio's side of 1 (None on the other side): the
        # incident holds while any of them does, so a fault whose size the first windows
        # over- or under-estimated is not closed by one window that fits it badly.
        self.ev = [evidence if r == ratio or r in _neighbour(ratios, ratio) else None
                   for r in ratios]

    def __getstate__(self):
        return (self.family, self.ratio, self.evidence, self.windows, self.kind, self.cause,
                self.key, self.detector, self.ev, self.sus, self.exc, self.info)

    def __setstate__(self, state):
        (self.family, self.ratio, self.evidence, self.windows, self.kind, self.cause,
         self.key, self.detector, self.ev) = state[:9]
        # (Snapshots of before the bot evidence hold none.)
        self.sus, self.exc, self.info = state[9:12] if len(state) > 9 else (0.0, 0.0, 0.0)

    def __reduce__(self):
        # Rebuilt through a function, not ``cls.__new__``: a mypyc-compiled class has no
        # argument-free constructor, and a snapshot must load in either core.
        return _restore_incident, (self.__getstate__(),)

    def cap(self, h: float, r: float) -> float:
        """The most evidence this incident banks for ratio ``r`` (see ``_CLOSE_WINDOWS``)."""
        top = h * _INCIDENT_CAP
        if (self.family != _CTR and self.family != _DRIFT) or r <= 0.0:
            return top
        kl = r - 1.0 - math.log(r)  # a normal window's expected evidence against r, per click
        return fmin(top, fmax(_CLOSE_FLOOR, _CLOSE_WINDOWS * self.info * kl))

    def add(self, llrs: list[float], offset: int, h: float, ratios: tuple[float, ...]) -> None:
        """Add one window's log-likelihood ratios (``llrs[offset + i]`` for ratio i of
        ``ratios``), each ratio's evidence capped (:meth:`cap`)."""
        best = -math.inf
        for i, e in enumerate(self.ev):
            if e is not None:
                e = fmin(self.cap(h, ratios[i]), e + llrs[offset + i]) if llrs else e
                self.ev[i] = e
                best = fmax(best, e)
        self.evidence = best


def _start_at_cap(inc: _Incident, h: float, ratios: tuple[float, ...]) -> None:
    """A new incident's evidence starts at ``h / 4``, or at its cap if that is lower."""
    if not inc.ev:
        inc.evidence = fmin(inc.evidence, inc.cap(h, inc.ratio))
        return
    best = -math.inf
    for i in range(len(inc.ev)):
        e = inc.ev[i]
        if e is not None:
            e = fmin(e, inc.cap(h, ratios[i]))
            inc.ev[i] = e
            best = fmax(best, e)
    inc.evidence = best


def _contradicts(inc: _Incident, n: int, k: int, mu: float, p: float) -> bool:
    """Whether a window's own counts lean against its open incident: no more clicks than
    expected (``n * p``, the fast baseline) in a CTR rise, no fewer in a drop or a drift, no
    impressions to judge a CTR by, the volume on the wrong side of its expectation in a
    volume incident.

    >>> inc = _Incident(_CTR, 2.5, 1.0, "ctr_spike", "behaviour_change", "k", "d")
    >>> _contradicts(inc, 1000, 15, 500.0, 0.02), _contradicts(inc, 1000, 25, 500.0, 0.02)
    (True, False)
    """
    if inc.family == _CTR or inc.family == _DRIFT:
        if n == 0:
            return True  # no impressions: no CTR to judge (the clicks that follow the last)
        ek = n * p
        return k <= ek if inc.ratio > 1.0 else k >= ek
    if inc.family == _VOL:
        return n <= mu if inc.ratio > 1.0 else n >= mu
    return False


def _neighbour(ratios: tuple[float, ...], ratio: float) -> tuple[float, ...]:
    """The grid ratio next to ``ratio`` on the way to 1 (none if ``ratio`` is closest).

    >>> _neighbour((0.05, 0.3, 0.5, 0.7, 1.5, 2.5), 0.3), _neighbour((0.5, 2.0), 2.0)
    ((0.5,), ())
    """
    side = [r for r in ratios if (r < 1.0) == (ratio < 1.0) and abs(math.log(r)) < abs(
        math.log(ratio))]
    return (max(side, key=lambda r: abs(math.log(r))),) if side else ()


def _restore_incident(state: tuple) -> _Incident:
    inc = _Incident(0, 1.0, 0.0, "", "", "", "")
    inc.__setstate__(state)
    return inc

"""Count-aware anomaly detection for one campaign: every series, every closed window.

Model, per series (segment ``all`` and each segment value):

* **Impressions** ``n ~ quasi-Poisson(mu, phi_n)`` with ``mu = (level + trend) * s_v[hour]``:
  a Holt level and trend, updated with innovations clipped at 3 sd (robust), times an
  hour-of-day factor learned online from the campaign's ``all`` series (HW-style).
* **Clicks given impressions** ``k ~ quasi-binomial(n, p, phi_c)``. For ``all``,
  ``p = (S_k / S_n) * s_c[hour]`` (discounted sums: a count-weighted EWMA ratio). A segment's
  CTR is its campaign's times a relative factor with an empirical-Bayes Gamma prior:
  ``rho = (A_k + m) / (A_e + m)`` (observed vs campaign-expected clicks); ``m`` is
  estimated per campaign from the spread of its segments (method of moments), so sparse
  segments sit at the campaign's CTR and dense ones at their own.
* Overdispersion ``phi`` is the EWMA of one-step-ahead Pearson chi-square (>= 1), with the
  baseline's own uncertainty added per window: significance scales with volume and never
  exceeds what the count model can support.

Tests, per series: two-sided binomial CUSUMs on clicks given impressions over a grid of
CTR ratios (the max over the grid is a GLR), Poisson CUSUMs on impressions, and a
silence test (the evidence of consecutive zero windows is the expected impressions
missed). Evidence accumulates, so a series with 0.5 expected clicks per window detects a
click outage over a few windows and one with 200 in one. The threshold follows from a
false-alarm budget per campaign-day. An alarm opens an *incident*: the baseline stops
learning, every window that still matches the fault is reported (and quarantined), and the
incident closes when the evidence says the series is back (or after
``max_incident_windows``, when the new level is accepted). Which tests fired says what
broke: clicks vanish at normal impressions (``click_tracking``), impressions jump at normal
clicks (``impression_logging``), clicks surge (``bot_clicks``), CTR moves at normal
volume (``behaviour_change``), volume moves at normal CTR (``volume_change``).

Segments are tested against their baseline *and* against the rest of their campaign in
the same window (the smaller evidence counts): the daily cycle that the campaign baseline
lags behind and campaign-wide faults cancel in the second comparison, a fault in a sibling
segment in the first. A campaign-wide fault is reported by ``all``; segments whose window
leans the same way inherit its verdict, so their figures are quarantined too.

A jump in a campaign's impressions at unchanged CTR is accepted as new traffic, but then
watched: if the extra (or missing) impressions carry no clicks, the CTR moved by the
inverse of the jump and impression logging broke (duplicated or lost events). The jump was
already improbable, so this two-way question is settled at half the threshold
(detector ``volume_ctr_test``), much sooner than a halved CTR stands out on its own.

Gradual drift (creative fatigue) is measured on ``all`` against a slow reference level that
forgets by information, learns ten times slower while the fast baseline sits below it and
not at all while a change is suspected: binomial CUSUMs of the CTR relative to it
(``drift_ratios``) and a River detector fed the residuals standardised against it
(:class:`ctrguard.detectors.drift.ResidualDrift`, counted only when the baseline has moved by more
than ``recovery_tolerance``), reported with kind ``drift`` and severity ``warning``. A jump
back to the reference after the fast baseline followed a decline is a recovery, not a
spike. Abrupt tests keep running during a drift incident and replace it when they fire.

>>> from ctrguard.detectors.base import Counts, Window
>>> from ctrguard.detectors.settings import DetectorSettings
>>> import numpy as np
>>> rng = np.random.default_rng(1)
>>> m = build_monitor(DetectorSettings())
>>> for t in range(60):
...     n = 2000
...     k = int(rng.binomial(n, 0.03 if t < 40 else 0.0))   # clicks stop at window 40
...     out = m.update(Window(t * 300, t * 300 + 300), {"all": Counts(n, k)})
...     if out and t < 42:
...         v = out[0]
...         print(t, v.kind, v.suspected_cause, v.quarantine, round(v.expected_clicks))
40 click_outage click_tracking True 60
41 click_outage click_tracking True 60
"""

from __future__ import annotations

import math
from typing import Any, Final

from ctrguard.detectors.base import ALL, Counts, Verdict, Window
from ctrguard.detectors.drift import ResidualDrift
from ctrguard.detectors.settings import DetectorSettings
from ctrguard.detectors.stats import binomial_llr, clip, ctr_interval, fmax, fmin, poisson_llr

__all__ = ["CampaignMonitor", "build_monitor"]

# mypyc: ``Final`` constants are folded into the code (or kept in a C static) instead of
# being looked up in the module's dictionary on every use.
_ALL: Final = ALL
_HOURS: Final = 24
_DAY: Final = 86_400
#: Longest gap (windows) replayed as zero windows; longer gaps only move the clock.
_MAX_GAP_REPLAY: Final = 288

# Incident families.
_CTR: Final = 0
_VOL: Final = 1
_SIL: Final = 2
_DRIFT: Final = 3
#: Deseasonalised clicks the slow reference must hold before drift is tested against it.
_REF_MIN_CLICKS: Final = 100.0
#: Clicks a segment's siblings must have been expected to get in a window before their
#: clicks say whether a drop of the segment is its own (a segment break).
_REST_MIN_CLICKS: Final = 3.0
#: Pseudo-clicks that shrink the rest-of-campaign CTR of one window toward the baseline.
_COMPLEMENT_CLICKS: Final = 3.0
#: Most evidence (in thresholds) an open incident banks: how long a fault must look
#: over before it closes, at any volume.
_INCIDENT_CAP: Final = 0.5
#: ... and at most what a normal series gives back in this many windows (its expected
#: evidence against the fault per window): a sparse series, whose windows say little
#: either way, does not hold an incident open for hours after the fault ended.
_CLOSE_WINDOWS: Final = 4.0
_CLOSE_FLOOR: Final = 0.5
#: Least fading of CTR evidence per window, in units of ``1 / evidence_windows``.
_FADE_FLOOR: Final = 0.5
#: A volume jump is judged (logging fault vs real traffic) at this fraction of the
#: threshold, within this many windows.
_WATCH_THRESHOLD: Final = 0.5
_WATCH_WINDOWS: Final = 36
#: The 0.0 that a CUSUM at rest holds (most of them, most of the time): one float object,
#: always in cache, where each test had a float of its own in a cold corner of the heap
#: (a campaign's state is read once per window, long after the last time). mypyc: a Final
#: made by a call is one object in a C static; a literal would be boxed anew at each use.
_ZERO: Final[Any] = float("0")

#: Severity and quarantine by suspected cause (the defaults of ``quarantine.causes``: what
#: corrupts the data is held back, real behaviour is not).
_SEVERITY = {
    "click_tracking": ("critical", True),
    "impression_logging": ("critical", True),
    "bot_clicks": ("critical", True),
    "silence": ("critical", True),
    "segment_break": ("warning", True),
    "behaviour_change": ("warning", False),
    "volume_change": ("warning", False),
    "drift": ("warning", False),
}
#: Causes of a CTR rise that the clicks themselves decide between (:meth:`CampaignMonitor.revise`).
_RISE_CAUSES: Final = ("bot_clicks", "behaviour_change")
#: Share of an incident's clicks that look suspicious in ordinary traffic (a click whose
#: impression fell in an earlier window, a user who clicks twice): not counted as bots'.
_BOT_BACKGROUND: Final = 0.05
#: A CTR rise is bot clicks when the suspicious clicks beyond the background explain at
#: least this share of its extra clicks, and are at least ``_BOT_MIN_CLICKS``.
_BOT_SHARE: Final = 0.3
_BOT_MIN_CLICKS: Final = 3.0


def _top(xs: list[float]) -> float:
    """``max(xs, default=0.0)``."""
    if not xs:
        return 0.0
    top = xs[0]
    for x in xs:
        if x > top:
            top = x
    return top


def _argmax(xs: list[float], lo: int, hi: int) -> int:
    """``max(range(lo, hi), key=xs.__getitem__, default=-1)``: the first index of the largest.

    >>> _argmax([0.0, 2.0, 1.0, 2.0], 0, 4), _argmax([1.0, 3.0], 1, 2), _argmax([1.0], 1, 1)
    (1, 1, -1)
    """
    best = -1
    top = 0.0
    for i in range(lo, hi):
        if best < 0 or xs[i] > top:
            best = i
            top = xs[i]
    return best


def _ctr_llr(k: int, n: int, p: float, p_rest: float, r: float, phi_c: float) -> float:
    """Evidence of one window for CTR ``r * p`` (a tested ratio), per unit of dispersion."""
    if p_rest > 0.0:
        # A segment's evidence must hold against its baseline *and* against the rest of its
        # campaign in the same window: what moves the whole campaign (the daily cycle the
        # baseline lags behind, a campaign-wide fault, which ``all`` reports) cancels in the
        # second, a fault in a sibling segment (bot clicks on desktop) in the first.
        return fmin(binomial_llr(k, n, p, r), binomial_llr(k, n, fmin(p_rest, 0.999), r)) / phi_c
    return binomial_llr(k, n, p, r) / phi_c


def _fade_add(cusum: list[float], i: int, keep: float, x: float) -> float:
    """One CUSUM step: ``cusum[i] = fmax(0.0, keep * cusum[i] + x)``, its 0.0 the shared
    ``_ZERO`` object; returns the new value.

    >>> cusum = [1.0, 0.5]
    >>> _fade_add(cusum, 0, 0.5, 1.0), _fade_add(cusum, 1, 0.5, -1.0), cusum
    (1.5, 0.0, [1.5, 0.0])
    """
    v = keep * cusum[i] + x
    if v > 0.0:
        cusum[i] = v
        return v
    cells: list[Any] = cusum  # (stores the shared _ZERO object itself)
    cells[i] = _ZERO
    return 0.0


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


class _Params:
    """The settings the detectors read on every window, as plain typed attributes.

    Same names and values as :class:`DetectorSettings`; reading a pydantic model's field is
    a dictionary lookup, reading this (compiled) class's is a field load. One per distinct
    settings object, shared by every campaign's monitor.
    """

    def __init__(self, s: DetectorSettings):
        self.warmup_windows: int = s.warmup_windows
        self.cooldown_windows: int = s.cooldown_windows
        self.false_alarms_per_campaign_day: float = s.false_alarms_per_campaign_day
        self.cusum_threshold: float | None = s.cusum_threshold
        self.max_incident_windows: int = s.max_incident_windows
        self.group_windows: int = s.group_windows
        self.ctr_ratios: tuple[float, ...] = tuple(s.ctr_ratios)
        #: ``abs(math.log(r))`` of each CTR ratio (compared with the baseline's resolution
        #: on every window): the same floats, computed once.
        self.ctr_log_sizes: tuple[float, ...] = tuple(abs(math.log(r)) for r in s.ctr_ratios)
        self.baseline_resolution: float = s.baseline_resolution
        self.volume_ratios: tuple[float, ...] = tuple(s.volume_ratios)
        self.evidence_clicks: float = s.evidence_clicks
        self.evidence_windows: int = s.evidence_windows
        self.baseline_alpha: float = s.baseline_alpha
        self.baseline_alpha_min: float = s.baseline_alpha_min
        self.baseline_memory_clicks: float = s.baseline_memory_clicks
        self.volume_alpha: float = s.volume_alpha
        self.volume_beta: float = s.volume_beta
        self.segment_alpha: float = s.segment_alpha
        self.season_alpha: float = s.season_alpha
        self.dispersion_alpha: float = s.dispersion_alpha
        self.shrinkage_min: float = s.shrinkage_min
        self.shrinkage_max: float = s.shrinkage_max
        self.drift_ratios: tuple[float, ...] = tuple(s.drift_ratios)
        self.reference_memory_clicks: float = s.reference_memory_clicks
        self.reference_alpha: float = s.reference_alpha
        self.recovery_tolerance: float = s.recovery_tolerance
        self.drift_detector: str = s.drift_detector
        self.drift_threshold: float = s.drift_threshold
        self.drift_delta: float = s.drift_delta
        self.drift_min_expected_clicks: float = s.drift_min_expected_clicks


_PARAMS: dict[DetectorSettings, _Params] = {}


def _params(settings: DetectorSettings) -> _Params:
    p = _PARAMS.get(settings)
    if p is None:
        if len(_PARAMS) > 64:  # settings objects of tests and tuning runs come and go
            _PARAMS.clear()
        p = _PARAMS[settings] = _Params(settings)
    return p


#: Fields of ``_Series``, in snapshot order (compiled classes keep no ``__slots__``).
_SERIES_FIELDS: tuple[str, ...] = (
    "seen",        # windows with traffic
    "vol_level", "vol_trend", "vol_disp",
    "ctr_k", "ctr_e",  # all: discounted clicks (deseasonalised), impressions;
                       # segment: discounted clicks, campaign-expected clicks
    "ctr_disp",
    "cusum",       # list: one per CTR ratio, then one per volume ratio
    "silent",      # evidence of silence (nats)
    "run",         # [clicks, expected clicks, impressions, expected impressions]
    "incident",    # _Incident | None
    "cooldown",
    "drift",       # ResidualDrift | None
    "ref_k", "ref_e",  # all only: slow reference (discounted clicks, impressions)
    "dcusum",      # all only: drift CUSUMs against the reference, one per drift ratio
    "watch",       # after a volume jump: [CTR ratio if logging broke, evidence, windows]
)
#: Attributes of ``_Series``: the snapshot's fields, but the evidence run as four floats
#: (a compiled class keeps them unboxed: no list, no float objects; ``run`` builds the
#: snapshot's list) and the largest CUSUM, which is no snapshot field but follows from it.
_SERIES_SLOTS: tuple[str, ...] = (
    *(name for name in _SERIES_FIELDS if name != "run"),
    "run_k", "run_ek", "run_n", "run_mu", "top")


class _Series:
    """Running state of one series. Plain numbers, pickled as one tuple."""

    __slots__ = _SERIES_SLOTS

    def __init__(self, n_tests: int, drift: ResidualDrift | None, n_drift: int = 0):
        self.seen = 0
        self.vol_level = 0.0
        self.vol_trend = 0.0
        self.vol_disp = 1.0
        self.ctr_k = 0.0
        self.ctr_e = 0.0
        self.ctr_disp = 1.0
        self.cusum: list[float] = [_ZERO] * n_tests  # (the shared 0.0, as clear_evidence)
        self.silent = 0.0
        # The evidence run: clicks, expected clicks, impressions, expected impressions.
        self.run_k = 0.0
        self.run_ek = 0.0
        self.run_n = 0.0
        self.run_mu = 0.0
        #: ``_top(cusum)``, kept by every write to ``cusum``: the tests read it twice per
        #: window, and most windows it is below every threshold (nothing to look at).
        self.top = 0.0
        self.incident: _Incident | None = None
        self.cooldown = 0
        self.drift = drift
        self.ref_k = 0.0
        self.ref_e = 0.0
        self.dcusum: list[float] = [_ZERO] * n_drift
        self.watch: list[float] | None = None

    @property
    def run(self) -> list[float]:
        """The evidence run as the snapshot holds it."""
        return [self.run_k, self.run_ek, self.run_n, self.run_mu]

    def clear_evidence(self) -> None:
        """Zero every CUSUM (abrupt and drift tests): after an alarm, a cooldown, a close.

        A cell that holds the shared ``_ZERO`` already (every cell, during warm-up and
        cooldown) is left as it is: a read instead of a write; when the largest CUSUM is
        0.0, the CUSUMs are not even read.
        """
        cells: list[Any] = self.cusum  # (stores the shared _ZERO object itself)
        if self.top != 0.0:  # (else every cell holds 0.0 already)
            for i in range(len(cells)):
                if cells[i] is not _ZERO:
                    cells[i] = _ZERO
        cells = self.dcusum
        for i in range(len(cells)):
            if cells[i] is not _ZERO:
                cells[i] = _ZERO
        self.top = 0.0

    def zero_cusum(self, lo: int, hi: int) -> None:
        """Set CUSUMs ``lo`` to ``hi`` (exclusive) to 0.0 and refresh :attr:`top`, the one
        place besides the tests' step and :meth:`clear_evidence` where CUSUMs are reset."""
        cusum = self.cusum
        for i in range(lo, hi):
            cusum[i] = 0.0
        self.top = _top(cusum)

    def __getstate__(self):
        return tuple(getattr(self, name) for name in _SERIES_FIELDS)

    def __setstate__(self, state):
        for name, value in zip(_SERIES_FIELDS, state, strict=True):
            if name == "run":
                self.run_k, self.run_ek, self.run_n, self.run_mu = value
            else:
                setattr(self, name, value)
        self.top = _top(self.cusum)

    def __reduce__(self):
        return _restore_series, (self.__getstate__(),)


def _restore_incident(state: tuple) -> _Incident:
    inc = _Incident(0, 1.0, 0.0, "", "", "", "")
    inc.__setstate__(state)
    return inc


def _restore_series(state: tuple) -> _Series:
    st = _Series(0, None)
    st.__setstate__(state)
    return st


def _restore_monitor(state: tuple) -> CampaignMonitor:
    m = CampaignMonitor(state[0])
    (_, m._series, m._season_vol, m._season_ctr, m._last_start, m._group, m._prior) = state
    return m


class CampaignMonitor:
    """All detector state of one campaign.

    Parameters
    ----------
    settings
        The ``detectors:`` section of the configuration.

    Notes
    -----
    ``update`` must be called once per closed window in window order; a window not after
    the last one seen (a window re-emitted by the flow) is ignored and returns ``[]``.
    Skipped windows (no traffic in the whole campaign) are replayed as zero windows, and a
    campaign-wide silence that was improbable is reported on the window that ends it.
    """

    def __init__(self, settings: DetectorSettings):
        if not isinstance(settings, DetectorSettings):
            raise TypeError(f"settings must be DetectorSettings, got {type(settings).__name__}")
        self.settings = settings
        self._p = _params(settings)
        self._reset()

    def __reduce__(self):
        return _restore_monitor, ((self.settings, self._series, self._season_vol,
                                   self._season_ctr, self._last_start, self._group,
                                   self._prior),)

    def _reset(self) -> None:
        self._series: dict[str, _Series] = {}
        self._season_vol = [0.0] * _HOURS  # log factors
        self._season_ctr = [0.0] * _HOURS
        self._last_start: int | None = None
        self._group: tuple[str, int] | None = None  # (incident key, last alarm start)
        self._prior = self._p.shrinkage_min    # empirical-Bayes prior strength

    # ------------------------------------------------------------------ public

    def update(self, window: Window, counts: dict[str, Counts]) -> list[Verdict]:
        """Feed one closed window with the counts of every series; return the alarms."""
        start = window.start
        length = window.end - start
        if length <= 0:
            raise ValueError(f"empty window {window}")
        last = self._last_start
        if last is not None:
            if start <= last:
                return []
            gap = (start - last) // length - 1
            if gap > 0:
                verdicts = self._replay_gap(window, gap, length)
                verdicts.extend(self._step(window, start, counts, length))
                self._last_start = start
                return verdicts
        # The common case: this window's alarms are the result (no copy into another list).
        verdicts = self._step(window, start, counts, length)
        self._last_start = start
        return verdicts

    def revise(self, verdicts: list[Verdict],
               evidence: dict[str, tuple[float, int]]) -> list[Verdict]:
        """Name the cause of CTR rises from the clicks themselves (call after :meth:`update`
        with its verdicts, for the same window).

        ``evidence``: per series, the window's suspicious clicks (without a matching
        impression, or from a user who clicked more than once) and its clicks. Bots betray
        themselves so: few users, many clicks each, clicks without an impression; a real
        surge (a creative that works) spreads over as many users as ever. A rise is
        ``bot_clicks`` once the suspicious clicks beyond a background of
        ``_BOT_BACKGROUND`` explain at least ``_BOT_SHARE`` of its extra clicks (summed over
        its windows so far), else a ``behaviour_change``; segments that inherit a
        campaign-wide rise follow it.
        """
        out: list[Verdict] = []
        decided: dict[str, tuple[str, str]] = {}
        for v in verdicts:
            st = self._series.get(v.segment)
            inc = st.incident if st is not None else None
            if (inc is not None and inc.family == _CTR and inc.ratio > 1.0
                    and inc.cause in _RISE_CAUSES and inc.key == v.incident
                    and v.suspected_cause == inc.cause):
                got = evidence.get(v.segment)
                if got is not None:
                    sus, clicks = got
                    inc.sus += fmax(sus - _BOT_BACKGROUND * clicks, 0.0)
                    inc.exc += fmax(clicks - v.expected_clicks, 0.0)
                bot = inc.sus >= _BOT_MIN_CLICKS and inc.sus >= _BOT_SHARE * inc.exc
                inc.kind, inc.cause = ("click_surge", "bot_clicks") if bot else (
                    "ctr_spike", "behaviour_change")
                if v.segment == _ALL:
                    decided[inc.key] = (inc.kind, inc.cause)
                v = self._recause(v, inc.kind, inc.cause)
            elif (v.segment != _ALL and v.incident in decided
                  and v.suspected_cause in _RISE_CAUSES):
                kind, cause = decided[v.incident]
                v = self._recause(v, kind, cause)
            out.append(v)
        return out

    @staticmethod
    def _recause(v: Verdict, kind: str, cause: str) -> Verdict:
        if v.kind == kind and v.suspected_cause == cause:
            return v
        severity, quarantine = _SEVERITY[cause]
        return _replace(v, kind=kind, suspected_cause=cause, severity=severity,
                        quarantine=quarantine)

    @property
    def series(self) -> tuple[str, ...]:
        """Names of the series this monitor keeps state for."""
        return tuple(self._series)

    def forget(self, segment: str) -> bool:
        """Drop the state of one series (eviction by the flow); True if it existed."""
        return self._series.pop(segment, None) is not None

    def expectations(self, window: Window,
                     counts: dict[str, Counts]) -> dict[str, tuple[float, float, float, float]]:
        """What the detectors expect of each series in ``window``, read before it is fed to
        :meth:`update` (the state is not changed): ``(ctr, ctr_low, ctr_high, impressions)``,
        the expected CTR with its 99% band at the window's impressions (as an alert reports
        them) and the expected impressions. Series without state yet are left out.

        Reports and charts read it; the detectors do not. Two approximations, both only where
        nothing is alarming: a segment's expected impressions use the hour's volume profile
        before ``all`` learns from this window, and skipped windows (a campaign silent for
        whole windows, which the flow never skips) are not replayed first.

        >>> from ctrguard.detectors.settings import DetectorSettings
        >>> m = build_monitor(DetectorSettings())
        >>> for t in range(12):
        ...     _ = m.update(Window(t * 300, t * 300 + 300), {"all": Counts(1000, 20)})
        >>> e = m.expectations(Window(3600, 3900), {"all": Counts(1000, 0)})
        >>> [round(x, 4) for x in e["all"]]
        [0.02, 0.008, 0.032, 1000.0]
        """
        start = window.start
        hour = (start // 3600) % _HOURS
        series = self._series
        all_state = series.get(_ALL)
        p_all = 0.0
        relvar_all = math.inf
        if all_state is not None and all_state.ctr_e > 0 and all_state.ctr_k > 0:
            p_all = all_state.ctr_k / all_state.ctr_e * math.exp(self._season_ctr[hour])
            relvar_all = 1.0 / all_state.ctr_k
        season_v = math.exp(self._season_vol[hour])
        out: dict[str, tuple[float, float, float, float]] = {}
        for name, c in counts.items():
            st = series.get(name)
            if st is None:
                continue
            # The same expectations as _series_step computes before its tests.
            mu = fmax(st.vol_level + st.vol_trend, 0.0) * season_v
            if name == _ALL:
                p, relvar = p_all, relvar_all
            elif p_all > 0:
                p = p_all * self._rho(st)
                relvar = relvar_all + 1.0 / (st.ctr_k + 1.0)
            else:
                p, relvar = 0.0, math.inf
            p = fmin(p, 0.999)
            n = c.impressions
            ctr_ok = p > 0 and n > 0 and not (math.isinf(relvar) or math.isnan(relvar))
            phi_c = fmax(st.ctr_disp, 1.0) * (1.0 + n * p * relvar if ctr_ok else 1.0)
            lo, hi = ctr_interval(p, n if n > 0 else mu, phi_c)
            out[name] = (p, lo, hi, mu)
        return out

    # ------------------------------------------------------------------ internals

    def _threshold(self, n_series: int, length: int) -> float:
        s = self._p
        if s.cusum_threshold is not None:
            return s.cusum_threshold
        # The tests of one series watch the same counts and are strongly correlated (the
        # max over a ratio grid costs about a log factor), so the budget is split over series.
        return math.log(fmax(_DAY / length, 1.0) * n_series / s.false_alarms_per_campaign_day)

    def _new_series(self, name: str) -> _Series:
        s = self._p
        drift = None
        if name != _ALL:
            # Gradual drift is a campaign-wide matter (a creative wears out): segments keep
            # no reference and no River detector, which also keeps their state small.
            return _Series(len(s.ctr_ratios) + len(s.volume_ratios), None)
        if s.drift_detector != "none":
            drift = ResidualDrift(method=s.drift_detector, threshold=s.drift_threshold,
                                  delta=s.drift_delta, min_instances=30,
                                  min_expected=s.drift_min_expected_clicks)
        return _Series(len(s.ctr_ratios) + len(s.volume_ratios), drift, len(s.drift_ratios))

    def _replay_gap(self, window: Window, gap: int, length: int) -> list[Verdict]:
        """Replay skipped windows as zero windows; report one campaign-wide silence."""
        missing = min(gap, _MAX_GAP_REPLAY)
        zeros = {name: Counts(0, 0) for name in self._series}
        silence: Verdict | None = None
        for i in range(missing, 0, -1):
            start = window.start - i * length
            for v in self._step(Window(start, start + length), start, zeros, length):
                if v.segment == _ALL and v.kind == "silence" and silence is None:
                    silence = v
            self._last_start = start
        if silence is None:
            return []
        # The skipped windows have no figures to hold back; the current one is fine.
        return [_replace(silence, quarantine=False)]

    def _step(self, window: Window, start: int, counts: dict[str, Counts],
              length: int) -> list[Verdict]:
        series = self._series
        # One pass over the counts: new series get their state (in the counts' order), and
        # each segment is listed with its state and counts, to be taken in name order.
        total: Counts | None = None
        all_state: _Series | None = None
        segments: list[tuple[str, _Series, Counts]] = []
        # A segment in a CTR incident (a segment break) is part of ``all``'s figure: the
        # campaign's CTR baseline does not learn from its windows meanwhile (else it
        # follows the break down and calls the segment's recovery a spike).
        seg_fault = False
        for name, c in counts.items():
            st = series.get(name)
            if st is None:
                st = series[name] = self._new_series(name)
            if name == _ALL:
                total = c
                all_state = st
            else:
                segments.append((name, st, c))
                if st.incident is not None and st.incident.family == _CTR:
                    seg_fault = True
        hour = (start // 3600) % _HOURS
        h = self._threshold(len(series), length)
        n_tests = len(series)

        if all_state is None:  # (a window without ``all``: its state, if it has one)
            all_state = series.get(_ALL)
        p_all = 0.0
        relvar_all = math.inf
        if all_state is not None and all_state.ctr_e > 0 and all_state.ctr_k > 0:
            p_all = all_state.ctr_k / all_state.ctr_e * math.exp(self._season_ctr[hour])
            relvar_all = 1.0 / all_state.ctr_k
        verdicts: list[Verdict] = []
        # The campaign's counts, read once.
        has_total = total is not None
        tot_n = tot_k = 0
        campaign_wide: Verdict | None = None
        # Series in order: ``all`` first, then the segments by name. Only a campaign-wide
        # alarm (which ``all``, first, raises) needs the quiet ones: no list otherwise.
        quiet: list[str] | None = None
        # Segments' silence counts only the impressions their campaign still had (see
        # _series_step): the campaign's impressions over what was expected of them.
        n_scale = 1.0
        if total is not None and all_state is not None:
            tot_n, tot_k = total.impressions, total.clicks
            season_all = math.exp(self._season_vol[hour])
            mu_all = fmax(all_state.vol_level + all_state.vol_trend, 0.0) * season_all
            if mu_all > 0.0 and all_state.seen > 0:
                n_scale = fmin(tot_n / mu_all, 1.0)
            v = self._series_step(_ALL, all_state, tot_n, tot_k, window, hour,
                                  season_all, p_all, relvar_all, h,
                                  n_tests, has_total, tot_n, tot_k, 1.0, seg_fault)
            if v is not None:
                verdicts.append(v)
                if v.quarantine:
                    campaign_wide = v
                    quiet = []
        if segments:
            # (Names are unique: the tuples sort by name alone.)
            segments.sort()
            # The hour's volume factor as ``all`` left it (only ``all`` learns it): one
            # ``exp`` for every segment of the window.
            season_v = math.exp(self._season_vol[hour])
            for name, st, c in segments:
                v = self._series_step(name, st, c.impressions, c.clicks, window, hour,
                                      season_v, p_all, relvar_all, h, n_tests, has_total,
                                      tot_n, tot_k, n_scale, False)
                if v is not None:
                    verdicts.append(v)
                elif quiet is not None:
                    quiet.append(name)
        if verdicts and verdicts[0].segment == _ALL:
            verdicts[0] = self._segment_break_of_all(verdicts)
        if campaign_wide is not None and quiet is not None:
            inc = series[_ALL].incident
            for name in quiet:
                c = counts[name]
                if c.impressions == 0:
                    continue
                if inc is not None and inc.family == _CTR and p_all > 0:
                    # Only segments whose window leans toward the campaign's fault share it:
                    # with bot clicks on desktop, mobile's clicks are normal.
                    p_seg = min(p_all * self._rho(self._series[name]), 0.999)
                    if binomial_llr(c.clicks, c.impressions, p_seg, inc.ratio) <= 0.0:
                        continue
                verdicts.append(self._inherit(campaign_wide, name, c))
        self._update_prior()
        return verdicts

    def _segment_break_of_all(self, verdicts: list[Verdict]) -> Verdict:
        """``all``'s CTR drop when one segment breaks alone (its siblings hold) and drags
        the campaign down: the segment break's, not a behaviour change or an outage of the
        campaign. ``verdicts``: the window's, ``all``'s first."""
        v = verdicts[0]
        inc = self._series[_ALL].incident
        if (inc is None or inc.family != _CTR or inc.ratio >= 1.0 or inc.key != v.incident
                or inc.cause not in ("behaviour_change", "click_tracking")):
            return v
        for other in verdicts:
            if other.suspected_cause == "segment_break":
                inc.kind = inc.cause = "segment_break"
                return self._recause(v, "segment_break", "segment_break")
        return v

    @staticmethod
    def _inherit(v: Verdict, name: str, c: Counts) -> Verdict:
        """A segment's share of a campaign-wide fault: its figure is as corrupt as the
        campaign's, though its CTR relative to the campaign did not move (so its own tests,
        which compare it with the rest of the campaign, are silent)."""
        scale = c.impressions / v.expected_impressions if v.expected_impressions > 0 else 0.0
        return _replace(v, segment=name, expected_clicks=v.expected_clicks * scale,
                        expected_impressions=float(c.impressions))

    def _update_prior(self) -> None:
        """Empirical Bayes: prior strength from the spread of segments' relative CTRs."""
        s = self._p
        # Method of moments on rho_i = A_k / A_e: E[(rho_i - 1)^2] = tau^2 + rho_i / A_e.
        # Until two segments carry information the prior stays weak (shrinkage_min):
        # uncertain, so only large changes are tested, rather than confidently wrong.
        count = 0
        total = 0.0
        for name, st in self._series.items():
            if name == _ALL or st.ctr_e < 20.0:
                continue
            rho = st.ctr_k / st.ctr_e
            # (mypyc: ``x ** 2`` is a generic power of two boxed floats; math.pow is the
            # same libm call on doubles)
            total += math.pow(rho - 1.0, 2.0) - rho / st.ctr_e
            count += 1
        if count < 2:
            self._prior = s.shrinkage_min
            return
        tau2 = total / count
        self._prior = clip(1.0 / tau2 if tau2 > 0 else math.inf, s.shrinkage_min,
                           s.shrinkage_max)

    def _series_step(self, name: str, st: _Series, n: int, k: int, window: Window, hour: int,
                     season_v: float, p_all: float, relvar_all: float, h: float,
                     n_tests: int, has_total: bool, tot_n: int,
                     tot_k: int, n_scale: float, hold_ctr: bool) -> Verdict | None:
        """One series' window: ``n`` impressions and ``k`` clicks; the campaign's, ``tot_n``
        and ``tot_k``, if the window has ``all`` (``has_total``); ``season_v``, the hour's
        volume factor (``exp(_season_vol[hour])``); ``n_scale``, the campaign's impressions
        over their expectation (at most 1; 1 for ``all``), which a segment's silence is
        judged against; ``hold_ctr``: the CTR baseline does not learn from this window (a
        segment of the campaign is in a CTR incident)."""
        s = self._p
        is_all = name == _ALL

        # ---- expectations from the state before this window
        mu = fmax(st.vol_level + st.vol_trend, 0.0) * season_v
        p_rest = 0.0   # segments: the CTR the rest of the campaign had in this window
        if is_all:
            p = p_all
            relvar = relvar_all
        elif p_all > 0:
            rho = self._rho(st)
            p = p_all * rho
            # Certainty comes from the segment's own clicks: the prior moves the estimate
            # toward the campaign but is not trusted to make it precise.
            relvar = relvar_all + 1.0 / (st.ctr_k + 1.0)
            if has_total and tot_n > n:
                kc = max(tot_k - k, 0)
                nc = tot_n - n
                # Shrunk toward the campaign baseline by a few clicks.
                p_rest = (kc + _COMPLEMENT_CLICKS) / (nc + _COMPLEMENT_CLICKS / p_all) * rho
        else:
            p, relvar = 0.0, math.inf
        p = fmin(p, 0.999)
        ek = n * p
        # (``math.isfinite``, which mypyc calls as a Python function: false for inf and nan)
        ctr_ok = p > 0 and n > 0 and not (math.isinf(relvar) or math.isnan(relvar))
        inflation = 1.0 + ek * relvar if ctr_ok else 1.0
        phi_c = fmax(st.ctr_disp, 1.0) * inflation
        phi_n = fmax(st.vol_disp, 1.0)
        ready = st.seen >= s.warmup_windows

        # ---- sequential tests
        # A change smaller than what the baseline resolves is not tested: a young or sparse
        # series' baseline (shrunk toward its campaign) may be that far off by itself.
        resolution = s.baseline_resolution * math.sqrt(relvar) if ctr_ok else math.inf
        vol_ok = mu > 0 and st.seen > 0
        # Drift tests (``all`` only): the same counts against the slow reference.
        p_ref = self._reference(st, hour) if is_all else 0.0
        phi_r = 1.0
        if p_ref > 0.0:
            phi_r = fmax(st.ctr_disp, 1.0) * (1.0 + n * p_ref * (1.0 / st.ref_k + relvar))
        # The tests' log-likelihood ratios of this window (``_llrs``, ``_dllrs``) are computed
        # where they are used: added to the CUSUMs in one pass, or to an open incident's
        # evidence; during warm-up and cooldown they would be thrown away.
        verdict: Verdict | None = None
        learn_ctr = learn_vol = True
        quiet_before = st.top < 1.0 and st.silent < 1.0
        sil = 0.0
        if n == 0 and vol_ok:
            # A segment without impressions when its whole campaign had few (a window the
            # sources filled only in part, a campaign winding down) is no silence of its own.
            sil = mu * n_scale / phi_n
            st.silent += sil
        else:
            st.silent = 0.0
        inc = st.incident
        if inc is not None and inc.family == _SIL and sil < 1.0:
            # A zero that was not even e-fold unlikely (a small segment, a quiet hour) holds
            # no silence open: the evidence is gone.
            st.silent = 0.0
        # A drift incident does not stop the abrupt tests: a click outage during a slow
        # decline is still an outage (and replaces the drift incident).
        drifting = inc is not None and inc.family == _DRIFT
        if inc is not None and not drifting:
            verdict, learn_ctr, learn_vol = self._continue_incident(
                name, st, inc,
                # (Every ratio: the resolution guards the opening of an incident against an
                # uncertain baseline; evidence that the fault is over counts at any size.)
                self._llrs(n, k, p, p_rest, phi_c, 0.0, mu, phi_n, vol_ok),
                self._dllrs(n, k, p_ref, phi_r), n, k, mu, p, phi_c, window, h)
        else:
            if st.cooldown > 0 or not ready:
                st.cooldown = max(st.cooldown - 1, 0)
                st.clear_evidence()
                st.silent = 0.0 if not ready else st.silent
            else:
                if p_ref > 0.0 and not drifting:
                    keep_ref = 1.0 - clip(n * p_ref / s.evidence_clicks,
                                          1.0 / s.evidence_windows, 0.5)
                    dcusum = st.dcusum
                    for i, r in enumerate(s.drift_ratios):
                        _fade_add(dcusum, i, keep_ref, binomial_llr(k, n, p_ref, r) / phi_r)
                # CTR evidence fades by information (expected clicks), volume evidence by time:
                # a baseline misfit then adds up to the same bounded level at any volume.
                n_ctr = len(s.ctr_ratios)
                keep_ctr = 1.0 - clip(ek / s.evidence_clicks, _FADE_FLOOR / s.evidence_windows,
                                      0.5)
                keep_vol = 1.0 - 1.0 / s.evidence_windows
                # One pass: each test's ratio (as ``_llrs`` computes it) into its CUSUM.
                cusum = st.cusum
                sizes = s.ctr_log_sizes
                top = 0.0  # (every cell is >= 0.0: the largest, as _top finds it)
                for i, r in enumerate(s.ctr_ratios):
                    x = _ctr_llr(k, n, p, p_rest, r, phi_c) if sizes[i] >= resolution else 0.0
                    top = fmax(top, _fade_add(cusum, i, keep_ctr, x))
                for i, r in enumerate(s.volume_ratios):
                    x = poisson_llr(n, mu, r) / phi_n if vol_ok else 0.0
                    top = fmax(top, _fade_add(cusum, n_ctr + i, keep_vol, x))
                st.top = top
            watch = st.watch
            if watch is not None and ready and ctr_ok:
                watch[1] = watch[1] + binomial_llr(k, n, p, watch[0]) / phi_c
                watch[2] = watch[2] + 1.0
            # The evidence run: restarted (from 0.0) after a quiet window, else added to.
            r0 = r1 = r2 = r3 = 0.0
            if not quiet_before:
                r0, r1, r2, r3 = st.run_k, st.run_ek, st.run_n, st.run_mu
            st.run_k = r0 + float(k)
            st.run_ek = r1 + ek
            st.run_n = r2 + float(n)
            st.run_mu = r3 + mu
            # Only evidence at the threshold (or a volume jump being watched) can open an
            # incident: most windows, nothing to look at.
            if ready and (st.top >= h or st.silent >= h or st.watch is not None
                          or _top(st.dcusum) >= h):
                # A segment's siblings in this window: their clicks over what was expected
                # of them (1 for ``all``), which tells a segment break from the campaign's.
                rest = 0.0  # (not known: no siblings' clicks to judge by)
                if not is_all and has_total and p_all > 0:
                    e_rest = fmax(tot_n * p_all - ek, 0.0)
                    if e_rest >= _REST_MIN_CLICKS:
                        rest = (max(tot_k - k, 0) + 0.5) / (e_rest + 0.5)
                verdict = self._maybe_open(name, st, n, k, mu, p, p_ref, phi_c, window, h,
                                           n_tests, rest)
            if verdict is None and drifting and st.incident is inc:
                assert inc is not None
                # (A drift incident adds the drift tests' ratios only.)
                verdict, learn_ctr, learn_vol = self._continue_incident(
                    name, st, inc, [], self._dllrs(n, k, p_ref, phi_r), n, k, mu, p, phi_c,
                    window, h)
            elif st.incident is not None:
                fault = st.incident.cause == "impression_logging"
                learn_ctr = st.incident.family in (_VOL, _DRIFT) and not fault
                learn_vol = st.incident.family in (_CTR, _DRIFT) and not fault

        # ---- drift on standardised CTR residuals (never fed anomalous windows)
        # The residuals are taken against the slow reference, which a decay does not drag
        # along; a signal counts only when the fast baseline has moved materially from it
        # (the daily cycle of a large campaign is many standard deviations, yet no incident).
        if (verdict is None and st.incident is None and st.drift is not None and ready  # noqa: SIM102 - update() only when eligible
                and p_ref > 0 and n > 0 and st.cooldown == 0):
            ekr = n * p_ref
            if st.drift.update(k - ekr, phi_c * ekr * (1.0 - p_ref), ekr):
                tol = s.recovery_tolerance
                # Reported only while the window itself is on the drift's side of the fast
                # baseline: after a decline, a window back at the reference (a new creative)
                # is the recovery the detector saw, not more drift.
                if p > 0 and (k < n * p if p <= p_ref / tol else
                              k > n * p if p >= p_ref * tol else False):
                    verdict = self._drift_verdict(name, st, n, mu, p, phi_c)

        # ---- learning: a series building evidence of a change learns slowly and does not
        # learn its noise level or the campaign's profile from the suspect windows.
        evidence = fmax(st.top, st.silent)
        rate = 0.25 if evidence >= h / 2.0 else 0.999 if evidence >= h / 4.0 else 1.0
        if learn_vol:
            self._learn_volume(st, n, mu, season_v, is_all, hour, phi_n, rate)
        learn_ctr = learn_ctr and not hold_ctr
        if learn_ctr and n > 0:
            self._learn_ctr(st, n, k, p, p_all, phi_c, is_all, hour, rate)
        if is_all and n > 0 and rate == 1.0 and st.incident is None and learn_ctr and \
                _top(st.dcusum) < h / 2.0:
            self._learn_reference(st, n, k, p, p_ref, phi_c, hour)
        if n > 0:
            st.seen += 1
        return verdict

    def _llrs(self, n: int, k: int, p: float, p_rest: float, phi_c: float, resolution: float,
              mu: float, phi_n: float, vol_ok: bool) -> list[float]:
        """One window's log-likelihood ratios: one per CTR ratio, then one per volume ratio
        (0 for a test that does not run)."""
        s = self._p
        llrs: list[float] = []
        sizes = s.ctr_log_sizes
        for i, r in enumerate(s.ctr_ratios):
            llrs.append(_ctr_llr(k, n, p, p_rest, r, phi_c) if sizes[i] >= resolution else 0.0)
        for r in s.volume_ratios:
            llrs.append(poisson_llr(n, mu, r) / phi_n if vol_ok else 0.0)
        return llrs

    def _dllrs(self, n: int, k: int, p_ref: float, phi_r: float) -> list[float]:
        """One window's log-likelihood ratios of the drift tests (none without a reference)."""
        if p_ref > 0.0:
            return [binomial_llr(k, n, p_ref, r) / phi_r for r in self._p.drift_ratios]
        return []

    def _rho(self, st: _Series) -> float:
        """A segment's CTR relative to its campaign, shrunk toward 1 (empirical Bayes)."""
        return (st.ctr_k + self._prior) / (st.ctr_e + self._prior)

    def _ratios(self, family: int) -> tuple[float, ...]:
        """The ratio grid a family's tests run over (none for silence)."""
        s = self._p
        return {_CTR: s.ctr_ratios, _VOL: s.volume_ratios, _DRIFT: s.drift_ratios}.get(
            family, ())

    def _reference(self, st: _Series, hour: int) -> float:
        """The slow reference CTR of an ``all`` series this hour; 0 while it is too young."""
        if st.ref_k < _REF_MIN_CLICKS or st.ref_e <= 0.0:
            return 0.0
        return fmin(st.ref_k / st.ref_e * math.exp(self._season_ctr[hour]), 0.999)

    def _learn_reference(self, st: _Series, n: int, k: int, p: float, p_ref: float,
                         phi_c: float, hour: int) -> None:
        """Slow, robust reference level: forgets by information, frozen while suspect, and
        ten times slower still while the fast baseline sits below it (a decline over
        hours must not drag the level it is measured against down with it)."""
        s = self._p
        season_c = math.exp(self._season_ctr[hour])
        k_used = float(k)
        ekr = n * p_ref
        if ekr > 0:
            sd = math.sqrt(fmax(phi_c, 1.0) * ekr * (1.0 - p_ref))
            k_used = clip(k, ekr - 3.0 * sd, fmax(ekr + 3.0 * sd, 1.0))
        a = clip(fmax(ekr, k) / s.reference_memory_clicks, s.baseline_alpha_min,
                 s.reference_alpha)
        if 0.0 < p < p_ref:
            a *= 0.1
        st.ref_k = (1.0 - a) * st.ref_k + k_used / season_c
        st.ref_e = (1.0 - a) * st.ref_e + n

    def _is_recovery(self, st: _Series, p: float, p_ref: float, ratio: float) -> bool:
        """A CTR change that returns a series to its slow reference after the fast
        baseline followed a decline (or an accepted rise): not a new incident."""
        if p_ref <= 0.0 or p <= 0.0:
            return False
        tol = self._p.recovery_tolerance
        k_obs, k_exp = st.run_k, st.run_ek
        r_run = k_obs / k_exp if k_exp > 0 else ratio
        level = p * r_run
        moved_away = p < p_ref / tol if ratio > 1.0 else p > p_ref * tol
        return moved_away and p_ref / tol <= level <= p_ref * tol

    def _maybe_open(self, name: str, st: _Series, n: int, k: int, mu: float, p: float,
                    p_ref: float, phi_c: float, window: Window, h: float,
                    n_tests: int, rest: float = 0.0) -> Verdict | None:
        s = self._p
        n_ctr = len(s.ctr_ratios)
        ctr_idx = _argmax(st.cusum, 0, n_ctr)
        vol_idx = _argmax(st.cusum, n_ctr, len(st.cusum))
        drift_idx = _argmax(st.dcusum, 0, len(st.dcusum))
        if st.cusum[ctr_idx] >= h and self._is_recovery(st, p, p_ref, s.ctr_ratios[ctr_idx]):
            # Back to the long-run level (a worn-out creative replaced): re-anchor the fast
            # baseline on the reference instead of alarming on the return to normal.
            st.ctr_k = st.ctr_e * st.ref_k / st.ref_e
            st.zero_cusum(0, n_ctr)
            for i in range(len(st.dcusum)):
                st.dcusum[i] = 0.0
            return None
        if st.cusum[ctr_idx] >= h:
            # CTR first: when impressions double and CTR halves, both fire; the CTR alarm
            # is the incident and the volume evidence names its cause.
            family, ratio, score = _CTR, s.ctr_ratios[ctr_idx], st.cusum[ctr_idx]
        elif st.silent >= h:
            family, ratio, score = _SIL, 0.0, st.silent
        elif (drift_idx >= 0 and st.dcusum[drift_idx] >= h and st.incident is None
              and st.watch is None and (vol_idx < 0 or st.cusum[vol_idx] < h)):
            # (A CTR that moved with a volume jump is judged by the watch below.)
            family, ratio, score = _DRIFT, s.drift_ratios[drift_idx], st.dcusum[drift_idx]
        elif vol_idx >= 0 and st.cusum[vol_idx] >= h and st.cusum[ctr_idx] < h / 2.0:
            # Traffic moved and CTR did not (yet): not an incident. Accept the new volume at
            # once so the attribution of later alarms compares with the right level, and
            # watch the clicks: if the extra (or missing) impressions carry no clicks,
            # impression logging broke (duplicated or lost), and the CTR moved by the
            # inverse of the volume jump. The jump was already improbable, so telling these
            # two apart needs far less evidence than finding a change among all series.
            st.watch = None
            # Campaign-wide only: a segment's volume moves with its campaign's, and a
            # logging fault is a property of the pipeline, not of one audience. The jump
            # is measured on the window that completed the evidence.
            if name == _ALL and n > 0 and mu > 0 and p > 0:
                r_d = clip(mu / n, 0.05, 20.0)
                if abs(math.log(r_d)) >= math.log(1.5):
                    st.watch = [r_d, binomial_llr(k, n, p, r_d) / phi_c, 0.0]
            st.vol_level = n / math.exp(self._season_vol[(window.start // 3600) % _HOURS])
            st.vol_trend = 0.0
            st.zero_cusum(n_ctr, len(st.cusum))
            st.run_n = st.run_mu = 0.0
            return self._check_watch(name, st, n, mu, p, phi_c, window, h)
        elif st.watch is not None:
            return self._check_watch(name, st, n, mu, p, phi_c, window, h)
        else:
            return None
        # A segment's drop is its own (a segment break) when its siblings held: their CTR
        # in this window closer to normal than to the segment's.
        alone = (name != _ALL and family == _CTR and 0.0 < ratio < 1.0 and rest > 0.0
                 and math.log(rest) > 0.5 * math.log(ratio))
        kind, cause = self._attribute(st, family, ratio, n / mu if mu > 0 else 1.0, alone)
        key = self._group_key(cause, window)
        detector = {_CTR: "binomial_cusum", _VOL: "poisson_cusum", _SIL: "silence",
                    _DRIFT: "drift_cusum"}[family]
        inc = _Incident(family, ratio, h / 4.0, kind, cause, key, detector,
                        self._ratios(family))
        inc.info = n * p
        _start_at_cap(inc, h, self._ratios(family))
        st.incident = inc
        st.clear_evidence()
        confidence = clip(1.0 - n_tests * math.exp(-score), 0.0, 1.0)
        return self._verdict(name, st, st.incident, score, confidence, n, mu, p, phi_c)

    def _check_watch(self, name: str, st: _Series, n: int, mu: float, p: float, phi_c: float,
                     window: Window, h: float) -> Verdict | None:
        """Decide a volume jump: impression logging broke, or real traffic moved."""
        watch = st.watch
        if watch is None:
            return None
        r_d, ev, _ = watch
        if ev >= h * _WATCH_THRESHOLD:
            st.watch = None
            grid = self._p.ctr_ratios
            ratio = min(grid, key=lambda r: abs(math.log(r / r_d)))
            kind = "ctr_drop" if r_d < 1.0 else "ctr_spike"
            key = self._group_key("impression_logging", window)
            st.incident = _Incident(_CTR, ratio, h / 4.0, kind, "impression_logging", key,
                                    "volume_ctr_test", grid)
            st.incident.info = n * p
            _start_at_cap(st.incident, h, grid)
            st.zero_cusum(0, len(st.cusum))
            confidence = clip(1.0 - math.exp(-ev), 0.0, 1.0)
            return self._verdict(name, st, st.incident, ev, confidence, n, mu, p, phi_c)
        if ev <= -h * _WATCH_THRESHOLD or watch[2] > _WATCH_WINDOWS:
            st.watch = None
        return None

    def _attribute(self, st: _Series, family: int, ratio: float,
                   r_imp_now: float = 1.0, segment: bool = False) -> tuple[str, str]:
        """Name what broke from which test fired and the evidence run's ratios (the run
        can hold windows from before a jump; the window that fired is taken too).

        A CTR rise is a behaviour change until the clicks themselves show bots
        (:meth:`revise`); a segment's CTR drop (its siblings held: it is tested against
        them) is a segment break."""
        k_obs, k_exp, n_obs, n_exp = st.run_k, st.run_ek, st.run_n, st.run_mu
        r_ctr = k_obs / k_exp if k_exp > 0 else 1.0
        r_imp = n_obs / n_exp if n_exp > 0 else 1.0
        if abs(math.log(max(r_imp_now, 1e-9))) > abs(math.log(max(r_imp, 1e-9))):
            r_imp = r_imp_now
        r_clk = r_ctr * r_imp
        clicks_normal = 0.6 <= r_clk <= 1.6
        if family == _SIL:
            return "silence", "silence"
        if family == _DRIFT:
            return "drift", "drift"
        if family == _CTR:
            # The fired ratio is the GLR estimate of the new level; the run's ratios can be
            # diluted by windows from before the change.
            if ratio < 1.0:
                # Impressions jumped and clicks did not vanish: the logging, not the clicks.
                if r_imp >= 1.5 and r_clk > 0.3:
                    return "ctr_drop", "impression_logging"
                if segment:
                    return "segment_break", "segment_break"
                if min(r_ctr, ratio) <= 0.3:
                    return "click_outage", "click_tracking"
                return "ctr_drop", "behaviour_change"
            if r_imp <= 0.67 and clicks_normal:
                return "ctr_spike", "impression_logging"
            return "ctr_spike", "behaviour_change"
        return "silence", "silence"

    def _group_key(self, cause: str, window: Window) -> str:
        """One incident id per campaign while its alarms keep coming (any series, cause)."""
        length = window.end - window.start
        group = self._group
        if group is not None and window.start - group[1] <= self._p.group_windows * length:
            key = group[0]
        else:
            key = f"{window.start}:{cause}"
        self._group = (key, window.start)
        return key

    def _continue_incident(self, name: str, st: _Series, inc: _Incident, llrs: list[float],
                           dllrs: list[float], n: int, k: int, mu: float, p: float,
                           phi_c: float, window: Window,
                           h: float) -> tuple[Verdict | None, bool, bool]:
        s = self._p
        n_ctr = len(s.ctr_ratios)
        if inc.family == _SIL:
            inc.evidence = min(h / 4.0, st.silent) if n == 0 else -math.inf
        elif inc.family == _DRIFT:
            if n > 0:
                inc.info += 0.25 * (n * p - inc.info)
            inc.add(dllrs, 0, h, s.drift_ratios)
        else:
            if inc.family == _CTR and n > 0:
                inc.info += 0.25 * (n * p - inc.info)
            inc.add(llrs, 0 if inc.family == _CTR else n_ctr, h, self._ratios(inc.family))
        inc.windows += 1
        logging_fault = inc.cause == "impression_logging"
        learn_ctr = inc.family in (_VOL, _DRIFT) and not logging_fault
        learn_vol = inc.family in (_CTR, _DRIFT) and not logging_fault
        if inc.evidence > 0 and inc.windows < s.max_incident_windows:
            if _contradicts(inc, n, k, mu, p):
                # The incident holds, but this window's own counts lean the other way: it
                # is not reported under the incident's kind (its figure is not held back).
                return None, learn_ctr, learn_vol
            if self._group is not None and self._group[0] == inc.key:
                self._group = (inc.key, window.start)
            confidence = clip(1.0 - math.exp(-inc.evidence), 0.0, 1.0)
            return (self._verdict(name, st, inc, inc.evidence, confidence, n, mu, p, phi_c),
                    learn_ctr, learn_vol)
        if inc.evidence > 0:
            # The fault outlived max_incident_windows: accept its level (the ratio that
            # holds the most evidence) as the new normal.
            held = [(e, r) for e, r in zip(inc.ev, self._ratios(inc.family), strict=False)
                    if e is not None]
            if held:
                inc.ratio = max(held)[1]
            if inc.family == _CTR:
                st.ctr_k *= inc.ratio
            if inc.family in (_CTR, _DRIFT) and st.ctr_e > 0 and st.ref_e > 0:
                # The new normal is the long-run level too.
                st.ref_k = st.ref_e * st.ctr_k / st.ctr_e
            elif inc.family == _VOL:
                st.vol_level *= inc.ratio
                st.vol_trend = 0.0
        st.incident = None
        st.cooldown = s.cooldown_windows
        st.clear_evidence()
        st.silent = 0.0
        return None, True, True

    def _verdict(self, name: str, st: _Series, inc: _Incident, score: float,
                 confidence: float, n: int, mu: float, p: float, phi_c: float) -> Verdict:
        severity, quarantine = _SEVERITY[inc.cause]
        basis = n if n > 0 else mu
        lo, hi = ctr_interval(p, basis, phi_c)
        return Verdict(
            segment=name, detector=inc.detector, kind=inc.kind, severity=severity,
            quarantine=quarantine, score=round(score, 4), confidence=round(confidence, 6),
            baseline_ctr=p, ctr_low=lo, ctr_high=hi, expected_clicks=basis * p,
            expected_impressions=mu, suspected_cause=inc.cause, incident=inc.key,
        )

    def _drift_verdict(self, name: str, st: _Series, n: int, mu: float, p: float,
                       phi_c: float) -> Verdict:
        assert st.drift is not None
        z = st.drift.last_z
        basis = n if n > 0 else mu
        lo, hi = ctr_interval(p, basis, phi_c)
        return Verdict(
            segment=name, detector=self.settings.drift_detector, kind="drift",
            severity="warning" if name == _ALL else "info", quarantine=False,
            score=round(z, 4), confidence=0.5, baseline_ctr=p, ctr_low=lo, ctr_high=hi,
            expected_clicks=basis * p, expected_impressions=mu, suspected_cause="drift",
        )

    def _learn_volume(self, st: _Series, n: int, mu: float, season_v: float, is_all: bool,
                      hour: int, phi_n: float, rate: float) -> None:
        s = self._p
        x = n / season_v
        if st.seen == 0 and st.vol_level == 0.0:
            if n > 0:
                st.vol_level = x
            return
        pred = fmax(st.vol_level + st.vol_trend, 0.0)
        # Huber-clipped innovation: a fault building evidence moves the level little.
        sd = math.sqrt(phi_n * fmax(pred, 1.0))
        e = clip(x - pred, -3.0 * sd, 3.0 * sd)
        alpha = s.volume_alpha * rate
        level = fmax(pred + alpha * e, 0.0)
        st.vol_trend = st.vol_trend + alpha * s.volume_beta * e
        # The trend never extrapolates past the level it corrects.
        st.vol_trend = clip(st.vol_trend, -0.1 * level, 0.1 * level)
        st.vol_level = level
        if mu > 0 and rate == 1.0:  # noise level and profile: from unsuspected windows only
            pearson = math.pow(n - mu, 2.0) / fmax(mu, 1.0)
            st.vol_disp += s.dispersion_alpha * (fmin(pearson, 25.0) - st.vol_disp)
            if is_all and mu >= 10 and s.season_alpha > 0:
                r = clip(math.log((n + 0.5) / (mu + 0.5)), -0.5, 0.5)
                season = self._season_vol  # (mypyc: ``+=`` on an item is a generic add)
                season[hour] = season[hour] + s.season_alpha * r

    def _learn_ctr(self, st: _Series, n: int, k: int, p: float, p_all: float, phi_c: float,
                   is_all: bool, hour: int, rate: float) -> None:
        s = self._p
        ek = n * p
        k_used = float(k)
        if ek > 0:
            # Huber: a window far from the baseline moves it as if it were 3 sd away, but
            # never by less than one click: with 0.1 clicks expected, 3 sd is less than one
            # click, and clipping every click a sparse series gets would drag its baseline
            # down lull by lull (a run of zero-click windows is no evidence of a lower CTR).
            sd = math.sqrt(phi_c * ek * (1.0 - p))
            k_used = clip(k, ek - 3.0 * sd, fmax(ek + 3.0 * sd, 1.0))
            if rate == 1.0:
                excess = phi_c / fmax(st.ctr_disp, 1.0)
                pearson = math.pow(k - ek, 2.0) / (ek * (1.0 - p) * excess)
                st.ctr_disp += s.dispersion_alpha * (fmin(pearson, 9.0) - st.ctr_disp)
        # Discounted sums forget by information: ``ek / memory`` per window, bounded.
        if is_all:
            season_c = math.exp(self._season_ctr[hour])
            a = rate * clip(ek / s.baseline_memory_clicks, s.baseline_alpha_min, s.baseline_alpha)
            st.ctr_k = (1.0 - a) * st.ctr_k + rate * k_used / season_c
            st.ctr_e = (1.0 - a) * st.ctr_e + rate * n
            if ek >= 10 and s.season_alpha > 0 and rate == 1.0:
                r = clip(math.log((k + 0.5) / (ek + 0.5)), -0.3, 0.3)
                season = self._season_ctr
                season[hour] = season[hour] + s.season_alpha * r
        elif p_all > 0:
            a = rate * clip(ek / s.baseline_memory_clicks, s.baseline_alpha_min, s.segment_alpha)
            st.ctr_k = (1.0 - a) * st.ctr_k + rate * k_used
            st.ctr_e = (1.0 - a) * st.ctr_e + rate * n * p_all


def _replace(v: Verdict, **changes) -> Verdict:
    from dataclasses import replace

    return replace(v, **changes)


def build_monitor(settings: DetectorSettings) -> CampaignMonitor:
    """The factory the flow calls once per campaign."""
    return CampaignMonitor(settings)

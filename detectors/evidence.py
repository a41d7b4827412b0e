"""The sequential tests of one series and their threshold (docs/detection.md, "Tests"):
binomial CUSUMs on clicks given impressions over a grid of CTR ratios (the largest is a
GLR), Poisson CUSUMs on impressions, the drift CUSUMs against the slow reference, and the
threshold that a false-alarm budget per campaign-day sets. The silence test and the loop
that runs them all on a window are in
:meth:`ctrguard.detectors.monitor.CampaignMonitor._series_step`.

>>> from ctrguard.detectors.series import _params
>>> from ctrguard.detectors.settings import DetectorSettings
>>> s = _params(DetectorSettings(ctr_ratios=[0.3, 2.0], volume_ratios=[0.5, 2.0]))

5 clicks of 1,000 impressions where 20 were expected, at the expected volume: evidence for
the CTR ratio 0.3, against 2.0 and against both volume ratios (nats).

>>> [round(x, 2) for x in _llrs(s, 1000, 5, 0.02, 0.0, 1.0, 0.0, 1000.0, 1.0, True)]
[8.09, -17.05, -193.15, -306.85]

Three series, 288 windows a day, 0.02 false alarms per campaign-day (the default):

>>> round(_threshold(s, 3, 300), 2)   # log(288 * 3 / 0.02)
10.67
"""

from __future__ import annotations

import math
from typing import Any, Final

from ctrguard.detectors.series import _ZERO, _Params
from ctrguard.detectors.stats import binomial_llr, fmax, fmin, poisson_llr

_DAY: Final = 86_400
#: Least fading of CTR evidence per window, in units of ``1 / evidence_windows``.
_FADE_FLOOR: Final = 0.5


def _threshold(s: _Params, n_series: int, length: int) -> float:
    """The CUSUM threshold ``h`` (nats) of a campaign with ``n_series`` series in windows
    of ``length`` seconds: ``cusum_threshold`` when set, else from the false-alarm budget."""
    if s.cusum_threshold is not None:
        return s.cusum_threshold
    # The tests of one series watch the same counts and are strongly correlated (the
    # max over a ratio grid costs about a log factor), so the budget is split over series.
    return math.log(fmax(_DAY / length, 1.0) * n_series / s.false_alarms_per_campaign_day)


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


def _llrs(s: _Params, n: int, k: int, p: float, p_rest: float, phi_c: float,
          resolution: float, mu: float, phi_n: float, vol_ok: bool) -> list[float]:
    """One window's log-likelihood ratios: one per CTR ratio, then one per volume ratio
    (0 for a test that does not run)."""
    llrs: list[float] = []
    sizes = s.ctr_log_sizes
    for i, r in enumerate(s.ctr_ratios):
        llrs.append(_ctr_llr(k, n, p, p_rest, r, phi_c) if sizes[i] >= resolution else 0.0)
    for r in s.volume_ratios:
        llrs.append(poisson_llr(n, mu, r) / phi_n if vol_ok else 0.0)
    return llrs


def _dllrs(s: _Params, n: int, k: int, p_ref: float, phi_r: float) -> list[float]:
    """One window's log-likelihood ratios of the drift tests (none without a reference)."""
    if p_ref > 0.0:
        return [binomial_llr(k, n, p_ref, r) / phi_r for r in s.drift_ratios]
    return []

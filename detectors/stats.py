"""Small numeric helpers shared by the detectors: count log-likelihood ratios and intervals.

Pure functions on floats (no numpy: they run once per series per window, where numpy's
per-call overhead would dominate).

>>> round(binomial_llr(0, 1000, 0.02, 0.2), 3)   # clicks vanished: evidence for "CTR x0.2"
16.195
>>> round(poisson_llr(200, 100.0, 2.0), 3)       # impressions doubled
38.629
"""

from __future__ import annotations

import math

#: Two-sided 99% normal quantile.
Z99 = 2.5758293035489


def binomial_llr(k: float, n: float, p: float, ratio: float) -> float:
    """Log-likelihood ratio of ``k`` clicks in ``n`` impressions, CTR ``ratio * p`` vs ``p``.

    >>> round(binomial_llr(20, 1000, 0.02, 0.5), 3)
    -3.914
    >>> binomial_llr(5, 0, 0.02, 2.0)
    0.0
    """
    if n <= 0 or p <= 0.0:
        return 0.0
    p = fmin(p, 0.999)
    p1 = fmin(p * ratio, 0.999)
    return k * math.log(p1 / p) + (n - k) * math.log((1.0 - p1) / (1.0 - p))


def poisson_llr(x: float, mu: float, ratio: float) -> float:
    """Log-likelihood ratio of a count ``x``, mean ``ratio * mu`` vs ``mu``.

    >>> round(poisson_llr(0, 10.0, 0.5), 3)
    5.0
    """
    if mu <= 0.0:
        return 0.0
    return x * math.log(ratio) - (ratio - 1.0) * mu


def ctr_interval(p: float, n: float, dispersion: float) -> tuple[float, float]:
    """99% interval of a window's CTR at ``n`` impressions if the true CTR is ``p``.

    >>> lo, hi = ctr_interval(0.02, 10_000, 1.0)
    >>> round(lo, 4), round(hi, 4)
    (0.0164, 0.0236)
    """
    if n <= 0:
        return 0.0, 1.0
    half = Z99 * math.sqrt(max(dispersion, 1.0) * p * (1.0 - p) / n)
    return max(0.0, p - half), min(1.0, p + half)


def fmin(a: float, b: float) -> float:
    """``min(a, b)`` for two floats (``a`` unless ``b`` is smaller): in the compiled
    detector core a comparison, where the builtin would be a generic call."""
    return b if b < a else a


def fmax(a: float, b: float) -> float:
    """``max(a, b)`` for two floats (``a`` unless ``b`` is larger)."""
    return b if b > a else a


def clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x

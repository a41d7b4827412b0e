"""The count baselines of one series and the levels it is measured against
(docs/detection.md, "Baselines"): the Holt volume level with its hour-of-day profile, the
CTR as discounted sums (count-weighted EWMA) with its profile, the overdispersion of
both, a segment's CTR relative to its campaign with its empirical-Bayes prior, and the slow
reference level that drift is measured against. Each learns with Huber-clipped
innovations, at the ``rate`` that the series' evidence of a change allows.

>>> from ctrguard.detectors.series import _Series
>>> st = _Series(0, None)
>>> st.ctr_k, st.ctr_e = 30.0, 1000.0
>>> round(_rho(st, 10.0), 4), round(_rho(st, 1e6), 4)   # relative CTR, shrunk toward 1
(0.0396, 0.999)
"""

from __future__ import annotations

import math
from typing import Final

from ctrguard.detectors.base import ALL
from ctrguard.detectors.series import _Params, _Series
from ctrguard.detectors.stats import clip, fmax, fmin

_ALL: Final = ALL
#: Deseasonalised clicks the slow reference must hold before drift is tested against it.
_REF_MIN_CLICKS: Final = 100.0


def _rho(st: _Series, prior: float) -> float:
    """A segment's CTR relative to its campaign, shrunk toward 1 (empirical Bayes)."""
    return (st.ctr_k + prior) / (st.ctr_e + prior)


def _update_prior(s: _Params, series: dict[str, _Series]) -> float:
    """Empirical Bayes: prior strength from the spread of segments' relative CTRs."""
    # Method of moments on rho_i = A_k / A_e: E[(rho_i - 1)^2] = tau^2 + rho_i / A_e.
    # Until two segments carry information the prior stays weak (shrinkage_min):
    # uncertain, so only large changes are tested, rather than confidently wrong.
    count = 0
    total = 0.0
    for name, st in series.items():
        if name == _ALL or st.ctr_e < 20.0:
            continue
        rho = st.ctr_k / st.ctr_e
        # (mypyc: ``x ** 2`` is a generic power of two boxed floats; math.pow is the
        # same libm call on doubles)
        total += math.pow(rho - 1.0, 2.0) - rho / st.ctr_e
        count += 1
    if count < 2:
        return s.shrinkage_min
    tau2 = total / count
    return clip(1.0 / tau2 if tau2 > 0 else math.inf, s.shrinkage_min, s.shrinkage_max)


def _reference(season_ctr: list[float], st: _Series, hour: int) -> float:
    """The slow reference CTR of an ``all`` series this hour; 0 while it is too young."""
    if st.ref_k < _REF_MIN_CLICKS or st.ref_e <= 0.0:
        return 0.0
    return fmin(st.ref_k / st.ref_e * math.exp(season_ctr[hour]), 0.999)


def _learn_reference(s: _Params, season_ctr: list[float], st: _Series, n: int, k: int,
                     p: float, p_ref: float, phi_c: float, hour: int) -> None:
    """Slow, robust reference level: forgets by information, frozen while suspect, and
    forgets ten times slower while the fast baseline sits below it (a decline over hours
    should not drag the level it is measured against down with it). Only the forgetting
    slows: each new window is still added whole, so the effect grows with the sums and a
    young reference follows a decline nearly as fast as before."""
    season_c = math.exp(season_ctr[hour])
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


def _is_recovery(s: _Params, st: _Series, p: float, p_ref: float, ratio: float) -> bool:
    """A CTR change that returns a series to its slow reference after the fast
    baseline followed a decline (or an accepted rise): not a new incident."""
    if p_ref <= 0.0 or p <= 0.0:
        return False
    tol = s.recovery_tolerance
    k_obs, k_exp = st.run_k, st.run_ek
    r_run = k_obs / k_exp if k_exp > 0 else ratio
    level = p * r_run
    moved_away = p < p_ref / tol if ratio > 1.0 else p > p_ref * tol
    return moved_away and p_ref / tol <= level <= p_ref * tol


def _learn_volume(s: _Params, season_vol: list[float], st: _Series, n: int, mu: float,
                  season_v: float, is_all: bool, hour: int, phi_n: float,
                  rate: float) -> None:
    """Holt level and trend of the impressions, their overdispersion and (``all``) the
    hour-of-day profile ``season_vol`` (log factors)."""
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
            season = season_vol  # (mypyc: ``+=`` on an item is a generic add)
            season[hour] = season[hour] + s.season_alpha * r


def _learn_ctr(s: _Params, season_ctr: list[float], st: _Series, n: int, k: int, p: float,
               p_all: float, phi_c: float, is_all: bool, hour: int, rate: float) -> None:
    """The CTR baseline (discounted sums), its overdispersion and (``all``) the hour-of-day
    profile ``season_ctr`` (log factors)."""
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
        season_c = math.exp(season_ctr[hour])
        a = rate * clip(ek / s.baseline_memory_clicks, s.baseline_alpha_min, s.baseline_alpha)
        st.ctr_k = (1.0 - a) * st.ctr_k + rate * k_used / season_c
        st.ctr_e = (1.0 - a) * st.ctr_e + rate * n
        if ek >= 10 and s.season_alpha > 0 and rate == 1.0:
            r = clip(math.log((k + 0.5) / (ek + 0.5)), -0.3, 0.3)
            season = season_ctr
            season[hour] = season[hour] + s.season_alpha * r
    elif p_all > 0:
        a = rate * clip(ek / s.baseline_memory_clicks, s.baseline_alpha_min, s.segment_alpha)
        st.ctr_k = (1.0 - a) * st.ctr_k + rate * k_used
        st.ctr_e = (1.0 - a) * st.ctr_e + rate * n * p_all

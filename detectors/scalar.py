"""Online anomaly scoring of one scalar KPI series (``timestamp,value``), no look-ahead.

Model
-----
Values are compressed first (``asinh(value / c)``, with ``c`` the median absolute value of the
warm-up points: logarithmic for large values, linear near zero, defined for zero and negative
values), so multiplicative cycles and heavy right tails of costs and rates become additive.
The compressed value is predicted by a level plus two seasonal profiles, a daily one
(``season_bins`` bins over ``season_period`` seconds, hour of day by default) and a weekly one
(``week_bins`` over ``week_period``, day of week by default), learned in error-correction form
(double-seasonal Holt-Winters). Learning is robust: the error a point teaches is clipped at
``clip_sd`` robust standard deviations (Huber), so an outlier moves the model as if it were
only that far off. A young bin learns the running mean of its points, so the first day and
the first week set the profiles. Optionally (``drift_detector``) a River drift detector fed
the standardised residuals accepts a sustained level shift at once; by default a shift is
learned at the level's rate (on the labelled series of :mod:`ctrguard.replay.kpi` that ranked the
anomalies better).

Score
-----
Each point is scored against the state *before* it, then learned from. Its standardised
residual ``|z|`` is compared with the ``calibration`` most recent ones: the tail probability
``p`` is the conformal p-value ``(#{past |z| >= |z|} + 1) / (n + 1)`` in the body, and beyond
the ``1 - tail_fraction`` quantile ``u`` a Pareto tail fitted to the exceedances (Hill
estimator ``a``): ``p = (n_u / (n + 1)) * (|z| / u) ** -a``, so a point far beyond anything
seen still gets a smaller p than a point just beyond, never a tie at the top. The score is
``1 - p``: for points like the past ones it is uniform on [0, 1] (a score of 0.99 is exceeded
by 1% of normal points), and it approaches 1 only as fast as the tail of the past
residuals allows. ``alert`` is ``p <= alert_p`` after warm-up, or a drift.

An hourly series with a daily cycle and noise, and one point 4.5 times too high at hour 500:
it alone alerts, with a tail probability of a few in a million, while the scores of the
other points spread evenly over [0, 1]:

>>> import random
>>> rng = random.Random(5)
>>> rows = [(1767225600 + 3600 * t, math.exp(2.0 + 0.4 * math.sin(2 * math.pi * t / 24)
...          + 0.1 * rng.gauss(0, 1) + (1.5 if t == 500 else 0.0))) for t in range(600)]
>>> out = score_series(rows)
>>> [(t, f"{1 - s:.0e}") for t, (_, _, s, a) in enumerate(out) if a]
[(500, '3e-06')]
>>> normal = sorted(s for t, (_, _, s, _) in enumerate(out) if t >= 100 and t != 500)
>>> [round(normal[int(q * len(normal))], 1) for q in (0.1, 0.5, 0.9)]
[0.1, 0.5, 0.9]
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable

from ctrguard.detectors.drift import METHODS, ResidualDrift
from ctrguard.detectors.stats import clip

__all__ = ["ScalarScorer", "score_series"]

#: Mean absolute deviation to standard deviation, for normal residuals.
_MAD_TO_SD = math.sqrt(math.pi / 2.0)
#: Smallest tail probability reported (keeps 1 - p below 1 in floating point).
_P_FLOOR = 1e-15


class ScalarScorer:
    """Online robust seasonal scorer of one numeric series.

    Parameters
    ----------
    alpha
        Level smoothing per point.
    season_alpha
        Smoothing of the daily profile per point of that bin (0 disables it).
    season_period
        Period of the daily profile in seconds.
    season_bins
        Bins of the daily profile (24: hour of day).
    week_alpha
        Smoothing of the weekly profile per point of that bin (0 disables it).
    week_period
        Period of the weekly profile in seconds.
    week_bins
        Bins of the weekly profile (7: day of week).
    scale_alpha
        Smoothing of the residual scale.
    clip_sd
        Robust standard deviations at which a point's error is clipped before it is learned.
    warmup
        Points learned before any score (the scores of warm-up points are 0).
    calibration
        Recent standardised residuals the tail probability is measured against.
    tail_fraction
        Share of the largest of those fitted by the Pareto tail.
    alert_p
        Tail probability at or below which a point alerts.
    drift_detector
        ``"page_hinkley"``, ``"adwin"`` or ``"none"``.
    drift_threshold
        PageHinkley threshold in standard deviations accumulated.
    """

    def __init__(self, alpha: float = 0.1, season_alpha: float = 0.2,
                 season_period: float = 86_400.0, season_bins: int = 24,
                 week_alpha: float = 0.01, week_period: float = 604_800.0, week_bins: int = 7,
                 scale_alpha: float = 0.02, clip_sd: float = 3.0, warmup: int = 48,
                 calibration: int = 1000, tail_fraction: float = 0.05, alert_p: float = 1e-4,
                 drift_detector: str = "none", drift_threshold: float = 30.0):
        if not 0 < alpha <= 1 or not 0 < scale_alpha <= 1:
            raise ValueError("alpha and scale_alpha must be in (0, 1]")
        if not 0 <= season_alpha <= 1 or not 0 <= week_alpha <= 1:
            raise ValueError("season_alpha and week_alpha must be in [0, 1]")
        if not season_period > 0 or season_bins < 1 or not week_period > 0 or week_bins < 1:
            raise ValueError("periods must be > 0 and bins >= 1")
        if warmup < 2 or not clip_sd > 0:
            raise ValueError("warmup must be >= 2 and clip_sd > 0")
        if calibration < 20 or not 0 < tail_fraction < 0.5 or not 0 < alert_p < 1:
            raise ValueError("calibration must be >= 20, 0 < tail_fraction < 0.5, "
                             "0 < alert_p < 1")
        if drift_detector not in (*METHODS, "none"):
            raise ValueError(f"drift_detector must be one of {(*METHODS, 'none')}")
        if not drift_threshold > 0:
            raise ValueError("drift_threshold must be > 0")
        self.alpha = alpha
        self.season_alpha = season_alpha
        self.season_period = season_period
        self.season_bins = season_bins
        self.week_alpha = week_alpha
        self.week_period = week_period
        self.week_bins = week_bins
        self.scale_alpha = scale_alpha
        self.clip_sd = clip_sd
        self.warmup = warmup
        self.calibration = calibration
        self.tail_fraction = tail_fraction
        self.alert_p = alert_p
        self.drift_detector = drift_detector
        self.drift_threshold = drift_threshold
        self._reset()

    def _reset(self) -> None:
        self._n = 0
        self._c = 0.0                     # compression scale, fixed after warm-up
        self._early: list[tuple[float, float]] = []   # warm-up points, until c is known
        self._level = 0.0
        self._scale = 0.0
        self._season = [0.0] * self.season_bins
        self._season_seen = [0] * self.season_bins
        self._week = [0.0] * self.week_bins
        self._week_seen = [0] * self.week_bins
        self._last_ts = -math.inf
        self._recent: deque[float] = deque()     # |z| in arrival order
        self._sorted: list[float] = []           # the same, sorted
        self._drift = (None if self.drift_detector == "none" else
                       ResidualDrift(method=self.drift_detector, threshold=self.drift_threshold,
                                     min_expected=1.0))

    # ------------------------------------------------------------------ pieces

    def _bin(self, ts: float, period: float, bins: int) -> int:
        return min(int((ts % period) / period * bins), bins - 1)

    def _compress(self, value: float) -> float:
        return math.asinh(value / self._c)

    def tail_probability(self, z_abs: float) -> float:
        """Probability that a point like the recent ones has a residual at least this large.

        Conformal in the body; a Pareto tail (Hill) beyond the ``1 - tail_fraction``
        quantile of the recent residuals, so it keeps falling past the largest one seen.
        """
        past = self._sorted
        n = len(past)
        if n < 20:
            # Too few residuals yet: a normal tail (these points are few and early).
            return max(math.erfc(z_abs / math.sqrt(2.0)), _P_FLOOR)
        n_u = max(int(n * self.tail_fraction), 5)
        u = past[n - n_u - 1] if n - n_u - 1 >= 0 else past[0]
        if z_abs <= u or u <= 0:
            at_least = n - bisect.bisect_left(past, z_abs)
            return (at_least + 1) / (n + 1)
        logs = [math.log(x / u) for x in past[n - n_u:] if x > u]
        # A tail with no spread (ties at u): the steepest decay any tail allows here.
        a = len(logs) / sum(logs) if logs and sum(logs) > 0 else 10.0
        return max((n_u / (n + 1)) * (z_abs / u) ** -a, _P_FLOOR)

    def _remember(self, z_abs: float) -> None:
        self._recent.append(z_abs)
        bisect.insort(self._sorted, z_abs)
        if len(self._recent) > self.calibration:
            old = self._recent.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]

    # ------------------------------------------------------------------ update

    def update(self, ts: float, value: float) -> tuple[float, bool]:
        """Score ``value`` at ``ts`` (epoch seconds) against the past; then learn from it.

        Returns ``(anomaly_score, alert)``: ``anomaly_score = 1 - p`` with ``p`` the tail
        probability of the point's residual (0 during warm-up).
        """
        if not math.isfinite(value) or not math.isfinite(ts):
            raise ValueError(f"ts and value must be finite, got {ts!r}, {value!r}")
        if ts < self._last_ts:
            raise ValueError(f"timestamps must not go backwards ({ts} < {self._last_ts})")
        self._last_ts = ts
        if self._c == 0.0:
            # The compression scale: the warm-up's median absolute value (1 for all zeros);
            # until it is fixed the values are kept and the model is fitted to them at the end.
            self._early.append((ts, value))
            if len(self._early) < self.warmup:
                return 0.0, False
            mags = sorted(abs(v) for _, v in self._early)
            self._c = mags[len(mags) // 2] or 1.0
            early, self._early = self._early, []
            for t, v in early:
                self._learn(t, v, None)
            return 0.0, False
        return self._learn(ts, value, self._score_of)

    def _learn(self, ts: float, value: float, score_of) -> tuple[float, bool]:
        y = self._compress(value)
        bd = self._bin(ts, self.season_period, self.season_bins)
        bw = self._bin(ts, self.week_period, self.week_bins)
        if self._n == 0:
            self._level = y
            self._n = 1
            return 0.0, False
        resid = y - (self._level + self._season[bd] + self._week[bw])
        scale = max(self._scale * _MAD_TO_SD, 1e-9 * max(1.0, abs(self._level)))
        z = resid / scale
        score, alert, drifted = 0.0, False, False
        if score_of is not None:
            score, alert = score_of(abs(z))
            if self._drift is not None and not alert:
                drifted = self._drift.update(clip(z, -4.0, 4.0), 1.0, 1.0)
            self._remember(abs(z))
        # Learn, robustly: the error is clipped at clip_sd robust sd (after the first points).
        lim = self.clip_sd * scale
        e = clip(resid, -lim, lim) if self._n > 10 else resid
        if drifted:
            # A sustained shift: accept the new level rather than alerting for hours.
            self._level = y - self._season[bd] - self._week[bw]
        else:
            # A young bin learns the running mean of what it has seen (its first points
            # set it), then at its own rate. What one component takes, the next does not
            # see again.
            rd = max(self.season_alpha, 1.0 / (self._season_seen[bd] + 1)) \
                if self.season_alpha > 0 else 0.0
            rw = max(self.week_alpha, 1.0 / (self._week_seen[bw] + 1)) \
                if self.week_alpha > 0 else 0.0
            if self._n < 24:
                rw = 0.0      # the weekly profile starts once a day has been seen
            d_season = rd * e
            self._season[bd] += d_season
            d_week = rw * (e - d_season)
            self._week[bw] += d_week
            self._level += max(self.alpha, 1.0 / (self._n + 1)) * (e - d_season - d_week)
            self._season_seen[bd] += 1
            if rw > 0:
                self._week_seen[bw] += 1
        sa = max(self.scale_alpha, 1.0 / (self._n + 1))
        self._scale += sa * (abs(e) - self._scale)
        self._n += 1
        return score, bool(alert or drifted)

    def _score_of(self, z_abs: float) -> tuple[float, bool]:
        p = self.tail_probability(z_abs)
        return 1.0 - p, p <= self.alert_p


def score_series(rows: Iterable[tuple[float, float]], **params) -> list[
        tuple[float, float, float, bool]]:
    """Score ``(timestamp, value)`` rows in order: ``(timestamp, value, score, alert)`` each.

    ``params`` go to :class:`ScalarScorer`.
    """
    scorer = ScalarScorer(**params)
    out = []
    for ts, value in rows:
        score, alert = scorer.update(ts, value)
        out.append((ts, value, score, alert))
    return out

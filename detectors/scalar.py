"""Online anomaly scoring of one scalar KPI series (``timestamp,value``), no look-ahead.

Model: additive error-correction exponential smoothing with a time-of-day profile
(ETS(A,N,A) with ``season_bins`` bins over ``season_period`` seconds), a robust scale (EWMA of
absolute residuals, Huber-clipped so an outlier cannot inflate it), and a River drift
detector fed the standardised residuals for slow shifts. Each point is scored against the
state *before* it, then learned from (clipped), so the score never uses the future.

``anomaly_score`` is ``erf(|z| / sqrt(2))`` (the two-sided normal confidence that the point
is off the model, in [0, 1]); ``alert`` is ``|z| >= alert_z`` after warm-up, or a drift.

>>> rows = [(1767225600 + 300 * t, 10.0 + (t % 3) * 0.1 + (8.0 if t == 60 else 0.0))
...         for t in range(80)]
>>> out = score_series(rows)
>>> [(t, round(s, 3)) for t, (_, _, s, a) in enumerate(out) if a]
[(60, 1.0)]
>>> all(0.0 <= s <= 1.0 for _, _, s, _ in out)
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from detectors.drift import METHODS, ResidualDrift
from detectors.stats import clip

__all__ = ["ScalarScorer", "score_series"]

#: Mean absolute deviation to standard deviation, for normal residuals.
_MAD_TO_SD = math.sqrt(math.pi / 2.0)


class ScalarScorer:
    """Online robust scorer of one numeric series.

    Parameters
    ----------
    alpha
        Level smoothing per point.
    season_alpha
        Smoothing of the time-of-day profile per point of that bin (0 disables it).
    season_period
        Period of the profile in seconds (a day by default).
    season_bins
        Bins of the profile (24: hour of day).
    scale_alpha
        Smoothing of the residual scale.
    warmup
        Points learned before any alert.
    alert_z
        Standardised residual at which a point alerts.
    drift_detector
        ``"page_hinkley"``, ``"adwin"`` or ``"none"``.
    drift_threshold
        PageHinkley threshold in standard deviations accumulated.
    """

    def __init__(self, alpha: float = 0.1, season_alpha: float = 0.1,
                 season_period: float = 86_400.0, season_bins: int = 24,
                 scale_alpha: float = 0.05, warmup: int = 20, alert_z: float = 5.0,
                 drift_detector: str = "page_hinkley", drift_threshold: float = 30.0):
        if not 0 < alpha <= 1 or not 0 <= season_alpha <= 1 or not 0 < scale_alpha <= 1:
            raise ValueError("alpha and scale_alpha must be in (0, 1], season_alpha in [0, 1]")
        if not season_period > 0 or season_bins < 1:
            raise ValueError("season_period must be > 0 and season_bins >= 1")
        if warmup < 2 or not alert_z > 0:
            raise ValueError("warmup must be >= 2 and alert_z > 0")
        if drift_detector not in (*METHODS, "none"):
            raise ValueError(f"drift_detector must be one of {(*METHODS, 'none')}")
        if not drift_threshold > 0:
            raise ValueError("drift_threshold must be > 0")
        self.alpha = alpha
        self.season_alpha = season_alpha
        self.season_period = season_period
        self.season_bins = season_bins
        self.scale_alpha = scale_alpha
        self.warmup = warmup
        self.alert_z = alert_z
        self.drift_detector = drift_detector
        self.drift_threshold = drift_threshold
        self._reset()

    def _reset(self) -> None:
        self._n = 0
        self._level = 0.0
        self._scale = 0.0
        self._season = [0.0] * self.season_bins
        self._last_ts = -math.inf
        self._drift = (None if self.drift_detector == "none" else
                       ResidualDrift(method=self.drift_detector, threshold=self.drift_threshold,
                                     min_expected=1.0))

    def update(self, ts: float, value: float) -> tuple[float, bool]:
        """Score ``value`` at ``ts`` (epoch seconds) against the past; then learn from it.

        Returns ``(anomaly_score, alert)``.
        """
        if not math.isfinite(value) or not math.isfinite(ts):
            raise ValueError(f"ts and value must be finite, got {ts!r}, {value!r}")
        if ts < self._last_ts:
            raise ValueError(f"timestamps must not go backwards ({ts} < {self._last_ts})")
        self._last_ts = ts
        b = int((ts % self.season_period) / self.season_period * self.season_bins)
        b = min(b, self.season_bins - 1)
        if self._n == 0:
            self._level = value
            self._n = 1
            return 0.0, False
        resid = value - (self._level + self._season[b])
        # A floor relative to the level keeps a perfectly flat series from dividing by zero.
        scale = max(self._scale * _MAD_TO_SD, 1e-9 * max(1.0, abs(self._level)))
        z = resid / scale
        warm = self._n >= self.warmup
        score = math.erf(abs(z) / math.sqrt(2.0)) if warm else 0.0
        alert = warm and abs(z) >= self.alert_z
        drifted = False
        if warm and self._drift is not None and not alert:
            drifted = self._drift.update(clip(z, -4.0, 4.0), 1.0, 1.0)
        # Learn, robustly: the first points at full weight, then an outlier moves the state
        # as if it were 3 sd away.
        a = max(self.alpha, 1.0 / (self._n + 1))
        sa = max(self.scale_alpha, 1.0 / (self._n + 1))
        e = clip(resid, -3.0 * scale, 3.0 * scale) if warm else resid
        if drifted:
            # A sustained shift: accept the new level rather than alerting for hours.
            self._level = value - self._season[b]
        else:
            self._level += a * e
            self._season[b] += self.season_alpha * (1.0 - a) * e
        self._scale += sa * (abs(e) - self._scale)
        self._n += 1
        return score, bool(alert or drifted)


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

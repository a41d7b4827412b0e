"""Gradual drift on standardised residuals, with a River drift detector inside.

River's detectors are tuned for inputs of order 1 and test the mean of what they are fed.
Fed raw CTRs (~0.02) they are either blind or, with a tight threshold, fire on the
diurnal cycle. Fed residuals standardised by the count model they see only what the
model does not explain, and the units of their thresholds mean something (standard
deviations). Sparse series are pooled: residuals accumulate until the pooled expected
count reaches ``min_expected``, so one standardised value is never dominated by a
window with a fraction of a click expected.

>>> import random
>>> rng = random.Random(7)
>>> d = ResidualDrift()
>>> fired = []
>>> for t in range(400):
...     shift = -0.8 if t >= 200 else 0.0          # the mean residual drops by 0.8 sd
...     if d.update(rng.gauss(shift, 1.0), 1.0, 10.0):
...         fired.append(t)
>>> fired
[250]
"""

from __future__ import annotations

import math

from river.drift import ADWIN, PageHinkley

from detectors.stats import clip

METHODS = ("page_hinkley", "adwin")


class ResidualDrift:
    """Drift detector on standardised residuals.

    Parameters
    ----------
    method
        ``"page_hinkley"`` or ``"adwin"`` (River, with ``clock=1``).
    threshold
        PageHinkley threshold, in standard deviations accumulated.
    delta
        PageHinkley tolerated change per value (standard deviations).
    adwin_delta
        ADWIN confidence parameter.
    min_expected
        Pooled expected count needed before a standardised residual is fed.
    min_instances
        Values fed before PageHinkley may fire.
    """

    def __init__(self, method: str = "page_hinkley", threshold: float = 30.0,
                 delta: float = 0.1, adwin_delta: float = 0.002, min_expected: float = 5.0,
                 min_instances: int = 20):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not threshold > 0 or not delta >= 0 or not 0 < adwin_delta < 1:
            raise ValueError("threshold must be > 0, delta >= 0, 0 < adwin_delta < 1")
        if not min_expected > 0 or min_instances < 1:
            raise ValueError("min_expected must be > 0 and min_instances >= 1")
        self.method = method
        self.threshold = threshold
        self.delta = delta
        self.adwin_delta = adwin_delta
        self.min_expected = min_expected
        self.min_instances = min_instances
        self._reset()

    def _reset(self) -> None:
        if self.method == "adwin":
            self._river = ADWIN(delta=self.adwin_delta, clock=1)
        else:
            self._river = PageHinkley(min_instances=self.min_instances, delta=self.delta,
                                      threshold=self.threshold, mode="both")
        self._num = 0.0     # pooled observed - expected
        self._var = 0.0     # pooled variance
        self._exp = 0.0     # pooled expected count
        self.last_z = 0.0   # the last standardised value fed

    def update(self, residual: float, variance: float, expected: float) -> bool:
        """Pool one window's residual (observed - expected) and its variance.

        Returns True when the River detector signals a drift.
        """
        self._num += residual
        self._var += variance
        self._exp += expected
        if self._exp < self.min_expected or self._var <= 0.0:
            return False
        z = clip(self._num / math.sqrt(self._var), -4.0, 4.0)
        self._num = self._var = self._exp = 0.0
        self.last_z = z
        self._river.update(z)
        return bool(self._river.drift_detected)

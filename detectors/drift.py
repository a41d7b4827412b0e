"""Gradual drift on standardised residuals, with a River drift detector inside.

River's detectors are tuned for inputs of order 1 and test the mean of what they are fed.
Fed raw CTRs (~0.02) they are either blind or, with a tight threshold, fire on the
diurnal cycle. Fed residuals standardised by the count model they see only what the
model does not explain, and the units of their thresholds mean something (standard
deviations). Sparse series are pooled: residuals accumulate until the pooled expected
count reaches ``min_expected``, so one standardised value is never dominated by a
window with a fraction of a click expected.

Page-Hinkley is River's ``PageHinkley(mode="both")`` computed here (the same floats in the
same order, so the same decisions; ``tests/test_detectors.py`` checks it against River's
after every value), in the compiled detector core: every campaign has one, most campaigns
never feed it, and building River's (a ``stats.Mean``, a bound method) cost more than a
campaign's window. Its state is pickled as seven numbers of its own (:meth:`ResidualDrift.__reduce__`);
nothing here reads or writes River's private attributes, except to load a snapshot written
before 2026-12-07, which held River's detector (:meth:`ResidualDrift.__setstate__` names the
River version when that fails). ADWIN is River's own, used through its public API.

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

import copyreg
import math
from typing import Any, Final

from river.drift import ADWIN

from ctrguard.detectors.stats import clip
from ctrguard.errors import SnapshotFormatError

METHODS = ("page_hinkley", "adwin")

#: River's PageHinkley forgetting factor (its default ``alpha``, which is what ran).
_PH_ALPHA: Final = 1 - 0.0001


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
        # River's ADWIN; None for Page-Hinkley, whose state is the _ph_ fields.
        self._river: Any = ADWIN(delta=self.adwin_delta, clock=1) \
            if self.method == "adwin" else None
        self._ph_reset()
        self._num = 0.0     # pooled observed - expected
        self._var = 0.0     # pooled variance
        self._exp = 0.0     # pooled expected count
        self.last_z = 0.0   # the last standardised value fed

    def _ph_reset(self) -> None:
        """River's ``PageHinkley._reset``."""
        self._ph_n = 0.0            # values fed (River's ``_x_mean.n``)
        self._ph_mean = 0.0         # their mean (``_x_mean._mean``)
        self._ph_up = 0.0           # ``_sum_increase``
        self._ph_down = 0.0         # ``_sum_decrease``
        self._ph_min_up = math.inf  # ``_min_increase``
        # ``_max_decrease``: River starts it at -1 (an int). Any value it takes later is
        # larger (it only grows).
        self._ph_max_down = -1.0
        self._ph_drift = False      # ``drift_detected``

    def update(self, residual: float, variance: float, expected: float) -> bool:
        """Pool one window's residual (observed - expected) and its variance.

        Returns True when the drift detector signals a drift.
        """
        self._num += residual
        self._var += variance
        self._exp += expected
        if self._exp < self.min_expected or self._var <= 0.0:
            return False
        z = clip(self._num / math.sqrt(self._var), -4.0, 4.0)
        self._num = self._var = self._exp = 0.0
        self.last_z = z
        river = self._river
        if river is not None:
            river.update(z)
            return bool(river.drift_detected)
        return self._ph_update(z)

    def _ph_update(self, x: float) -> bool:
        """River's ``PageHinkley(mode="both").update(x)``, then its ``drift_detected``."""
        if self._ph_drift:
            self._ph_reset()
        self._ph_n += 1.0
        self._ph_mean += (1.0 / self._ph_n) * (x - self._ph_mean)
        dev = x - self._ph_mean
        self._ph_up = _PH_ALPHA * self._ph_up + dev - self.delta
        self._ph_down = _PH_ALPHA * self._ph_down + dev + self.delta
        if self._ph_up < self._ph_min_up:
            self._ph_min_up = self._ph_up
        if self._ph_down > self._ph_max_down:
            self._ph_max_down = self._ph_down
        if self._ph_n >= self.min_instances:
            self._ph_drift = (self._ph_up - self._ph_min_up > self.threshold
                              or self._ph_max_down - self._ph_down > self.threshold)
        return self._ph_drift

    def __reduce__(self) -> tuple[Any, ...]:
        # Page-Hinkley's state as numbers of its own (``_ph``), ADWIN as River's object:
        # the same bytes whichever core (compiled or Python) wrote them.
        return copyreg.__newobj__, (ResidualDrift,), {  # type: ignore[attr-defined]
            "method": self.method, "threshold": self.threshold, "delta": self.delta,
            "adwin_delta": self.adwin_delta, "min_expected": self.min_expected,
            "min_instances": self.min_instances, "_river": self._river,
            "_ph": (self._ph_n, self._ph_mean, self._ph_up, self._ph_down, self._ph_min_up,
                    self._ph_max_down, self._ph_drift),
            "_num": self._num, "_var": self._var, "_exp": self._exp, "last_z": self.last_z}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.method = state["method"]
        self.threshold = state["threshold"]
        self.delta = state["delta"]
        self.adwin_delta = state["adwin_delta"]
        self.min_expected = state["min_expected"]
        self.min_instances = state["min_instances"]
        self._num = state["_num"]
        self._var = state["_var"]
        self._exp = state["_exp"]
        self.last_z = state["last_z"]
        self._ph_reset()
        self._river = state["_river"] if self.method == "adwin" else None
        ph = state.get("_ph")
        if ph is None and self.method != "adwin":
            ph = _rivers_page_hinkley(state["_river"])  # a snapshot from before 2026-12-07
        if ph is not None:
            (self._ph_n, self._ph_mean, self._ph_up, self._ph_down, self._ph_min_up,
             self._ph_max_down, self._ph_drift) = (float(ph[0]), float(ph[1]), float(ph[2]),
                                                   float(ph[3]), float(ph[4]), float(ph[5]),
                                                   bool(ph[6]))


def _rivers_page_hinkley(river: Any) -> tuple[float, float, float, float, float, float, bool]:
    """The state of River's ``PageHinkley`` as an older snapshot held it (River 0.2x's
    private attributes: the only place they are read)."""
    try:
        mean = river._x_mean
        return (float(mean.n), float(mean._mean), float(river._sum_increase),
                float(river._sum_decrease), float(river._min_increase),
                float(river._max_decrease), bool(river._drift_detected))
    except (AttributeError, TypeError, ValueError) as exc:
        import river as river_package

        raise SnapshotFormatError(
            "a snapshot written before 2026-12-07 holds River's PageHinkley, whose fields "
            f"this River ({river_package.__version__}) does not have ({exc}); load it with "
            "River 0.26, or start without that recovery state") from exc

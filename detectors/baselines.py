"""The two baselines of the issue, CampaignMonitor-compatible, for side-by-side evaluation.

* :class:`RawRiverBaseline`: River's PageHinkley and ADWIN fed each series' raw per-window CTR.
  Catches every change, including the daily cycle and plain binomial noise of small series.
* :class:`ZTestBaseline`: a per-window two-sided binomial z-test of the window's clicks
  against the series' running mean CTR. Quiet, but one window at a time it misses what
  only accumulates over windows.

Neither has a notion of volume, seasonality or cause; both report ``behaviour_change``.

>>> from ctrguard.detectors.base import Counts, Window
>>> from ctrguard.detectors.settings import DetectorSettings
>>> z = ZTestBaseline(DetectorSettings())
>>> out = [z.update(Window(300 * t, 300 * t + 300), {"all": Counts(1000, 20 if t < 20 else 2)})
...        for t in range(22)]
>>> [(t, v[0].kind) for t, v in enumerate(out) if v]
[(20, 'ctr_drop'), (21, 'ctr_drop')]
"""

from __future__ import annotations

import math

from river.drift import ADWIN, PageHinkley

from ctrguard.detectors.base import Counts, Verdict, Window
from ctrguard.detectors.settings import DetectorSettings
from ctrguard.detectors.stats import Z99, ctr_interval

__all__ = ["RawRiverBaseline", "ZTestBaseline"]


def _check_settings(settings: object) -> None:
    if not isinstance(settings, DetectorSettings):
        raise TypeError(f"settings must be DetectorSettings, got {type(settings).__name__}")


class RawRiverBaseline:
    """River PageHinkley and ADWIN (``clock=1``) on raw per-window CTR, per series.

    River's defaults assume inputs of order 1: fed CTRs of ~0.02 as they are, PageHinkley
    (threshold 50) and ADWIN (whose bound assumes values in [0, 1]) never fire. The
    PageHinkley threshold and tolerance are therefore given in CTR units, as someone
    feeding raw CTR would have to; nothing else (no warm-up, no standardisation).

    Parameters
    ----------
    settings
        Detector settings (for the interface).
    ph_threshold
        PageHinkley threshold, in CTR units summed over windows.
    ph_delta
        PageHinkley tolerated change per window, in CTR units.
    adwin_delta
        ADWIN confidence.
    """

    def __init__(self, settings: DetectorSettings, ph_threshold: float = 0.02,
                 ph_delta: float = 0.0005, adwin_delta: float = 0.002):
        _check_settings(settings)
        if not ph_threshold > 0 or not ph_delta >= 0 or not 0 < adwin_delta < 1:
            raise ValueError("ph_threshold must be > 0, ph_delta >= 0, 0 < adwin_delta < 1")
        self.settings = settings
        self.ph_threshold = ph_threshold
        self.ph_delta = ph_delta
        self.adwin_delta = adwin_delta
        self._reset()

    def _reset(self) -> None:
        self._series: dict[str, tuple[PageHinkley, ADWIN, list[float]]] = {}
        self._last_start: int | None = None

    def update(self, window: Window, counts: dict[str, Counts]) -> list[Verdict]:
        if self._last_start is not None and window.start <= self._last_start:
            return []
        self._last_start = window.start
        verdicts = []
        for name in sorted(counts):
            c = counts[name]
            if c.impressions <= 0:
                continue  # no CTR to feed
            state = self._series.get(name)
            if state is None:
                state = self._series[name] = (
                    PageHinkley(threshold=self.ph_threshold, delta=self.ph_delta),
                    ADWIN(delta=self.adwin_delta, clock=1), [0.0, 0.0])
            ph, adwin, sums = state
            ctr = c.ctr
            ph.update(ctr)
            adwin.update(ctr)
            mean = sums[1] / sums[0] if sums[0] > 0 else ctr
            sums[0] += c.impressions
            sums[1] += c.clicks
            fired = [d for d, det in (("page_hinkley", ph), ("adwin", adwin))
                     if det.drift_detected]
            if fired:
                lo, hi = ctr_interval(mean, c.impressions, 1.0)
                verdicts.append(Verdict(
                    segment=name, detector="raw_" + "+".join(fired),
                    kind="ctr_drop" if ctr < mean else "ctr_spike", severity="warning",
                    quarantine=False, score=round(ctr - mean, 6), confidence=0.5,
                    baseline_ctr=mean, ctr_low=lo, ctr_high=hi,
                    expected_clicks=c.impressions * mean,
                    expected_impressions=float(c.impressions),
                    suspected_cause="behaviour_change",
                ))
        return verdicts


class ZTestBaseline:
    """Per-window two-sided binomial z-test against the series' running mean CTR.

    Parameters
    ----------
    settings
        Detector settings; ``warmup_windows`` is honoured.
    alpha
        Two-sided significance level of each test.
    """

    def __init__(self, settings: DetectorSettings, alpha: float = 0.001):
        _check_settings(settings)
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        self.settings = settings
        self.alpha = alpha
        self._reset()

    def _reset(self) -> None:
        self._series: dict[str, list[float]] = {}  # [windows, impressions, clicks]
        self._last_start: int | None = None

    def update(self, window: Window, counts: dict[str, Counts]) -> list[Verdict]:
        if self._last_start is not None and window.start <= self._last_start:
            return []
        self._last_start = window.start
        verdicts = []
        for name in sorted(counts):
            c = counts[name]
            if c.impressions <= 0:
                continue
            st = self._series.setdefault(name, [0.0, 0.0, 0.0])
            if st[0] >= self.settings.warmup_windows and st[1] > 0:
                p = st[2] / st[1]
                if 0.0 < p < 1.0:
                    se = math.sqrt(c.impressions * p * (1.0 - p))
                    z = (c.clicks - c.impressions * p) / se
                    p_value = math.erfc(abs(z) / math.sqrt(2.0))
                    if p_value < self.alpha:
                        half = Z99 * se / c.impressions
                        verdicts.append(Verdict(
                            segment=name, detector="binomial_ztest",
                            kind="ctr_drop" if z < 0 else "ctr_spike", severity="warning",
                            quarantine=False, score=round(z, 4),
                            confidence=round(1.0 - p_value, 6), baseline_ctr=p,
                            ctr_low=max(0.0, p - half), ctr_high=min(1.0, p + half),
                            expected_clicks=c.impressions * p,
                            expected_impressions=float(c.impressions),
                            suspected_cause="behaviour_change",
                        ))
            st[0] += 1
            st[1] += c.impressions
            st[2] += c.clicks
        return verdicts

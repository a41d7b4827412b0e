"""The running state of one series (``all`` or a segment) and the settings it is read with
(docs/detection.md): plain numbers in a compiled class, pickled as one tuple.

What the state holds, field by field, is :data:`_SERIES_FIELDS`; the formulas that update
it are in :mod:`ctrguard.detectors.levels` (baselines) and :mod:`ctrguard.detectors.evidence`
(tests).

>>> st = _Series(3, None)
>>> st.cusum[1] = 2.0; st.top = _top(st.cusum); st.top
2.0
>>> st.clear_evidence(); st.cusum, st.top
([0.0, 0.0, 0.0], 0.0)
"""

from __future__ import annotations

import math
from typing import Any, Final

from ctrguard.detectors.drift import ResidualDrift
from ctrguard.detectors.incidents import _Incident
from ctrguard.detectors.settings import DetectorSettings

#: The 0.0 that a CUSUM at rest holds (most of them, most of the time): one float object,
#: always in cache, where each test had a float of its own in a cold corner of the heap
#: (a campaign's state is read once per window, long after the last time). mypyc: a Final
#: made by a call is one object in a C static; a literal would be boxed anew at each use.
_ZERO: Final[Any] = float("0")


def _top(xs: list[float]) -> float:
    """``max(xs, default=0.0)``.

    >>> _top([]), _top([0.5, 2.0, 1.0])
    (0.0, 2.0)
    """
    if not xs:
        return 0.0
    top = xs[0]
    for x in xs:
        if x > top:
            top = x
    return top


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


def _restore_series(state: tuple) -> _Series:
    st = _Series(0, None)
    st.__setstate__(state)
    return st

"""Detector configuration (the ``detectors:`` section of the YAML file).

Every field has a default; the defaults are the tuned values. Thresholds are in
log-likelihood-ratio units (nats) unless said otherwise.

>>> s = DetectorSettings()
>>> s.warmup_windows, s.ctr_ratios
(6, (0.05, 0.3, 0.5, 0.7, 1.5, 2.5, 5.0, 15.0))
>>> try:
...     DetectorSettings(ctr_ratios=(1.0,))
... except ValueError as err:
...     print(err.errors()[0]["msg"])
Value error, ratios must be positive and differ from 1 (e.g. 0.5, 2.0)
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class DetectorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # ---------------------------------------------------------------- noise control
    #: Windows with traffic a series must have seen before it may alarm.
    warmup_windows: int = Field(6, ge=1, le=10_000)
    #: Windows after an incident ends during which the same series does not open another.
    cooldown_windows: int = Field(6, ge=0, le=10_000)
    #: False-alarm budget: target alarms per campaign-day on a stream without incidents.
    #: The sequential tests' threshold is derived from it and from the number of tests
    #: running in the campaign (Wald's bound ``P(false alarm) <= exp(-h)``).
    false_alarms_per_campaign_day: float = Field(0.02, gt=0, le=1000)
    #: Fixed decision threshold (nats) for every sequential test; overrides the budget.
    cusum_threshold: float | None = Field(None, gt=0, le=1000)
    #: Windows an incident may stay open before its level is accepted as the new normal.
    max_incident_windows: int = Field(72, ge=1, le=100_000)
    #: Windows within which alarms of a campaign with the same cause share one incident id.
    group_windows: int = Field(12, ge=0, le=10_000)

    # ---------------------------------------------------------------- sequential tests
    #: CTR ratios (alternative / baseline) the binomial CUSUMs look for. The largest
    #: of them at any time is a GLR over this grid.
    ctr_ratios: tuple[float, ...] = (0.05, 0.3, 0.5, 0.7, 1.5, 2.5, 5.0, 15.0)
    #: A CTR ratio is tested only when ``|log ratio|`` is at least this many relative
    #: standard deviations of the baseline (young and sparse series test large changes only).
    baseline_resolution: float = Field(3.0, ge=0)
    #: Impression-volume ratios the Poisson CUSUMs look for.
    volume_ratios: tuple[float, ...] = (0.4, 2.0)
    #: Evidence of the CTR tests fades by ``expected clicks / evidence_clicks`` per window,
    #: that of the volume tests by ``1 / evidence_windows``: a small persistent misfit of a
    #: baseline cannot add up over days, whatever the volume.
    evidence_clicks: float = Field(400.0, gt=0)
    evidence_windows: int = Field(48, ge=2, le=100_000)

    # ---------------------------------------------------------------- baselines
    #: Largest EWMA weight per window of the CTR level (count-weighted ratio of
    #: discounted sums). Sparse series forget by information, not time: the weight is
    #: ``expected clicks / baseline_memory_clicks``, between ``baseline_alpha_min`` and this.
    baseline_alpha: float = Field(0.05, gt=0, le=1)
    baseline_alpha_min: float = Field(0.002, gt=0, le=1)
    baseline_memory_clicks: float = Field(200.0, gt=0)
    #: Holt level and trend weights of the impression volume (per window).
    volume_alpha: float = Field(0.15, gt=0, le=1)
    volume_beta: float = Field(0.05, ge=0, le=1)
    #: EWMA weight of a segment's CTR relative to its campaign, at most (long memory, about
    #: 200 windows: a segment break must not be learned before its evidence is in).
    segment_alpha: float = Field(0.005, gt=0, le=1)
    #: Learning rate of the hour-of-day profile (per window of that hour).
    season_alpha: float = Field(0.05, ge=0, le=1)
    #: EWMA weight of the overdispersion estimates (Pearson chi-square per window).
    dispersion_alpha: float = Field(0.02, gt=0, le=1)
    #: Bounds of the empirical-Bayes prior strength (pseudo-clicks) that shrinks a
    #: segment's CTR toward its campaign; estimated per campaign between these.
    shrinkage_min: float = Field(5.0, gt=0)
    shrinkage_max: float = Field(30.0, gt=0)

    # ---------------------------------------------------------------- drift
    #: CTR ratios (current / slow reference) the drift CUSUMs of a campaign's ``all`` series
    #: look for. The reference forgets by ``reference_memory_clicks`` expected clicks (at
    #: most ``reference_alpha`` per window) and stops learning while a change is suspected,
    #: so a decay over hours (creative fatigue) is measured against the level before it.
    #: The drift CUSUMs' evidence fades over the same memory (``reference_memory_clicks``
    #: expected clicks, at least ``1 / (2 * evidence_windows)`` a window), not over the
    #: fast tests' ``evidence_clicks``: a decline over hours keeps its evidence.
    drift_ratios: tuple[float, ...] = (0.5, 0.65)
    reference_memory_clicks: float = Field(2000.0, gt=0)
    reference_alpha: float = Field(0.01, gt=0, le=1)
    #: A CTR jump that brings a series back within this factor of its slow reference,
    #: after the fast baseline had followed a decline, is a recovery, not an incident.
    recovery_tolerance: float = Field(1.25, gt=1, le=10)
    #: River drift detector fed standardised residuals ("adwin" | "page_hinkley" | "none").
    drift_detector: str = Field("page_hinkley", pattern="^(adwin|page_hinkley|none)$")
    #: PageHinkley threshold (in standard deviations summed) or ADWIN delta.
    drift_threshold: float = Field(50.0, gt=0)
    #: PageHinkley tolerated drift per window, in standard deviations.
    drift_delta: float = Field(0.1, ge=0)
    #: Expected clicks pooled into one standardised residual before it is fed.
    drift_min_expected_clicks: float = Field(5.0, gt=0)

    @field_validator("ctr_ratios", "volume_ratios", "drift_ratios")
    @classmethod
    def _check_ratios(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not (0 < r < 100) or abs(r - 1.0) < 1e-6 for r in v):
            raise ValueError("ratios must be positive and differ from 1 (e.g. 0.5, 2.0)")
        return tuple(sorted(v))

    @model_validator(mode="after")
    def _check_bounds(self) -> DetectorSettings:
        if self.baseline_alpha_min > min(self.baseline_alpha, self.segment_alpha):
            raise ValueError("baseline_alpha_min must not exceed baseline_alpha, segment_alpha")
        if self.shrinkage_min > self.shrinkage_max:
            raise ValueError("shrinkage_min must not exceed shrinkage_max")
        return self

"""Detector configuration (the ``detectors:`` section of the YAML file)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DetectorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Windows a series must have seen before it may alarm.
    warmup_windows: int = Field(6, ge=1, le=10_000)
    #: Windows after an alarm during which the same series does not alarm again.
    cooldown_windows: int = Field(6, ge=0, le=10_000)
    #: Binomial CUSUM decision threshold (log-likelihood ratio units).
    cusum_threshold: float = Field(12.0, gt=0)
    #: Relative CTR change the CUSUM is tuned to detect (0.5 = a halving or a +50%).
    cusum_shift: float = Field(0.5, gt=0, lt=10)
    #: EWMA smoothing of the baseline (per window).
    baseline_alpha: float = Field(0.05, gt=0, le=1)
    #: River drift detector fed standardised residuals ("adwin" | "page_hinkley" | "none").
    drift_detector: str = Field("page_hinkley", pattern="^(adwin|page_hinkley|none)$")

"""Checks every detector class must pass (the way River's ``river/checks`` does).

* pickled mid-stream, a detector continues exactly as one that never stopped;
* a fresh instance built from its public parameters behaves like the original did;
* invalid parameters raise at construction.
"""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from ctrguard.detectors.base import ALL, Counts, Window
from ctrguard.detectors.baselines import RawRiverBaseline, ZTestBaseline
from ctrguard.detectors.drift import ResidualDrift
from ctrguard.detectors.monitor import CampaignMonitor
from ctrguard.detectors.scalar import ScalarScorer
from ctrguard.detectors.settings import DetectorSettings

T0 = 1_767_225_600


def campaign_feed(detector, t: int, rng: np.random.Generator):
    """One window of a campaign with a click outage at 150-170 and a sparse segment."""
    n = int(rng.poisson(800 * (1.5 + np.sin(2 * np.pi * t / 288))))
    p = 0.0 if 150 <= t < 170 else 0.03
    k = int(rng.binomial(n, p))
    n2 = int(rng.poisson(3))
    k2 = int(rng.binomial(n2, 0.03))
    counts = {ALL: Counts(n + n2, k + k2), "device=tv": Counts(n2, k2), "device=web": Counts(n, k)}
    return detector.update(Window(T0 + 300 * t, T0 + 300 * t + 300), counts)


def residual_feed(detector, t: int, rng: np.random.Generator):
    shift = -1.0 if t >= 150 else 0.0
    return detector.update(float(rng.normal(shift, 1.0)), 1.0, 3.0)


def scalar_feed(detector, t: int, rng: np.random.Generator):
    daily = 50 + 20 * np.sin(2 * np.pi * t / 288)
    spike = 60.0 if t in (160, 161) else 0.0
    shift = -15.0 if t >= 250 else 0.0
    return detector.update(float(T0 + 300 * t), float(rng.normal(daily + spike + shift, 2.0)))


@dataclass
class Case:
    cls: type
    params: dict[str, Any]
    feed: Callable[[Any, int, np.random.Generator], Any]
    bad_params: list[dict[str, Any]]


def _cases() -> list[Case]:
    cases = [
        Case(CampaignMonitor, {"settings": DetectorSettings()}, campaign_feed,
             [{"settings": None}]),
        Case(CampaignMonitor, {"settings": DetectorSettings(drift_detector="adwin")},
             campaign_feed, []),
        Case(ResidualDrift, {}, residual_feed,
             [{"method": "kswin"}, {"threshold": 0.0}, {"min_expected": -1.0},
              {"adwin_delta": 2.0}]),
        Case(ResidualDrift, {"method": "adwin"}, residual_feed, []),
        Case(RawRiverBaseline, {"settings": DetectorSettings()}, campaign_feed,
             [{"settings": {}}]),
        Case(ZTestBaseline, {"settings": DetectorSettings()}, campaign_feed,
             [{"alpha": 0.0}, {"alpha": 1.5}, {"settings": None}]),
        Case(ScalarScorer, {}, scalar_feed,
             [{"alpha": 0.0}, {"warmup": 1}, {"drift_detector": "kswin"}, {"season_bins": 0},
              {"alert_p": 0.0}, {"calibration": 5}, {"week_bins": 0}]),
        Case(ScalarScorer, {"drift_detector": "adwin", "season_alpha": 0.0}, scalar_feed, []),
    ]
    return cases


CASES = _cases()


def _id(case: Case) -> str:
    return case.cls.__name__ + ("-" + ",".join(f"{k}" for k in case.params) if case.params else "")


def _public_params(obj) -> dict[str, Any]:
    # The class's signature, not its __init__'s: a mypyc-compiled __init__ reports only
    # (*args, **kwargs).
    sig = inspect.signature(type(obj))
    return {name: getattr(obj, name) for name in sig.parameters}


def _outputs(detector, feed, rng, windows):
    return [repr(feed(detector, t, rng)) for t in windows]


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_pickle_round_trip_continues_identically(case: Case):
    rng = np.random.default_rng(42)
    original = case.cls(**case.params)
    before = _outputs(original, case.feed, rng, range(0, 155))  # stop mid-incident
    restored = pickle.loads(pickle.dumps(original))
    state = rng.bit_generator.state
    after_original = _outputs(original, case.feed, rng, range(155, 400))
    rng.bit_generator.state = state
    after_restored = _outputs(restored, case.feed, rng, range(155, 400))
    assert after_restored == after_original
    assert any(o not in ("[]", "False") and not o.endswith("False)")
               for o in before + after_original), \
        "the stream must make the detector say something, or this test proves nothing"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_fresh_instance_from_params_behaves_like_the_original(case: Case):
    original = case.cls(**case.params)
    params = _public_params(original)
    assert params == {**params, **case.params}, "constructor params stored under their name"
    first = _outputs(original, case.feed, np.random.default_rng(7), range(300))
    fresh = case.cls(**params)
    assert _outputs(fresh, case.feed, np.random.default_rng(7), range(300)) == first


@pytest.mark.parametrize("case", [c for c in CASES if c.bad_params], ids=_id)
def test_invalid_params_raise(case: Case):
    for bad in case.bad_params:
        with pytest.raises((ValueError, TypeError)):
            case.cls(**{**case.params, **bad})


def test_settings_reject_unknown_and_invalid_fields():
    with pytest.raises(ValueError):
        DetectorSettings(warmup_windows=0)
    with pytest.raises(ValueError):
        DetectorSettings(no_such_field=1)
    with pytest.raises(ValueError):
        DetectorSettings(drift_detector="kswin")
    with pytest.raises(ValueError):
        DetectorSettings(shrinkage_min=50, shrinkage_max=10)


def test_default_yaml_detectors_section_loads():
    from ctrguard.config import DEFAULT_CONFIG_PATH, load_config_text

    cfg = load_config_text(DEFAULT_CONFIG_PATH.read_text(), source=str(DEFAULT_CONFIG_PATH))
    assert isinstance(cfg.detectors, DetectorSettings)
    assert cfg.detectors == DetectorSettings(**cfg.detectors.model_dump())

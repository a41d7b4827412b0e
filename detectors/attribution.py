"""What broke, and what the verdict says (docs/detection.md, "Cause attribution" and
"Bot clicks or success"): which tests fired and the evidence run's ratios name the kind
and suspected cause of an incident; the cause sets its severity and whether its figures
are quarantined; segments inherit a campaign-wide verdict; a segment that breaks alone
names its campaign's drop; and the clicks themselves decide whether a CTR rise is bot
clicks (:func:`_revise`, behind :meth:`CampaignMonitor.revise
<ctrguard.detectors.monitor.CampaignMonitor.revise>`).

>>> from ctrguard.detectors.incidents import _CTR, _VOL
>>> from ctrguard.detectors.series import _Series
>>> st = _Series(0, None)
>>> st.run_k, st.run_ek, st.run_n, st.run_mu = 2.0, 60.0, 2000.0, 2000.0
>>> _attribute(st, _CTR, 0.05)                # clicks gone at normal impressions
('click_outage', 'click_tracking')
>>> st.run_k, st.run_ek, st.run_n, st.run_mu = 60.0, 120.0, 4000.0, 2000.0
>>> _attribute(st, _CTR, 0.5)                 # impressions doubled, clicks did not
('ctr_drop', 'impression_logging')
>>> _SEVERITY["bot_clicks"], _SEVERITY["behaviour_change"]
(('critical', True), ('warning', False))
"""

from __future__ import annotations

import math
from typing import Final

from ctrguard.detectors.base import ALL, Counts, Verdict
from ctrguard.detectors.incidents import _CTR, _DRIFT, _SIL, _Incident
from ctrguard.detectors.series import _Series
from ctrguard.detectors.stats import ctr_interval, fmax

_ALL: Final = ALL

#: Severity and quarantine by suspected cause (the defaults of ``quarantine.causes``: what
#: corrupts the data is held back, real behaviour is not).
_SEVERITY = {
    "click_tracking": ("critical", True),
    "impression_logging": ("critical", True),
    "bot_clicks": ("critical", True),
    "silence": ("critical", True),
    "segment_break": ("warning", True),
    "behaviour_change": ("warning", False),
    "volume_change": ("warning", False),
    "drift": ("warning", False),
}
#: Causes of a CTR rise that the clicks themselves decide between (:meth:`CampaignMonitor.revise`).
_RISE_CAUSES: Final = ("bot_clicks", "behaviour_change")
#: Share of an incident's clicks that look suspicious in ordinary traffic (a click whose
#: impression fell in an earlier window, a user who clicks twice): not counted as bots'.
_BOT_BACKGROUND: Final = 0.05
#: A CTR rise is bot clicks when the suspicious clicks beyond the background explain at
#: least this share of its extra clicks, and are at least ``_BOT_MIN_CLICKS``.
_BOT_SHARE: Final = 0.3
_BOT_MIN_CLICKS: Final = 3.0


def _attribute(st: _Series, family: int, ratio: float,
               r_imp_now: float = 1.0, segment: bool = False) -> tuple[str, str]:
    """Name what broke from which test fired and the evidence run's ratios (the run
    can hold windows from before a jump; the window that fired is taken too).

    A CTR rise is a behaviour change until the clicks themselves show bots
    (:func:`_revise`); a segment's CTR drop (its siblings held: it is tested against
    them) is a segment break."""
    k_obs, k_exp, n_obs, n_exp = st.run_k, st.run_ek, st.run_n, st.run_mu
    r_ctr = k_obs / k_exp if k_exp > 0 else 1.0
    r_imp = n_obs / n_exp if n_exp > 0 else 1.0
    if abs(math.log(max(r_imp_now, 1e-9))) > abs(math.log(max(r_imp, 1e-9))):
        r_imp = r_imp_now
    r_clk = r_ctr * r_imp
    clicks_normal = 0.6 <= r_clk <= 1.6
    if family == _SIL:
        return "silence", "silence"
    if family == _DRIFT:
        return "drift", "drift"
    if family == _CTR:
        # The fired ratio is the GLR estimate of the new level; the run's ratios can be
        # diluted by windows from before the change.
        if ratio < 1.0:
            # Impressions jumped and clicks did not vanish: the logging, not the clicks.
            if r_imp >= 1.5 and r_clk > 0.3:
                return "ctr_drop", "impression_logging"
            if segment:
                return "segment_break", "segment_break"
            if min(r_ctr, ratio) <= 0.3:
                return "click_outage", "click_tracking"
            return "ctr_drop", "behaviour_change"
        if r_imp <= 0.67 and clicks_normal:
            return "ctr_spike", "impression_logging"
        return "ctr_spike", "behaviour_change"
    return "silence", "silence"


def _verdict(name: str, st: _Series, inc: _Incident, score: float,
             confidence: float, n: int, mu: float, p: float, phi_c: float) -> Verdict:
    """The verdict of a window reported under incident ``inc``."""
    severity, quarantine = _SEVERITY[inc.cause]
    basis = n if n > 0 else mu
    lo, hi = ctr_interval(p, basis, phi_c)
    return Verdict(
        segment=name, detector=inc.detector, kind=inc.kind, severity=severity,
        quarantine=quarantine, score=round(score, 4), confidence=round(confidence, 6),
        baseline_ctr=p, ctr_low=lo, ctr_high=hi, expected_clicks=basis * p,
        expected_impressions=mu, suspected_cause=inc.cause, incident=inc.key,
    )


def _drift_verdict(detector: str, name: str, st: _Series, n: int, mu: float, p: float,
                   phi_c: float) -> Verdict:
    """The verdict of the River drift detector ``detector`` of ``st`` (no incident)."""
    assert st.drift is not None
    z = st.drift.last_z
    basis = n if n > 0 else mu
    lo, hi = ctr_interval(p, basis, phi_c)
    return Verdict(
        segment=name, detector=detector, kind="drift",
        severity="warning" if name == _ALL else "info", quarantine=False,
        score=round(z, 4), confidence=0.5, baseline_ctr=p, ctr_low=lo, ctr_high=hi,
        expected_clicks=basis * p, expected_impressions=mu, suspected_cause="drift",
    )


def _recause(v: Verdict, kind: str, cause: str) -> Verdict:
    """``v`` with another kind and cause, and the cause's severity and quarantine."""
    if v.kind == kind and v.suspected_cause == cause:
        return v
    severity, quarantine = _SEVERITY[cause]
    return _replace(v, kind=kind, suspected_cause=cause, severity=severity,
                    quarantine=quarantine)


def _inherit(v: Verdict, name: str, c: Counts) -> Verdict:
    """A segment's share of a campaign-wide fault: its figure is as corrupt as the
    campaign's, though its CTR relative to the campaign did not move (so its own tests,
    which compare it with the rest of the campaign, are silent)."""
    scale = c.impressions / v.expected_impressions if v.expected_impressions > 0 else 0.0
    return _replace(v, segment=name, expected_clicks=v.expected_clicks * scale,
                    expected_impressions=float(c.impressions))


def _segment_break_of_all(series: dict[str, _Series], verdicts: list[Verdict]) -> Verdict:
    """``all``'s CTR drop when one segment breaks alone (its siblings hold) and drags
    the campaign down: the segment break's, not a behaviour change or an outage of the
    campaign. ``verdicts``: the window's, ``all``'s first."""
    v = verdicts[0]
    inc = series[_ALL].incident
    if (inc is None or inc.family != _CTR or inc.ratio >= 1.0 or inc.key != v.incident
            or inc.cause not in ("behaviour_change", "click_tracking")):
        return v
    for other in verdicts:
        if other.suspected_cause == "segment_break":
            inc.kind = inc.cause = "segment_break"
            return _recause(v, "segment_break", "segment_break")
    return v


def _revise(series: dict[str, _Series], verdicts: list[Verdict],
            evidence: dict[str, tuple[float, int]]) -> list[Verdict]:
    """:meth:`CampaignMonitor.revise <ctrguard.detectors.monitor.CampaignMonitor.revise>`
    on the monitor's series."""
    out: list[Verdict] = []
    decided: dict[str, tuple[str, str]] = {}
    for v in verdicts:
        st = series.get(v.segment)
        inc = st.incident if st is not None else None
        if (inc is not None and inc.family == _CTR and inc.ratio > 1.0
                and inc.cause in _RISE_CAUSES and inc.key == v.incident
                and v.suspected_cause == inc.cause):
            got = evidence.get(v.segment)
            if got is not None:
                sus, clicks = got
                inc.sus += fmax(sus - _BOT_BACKGROUND * clicks, 0.0)
                inc.exc += fmax(clicks - v.expected_clicks, 0.0)
            bot = inc.sus >= _BOT_MIN_CLICKS and inc.sus >= _BOT_SHARE * inc.exc
            inc.kind, inc.cause = ("click_surge", "bot_clicks") if bot else (
                "ctr_spike", "behaviour_change")
            if v.segment == _ALL:
                decided[inc.key] = (inc.kind, inc.cause)
            v = _recause(v, inc.kind, inc.cause)
        elif (v.segment != _ALL and v.incident in decided
              and v.suspected_cause in _RISE_CAUSES):
            kind, cause = decided[v.incident]
            v = _recause(v, kind, cause)
        out.append(v)
    return out


def _replace(v: Verdict, **changes) -> Verdict:
    from dataclasses import replace

    return replace(v, **changes)

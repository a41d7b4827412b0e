"""CampaignMonitor: all detector state of one campaign, and the order in which its parts
run on a closed window (orchestration). The model, its formulas and which module holds
each part are described once, in docs/detection.md:

* :mod:`ctrguard.detectors.series`: a series' running state, the settings it is read with;
* :mod:`ctrguard.detectors.levels`: the baselines and the slow reference level;
* :mod:`ctrguard.detectors.evidence`: the sequential tests (CUSUMs, GLR grid) and the
  threshold from the false-alarm budget;
* :mod:`ctrguard.detectors.incidents`: an open incident and its evidence;
* :mod:`ctrguard.detectors.attribution`: kind, cause, severity, inheritance, bot clicks;
* :mod:`ctrguard.detectors.drift`: River's drift detector on standardised residuals.

Here: the windows of a campaign in order (gaps replayed as zero windows), ``all`` before
the segments, the silence test, opening, continuing and closing incidents, and the volume
jump that is watched for an impression-logging fault.

>>> from ctrguard.detectors.base import Counts, Window
>>> from ctrguard.detectors.settings import DetectorSettings
>>> import numpy as np
>>> rng = np.random.default_rng(1)
>>> m = build_monitor(DetectorSettings())
>>> for t in range(60):
...     n = 2000
...     k = int(rng.binomial(n, 0.03 if t < 40 else 0.0))   # clicks stop at window 40
...     out = m.update(Window(t * 300, t * 300 + 300), {"all": Counts(n, k)})
...     if out and t < 42:
...         v = out[0]
...         print(t, v.kind, v.suspected_cause, v.quarantine, round(v.expected_clicks))
40 click_outage click_tracking True 60
41 click_outage click_tracking True 60
"""

from __future__ import annotations

import math
from typing import Final

from ctrguard.detectors.attribution import (
    _attribute,
    _drift_verdict,
    _inherit,
    _replace,
    _revise,
    _segment_break_of_all,
    _verdict,
)
from ctrguard.detectors.base import ALL, Counts, Verdict, Window
from ctrguard.detectors.drift import ResidualDrift
from ctrguard.detectors.evidence import (
    _FADE_FLOOR,
    _argmax,
    _ctr_llr,
    _dllrs,
    _fade_add,
    _llrs,
    _threshold,
)
from ctrguard.detectors.incidents import (
    _CTR,
    _DRIFT,
    _SIL,
    _VOL,
    _contradicts,
    _Incident,
    _start_at_cap,
)
from ctrguard.detectors.incidents import _restore_incident as _restore_incident
from ctrguard.detectors.levels import (
    _is_recovery,
    _learn_ctr,
    _learn_reference,
    _learn_volume,
    _reference,
    _rho,
    _update_prior,
)
from ctrguard.detectors.series import _SERIES_FIELDS as _SERIES_FIELDS
from ctrguard.detectors.series import _Params as _Params
from ctrguard.detectors.series import _params, _Series, _top
from ctrguard.detectors.series import _restore_series as _restore_series
from ctrguard.detectors.settings import DetectorSettings
from ctrguard.detectors.stats import binomial_llr, clip, ctr_interval, fmax, fmin, poisson_llr

__all__ = ["CampaignMonitor", "build_monitor"]

# (Imported ``as`` themselves: snapshots written before the detector core was split into
# modules name ``_restore_incident``, ``_restore_series`` & co. in this module.)

# mypyc: ``Final`` constants are folded into the code (or kept in a C static) instead of
# being looked up in the module's dictionary on every use.
_ALL: Final = ALL
_HOURS: Final = 24
#: Longest gap (windows) replayed as zero windows; longer gaps only move the clock.
_MAX_GAP_REPLAY: Final = 288
#: Clicks a segment's siblings must have been expected to get in a window before their
#: clicks say whether a drop of the segment is its own (a segment break).
_REST_MIN_CLICKS: Final = 3.0
#: Pseudo-clicks that shrink the rest-of-campaign CTR of one window toward the baseline.
_COMPLEMENT_CLICKS: Final = 3.0
#: A volume jump is judged (logging fault vs real traffic) at this fraction of the
#: threshold, within this many windows.
_WATCH_THRESHOLD: Final = 0.5
_WATCH_WINDOWS: Final = 36


def _restore_monitor(state: tuple) -> CampaignMonitor:
    m = CampaignMonitor(state[0])
    (_, m._series, m._season_vol, m._season_ctr, m._last_start, m._group, m._prior) = state
    return m


class CampaignMonitor:
    """All detector state of one campaign.

    Parameters
    ----------
    settings
        The ``detectors:`` section of the configuration.

    Notes
    -----
    ``update`` must be called once per closed window in window order; a window not after
    the last one seen (a window re-emitted by the flow) is ignored and returns ``[]``.
    Skipped windows (no traffic in the whole campaign) are replayed as zero windows, and a
    campaign-wide silence that was improbable is reported on the window that ends it.
    """

    def __init__(self, settings: DetectorSettings):
        if not isinstance(settings, DetectorSettings):
            raise TypeError(f"settings must be DetectorSettings, got {type(settings).__name__}")
        self.settings = settings
        self._p = _params(settings)
        self._reset()

    def __reduce__(self):
        return _restore_monitor, ((self.settings, self._series, self._season_vol,
                                   self._season_ctr, self._last_start, self._group,
                                   self._prior),)

    def _reset(self) -> None:
        self._series: dict[str, _Series] = {}
        self._season_vol = [0.0] * _HOURS  # log factors
        self._season_ctr = [0.0] * _HOURS
        self._last_start: int | None = None
        self._group: tuple[str, int] | None = None  # (incident key, last alarm start)
        self._prior = self._p.shrinkage_min    # empirical-Bayes prior strength

    # ------------------------------------------------------------------ public

    def update(self, window: Window, counts: dict[str, Counts]) -> list[Verdict]:
        """Feed one closed window with the counts of every series; return the alarms."""
        start = window.start
        length = window.end - start
        if length <= 0:
            raise ValueError(f"empty window {window}")
        last = self._last_start
        if last is not None:
            if start <= last:
                return []
            gap = (start - last) // length - 1
            if gap > 0:
                verdicts = self._replay_gap(window, gap, length)
                verdicts.extend(self._step(window, start, counts, length))
                self._last_start = start
                return verdicts
        # The common case: this window's alarms are the result (no copy into another list).
        verdicts = self._step(window, start, counts, length)
        self._last_start = start
        return verdicts

    def revise(self, verdicts: list[Verdict],
               evidence: dict[str, tuple[float, int]]) -> list[Verdict]:
        """Name the cause of CTR rises from the clicks themselves (call after :meth:`update`
        with its verdicts, for the same window).

        ``evidence``: per series, the window's suspicious clicks (without a matching
        impression, or from a user who clicked more than once) and its clicks. Bots betray
        themselves so: few users, many clicks each, clicks without an impression; a real
        surge (a creative that works) spreads over as many users as ever. A rise is
        ``bot_clicks`` once the suspicious clicks beyond a background of
        ``_BOT_BACKGROUND`` explain at least ``_BOT_SHARE`` of its extra clicks (summed over
        its windows so far), else a ``behaviour_change``; segments that inherit a
        campaign-wide rise follow it.
        """
        return _revise(self._series, verdicts, evidence)

    @property
    def series(self) -> tuple[str, ...]:
        """Names of the series this monitor keeps state for."""
        return tuple(self._series)

    def forget(self, segment: str) -> bool:
        """Drop the state of one series (eviction by the flow); True if it existed."""
        return self._series.pop(segment, None) is not None

    def expectations(self, window: Window,
                     counts: dict[str, Counts]) -> dict[str, tuple[float, float, float, float]]:
        """What the detectors expect of each series in ``window``, read before it is fed to
        :meth:`update` (the state is not changed): ``(ctr, ctr_low, ctr_high, impressions)``,
        the expected CTR with its 99% band at the window's impressions (as an alert reports
        them) and the expected impressions. Series without state yet are left out.

        Reports and charts read it; the detectors do not. Two approximations, both only where
        nothing is alarming: a segment's expected impressions use the hour's volume profile
        before ``all`` learns from this window, and skipped windows (a campaign silent for
        whole windows, which the flow never skips) are not replayed first.

        >>> from ctrguard.detectors.settings import DetectorSettings
        >>> m = build_monitor(DetectorSettings())
        >>> for t in range(12):
        ...     _ = m.update(Window(t * 300, t * 300 + 300), {"all": Counts(1000, 20)})
        >>> e = m.expectations(Window(3600, 3900), {"all": Counts(1000, 0)})
        >>> [round(x, 4) for x in e["all"]]
        [0.02, 0.008, 0.032, 1000.0]
        """
        start = window.start
        hour = (start // 3600) % _HOURS
        series = self._series
        all_state = series.get(_ALL)
        p_all = 0.0
        relvar_all = math.inf
        if all_state is not None and all_state.ctr_e > 0 and all_state.ctr_k > 0:
            p_all = all_state.ctr_k / all_state.ctr_e * math.exp(self._season_ctr[hour])
            relvar_all = 1.0 / all_state.ctr_k
        season_v = math.exp(self._season_vol[hour])
        out: dict[str, tuple[float, float, float, float]] = {}
        for name, c in counts.items():
            st = series.get(name)
            if st is None:
                continue
            # The same expectations as _series_step computes before its tests.
            mu = fmax(st.vol_level + st.vol_trend, 0.0) * season_v
            if name == _ALL:
                p, relvar = p_all, relvar_all
            elif p_all > 0:
                p = p_all * _rho(st, self._prior)
                relvar = relvar_all + 1.0 / (st.ctr_k + 1.0)
            else:
                p, relvar = 0.0, math.inf
            p = fmin(p, 0.999)
            n = c.impressions
            ctr_ok = p > 0 and n > 0 and not (math.isinf(relvar) or math.isnan(relvar))
            phi_c = fmax(st.ctr_disp, 1.0) * (1.0 + n * p * relvar if ctr_ok else 1.0)
            lo, hi = ctr_interval(p, n if n > 0 else mu, phi_c)
            out[name] = (p, lo, hi, mu)
        return out

    # ------------------------------------------------------------------ internals

    def _threshold(self, n_series: int, length: int) -> float:
        return _threshold(self._p, n_series, length)

    def _new_series(self, name: str) -> _Series:
        s = self._p
        drift = None
        if name != _ALL:
            # Gradual drift is a campaign-wide matter (a creative wears out): segments keep
            # no reference and no River detector, which also keeps their state small.
            return _Series(len(s.ctr_ratios) + len(s.volume_ratios), None)
        if s.drift_detector != "none":
            drift = ResidualDrift(method=s.drift_detector, threshold=s.drift_threshold,
                                  delta=s.drift_delta, min_instances=30,
                                  min_expected=s.drift_min_expected_clicks)
        return _Series(len(s.ctr_ratios) + len(s.volume_ratios), drift, len(s.drift_ratios))

    def _replay_gap(self, window: Window, gap: int, length: int) -> list[Verdict]:
        """Replay skipped windows as zero windows; report one campaign-wide silence."""
        missing = min(gap, _MAX_GAP_REPLAY)
        zeros = {name: Counts(0, 0) for name in self._series}
        silence: Verdict | None = None
        for i in range(missing, 0, -1):
            start = window.start - i * length
            for v in self._step(Window(start, start + length), start, zeros, length):
                if v.segment == _ALL and v.kind == "silence" and silence is None:
                    silence = v
            self._last_start = start
        if silence is None:
            return []
        # The skipped windows have no figures to hold back; the current one is fine.
        return [_replace(silence, quarantine=False)]

    def _step(self, window: Window, start: int, counts: dict[str, Counts],
              length: int) -> list[Verdict]:
        series = self._series
        # One pass over the counts: new series get their state (in the counts' order), and
        # each segment is listed with its state and counts, to be taken in name order.
        total: Counts | None = None
        all_state: _Series | None = None
        segments: list[tuple[str, _Series, Counts]] = []
        # A segment in a CTR incident (a segment break) is part of ``all``'s figure: the
        # campaign's CTR baseline does not learn from its windows meanwhile (else it
        # follows the break down and calls the segment's recovery a spike).
        seg_fault = False
        for name, c in counts.items():
            st = series.get(name)
            if st is None:
                st = series[name] = self._new_series(name)
            if name == _ALL:
                total = c
                all_state = st
            else:
                segments.append((name, st, c))
                if st.incident is not None and st.incident.family == _CTR:
                    seg_fault = True
        hour = (start // 3600) % _HOURS
        h = self._threshold(len(series), length)
        n_tests = len(series)

        if all_state is None:  # (a window without ``all``: its state, if it has one)
            all_state = series.get(_ALL)
        p_all = 0.0
        relvar_all = math.inf
        if all_state is not None and all_state.ctr_e > 0 and all_state.ctr_k > 0:
            p_all = all_state.ctr_k / all_state.ctr_e * math.exp(self._season_ctr[hour])
            relvar_all = 1.0 / all_state.ctr_k
        # The campaign's slow reference CTR this hour as it was before this window (``all``
        # learns it below), which the segments' tests use.
        p_ref_all = _reference(self._season_ctr, all_state, hour) \
            if segments and all_state is not None else 0.0
        verdicts: list[Verdict] = []
        # The campaign's counts, read once.
        has_total = total is not None
        tot_n = tot_k = 0
        campaign_wide: Verdict | None = None
        # Series in order: ``all`` first, then the segments by name. Only a campaign-wide
        # alarm (which ``all``, first, raises) needs the quiet ones: no list otherwise.
        quiet: list[str] | None = None
        # Segments' silence counts only the impressions their campaign still had (see
        # _series_step): the campaign's impressions over what was expected of them.
        n_scale = 1.0
        if total is not None and all_state is not None:
            tot_n, tot_k = total.impressions, total.clicks
            season_all = math.exp(self._season_vol[hour])
            mu_all = fmax(all_state.vol_level + all_state.vol_trend, 0.0) * season_all
            if mu_all > 0.0 and all_state.seen > 0:
                n_scale = fmin(tot_n / mu_all, 1.0)
            v = self._series_step(_ALL, all_state, tot_n, tot_k, window, hour,
                                  season_all, p_all, relvar_all, 0.0, h,
                                  n_tests, has_total, tot_n, tot_k, 1.0, seg_fault)
            if v is not None:
                verdicts.append(v)
                if v.quarantine:
                    campaign_wide = v
                    quiet = []
        if segments:
            # (Names are unique: the tuples sort by name alone.)
            segments.sort()
            # The hour's volume factor as ``all`` left it (only ``all`` learns it): one
            # ``exp`` for every segment of the window.
            season_v = math.exp(self._season_vol[hour])
            for name, st, c in segments:
                v = self._series_step(name, st, c.impressions, c.clicks, window, hour,
                                      season_v, p_all, relvar_all, p_ref_all, h, n_tests,
                                      has_total, tot_n, tot_k, n_scale, False)
                if v is not None:
                    verdicts.append(v)
                elif quiet is not None:
                    quiet.append(name)
        if verdicts and verdicts[0].segment == _ALL:
            verdicts[0] = _segment_break_of_all(series, verdicts)
        if campaign_wide is not None and quiet is not None:
            inc = series[_ALL].incident
            for name in quiet:
                c = counts[name]
                if c.impressions == 0:
                    continue
                if inc is not None and inc.family == _CTR and p_all > 0:
                    # Only segments whose window leans toward the campaign's fault share it:
                    # with bot clicks on desktop, mobile's clicks are normal.
                    p_seg = min(p_all * _rho(self._series[name], self._prior), 0.999)
                    if binomial_llr(c.clicks, c.impressions, p_seg, inc.ratio) <= 0.0:
                        continue
                verdicts.append(_inherit(campaign_wide, name, c))
        self._prior = _update_prior(self._p, self._series)
        return verdicts

    def _series_step(self, name: str, st: _Series, n: int, k: int, window: Window, hour: int,
                     season_v: float, p_all: float, relvar_all: float, p_ref_all: float,
                     h: float, n_tests: int, has_total: bool, tot_n: int,
                     tot_k: int, n_scale: float, hold_ctr: bool) -> Verdict | None:
        """One series' window: ``n`` impressions and ``k`` clicks; the campaign's, ``tot_n``
        and ``tot_k``, if the window has ``all`` (``has_total``); ``season_v``, the hour's
        volume factor (``exp(_season_vol[hour])``); ``p_ref_all``, the campaign's slow
        reference CTR this hour (0 while unknown: segments' tests use it); ``n_scale``, the
        campaign's impressions over their expectation (at most 1; 1 for ``all``), which a
        segment's silence is judged against; ``hold_ctr``: the CTR baseline does not learn
        from this window (a segment of the campaign is in a CTR incident)."""
        s = self._p
        is_all = name == _ALL

        # ---- expectations from the state before this window
        mu = fmax(st.vol_level + st.vol_trend, 0.0) * season_v
        p_rest = 0.0   # segments: the CTR the rest of the campaign had in this window
        p_test = 0.0   # segments: the baseline the CTR tests measure against (below)
        if is_all:
            p = p_all
            relvar = relvar_all
        elif p_all > 0:
            rho = _rho(st, self._prior)
            p = p_all * rho
            # Certainty comes from the segment's own clicks: the prior moves the estimate
            # toward the campaign but is not trusted to make it precise.
            relvar = relvar_all + 1.0 / (st.ctr_k + 1.0)
            if has_total and tot_n > n:
                kc = max(tot_k - k, 0)
                nc = tot_n - n
                # Shrunk toward the campaign baseline by a few clicks.
                p_rest = (kc + _COMPLEMENT_CLICKS) / (nc + _COMPLEMENT_CLICKS / p_all) * rho
            # The tests measure a segment against its campaign's slow reference (times
            # its own factor), not the fast baseline: a segment carrying much of its
            # campaign's clicks drags the fast one down with its break.
            p_test = p_ref_all * rho
        else:
            p, relvar = 0.0, math.inf
        p = fmin(p, 0.999)
        p_test = fmin(p_test, 0.999) if p_test > 0.0 else p
        ek = n * p
        # (``math.isfinite``, which mypyc calls as a Python function: false for inf and nan)
        ctr_ok = p > 0 and n > 0 and not (math.isinf(relvar) or math.isnan(relvar))
        inflation = 1.0 + ek * relvar if ctr_ok else 1.0
        phi_c = fmax(st.ctr_disp, 1.0) * inflation
        phi_n = fmax(st.vol_disp, 1.0)
        ready = st.seen >= s.warmup_windows

        # ---- sequential tests
        # A change smaller than what the baseline resolves is not tested: a young or sparse
        # series' baseline (shrunk toward its campaign) may be that far off by itself.
        resolution = s.baseline_resolution * math.sqrt(relvar) if ctr_ok else math.inf
        vol_ok = mu > 0 and st.seen > 0
        # Drift tests (``all`` only): the same counts against the slow reference.
        p_ref = _reference(self._season_ctr, st, hour) if is_all else 0.0
        phi_r = 1.0
        if p_ref > 0.0:
            phi_r = fmax(st.ctr_disp, 1.0) * (1.0 + n * p_ref * (1.0 / st.ref_k + relvar))
        # The tests' log-likelihood ratios of this window (``_llrs``, ``_dllrs``) are computed
        # where they are used: added to the CUSUMs in one pass, or to an open incident's
        # evidence; during warm-up and cooldown they would be thrown away.
        verdict: Verdict | None = None
        learn_ctr = learn_vol = True
        quiet_before = st.top < 1.0 and st.silent < 1.0
        sil = 0.0
        if n == 0 and vol_ok:
            # A segment without impressions when its whole campaign had few (a window the
            # sources filled only in part, a campaign winding down) is no silence of its own.
            sil = mu * n_scale / phi_n
            st.silent += sil
        else:
            st.silent = 0.0
        inc = st.incident
        if inc is not None and inc.family == _SIL and sil < 1.0:
            # A zero that was not even e-fold unlikely (a small segment, a quiet hour) holds
            # no silence open: the evidence is gone.
            st.silent = 0.0
        # A drift incident does not stop the abrupt tests: a click outage during a slow
        # decline is still an outage (and replaces the drift incident).
        drifting = inc is not None and inc.family == _DRIFT
        if inc is not None and not drifting:
            verdict, learn_ctr, learn_vol = self._continue_incident(
                name, st, inc,
                # (Every ratio: the resolution guards the opening of an incident against an
                # uncertain baseline; evidence that the fault is over counts at any size.)
                _llrs(s, n, k, p, p_rest, phi_c, 0.0, mu, phi_n, vol_ok),
                _dllrs(s, n, k, p_ref, phi_r), n, k, mu, p, phi_c, window, h)
        else:
            if st.cooldown > 0 or not ready:
                st.cooldown = max(st.cooldown - 1, 0)
                st.clear_evidence()
                st.silent = 0.0 if not ready else st.silent
            else:
                if p_ref > 0.0 and not drifting:
                    # The drift tests' evidence fades over the reference's own memory
                    # (not the fast tests' ``evidence_clicks``): a decline over hours is
                    # measured against a level that forgets by ``reference_memory_clicks``,
                    # and evidence older than that level's memory means nothing more.
                    keep_ref = 1.0 - clip(n * p_ref / s.reference_memory_clicks,
                                          _FADE_FLOOR / s.evidence_windows, 0.5)
                    dcusum = st.dcusum
                    for i, r in enumerate(s.drift_ratios):
                        _fade_add(dcusum, i, keep_ref, binomial_llr(k, n, p_ref, r) / phi_r)
                # CTR evidence fades by information (expected clicks), volume evidence by time:
                # a baseline misfit then adds up to the same bounded level at any volume.
                n_ctr = len(s.ctr_ratios)
                keep_ctr = 1.0 - clip(ek / s.evidence_clicks, _FADE_FLOOR / s.evidence_windows,
                                      0.5)
                keep_vol = 1.0 - 1.0 / s.evidence_windows
                # One pass: each test's ratio (as ``_llrs`` computes it) into its CUSUM.
                cusum = st.cusum
                sizes = s.ctr_log_sizes
                top = 0.0  # (every cell is >= 0.0: the largest, as _top finds it)
                for i, r in enumerate(s.ctr_ratios):
                    x = _ctr_llr(k, n, p_test, p_rest, r, phi_c) if sizes[i] >= resolution else 0.0
                    top = fmax(top, _fade_add(cusum, i, keep_ctr, x))
                for i, r in enumerate(s.volume_ratios):
                    x = poisson_llr(n, mu, r) / phi_n if vol_ok else 0.0
                    top = fmax(top, _fade_add(cusum, n_ctr + i, keep_vol, x))
                st.top = top
            watch = st.watch
            if watch is not None and ready and ctr_ok:
                watch[1] = watch[1] + binomial_llr(k, n, p, watch[0]) / phi_c
                watch[2] = watch[2] + 1.0
            # The evidence run: restarted (from 0.0) after a quiet window, else added to.
            r0 = r1 = r2 = r3 = 0.0
            if not quiet_before:
                r0, r1, r2, r3 = st.run_k, st.run_ek, st.run_n, st.run_mu
            st.run_k = r0 + float(k)
            st.run_ek = r1 + ek
            st.run_n = r2 + float(n)
            st.run_mu = r3 + mu
            # Only evidence at the threshold (or a volume jump being watched) can open an
            # incident: most windows, nothing to look at.
            if ready and (st.top >= h or st.silent >= h or st.watch is not None
                          or _top(st.dcusum) >= h):
                # A segment's siblings in this window: their clicks over what was expected
                # of them (1 for ``all``), which tells a segment break from the campaign's.
                rest = 0.0  # (not known: no siblings' clicks to judge by)
                if not is_all and has_total and p_all > 0:
                    e_rest = fmax(tot_n * p_all - ek, 0.0)
                    if e_rest >= _REST_MIN_CLICKS:
                        rest = (max(tot_k - k, 0) + 0.5) / (e_rest + 0.5)
                verdict = self._maybe_open(name, st, n, k, mu, p, p_ref, phi_c, window, h,
                                           n_tests, rest)
            if verdict is None and drifting and st.incident is inc:
                assert inc is not None
                # (A drift incident adds the drift tests' ratios only.)
                verdict, learn_ctr, learn_vol = self._continue_incident(
                    name, st, inc, [], _dllrs(s, n, k, p_ref, phi_r), n, k, mu, p, phi_c,
                    window, h)
            elif st.incident is not None:
                fault = st.incident.cause == "impression_logging"
                learn_ctr = st.incident.family in (_VOL, _DRIFT) and not fault
                learn_vol = st.incident.family in (_CTR, _DRIFT) and not fault

        # ---- drift on standardised CTR residuals (never fed anomalous windows)
        # The residuals are taken against the slow reference, which a decay does not drag
        # along; a signal counts only when the fast baseline has moved materially from it
        # (the daily cycle of a large campaign is many standard deviations, yet no incident).
        if (verdict is None and st.incident is None and st.drift is not None and ready  # noqa: SIM102 - update() only when eligible
                and p_ref > 0 and n > 0 and st.cooldown == 0):
            ekr = n * p_ref
            if st.drift.update(k - ekr, phi_c * ekr * (1.0 - p_ref), ekr):
                tol = s.recovery_tolerance
                # Reported only while the window itself is on the drift's side of the fast
                # baseline: after a decline, a window back at the reference (a new creative)
                # is the recovery the detector saw, not more drift.
                if p > 0 and (k < n * p if p <= p_ref / tol else
                              k > n * p if p >= p_ref * tol else False):
                    verdict = _drift_verdict(self.settings.drift_detector, name, st, n, mu, p,
                                             phi_c)

        # ---- learning: a series building evidence of a change learns slowly and does not
        # learn its noise level or the campaign's profile from the suspect windows.
        evidence = fmax(st.top, st.silent)
        # (A segment slows down from h/4: its factor, learned over hours, would otherwise
        # follow a break down before the evidence is in.)
        rate = 0.25 if evidence >= (h / 2.0 if is_all else h / 4.0) else \
            0.999 if evidence >= h / 4.0 else 1.0
        if learn_vol:
            _learn_volume(s, self._season_vol, st, n, mu, season_v, is_all, hour, phi_n, rate)
        learn_ctr = learn_ctr and not hold_ctr
        if learn_ctr and n > 0:
            _learn_ctr(s, self._season_ctr, st, n, k, p, p_all, phi_c, is_all, hour, rate)
        if is_all and n > 0 and rate == 1.0 and st.incident is None and learn_ctr and \
                _top(st.dcusum) < h / 2.0:
            _learn_reference(s, self._season_ctr, st, n, k, p, p_ref, phi_c, hour)
        if n > 0:
            st.seen += 1
        return verdict

    def _ratios(self, family: int) -> tuple[float, ...]:
        """The ratio grid a family's tests run over (none for silence)."""
        s = self._p
        return {_CTR: s.ctr_ratios, _VOL: s.volume_ratios, _DRIFT: s.drift_ratios}.get(
            family, ())

    def _maybe_open(self, name: str, st: _Series, n: int, k: int, mu: float, p: float,
                    p_ref: float, phi_c: float, window: Window, h: float,
                    n_tests: int, rest: float = 0.0) -> Verdict | None:
        s = self._p
        n_ctr = len(s.ctr_ratios)
        ctr_idx = _argmax(st.cusum, 0, n_ctr)
        vol_idx = _argmax(st.cusum, n_ctr, len(st.cusum))
        drift_idx = _argmax(st.dcusum, 0, len(st.dcusum))
        if st.cusum[ctr_idx] >= h and _is_recovery(s, st, p, p_ref, s.ctr_ratios[ctr_idx]):
            # Back to the long-run level (a worn-out creative replaced): re-anchor the fast
            # baseline on the reference instead of alarming on the return to normal.
            st.ctr_k = st.ctr_e * st.ref_k / st.ref_e
            st.zero_cusum(0, n_ctr)
            for i in range(len(st.dcusum)):
                st.dcusum[i] = 0.0
            return None
        if st.cusum[ctr_idx] >= h:
            # CTR first: when impressions double and CTR halves, both fire; the CTR alarm
            # is the incident and the volume evidence names its cause.
            family, ratio, score = _CTR, s.ctr_ratios[ctr_idx], st.cusum[ctr_idx]
        elif st.silent >= h:
            family, ratio, score = _SIL, 0.0, st.silent
        elif (drift_idx >= 0 and st.dcusum[drift_idx] >= h and st.incident is None
              and st.watch is None and (vol_idx < 0 or st.cusum[vol_idx] < h)):
            # (A CTR that moved with a volume jump is judged by the watch below.)
            family, ratio, score = _DRIFT, s.drift_ratios[drift_idx], st.dcusum[drift_idx]
        elif vol_idx >= 0 and st.cusum[vol_idx] >= h and st.cusum[ctr_idx] < h / 2.0:
            # Traffic moved and CTR did not (yet): not an incident. Accept the new volume at
            # once so the attribution of later alarms compares with the right level, and
            # watch the clicks: if the extra (or missing) impressions carry no clicks,
            # impression logging broke (duplicated or lost), and the CTR moved by the
            # inverse of the volume jump. The jump was already improbable, so telling these
            # two apart needs far less evidence than finding a change among all series.
            st.watch = None
            # Campaign-wide only: a segment's volume moves with its campaign's, and a
            # logging fault is a property of the pipeline, not of one audience. The jump
            # is measured on the window that completed the evidence.
            if name == _ALL and n > 0 and mu > 0 and p > 0:
                r_d = clip(mu / n, 0.05, 20.0)
                if abs(math.log(r_d)) >= math.log(1.5):
                    st.watch = [r_d, binomial_llr(k, n, p, r_d) / phi_c, 0.0]
            st.vol_level = n / math.exp(self._season_vol[(window.start // 3600) % _HOURS])
            st.vol_trend = 0.0
            st.zero_cusum(n_ctr, len(st.cusum))
            st.run_n = st.run_mu = 0.0
            return self._check_watch(name, st, n, mu, p, phi_c, window, h)
        elif st.watch is not None:
            return self._check_watch(name, st, n, mu, p, phi_c, window, h)
        else:
            return None
        # A segment's drop is its own (a segment break) when its siblings held: their CTR
        # in this window closer to normal than to the segment's.
        alone = (name != _ALL and family == _CTR and 0.0 < ratio < 1.0 and rest > 0.0
                 and math.log(rest) > 0.5 * math.log(ratio))
        if name != _ALL and family == _CTR and ratio < 1.0 and not alone:
            # The campaign's own CTR drop covers this segment, whose siblings fell too (its
            # windows inherit the campaign's incident): no second incident of the
            # segment's, which would outlive the campaign's by the evidence it banked
            # meanwhile. (A rise is named by its segment: bots on one device. A drop
            # while the campaign's incident is another segment's break is news.)
            camp = self._series.get(_ALL)
            ci = camp.incident if camp is not None else None
            if ci is not None and ci.family == _CTR and ci.ratio < 1.0 and \
                    ci.cause != "segment_break":
                st.clear_evidence()
                return None
        kind, cause = _attribute(st, family, ratio, n / mu if mu > 0 else 1.0, alone)
        key = self._group_key(cause, window)
        detector = {_CTR: "binomial_cusum", _VOL: "poisson_cusum", _SIL: "silence",
                    _DRIFT: "drift_cusum"}[family]
        inc = _Incident(family, ratio, h / 4.0, kind, cause, key, detector,
                        self._ratios(family))
        inc.info = n * p
        _start_at_cap(inc, h, self._ratios(family))
        st.incident = inc
        st.clear_evidence()
        confidence = clip(1.0 - n_tests * math.exp(-score), 0.0, 1.0)
        return _verdict(name, st, st.incident, score, confidence, n, mu, p, phi_c)

    def _check_watch(self, name: str, st: _Series, n: int, mu: float, p: float, phi_c: float,
                     window: Window, h: float) -> Verdict | None:
        """Decide a volume jump: impression logging broke, or real traffic moved."""
        watch = st.watch
        if watch is None:
            return None
        r_d, ev, _ = watch
        if ev >= h * _WATCH_THRESHOLD:
            st.watch = None
            grid = self._p.ctr_ratios
            ratio = min(grid, key=lambda r: abs(math.log(r / r_d)))
            kind = "ctr_drop" if r_d < 1.0 else "ctr_spike"
            key = self._group_key("impression_logging", window)
            st.incident = _Incident(_CTR, ratio, h / 4.0, kind, "impression_logging", key,
                                    "volume_ctr_test", grid)
            st.incident.info = n * p
            _start_at_cap(st.incident, h, grid)
            st.zero_cusum(0, len(st.cusum))
            confidence = clip(1.0 - math.exp(-ev), 0.0, 1.0)
            return _verdict(name, st, st.incident, ev, confidence, n, mu, p, phi_c)
        if ev <= -h * _WATCH_THRESHOLD or watch[2] > _WATCH_WINDOWS:
            st.watch = None
        return None

    def _group_key(self, cause: str, window: Window) -> str:
        """One incident id per campaign while its alarms keep coming (any series, cause)."""
        length = window.end - window.start
        group = self._group
        if group is not None and window.start - group[1] <= self._p.group_windows * length:
            key = group[0]
        else:
            key = f"{window.start}:{cause}"
        self._group = (key, window.start)
        return key

    def _continue_incident(self, name: str, st: _Series, inc: _Incident, llrs: list[float],
                           dllrs: list[float], n: int, k: int, mu: float, p: float,
                           phi_c: float, window: Window,
                           h: float) -> tuple[Verdict | None, bool, bool]:
        s = self._p
        n_ctr = len(s.ctr_ratios)
        if inc.family == _SIL:
            inc.evidence = min(h / 4.0, st.silent) if n == 0 else -math.inf
        elif inc.family == _DRIFT:
            if n > 0:
                inc.info += 0.25 * (n * p - inc.info)
            inc.add(dllrs, 0, h, s.drift_ratios)
        else:
            if inc.family == _CTR and n > 0:
                inc.info += 0.25 * (n * p - inc.info)
            inc.add(llrs, 0 if inc.family == _CTR else n_ctr, h, self._ratios(inc.family))
        inc.windows += 1
        logging_fault = inc.cause == "impression_logging"
        learn_ctr = inc.family in (_VOL, _DRIFT) and not logging_fault
        learn_vol = inc.family in (_CTR, _DRIFT) and not logging_fault
        if inc.evidence > 0 and inc.windows < s.max_incident_windows:
            if _contradicts(inc, n, k, mu, p):
                # The incident holds, but this window's own counts lean the other way: it
                # is not reported under the incident's kind (its figure is not held back).
                return None, learn_ctr, learn_vol
            if self._group is not None and self._group[0] == inc.key:
                self._group = (inc.key, window.start)
            confidence = clip(1.0 - math.exp(-inc.evidence), 0.0, 1.0)
            return (_verdict(name, st, inc, inc.evidence, confidence, n, mu, p, phi_c),
                    learn_ctr, learn_vol)
        if inc.evidence > 0:
            # The fault outlived max_incident_windows: accept its level (the ratio that
            # holds the most evidence) as the new normal.
            held = [(e, r) for e, r in zip(inc.ev, self._ratios(inc.family), strict=False)
                    if e is not None]
            if held:
                inc.ratio = max(held)[1]
            if inc.family == _CTR:
                st.ctr_k *= inc.ratio
            if inc.family in (_CTR, _DRIFT) and st.ctr_e > 0 and st.ref_e > 0:
                # The new normal is the long-run level too.
                st.ref_k = st.ref_e * st.ctr_k / st.ctr_e
            elif inc.family == _VOL:
                st.vol_level *= inc.ratio
                st.vol_trend = 0.0
        st.incident = None
        st.cooldown = s.cooldown_windows
        st.clear_evidence()
        st.silent = 0.0
        return None, True, True

def build_monitor(settings: DetectorSettings) -> CampaignMonitor:
    """The factory the flow calls once per campaign."""
    return CampaignMonitor(settings)

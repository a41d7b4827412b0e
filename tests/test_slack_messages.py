"""What an incident message says: one consistent block of numbers, and evidence a person can
compare ("about 1 in N days by chance"), through the tracker, the renderer and the running
sink against the Slack emulator."""

# ruff: noqa: F811 - pytest fixtures imported from tests.slack_fixtures

from __future__ import annotations

import dataclasses
import math
import re
import uuid
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctrguard.detectors.monitor import build_monitor
from ctrguard.detectors.settings import DetectorSettings
from ctrguard.records import Alert, Figure, WindowDecision, make_alert_id
from ctrguard.sinks.incidents import IncidentTracker, chance_days, iso
from ctrguard.sinks.slack import SlackSink
from ctrguard.sinks.slack_render import render_console, render_incident
from tests.slack_fixtures import (  # noqa: F401 - fixtures
    T0,
    WINDOW_S,
    make_alert,
    make_settings,
    slack_emulator,
    slack_redis_url,
)

GAP = 3


def alert(cid: str, window: int, segment: str, clicks: int, impressions: int,
          expected: float, *, score: float = 12.0, detector: str = "binomial_cusum",
          cause: str = "bot_clicks", kind: str = "click_surge", mu: float | None = None,
          severity: str = "critical") -> Alert:
    """An alert as the detectors make it: expected clicks at the observed impressions (at
    the expected impressions in a window without any), a 99% interval at that basis."""
    ws = T0 + window * WINDOW_S
    mu = float(impressions) if mu is None else mu
    basis = impressions if impressions > 0 else mu
    p = expected / basis if basis > 0 else 0.0
    half = 2.5758293035489 * math.sqrt(max(p * (1 - p), 0.0) / basis) if basis > 0 else 0.0
    return Alert(
        alert_id=make_alert_id(cid, segment, ws, detector, kind), campaign_id=cid,
        segment=segment, window_start=iso(ws), window_end=iso(ws + WINDOW_S),
        window_start_s=ws, impressions=impressions, clicks=clicks,
        ctr=clicks / impressions if impressions else 0.0, kind=kind, severity=severity,
        detector=detector, baseline_ctr=p, score=score, confidence=0.5626,
        ctr_low=max(p - half, 0.0), ctr_high=min(p + half, 1.0), expected_clicks=expected,
        expected_impressions=mu, suspected_cause=cause, quarantine=True)


# --------------------------------------------------------------------------- the block

_NUM = r"([−+-]?[\d,]+(?:\.\d+)?)"


def _number(text: str) -> float:
    return float(text.replace(",", "").replace("−", "-"))


def shown_block(message) -> dict[str, Any]:
    """The numbers of the block as a person reads them in the message's fields."""
    fields = {f["text"].split("\n", 1)[0]: f["text"].split("\n", 1)[1]
              for b in message.blocks for f in b.get("fields", [])}
    obs_key = next(k for k in fields if k.startswith("*Observed*"))
    seg, windows = re.fullmatch(r"\*Observed\* \(`(.*)`, (\d+) windows?\)", obs_key).groups()
    m = re.match(rf"{_NUM} clicks? / {_NUM} impressions = CTR (\S+)", fields[obs_key])
    clicks, imps, ctr = _number(m[1]), _number(m[2]), m[3]
    e = re.match(rf"{_NUM} clicks \(99%: {_NUM}–{_NUM}\) at CTR (\S+)", fields["*Expected*"])
    d = re.match(rf"{_NUM} clicks", fields["*Clicks vs expected*"])
    return {"segment": seg, "windows": int(windows), "clicks": clicks, "impressions": imps,
            "ctr": ctr, "expected": _number(e[1]), "low": _number(e[2]),
            "high": _number(e[3]), "expected_ctr": e[4], "delta": _number(d[1]),
            "evidence": fields["*Evidence*"]}


def assert_consistent(block: dict[str, Any]) -> None:
    """The numbers shown are each other's sums and differences (up to their rounding)."""
    # The difference is observed minus expected: the expected count is shown to 0.1 below
    # 100 (else to 1) and the difference to 1.
    step = 0.05 if abs(block["expected"]) < 100 else 0.5
    assert abs(block["delta"] - (block["clicks"] - block["expected"])) <= 0.5 + step + 1e-9
    if block["impressions"] > 0:
        assert block["ctr"] == f"{100 * block['clicks'] / block['impressions']:.2f}%"
    else:
        assert block["ctr"] == "n/a"
    assert block["low"] <= block["expected"] <= block["high"]
    # Observed nothing can never sit beside clicks gained, nor observed clicks beside a
    # loss larger than what was expected.
    assert not (block["clicks"] == 0 and block["delta"] > 0)
    assert block["delta"] >= -block["expected"] - 1


def oracle_totals(alerts: list[Alert]) -> dict[str, dict[str, float]]:
    """Brute force: per series, the sums over the distinct windows in which it alerted."""
    per: dict[tuple[str, int], Alert] = {}
    for a in alerts:
        key = (a.segment, a.window_start_s)
        if key not in per or abs(a.clicks - a.expected_clicks) > \
                abs(per[key].clicks - per[key].expected_clicks):
            per[key] = a
    out: dict[str, dict[str, float]] = {}
    for (seg, _), a in per.items():
        t = out.setdefault(seg, {"windows": 0, "clicks": 0, "impressions": 0,
                                 "expected": 0.0, "abs": 0.0})
        t["windows"] += 1
        t["clicks"] += a.clicks
        t["impressions"] += a.impressions
        t["expected"] += a.expected_clicks
        t["abs"] += abs(a.clicks - a.expected_clicks)
    return out


SEGMENTS = ["all", "device=mobile", "device=desktop", "channel=email"]


@st.composite
def incidents(draw) -> list[Alert]:
    """Alerts of one campaign close enough in time to make one incident: several series,
    zero-click and zero-impression windows, two detectors on one series-window (same
    counts), sparse and dense volumes."""
    n_windows = draw(st.integers(1, 40))
    window, alerts = 0, []
    for _ in range(n_windows):
        segs = draw(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3, unique=True))
        for seg in segs:
            imps = draw(st.sampled_from([0, 1, 7, 40, 152, 1000, 25_000]))
            ctr = draw(st.sampled_from([0.0, 0.002, 0.007, 0.03, 0.2]))
            clicks = draw(st.integers(0, max(3 * int(imps * ctr) + 2, 0)))
            expected = draw(st.floats(0.0, 5.0 + 0.05 * imps, allow_nan=False))
            mu = draw(st.floats(1.0, 30_000.0)) if imps == 0 else None
            cause = draw(st.sampled_from(["bot_clicks", "click_tracking", "silence"]))
            score = draw(st.floats(0.0, 60.0))
            alerts.append(alert("c1", window, seg, clicks, imps, expected, score=score,
                                cause=cause, mu=mu))
            if draw(st.booleans()) and draw(st.booleans()):
                alerts.append(dataclasses.replace(
                    alerts[-1], detector="poisson_cusum", alert_id=alerts[-1].alert_id + "p",
                    score=score / 2))
        window += draw(st.integers(1, GAP))
    return alerts


@settings(max_examples=300, deadline=None)
@given(alerts=incidents(), cut=st.integers(1, 7), keep=st.sampled_from([4, 12]))
def test_every_update_shows_one_series_summed_over_the_same_windows(alerts, cut, keep):
    t = IncidentTracker(window_s=WINDOW_S, gap_windows=GAP, keep_windows=keep,
                        value_per_click=0.3)
    fed: list[Alert] = []
    for i in range(0, len(alerts), cut):
        batch = alerts[i:i + cut]
        fed += batch
        ups = t.observe(batch + alerts[max(0, i - 2):i])       # some re-delivered
        for u in ups:
            inc, b = u.incident, u.incident.totals
            want = oracle_totals(fed)
            best = max(v["abs"] for v in want.values())
            assert want[b.segment]["abs"] == pytest.approx(best, rel=1e-9, abs=1e-9)
            w = want[b.segment]
            assert (b.windows, b.clicks, b.impressions) == \
                (w["windows"], w["clicks"], w["impressions"])
            assert b.expected_clicks == pytest.approx(w["expected"], rel=1e-9, abs=1e-6)
            assert inc.clicks_delta == pytest.approx(b.clicks - b.expected_clicks, abs=1e-6)
            assert inc.revenue_delta == pytest.approx(0.3 * inc.clicks_delta, abs=0.006)
            assert_consistent(shown_block(render_incident(u)))


def test_the_issue_case_zero_of_152_beside_a_gain_cannot_happen():
    """A bot-click incident whose last window of ``all`` had no click: the block shows the
    clicks of every window it sums, so the gain is visible in the observed clicks."""
    t = IncidentTracker(window_s=WINDOW_S, gap_windows=GAP)
    t.observe([alert("c1", 0, "all", 14, 160, 1.1), alert("c1", 1, "all", 5, 150, 1.0)])
    (u,) = t.observe([alert("c1", 2, "all", 0, 152, 1.06, score=0.8)])
    block = shown_block(render_incident(u))
    assert (block["clicks"], block["impressions"], block["windows"]) == (19, 462, 3)
    assert block["delta"] == 16 and block["expected"] == pytest.approx(3.2)
    assert_consistent(block)


def test_confidence_is_evidence_not_a_percentage():
    """The critical outage that showed "Confidence: 56.26%": its message states the evidence
    of the alarm that opened it, as days between chance occurrences, and no percentage."""
    t = IncidentTracker(window_s=WINDOW_S, gap_windows=GAP)
    t.observe([alert("c1", 0, "all", 0, 4000, 80.0, score=14.0, cause="click_tracking",
                     kind="click_outage")])
    (u,) = t.observe([alert("c1", 1, "all", 0, 4000, 80.0, score=0.8262,
                            cause="click_tracking", kind="click_outage")])
    msg = render_incident(u)
    text = render_console(msg)
    assert "56.26%" not in text and "Confidence" not in text
    # e**14 / (288 windows * 1 series) = 4,176 days: two significant figures, and years.
    assert u.incident.chance_days == pytest.approx(math.exp(14.0) / 288)
    assert shown_block(msg)["evidence"] == (
        "about 1 in 4,200 days (11 years) by chance at this campaign's volume")
    assert "evidence about 1 in 4,200 days" in msg.text


@pytest.mark.parametrize("budget", [0.02, 0.5, 5.0])
@pytest.mark.parametrize("window_s", [60, 300, 3600])
@pytest.mark.parametrize("n_series", [1, 8, 30])
def test_at_the_detectors_threshold_chance_is_one_over_the_budget(budget, window_s, n_series):
    """The derivation holds against the detector itself: at the threshold the monitor sets
    from ``false_alarms_per_campaign_day``, chance takes 1 / budget days."""
    monitor = build_monitor(DetectorSettings(false_alarms_per_campaign_day=budget))
    h = monitor._threshold(n_series, window_s)
    assert chance_days(h, window_s=window_s, n_series=n_series) == pytest.approx(1 / budget)
    # Every nat more makes chance e times rarer.
    assert chance_days(h + 1, window_s=window_s, n_series=n_series) == \
        pytest.approx(math.e / budget)


def test_evidence_counts_the_series_of_the_campaign():
    """More series tested means more chances: the figures of the alerted decision count."""
    one = IncidentTracker(window_s=WINDOW_S, gap_windows=GAP)
    eight = IncidentTracker(window_s=WINDOW_S, gap_windows=GAP)
    a = alert("c1", 0, "all", 0, 4000, 80.0, score=20.0)
    (u1,) = one.observe([a])
    (u8,) = eight.observe([a], {("c1", a.window_start_s): 8})
    assert u1.incident.n_series == 1 and u8.incident.n_series == 8
    assert u1.incident.chance_days == pytest.approx(8 * u8.incident.chance_days)


def test_follow_up_and_unknown_detectors():
    t = IncidentTracker(window_s=WINDOW_S, gap_windows=GAP, false_alarm_budget=0.02)
    (u,) = t.observe([alert("c1", 0, "all", 3, 4000, 40.0, score=6.0,
                            detector="volume_ctr_test", cause="impression_logging")])
    assert u.incident.chance_days == pytest.approx(math.exp(6.0) / 0.02)
    (u,) = t.observe([alert("c2", 0, "all", 3, 4000, 40.0, score=3.1, detector="page_hinkley",
                            cause="drift")])
    assert u.incident.chance_days is None and u.incident.evidence_nats is None
    assert "not stated by the detector" in render_console(render_incident(u))


def test_state_of_the_previous_version_loads_and_counts_from_the_next_window():
    """An open incident stored before the block existed (version 1: only differences)
    keeps its id and revision; its numbers start with the windows after the upgrade."""
    t = IncidentTracker(window_s=WINDOW_S, gap_windows=GAP)
    (u,) = t.observe([alert("c1", 0, "all", 30, 1000, 10.0)])
    state = t.export_state("c1")
    old = dict(state, v=1)
    old["open"] = {k: v for k, v in state["open"].items()
                   if k not in ("closed", "evidence", "n_series")}
    old["open"].update(closed_delta=20.0, closed_seg_abs={"all": 20.0},
                       windows={str(T0): {"all": [20.0, "bot_clicks"]}})
    t2 = IncidentTracker(window_s=WINDOW_S, gap_windows=GAP)
    t2.import_state("c1", old)
    (u2,) = t2.observe([alert("c1", 1, "all", 12, 1000, 10.0)])
    assert u2.incident.incident_id == u.incident.incident_id and u2.revision == 2
    assert (u2.incident.totals.windows, u2.incident.totals.clicks) == (1, 12)
    assert u2.incident.clicks_delta == 2.0


# --------------------------------------------------------------------------- running sink


def decision(a_list: list[Alert], n_series: int) -> WindowDecision:
    a0 = a_list[0]
    figures = tuple(Figure(a0.campaign_id, f"s{i}", a0.window_start, a0.window_end,
                           a0.window_start_s, 10, 1, 0.1, "ok") for i in range(n_series))
    return WindowDecision(a0.campaign_id, a0.window_start_s, a0.window_start_s + WINDOW_S,
                          figures, tuple(a_list))


@pytest.mark.integration
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(alerts=incidents(), n_series=st.integers(1, 12))
def test_messages_in_slack_are_consistent(slack_emulator, slack_redis_url, alerts, n_series):
    """Through the running sink (Redis outbox, delivery thread, slack-sdk, emulator): every
    version of the message, and the final one, shows one consistent block, and its
    evidence line counts the campaign's series from its decisions."""
    # Examples share the emulator and Redis: each gets a campaign of its own and a clean
    # Redis (the sink's event-time clock is global).
    cid = f"camp-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(slack_redis_url)
    client.flushall()
    client.close()
    alerts = [dataclasses.replace(a, campaign_id=cid, alert_id=a.alert_id + cid)
              for a in alerts]
    sink = SlackSink(make_settings(slack_redis_url, slack_emulator, min_severity="info"))
    try:
        by_window: dict[int, list[Alert]] = {}
        for a in alerts:
            by_window.setdefault(a.window_start_s, []).append(a)
        for ws in sorted(by_window):
            sink.write_batch([decision(by_window[ws], n_series)])
        assert sink.drain(15)
    finally:
        sink.notifier.stop()
    (msg,) = [m for m in slack_emulator.messages("#ctr-alerts", top_level=True)
              if cid in m.text]
    versions = [*msg.history, {"blocks": msg.blocks}]
    for version in versions:
        assert_consistent(shown_block(type("M", (), {"blocks": version["blocks"]})))
    final = shown_block(msg)
    want = oracle_totals(alerts)[final["segment"]]
    assert (final["windows"], final["clicks"], final["impressions"]) == \
        (want["windows"], want["clicks"], want["impressions"])
    scores = [a.score for a in alerts]
    n = max(n_series, len({a.segment for a in alerts}))
    days = chance_days(max(scores), window_s=WINDOW_S, n_series=n)
    from ctrguard.sinks.slack_render import rarity
    assert final["evidence"] == f"{rarity(days)} by chance at this campaign's volume"

"""Flags carry their Slack incident's id; auto-release and bulk releases (real redis-server).

The release step (flags) and the Slack step (incidents) run beside each other in the flow,
in either order, in one or two workers, across restarts: every order must give the same
flags, linked to the same incident id the Slack message shows.
"""

from __future__ import annotations

import io
import itertools

import pytest

from ctrguard.config import Settings
from ctrguard.errors import QuarantineError
from ctrguard.records import WindowDecision
from ctrguard.sinks.incidents import make_incident_id
from ctrguard.sinks.quarantine import QUARANTINED, RELEASED, QuarantineStore
from ctrguard.sinks.quarantine_incidents import (
    get_incident,
    list_incidents,
    release_incident,
    release_range,
)
from ctrguard.sinks.redis_client import make_redis
from ctrguard.sinks.slack import SlackSink
from tests.slack_fixtures import T0, WINDOW_S, make_alert

PREFIX = "qi"
ALERTED = range(3)          # windows 0-2 alert; 3+ are quiet (3 quiet windows resolve)
QUIET_UNTIL = 8


def settings_for(url: str, *, auto_release: bool) -> Settings:
    return Settings.model_validate({
        "redis": {"url": url, "key_prefix": PREFIX, "retry_backoff_s": 0.05,
                  "retry_backoff_max_s": 0.2},
        "slack": {"mode": "console", "retry_backoff_s": 0.05, "retry_backoff_max_s": 0.2},
        "quarantine": {"auto_release": auto_release},
    })


def store_for(settings: Settings) -> QuarantineStore:
    return QuarantineStore(make_redis(settings.redis), settings.quarantine, PREFIX,
                           window_length_s=WINDOW_S)


def window(w: int, campaign: str = "c1") -> WindowDecision:
    """Campaign's window w: alerts (all and device=mobile) in ALERTED windows, else quiet."""
    ws = T0 + w * WINDOW_S
    alerts = (make_alert(campaign, w), make_alert(campaign, w, "device=mobile")) \
        if w in ALERTED else ()
    return WindowDecision(campaign, ws, ws + WINDOW_S, (), alerts)


class Flow:
    """The two sinks of the flow over one Redis: ``slack(w)`` and ``release(w)`` feed window
    w's decision to the Slack step (partition ``worker``) and to the release step."""

    def __init__(self, settings: Settings, workers: int = 1):
        self.settings = settings
        self.out = io.StringIO()
        self.parts = [SlackSink(settings, stream=self.out) for _ in range(workers)]
        self.store = store_for(settings)

    def slack(self, w: int, worker: int = 0) -> None:
        self.parts[worker].write_batch([window(w)])

    def release(self, w: int) -> None:
        self.store.record([window(w)])

    def restart(self) -> None:
        for p in self.parts:
            p.close(5)
        self.parts = [SlackSink(self.settings, stream=self.out) for _ in self.parts]

    def close(self) -> str:
        for p in self.parts:
            p.close(5)
        return self.out.getvalue()


ORDERS = ["release_first", "slack_first", "slack_all_then_release", "two_workers_restart"]


def run_order(flow: Flow, order: str) -> None:
    windows = range(QUIET_UNTIL)
    if order == "release_first":
        for w in windows:
            flow.release(w)
            flow.slack(w)
    elif order == "slack_first":
        for w in windows:
            flow.slack(w)
            flow.release(w)
    elif order == "slack_all_then_release":
        # The incident resolves before any of its flags is written.
        for w in windows:
            flow.slack(w)
        for w in windows:
            flow.release(w)
    else:
        # Two Slack partitions take turns, a restart in the middle, and every window is
        # delivered again after it (at-least-once input).
        for w, worker in zip(windows, itertools.cycle([0, 1]), strict=False):
            flow.slack(w, worker)
            flow.release(w)
            if w == 1:
                flow.restart()
                for again in range(w + 1):
                    flow.slack(again, 1 - worker)
                    flow.release(again)


@pytest.mark.parametrize("order", ORDERS)
def test_auto_release_follows_the_incident_the_slack_message_shows(redis_url, order):
    flow = Flow(settings_for(redis_url, auto_release=True), workers=2)
    run_order(flow, order)
    text = flow.close()
    incident = make_incident_id("c1", T0)
    assert f"incident {incident}" in text and "RESOLVED" in text   # what Slack shows
    flags = flow.store.list_flags(campaign="c1", limit=100)
    assert len(flags) == 2 * len(ALERTED)
    for f in flags:
        assert (f.state, f.incident_id, f.incident_ids) == (RELEASED, incident, (incident,))
        assert f.released_by == f"auto:incident:{incident}"
    audit = flow.store.audit(limit=100)
    auto = [e for e in audit if e.action == "auto_released"]
    # One audit entry per flag, each naming the incident.
    assert sorted(e.key for e in auto) == sorted(f.key for f in flags)
    assert {(e.who, e.incident_id) for e in auto} == {(f"auto:incident:{incident}", incident)}
    summary, _ = get_incident(flow.store, incident)
    assert (summary.status, summary.held, summary.released) == ("resolved", (), 6)


@pytest.mark.parametrize("order", ["release_first", "slack_all_then_release"])
def test_without_auto_release_flags_carry_the_incident_and_stay_held(redis_url, order):
    flow = Flow(settings_for(redis_url, auto_release=False))
    run_order(flow, order)
    flow.close()
    incident = make_incident_id("c1", T0)
    flags = flow.store.list_flags(campaign="c1", limit=100)
    assert {(f.state, f.incident_id) for f in flags} == {(QUARANTINED, incident)}
    assert all(e.action == "flagged" for e in flow.store.audit(limit=100))
    assert list_incidents(flow.store) == []          # resolved: not open any more
    (summary,) = list_incidents(flow.store, include_resolved=True)
    assert (summary.incident_id, summary.status, len(summary.held)) == (incident, "resolved", 6)


def test_open_incidents_list_their_held_windows(redis_url):
    flow = Flow(settings_for(redis_url, auto_release=True))
    for w in range(2):                     # still alerting: the incident is open
        flow.release(w)
        flow.slack(w)
    flow.close()
    (summary,) = list_incidents(flow.store)
    assert (summary.incident_id, summary.status, summary.campaign_id) == (
        make_incident_id("c1", T0), "open", "c1")
    assert sorted((f.segment, f.window_start_s) for f in summary.held) == [
        ("all", T0), ("all", T0 + WINDOW_S), ("device=mobile", T0),
        ("device=mobile", T0 + WINDOW_S)]
    # Open: nothing was released automatically.
    assert {f.state for f in flow.store.list_flags()} == {QUARANTINED}


def test_an_alarm_outside_the_incident_keeps_its_window_held(redis_url):
    store = store_for(settings_for(redis_url, auto_release=True))
    in_incident = make_alert("c1", 0)
    other = make_alert("c1", 0, detector="adwin")            # same flag, in no incident
    store.record([WindowDecision("c1", T0, T0 + WINDOW_S, (), (in_incident, other))])
    assert store.auto_release("inc-1", [in_incident]) == []
    st = store.status("c1", "all", T0)
    assert (st.state, st.incident_id) == (QUARANTINED, "inc-1")
    # Once the other alarm's incident is resolved too, the window is released.
    assert store.auto_release("inc-2", [other]) == [st.key]
    st = store.status("c1", "all", T0)
    assert (st.state, st.incident_ids, st.released_by) == (
        RELEASED, ("inc-1", "inc-2"), "auto:incident:inc-2")


# --------------------------------------------------------------------------- bulk releases


@pytest.fixture
def held(redis_url):
    """Incident of c1 (windows 0-2, two series each) open, c2 with flags in no incident."""
    flow = Flow(settings_for(redis_url, auto_release=True))
    for w in range(3):
        flow.release(w)
        flow.slack(w)
    flow.close()
    flow.store.record([window(w, "c2") for w in range(3)])
    return flow.store, make_incident_id("c1", T0)


def test_release_incident_dry_run_then_one_audit_entry_per_flag(held):
    store, incident = held
    dry = release_incident(store, incident, by="ana", reason="tag fixed", dry_run=True)
    assert len(dry.released) == 6 and dry.skipped == []
    assert {f.state for f in store.list_flags(campaign="c1")} == {QUARANTINED}
    assert len(store.audit(limit=100)) == 12                    # flagged only

    done = release_incident(store, incident, by="ana", reason="tag fixed")
    assert sorted(f.key for f in done.released) == sorted(f.key for f in dry.released)
    flags = store.list_flags(campaign="c1")
    assert {(f.state, f.released_by, f.release_reason) for f in flags} == {
        (RELEASED, "ana", "tag fixed")}
    released = [e for e in store.audit(limit=100) if e.action == "released"]
    assert sorted(e.key for e in released) == sorted(f.key for f in flags)
    assert {(e.who, e.incident_id) for e in released} == {("ana", incident)}
    # c2's windows were not part of it; doing it again changes nothing.
    assert {f.state for f in store.list_flags(campaign="c2")} == {QUARANTINED}
    again = release_incident(store, incident, by="ana", reason="again")
    assert again.released == [] and len(again.skipped) == 6
    with pytest.raises(QuarantineError, match="no incident"):
        release_incident(store, "nope", by="ana", reason="x")


def test_release_incident_leaves_a_window_with_another_alarm(held):
    store, incident = held
    extra = make_alert("c1", 1, detector="adwin")      # same series and window, no incident
    store.record([WindowDecision("c1", T0 + WINDOW_S, T0 + 2 * WINDOW_S, (), (extra,))])
    done = release_incident(store, incident, by="ana", reason="ok")
    assert len(done.released) == 5
    ((st, why),) = done.skipped
    assert (st.segment, st.window_start_s) == ("all", T0 + WINDOW_S)
    assert "an alert in no incident" in why
    assert store.status("c1", "all", T0 + WINDOW_S).state == QUARANTINED


def test_release_range_by_campaign_and_segment(held):
    store, _ = held
    dry = release_range(store, "c2", "device=mobile", T0, T0 + 2 * WINDOW_S, by="bo",
                        reason="test traffic", dry_run=True)
    assert [(f.segment, f.window_start_s) for f in dry.released] == [
        ("device=mobile", T0), ("device=mobile", T0 + WINDOW_S)]
    done = release_range(store, "c2", None, T0 + WINDOW_S, T0 + 3 * WINDOW_S, by="bo",
                         reason="test traffic")
    assert sorted((f.segment, f.window_start_s) for f in done.released) == [
        ("all", T0 + WINDOW_S), ("all", T0 + 2 * WINDOW_S),
        ("device=mobile", T0 + WINDOW_S), ("device=mobile", T0 + 2 * WINDOW_S)]
    assert store.status("c2", "all", T0).state == QUARANTINED      # before --from
    assert {f.state for f in store.list_flags(campaign="c1")} == {QUARANTINED}
    with pytest.raises(QuarantineError, match="--by"):
        release_range(store, "c2", None, T0, T0 + WINDOW_S, by=" ", reason="x")

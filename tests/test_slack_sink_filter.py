"""The Slack sink touches only the campaigns that can change, and that changes nothing.

``SlackSink._write`` processes a campaign only when it has alerts in the batch, is
in the open set (due, or open and ticking) or ticks and is in the known set (may have
incident state). These tests hold it to the unfiltered algorithm: an oracle that runs the
sink's former computation over *every* campaign of every batch, with one in-memory tracker,
must queue exactly the same updates; and they cover what only Redis knows (state written by
another worker or an earlier process), races between workers and the state's TTL.
"""

# ruff: noqa: F811 - pytest fixtures imported from tests.slack_fixtures

from __future__ import annotations

import io
import json
import random
from typing import Any

import pytest
import redis

import ctrguard.sinks.slack as slack_mod
from ctrguard.records import Alert, WindowDecision
from ctrguard.sinks.incidents import IncidentTracker, update_to_json
from ctrguard.sinks.slack import SlackSink, _campaign_hash, _length_s
from tests.slack_fixtures import (  # noqa: F401 - fixtures
    T0,
    WINDOW_S,
    make_alert,
    make_settings,
    slack_redis_url,
)

pytestmark = pytest.mark.integration

GAP = 2


@pytest.fixture
def partitions():
    made: list[SlackSink] = []

    def make(settings) -> SlackSink:
        p = SlackSink(settings, stream=io.StringIO(), autostart=False)
        made.append(p)
        return p

    yield make
    for p in made:
        p.notifier.stop()


@pytest.fixture
def settings(slack_redis_url):
    return make_settings(slack_redis_url, mode="console", incident_gap_windows=GAP)


@pytest.fixture
def r(slack_redis_url):
    client = redis.Redis.from_url(slack_redis_url, decode_responses=True)
    yield client
    client.close()


def tick(cid: str, window: int, *alerts: Alert) -> WindowDecision:
    ws = T0 + window * WINDOW_S
    return WindowDecision(cid, ws, ws + WINDOW_S, (), tuple(alerts))


def quiet(n: int, window: int) -> list[WindowDecision]:
    """Tick-only records of ``n`` campaigns without incidents."""
    return [tick(f"quiet-{i}", window) for i in range(n)]


def outbox(r: redis.Redis) -> list[tuple[str, str, dict[str, Any]]]:
    return [(f["kind"], f["key"], json.loads(f["update"]))
            for _, f in r.xrange("ctrguard:slack:outbox")]


def state_key(cid: str) -> str:
    return f"ctrguard:slack:state:{_campaign_hash(cid)}"


class Oracle:
    """The sink's computation before the filter: every campaign of the batch, plus the due
    ones, through one tracker that holds every campaign's state (as Redis did)."""

    def __init__(self, window_s: int, gap_windows: int):
        self.tracker = IncidentTracker(window_s=window_s, gap_windows=gap_windows)
        self.window_s, self.gap_s = window_s, gap_windows * window_s
        self.clock = 0
        self.updates: list[tuple[str, str, dict[str, Any]]] = []

    def write_batch(self, items: list[Any]) -> None:
        alerts: list[Alert] = []
        ticks: dict[str, int] = {}
        for item in items:
            if isinstance(item, WindowDecision):
                alerts.extend(item.alerts)
                ticks[item.campaign_id] = max(ticks.get(item.campaign_id, 0), item.window_end_s)
            else:
                alerts.append(item)
        if not alerts and not ticks:
            return
        ends = [a.window_start_s + _length_s(a, self.window_s) for a in alerts]
        clock = max(self.clock, *ends, *ticks.values())
        t = self.tracker
        due = {c for c, end in t.open_campaigns().items() if end <= clock - self.gap_s}
        campaigns = sorted({a.campaign_id for a in alerts} | set(ticks) | due)
        ups = t.observe(alerts)
        for cid, end in sorted(ticks.items()):
            ups += t.advance(end, [cid])
        ups += t.advance(clock, campaigns)
        self.clock = clock
        self.updates += [(u.kind, u.idempotency_key,
                          json.loads(json.dumps(update_to_json(u)))) for u in ups]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_same_updates_as_the_unfiltered_computation(settings, partitions, r, seed):
    """Two workers (campaigns split between them, one shared clock), alerts of every kind
    of timing, bare ``Alert`` items, re-delivered batches and a worker restarted mid-way:
    the outbox holds exactly what the unfiltered computation queues, in the same order."""
    rng = random.Random(seed)
    campaigns = [f"c{i:02d}" for i in range(40)]
    owner = {c: i % 2 for i, c in enumerate(campaigns)}
    workers = [partitions(settings), partitions(settings)]
    oracle = Oracle(WINDOW_S, GAP)
    history: list[tuple[int, list[Any]]] = []

    def send(w: int, items: list[Any]) -> None:
        workers[w].write_batch(items)
        oracle.write_batch(items)
        history.append((w, items))

    hot = rng.sample(campaigns, 12)
    for window in range(36):
        per_worker: list[list[Any]] = [[], []]
        for cid in campaigns:
            alerts: tuple[Alert, ...] = ()
            if cid in hot and rng.random() < 0.25:
                alerts = tuple(make_alert(cid, window, seg, severity=rng.choice(
                    ["info", "warning", "critical"]))
                    for seg in rng.sample(["all", "device=mobile", "geo=FR"],
                                          rng.randint(1, 2)))
            if rng.random() < 0.1 and alerts:
                per_worker[owner[cid]].extend(alerts)          # bare alerts, no tick
            elif rng.random() < 0.95:                          # some campaigns skip a window
                per_worker[owner[cid]].append(tick(cid, window, *alerts))
        for w in rng.sample([0, 1], 2):
            items = per_worker[w]
            rng.shuffle(items)
            cut = rng.randint(0, len(items))
            for part in (items[:cut], items[cut:]):
                if part:
                    send(w, part)
        if window in (12, 25):
            # A restart of worker 0: a new process re-delivers its last batches.
            workers[0] = partitions(settings)
            for w, items in [h for h in history[-6:] if h[0] == 0]:
                send(w, items)
    assert any(kind == "resolve" for kind, _, _ in oracle.updates)
    assert outbox(r) == oracle.updates


def test_tick_only_batch_resolves_an_incident_only_redis_knows(settings, partitions, r):
    """The incident was opened by another process; this one sees only quiet windows of it
    (no alert, nothing in memory) and resolves it exactly when the gap has passed."""
    partitions(settings).write_batch([tick("c1", 0, make_alert("c1", 0))])
    later = partitions(settings)                       # another worker / a restart
    later.write_batch([tick("c1", GAP - 1), *quiet(50, GAP - 1)])
    assert [k for k, _, _ in outbox(r)] == ["open"]    # one window short of the gap
    later.write_batch([tick("c1", GAP), *quiet(50, GAP)])
    assert [k for k, _, _ in outbox(r)] == ["open", "resolve"]
    (_, _, resolve) = outbox(r)[-1]
    assert resolve["incident"]["resolved_at"] == "2026-01-01T00:15:00Z"
    assert r.zcard("ctrguard:slack:open") == 0


def test_due_incident_of_a_campaign_this_worker_never_sees_is_resolved(settings, partitions,
                                                                        r):
    partitions(settings).write_batch([tick("other", 0, make_alert("other", 0))])
    mine = partitions(settings)
    mine.write_batch(quiet(20, 1 + GAP))               # only the clock says it is over
    assert [k for k, _, _ in outbox(r)] == ["open", "resolve"]


@pytest.mark.parametrize("resolved", [False, True])
def test_ticks_keep_the_state_of_a_known_campaign_alive(settings, partitions, r, resolved):
    """A tick re-stores the state of a campaign that has any (open, or resolved: its floor
    keeps re-delivered old alerts from opening the incident again), renewing its TTL."""
    partitions(settings).write_batch([tick("c1", 0, make_alert("c1", 0))])
    sink = partitions(settings)
    if resolved:
        sink.write_batch([tick("c1", 1 + GAP)])
        assert [k for k, _, _ in outbox(r)] == ["open", "resolve"]
    r.expire(state_key("c1"), 100)
    sink.write_batch([tick("c1", 1 + GAP + 1), *quiet(30, 1 + GAP + 1)])
    assert r.ttl(state_key("c1")) > settings.slack.state_ttl_s - 60
    # ...and campaigns without state get none.
    assert r.keys("ctrguard:slack:state:*") == [state_key("c1")]
    if resolved:
        # A re-delivered old alert is stale: nothing is posted again.
        sink.write_batch([tick("c1", 0, make_alert("c1", 0))])
        assert [k for k, _, _ in outbox(r)] == ["open", "resolve"]
        assert sink.stale_alerts == 1


def test_states_written_before_the_known_set_existed_are_found(settings, partitions, r):
    """States stored by the previous version (no known set): indexed on first write."""
    sink = partitions(settings)
    sink.write_batch([tick("c1", 0, make_alert("c1", 0))])
    sink.write_batch([tick("c1", 1 + GAP)])            # resolved: only the state knows it
    r.delete("ctrguard:slack:known", "ctrguard:slack:known:ready")
    r.expire(state_key("c1"), 100)
    fresh = partitions(settings)
    fresh.write_batch([tick("c1", 1 + GAP + 1), *quiet(10, 1 + GAP + 1)])
    assert r.smembers("ctrguard:slack:known") == {"c1"}
    assert r.ttl(state_key("c1")) > settings.slack.state_ttl_s - 60


def test_known_campaign_whose_state_expired_is_dropped_from_the_set(settings, partitions, r):
    sink = partitions(settings)
    sink.write_batch([tick("c1", 0, make_alert("c1", 0))])
    sink.write_batch([tick("c1", 1 + GAP)])
    r.delete(state_key("c1"))                          # the TTL ran out
    sink.write_batch([tick("c1", 1 + GAP + 1)])
    assert r.smembers("ctrguard:slack:known") == set()
    assert r.keys("ctrguard:slack:state:*") == []


@pytest.mark.parametrize("case", ["new", "new-ticking", "known"])
def test_incident_opened_by_another_worker_mid_batch_is_seen(settings, partitions, r,
                                                             monkeypatch, case):
    """Worker A opens an incident of ``x`` after worker B read the open and known sets but
    before B commits: B's transaction fails (both sets are watched) and its retry resolves
    the incident in the same batch, as if A had written first. ``known``: ``x`` had an
    incident before, so only the open set changes."""
    other, me = partitions(settings), partitions(settings)
    expected = []
    if case == "known":
        other.write_batch([tick("x", 0, make_alert("x", 0))])
        me.write_batch(quiet(5, GAP))                  # resolves it
        expected = [("open", "x"), ("resolve", "x")]
        assert [(k, u["incident"]["campaign_id"]) for k, _, u in outbox(r)] == expected
    me.write_batch(quiet(5, GAP + 1))                  # the clock
    interfered = []

    class Interfering(IncidentTracker):
        def __init__(self, *a: Any, **kw: Any):
            super().__init__(*a, **kw)
            if not interfered:
                interfered.append(1)
                other.write_batch([tick("x", GAP + 1, make_alert("x", GAP + 1))])

    monkeypatch.setattr(slack_mod, "IncidentTracker", Interfering)
    batch = quiet(30, 20) + ([tick("x", 20)] if case == "new-ticking" else [])
    me.write_batch(batch)
    assert interfered
    assert [(k, u["incident"]["campaign_id"]) for k, _, u in outbox(r)] == \
        expected + [("open", "x"), ("resolve", "x")]
    assert r.zcard("ctrguard:slack:open") == 0


def test_open_incident_missing_from_the_known_set_is_kept_alive(settings, partitions, r):
    """An open incident stored without its known-set member (a process of the previous
    version still running next to this one): its ticks still renew its state."""
    partitions(settings).write_batch([tick("c1", 0, make_alert("c1", 0))])
    r.srem("ctrguard:slack:known", "c1")
    r.expire(state_key("c1"), 100)
    partitions(settings).write_batch([tick("c1", 1), *quiet(10, 1)])
    assert r.ttl(state_key("c1")) > settings.slack.state_ttl_s - 60
    assert [k for k, _, _ in outbox(r)] == ["open"]

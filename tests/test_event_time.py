"""Event time on evidence (issue 15): idle claims that expire, frontiers a single outlier
cannot move, windows of a stream that spans years, and every event accounted for.

The engine alone, in both builds (compiled shard loops and the Python reference); the
live flow and replay run the same code (tests/test_reliability_pause.py,
tests/test_reliability_outliers.py).
"""

from __future__ import annotations

import pickle

import orjson
import pytest

from ctrguard.config import load_config_text
from ctrguard.detectors.base import ALL
from ctrguard.flows import engine
from ctrguard.flows.engine import (
    CLICK,
    IMPRESSION,
    EventPreparer,
    RawBatch,
    ShardState,
    conservation,
)
from ctrguard.flows.source import IdleClaims
from ctrguard.records import WindowDecision
from tests.test_engine import ZeroClickMonitor

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000
NOW = T0 + 30 * 24 * 3600 * 1000
YEAR = 365 * 24 * 3600 * 1000


def settings(quorum: int = 3, shards: int = 1, idle: str = "4s"):
    return load_config_text(
        "windows:\n  length: 5m\n  allowed_lateness: 2m\n"
        f"  shards: {shards}\nevent_time:\n  frontier_quorum: {quorum}\n"
        f"  idle_timeout: {idle}\n", env={})


def ev(eid, ts, campaign="c1", **extra):
    return orjson.dumps({"event_id": eid, "ts": ts, "campaign_id": campaign, **extra})


def imp(values, partition=0, idle=False, polled=None):
    return RawBatch("imp", partition, IMPRESSION, values, list(range(len(values))), idle, polled)


def clk(values, partition=0, idle=False, polled=None):
    return RawBatch("clk", partition, CLICK, values, list(range(len(values))), idle, polled)


class Flow:
    """A shard fed batch by batch (pickled between steps, as across processes)."""

    def __init__(self, s, sources):
        self.prep = EventPreparer(s)
        self.state = ShardState(s, sources, ZeroClickMonitor)
        self.out: list = []
        self.dead: list = []

    def feed(self, *batches):
        for b in batches:
            pb = self.prep.prepare(b, now_ms=NOW)
            self.dead += pb.dead_letters
            for _, chunk in self.prep.chunks(pb):
                self.out += self.state.ingest(pickle.loads(pickle.dumps(chunk)))
        return self

    def flush(self):
        self.out += self.state.flush()
        return self

    def figures(self):
        return {(f.campaign_id, f.segment, f.window_start_s): (f.impressions, f.clicks)
                for d in self.out if isinstance(d, WindowDecision) for f in d.figures}

    def late(self):
        return [d for d in self.out if not isinstance(d, WindowDecision)]


@pytest.fixture(params=["compiled", "python"])
def build(request, monkeypatch):
    if request.param == "python":
        monkeypatch.setattr(engine, "_SHARD", None)
    elif engine._SHARD is None:
        pytest.skip("shard extension not built")
    return request.param


def _minutes(a, b, prefix, campaign="c1", step=1):
    return [ev(f"{prefix}{m}", T0 + m * MIN, campaign) for m in range(a, b, step)]


# ------------------------------------------------------------------ idle claims


def test_claims_come_after_the_timeout_and_a_gap_starts_the_count_again():
    c = IdleClaims(timeout_ms=2000)
    got = [c.poll(t, True) for t in range(0, 2600, 100)]
    assert got.index("claim") == 20 and got.count("claim") == 2  # at 2.0 s, renewed at 2.5 s
    assert c.poll(6000, True) == "withdraw"  # 3.5 s without a poll: the claim is off
    assert [c.poll(t, True) for t in range(6100, 7900, 100)].count("claim") == 0
    assert c.reset() is False and c.poll(8000, True) is None


def test_a_stale_claim_holds_the_watermark_back_until_renewed(build):
    # The impression partition claimed idleness at 1,000 ms (wall clock), then the process
    # stopped; meanwhile its backlog grew. At 10,000 ms the click partition's batch, 40 min
    # ahead, comes first: the claim is 9 s old (more than half the 4 s timeout): stale.
    f = Flow(settings(quorum=1), ["imp:0", "clk:0"])
    f.feed(imp(_minutes(0, 10, "a"), polled=500), clk([ev("k0", T0 + 9 * MIN)], polled=600),
           imp([], idle=True, polled=1000), clk([], idle=True, polled=1000))
    closed_before = {k[2] for k in f.figures()}
    f.feed(clk([ev("k1", T0 + 50 * MIN)], polled=10_000))
    assert {k[2] for k in f.figures()} == closed_before, "closed past the stale claim"
    f.feed(imp(_minutes(10, 52, "b"), polled=10_001))  # the backlog, none of it late
    assert f.late() == []
    # A fresh claim (renewed after the click batch) lets the silent topic go again.
    f.feed(clk([], idle=True, polled=10_002), imp([], idle=True, polled=10_003))
    # All idle: the watermark is the largest frontier (51 min) less 2 min: [40, 45) closed.
    assert max(k[2] for k in f.figures()) * 1000 == T0 + 40 * MIN


def test_a_fresh_claim_lets_windows_close_while_a_topic_is_silent(build):
    f = Flow(settings(quorum=1), ["imp:0", "clk:0"])
    f.feed(clk([ev("k0", T0)], polled=0), clk([], idle=True, polled=100),
           imp(_minutes(0, 30, "a"), polled=200))
    # The claim was made before those impressions were read: it lets none of them close.
    assert f.figures() == {}
    f.feed(clk([], idle=True, polled=300))  # renewed
    assert (("c1", ALL, T0 // 1000) in f.figures())  # clicks silent: windows still close
    assert max(k[2] for k in f.figures()) * 1000 == T0 + 20 * MIN  # up to 29 min less 2


@pytest.mark.parametrize("order", ["claim first", "impressions first"])
def test_events_written_to_an_idle_topic_after_its_claim_are_not_late(build, order):
    # The click partition claims idleness at 1,000 ms (wall clock). The machine is busy:
    # the impression partition's next batch, read at 1,300 ms, is 40 min ahead (a backlog,
    # or a stream replayed at 600x); the click written meanwhile is fetched only after it.
    # The claim is still fresh (half the 4 s timeout is 2 s), but it was made before those
    # impressions were read, so they cannot close the click's window. Chunks of two
    # workers can reach a shard in either order; the poll times decide, not the order.
    f = Flow(settings(quorum=1), ["imp:0", "clk:0"])
    f.feed(imp(_minutes(0, 10, "a"), polled=500), clk([ev("k0", T0 + 5 * MIN)], polled=600))
    claim, backlog = clk([], idle=True, polled=1000), imp(_minutes(10, 50, "b"), polled=1300)
    f.feed(*((claim, backlog) if order == "claim first" else (backlog, claim)))
    assert all(k[2] * 1000 < T0 + 10 * MIN for k in f.figures())
    f.feed(clk([ev("k1", T0 + 20 * MIN)], polled=1400))
    assert f.late() == []
    f.flush()
    assert f.figures()[("c1", ALL, (T0 + 20 * MIN) // 1000)] == (5, 1)


def test_a_claim_for_good_never_expires(build):
    f = Flow(settings(quorum=1), ["imp:0", "clk:0"])
    f.feed(clk([], idle=True), imp(_minutes(0, 30, "a"), polled=10**9))
    assert ("c1", ALL, T0 // 1000) in f.figures()


# ------------------------------------------------------------------ frontiers


def test_one_forward_dated_event_moves_no_watermark_and_is_counted_in_its_window(build):
    outlier = NOW - 10 * MIN  # a month ahead of the stream, not of the wall clock
    # The click topic is drained (idle for good): the impression partition alone moves the
    # watermark, as in a drained or back-filled run once the other partitions have ended.
    with_outlier = Flow(settings(), ["imp:0", "clk:0"])
    plain = Flow(settings(), ["imp:0", "clk:0"])
    for flow, extra in ((with_outlier, [ev("far", outlier)]), (plain, [])):
        flow.feed(clk([], idle=True))
        for m in range(0, 60, 3):  # three minutes a batch
            flow.feed(imp(_minutes(m, m + 3, f"p{m}-") + (extra if m == 9 else [])))
        flow.flush()
    assert with_outlier.late() == [] and with_outlier.dead == []
    got, ref = with_outlier.figures(), plain.figures()
    far = ("c1", ALL, outlier // 300_000 * 300)
    assert got.pop(far) == (1, 0)
    assert got == ref


def test_a_small_batch_outlier_is_held_until_the_quorum_agrees(build):
    f = Flow(settings(quorum=3), ["imp:0", "clk:0"])
    f.feed(clk([], idle=True), imp([ev("a", T0)]), imp([ev("far", NOW - MIN)]))
    assert f.state.watermark_ms() is None  # two events: no quorum yet
    f.feed(imp([ev("b", T0 + 20 * MIN)]))
    assert f.state.watermark_ms() == T0 - 2 * MIN  # the 3rd largest: a
    f.feed(imp([ev("c", T0 + 21 * MIN)]))
    assert f.state.watermark_ms() == T0 + 18 * MIN


# ------------------------------------------------------------------ nothing vanishes


def test_an_event_decades_older_than_its_neighbours_early_is_counted_not_lost(build):
    # Issue 15, case 3: batch_size 100, an event 25 years older than the rest in the second
    # batch. Closing began at watermark - series_ttl, so its window was never closed.
    old = T0 - 25 * YEAR
    f = Flow(settings(quorum=1), ["imp:0", "clk:0"])
    lines = [ev(f"i{i}", T0 + i * 6000) for i in range(400)]
    lines.insert(50, ev("ancient", old, campaign="c9"))  # in the first batch
    f.feed(clk([], idle=True))
    for i in range(0, len(lines), 100):
        f.feed(imp(lines[i:i + 100]))
    f.flush()
    figs = f.figures()
    assert figs[("c9", ALL, old // 300_000 * 300)] == (1, 0)
    assert sum(n for (c, seg, _), (n, _) in figs.items() if seg == ALL) == 401
    rows = conservation(f.state.tally)
    assert all(r["balanced"] for r in rows.values())
    assert rows["imp:0"]["consumed"] == 401 and rows["imp:0"]["counted"] == 401
    # The 25 years between cost a bounded number of decisions, not one per window.
    assert sum(isinstance(d, WindowDecision) for d in f.out) < 2000


def test_the_same_event_after_closing_began_is_dead_lettered_late(build):
    old = T0 - 25 * YEAR
    f = Flow(settings(quorum=1), ["imp:0", "clk:0"])
    f.feed(clk([], idle=True), imp(_minutes(0, 30, "a")), imp([ev("ancient", old)]))
    f.flush()
    assert [d.stage for d in f.late()] == ["late"]
    assert all(r["balanced"] for r in conservation(f.state.tally).values())


def test_a_campaign_evicted_with_counts_far_ahead_is_made_again_for_that_window(build):
    ahead = T0 + 3 * 24 * 3600 * 1000  # 3 days: beyond series_ttl (1 day)
    f = Flow(settings(quorum=1), ["imp:0", "clk:0"])
    f.feed(clk([], idle=True), imp([ev("x1", T0), ev("far", ahead, campaign="c2"),
                                    ev("x2", T0 + MIN, campaign="c2")]))
    f.feed(imp([ev(f"z{m}", T0 + m * MIN, campaign="c3") for m in range(2, 600, 5)]))
    f.flush()
    figs = f.figures()
    assert figs[("c2", ALL, ahead // 1000)] == (1, 0)
    assert figs[("c2", ALL, T0 // 1000)] == (1, 0)
    assert f.state.stats.evicted_campaigns >= 2


def test_conservation_with_duplicates_exclusions_and_dead_letters(build):
    f = Flow(settings(quorum=1), ["imp:0", "clk:0"])
    batch = [ev("a", T0), ev("a", T0), ev("b", T0, is_internal=True), b"{nope",
             ev("c", NOW + 10 * 3600 * 1000), ev("d", T0 + MIN)]
    f.feed(clk([ev("k", T0)]), clk([], idle=True), imp(batch), imp(_minutes(20, 30, "m")),
           imp([ev("late", T0)]), imp([], idle=True))
    f.flush()
    row = conservation(f.state.tally)["imp:0"]
    assert row == {"consumed": 17, "counted": 12, "excluded": 1, "duplicates": 1,
                   "dead_lettered": 3, "balanced": True}

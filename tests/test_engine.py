"""The pure engine: figures equal a hand count; watermarks, lateness, dedup, exclusions."""

from __future__ import annotations

import pickle

import msgspec
import pytest

from ctrguard.config import Settings, load_config_text
from ctrguard.detectors.base import ALL, Counts, Verdict, Window
from ctrguard.flows.engine import CLICK, IMPRESSION, EventPreparer, RawBatch, ShardState, shard_of
from ctrguard.records import WindowDecision

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a window boundary
MIN = 60_000
NOW = T0 + 30 * 24 * 3600 * 1000  # the tests' wall clock: 30 days after T0


class ZeroClickMonitor:
    """Test double: alarms (quarantine) when a series has impressions but no clicks."""

    def __init__(self):
        self.seen: list[tuple[int, dict]] = []

    def update(self, window: Window, counts: dict[str, Counts]) -> list[Verdict]:
        self.seen.append((window.start, dict(counts)))
        return [
            Verdict(seg, "test", "click_outage", "critical", True, 1.0, 0.99, 0.02, 0.01, 0.03,
                    c.impressions * 0.02, c.impressions, "click_tracking")
            for seg, c in counts.items() if c.impressions >= 10 and c.clicks == 0
        ]


def ev(eid, ts, campaign="c1", **extra):
    return msgspec.json.encode({"event_id": eid, "ts": ts, "campaign_id": campaign, **extra})


def settings(**windows) -> Settings:
    w = {"length": "5m", "allowed_lateness": "2m", **windows}
    text = "windows:\n" + "".join(f"  {k}: {v}\n" for k, v in w.items()) + "  shards: 1\n"
    # These tests move frontiers one event at a time (the quorum's own tests set it).
    text += "event_time:\n  frontier_quorum: 1\n"
    return load_config_text(text, env={})


def run(batches, s=None, flush=True):
    s = s or settings()
    prep = EventPreparer(s)
    sources = sorted({f"{b.topic}:{b.partition}" for b in batches})
    state = ShardState(s, sources, ZeroClickMonitor)
    out, dead = [], []
    for b in batches:
        pb = prep.prepare(b, now_ms=NOW)
        dead += pb.dead_letters
        for _, chunk in prep.chunks(pb):
            out += state.ingest(chunk)
    if flush:
        out += state.flush()
    decisions = [o for o in out if isinstance(o, WindowDecision)]
    dead += [o for o in out if not isinstance(o, WindowDecision)]
    return state, decisions, dead


def imp(values, idle=False):
    return RawBatch("imp", 0, IMPRESSION, values, list(range(len(values))), idle)


def clk(values, idle=False):
    return RawBatch("clk", 0, CLICK, values, list(range(len(values))), idle)


def figures(decisions):
    return {(f.campaign_id, f.segment, f.window_start_s): (f.impressions, f.clicks, f.status)
            for d in decisions for f in d.figures}


def test_figures_equal_hand_count_with_disorder_duplicates_exclusions():
    w0, w1 = T0, T0 + 5 * MIN
    imps = [
        ev("i1", w0 + 1000, device="mobile"),
        ev("i2", w0 + 2000, device="desktop"),
        ev("i3", w1 + 1000, device="mobile"),          # next window
        ev("i4", w0 + 3000, device="mobile"),          # out of order, within lateness
        ev("i1", w0 + 1000, device="mobile"),          # duplicate (same event_id)
        ev("q1", w0 + 4000, is_internal=True),         # QA traffic
        ev("b1", w0 + 4000, user_agent="Googlebot/2.1 (+http://www.google.com/bot.html)"),
        b'{"event_id": 5}',                            # malformed
    ]
    clicks = [ev("k1", w0 + 5000, device="mobile"), ev("k1", w0 + 5000, device="mobile"),
              ev("k2", w1 + 2000, device="mobile", user_agent="python-requests/2.31")]
    state, decisions, dead = run([imp(imps), clk(clicks, idle=True), imp([], idle=True)])
    figs = figures(decisions)
    ws0, ws1 = w0 // 1000, w1 // 1000
    assert figs[("c1", ALL, ws0)] == (3, 1, "ok")
    assert figs[("c1", "device=mobile", ws0)] == (2, 1, "ok")
    assert figs[("c1", "device=desktop", ws0)] == (1, 0, "ok")
    assert figs[("c1", ALL, ws1)] == (1, 0, "ok")
    assert state.stats.duplicates == 2
    assert [d.stage for d in dead] == ["parse"]
    assert "event_id" in dead[0].reason


def test_late_event_beyond_lateness_is_dead_lettered_not_counted():
    batches = [
        imp([ev("i1", T0 + 1000)]),
        clk([ev("k0", T0 + 1000)]),
        # Both sources move 8 minutes past the first window's end: it closes (5m + 2m lateness).
        imp([ev("i2", T0 + 13 * MIN)]),
        clk([ev("k1", T0 + 13 * MIN)]),
        imp([ev("late", T0 + 2000)]),
    ]
    state, decisions, dead = run(batches)
    figs = figures(decisions)
    assert figs[("c1", ALL, T0 // 1000)] == (1, 1, "ok")
    assert [d.stage for d in dead] == ["late"]
    assert dead[0].raw == ev("late", T0 + 2000)
    assert dead[0].topic == "imp"
    assert state.stats.late == 1


def test_window_waits_for_slow_source_and_closes_when_it_goes_idle():
    s = settings()
    prep = EventPreparer(s)
    state = ShardState(s, ["imp:0", "clk:0"], ZeroClickMonitor)
    out = []
    for b in [imp([ev(f"i{i}", T0 + i * MIN // 2) for i in range(40)])]:
        for _, c in prep.chunks(prep.prepare(b)):
            out += state.ingest(c)
    assert out == []  # clicks have said nothing yet: no window may close
    for _, c in prep.chunks(prep.prepare(clk([], idle=True))):
        out += state.ingest(c)  # click topic read to its end: idle, no longer holds back
    closed = sorted(d.window_start_s for d in out if isinstance(d, WindowDecision))
    # frontier 19.5 min - 2 min lateness = 17.5 min: windows [0,5), [5,10), [10,15) closed.
    assert closed == [T0 // 1000 + k * 300 for k in range(3)]
    # The click outage (10 impressions per window, zero clicks) was flagged.
    statuses = {f.window_start_s: f.status for d in out for f in d.figures if f.segment == ALL}
    assert set(statuses.values()) == {"quarantined"}


def test_silent_campaign_windows_reach_the_monitor_with_zero_counts():
    batches = [imp([ev("a1", T0, campaign="a"), ev("b1", T0, campaign="b")]),
               imp([ev(f"b{i}", T0 + i * 5 * MIN, campaign="b") for i in range(2, 6)], idle=True),
               clk([], idle=True)]
    s = settings()
    prep = EventPreparer(s)
    monitors = []

    def factory():
        monitors.append(ZeroClickMonitor())
        return monitors[-1]

    state = ShardState(s, ["imp:0", "clk:0"], factory)
    for b in batches:
        for _, c in prep.chunks(prep.prepare(b)):
            state.ingest(c)
    a_monitor = monitors[0]
    starts = [start for start, _ in a_monitor.seen]
    assert starts == [T0 // 1000 + k * 300 for k in range(len(starts))]
    assert len(starts) >= 3
    assert all(c[ALL] == Counts(0, 0) for _, c in a_monitor.seen[1:])


def test_future_timestamp_goes_to_dead_letter_and_does_not_close_windows():
    batch = imp([ev("i1", T0), ev("i2", T0 + 1000), ev("i3", T0 + 2000),
                 ev("far", NOW + 2 * 3600 * 1000)])
    state, decisions, dead = run([batch, clk([], idle=True)], flush=False)
    assert [d.stage for d in dead] == ["future"]
    assert decisions == []


def test_state_pickles_and_continues_identically():
    s = settings()
    prep = EventPreparer(s)
    batches = [imp([ev(f"i{i}", T0 + i * 20_000, device="mobile") for i in range(60)]),
               clk([ev(f"k{i}", T0 + i * 100_000) for i in range(10)]),
               imp([ev(f"j{i}", T0 + 20 * MIN + i * 20_000) for i in range(60)]),
               clk([], idle=True)]
    a = ShardState(s, ["imp:0", "clk:0"], ZeroClickMonitor)
    out_a, out_b = [], []
    for i, b in enumerate(batches):
        for _, c in prep.chunks(prep.prepare(b)):
            out_a += a.ingest(c)
        if i == 1:
            b_state = pickle.loads(pickle.dumps(a))
            later = batches[2:]
    for b in later:
        for _, c in prep.chunks(prep.prepare(b)):
            out_b += b_state.ingest(c)
    tail_a = [o for o in out_a if isinstance(o, WindowDecision) and o.window_start_s >= 0]
    assert out_b == tail_a[len(tail_a) - len(out_b):]
    assert out_b  # something actually closed after the snapshot


@pytest.mark.parametrize("cap", [2])
def test_segment_values_beyond_cap_fold_into_other(cap):
    s = load_config_text(f"segments:\n  dimensions: [device]\n  max_values_per_dimension: {cap}\n"
                         "windows:\n  shards: 1\n", env={})
    batch = imp([ev(f"i{i}", T0 + i, device=f"d{i}") for i in range(5)], idle=True)
    _, decisions, _ = run([batch, clk([], idle=True)], s=s)
    segs = {f.segment: f.impressions for d in decisions for f in d.figures}
    assert segs == {ALL: 5, "device=d0": 1, "device=d1": 1, "device=other": 3}


def test_source_far_ahead_does_not_make_the_other_sources_events_late():
    # The click topic is drained (idle) 40 minutes ahead before the first impression arrives.
    # A shard that so far holds only that late window learns the watermark from an
    # impression batch without events of its own: its campaigns' first windows must still
    # count their impressions, not dead-letter them.
    s = load_config_text("windows:\n  length: 5m\n  allowed_lateness: 2m\n  shards: 16\n",
                         env={})
    prep = EventPreparer(s)
    a, b = "c1", next(f"c{i}" for i in range(2, 99) if shard_of(f"c{i}", 16) != shard_of("c1", 16))
    states = {k: ShardState(s, ["imp:0", "clk:0"], ZeroClickMonitor) for k in range(16)}
    out = []
    for batch in [clk([ev("k1", T0 + 40 * MIN, campaign=a)], idle=True),
                  imp([ev("i1", T0 + 1000, campaign=b)]),
                  imp([ev("i2", T0 + 2000, campaign=a), ev("i3", T0 + 6 * MIN, campaign=a)]),
                  imp([ev("i4", T0 + 50 * MIN, campaign=a)], idle=True)]:
        for k, chunk in prep.chunks(prep.prepare(batch, now_ms=NOW)):
            out += states[k].ingest(chunk)
    for state in states.values():
        out += state.flush()
    assert [o for o in out if not isinstance(o, WindowDecision)] == []
    figs = figures([o for o in out if isinstance(o, WindowDecision)])
    assert figs[(a, ALL, T0 // 1000)][:2] == (1, 0)
    assert figs[(a, ALL, T0 // 1000 + 300)][:2] == (1, 0)
    assert figs[(a, ALL, T0 // 1000 + 2400)][:2] == (0, 1)
    assert figs[(b, ALL, T0 // 1000)][:2] == (1, 0)

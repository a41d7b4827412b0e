"""The compiled loops of routing and counting (``ctrguard/_shard.c``) against the Python
reference in ``flows/engine.py``: same chunks, same shard state, same decisions."""

from __future__ import annotations

import pickle
import sys

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctrguard.config import load_config_text
from ctrguard.flows import engine
from ctrguard.flows.engine import CLICK, IMPRESSION, EventPreparer, RawBatch, ShardState
from ctrguard.records import WindowDecision
from tests.test_engine import NOW, T0, ZeroClickMonitor

pytestmark = pytest.mark.skipif(engine._SHARD is None,
                                reason="ctrguard._shard not built (make native)")

MIN = 60_000


def _settings(shards: int, windows: str = ""):
    return load_config_text(
        "windows:\n  length: 5m\n  allowed_lateness: 2m\n"
        f"  shards: {shards}\n{windows}"
        "segments:\n  dimensions: [device, geo]\n  max_values_per_dimension: 2\n"
        "exclusions:\n  internal: true\n  bot_user_agents: [crawler]\n", env={})


def _message(i: int, ts: int, campaign: int, device: int | None, geo: int | None) -> bytes:
    event = {"event_id": f"e{i}", "ts": ts, "campaign_id": f"c{campaign}"}
    if device is not None:
        event["device"] = ("mobile", "desktop", "tablet", "tv")[device]
    if geo is not None:
        event["geo"] = ("DE", "FR", "US")[geo]
    if i % 11 == 3:     # left out: internal traffic, a bot
        event["is_internal"] = True
    elif i % 13 == 5:
        event["user_agent"] = "SomeCrawler/2.0"
    elif i % 7 == 2:
        event["user_agent"] = "Mozilla/5.0"
    if i % 17 == 9:     # far in the future: a dead letter
        event["ts"] = ts + 10**12
    return msgspec.json.encode(event)


_event = st.tuples(
    st.integers(0, 40),                 # event id (repeats are duplicates)
    st.integers(-3, 30),                # minutes after T0 (below 0: late once windows close)
    st.integers(0, 6),                  # campaign
    st.one_of(st.none(), st.integers(0, 3)),
    st.one_of(st.none(), st.integers(0, 2)),
)
_batch = st.tuples(st.sampled_from([IMPRESSION, CLICK]), st.lists(_event, max_size=40))


def _run(batches, shards: int, windows: str = "", monitor=ZeroClickMonitor
         ) -> tuple[list, bytes]:
    s = _settings(shards, windows)
    prep = EventPreparer(s)
    states = [ShardState(s, ["imp:0", "clk:0"], monitor) for _ in range(shards)]
    record: list = []
    offset = 0
    for kind, events in batches:
        values = [_message(*e[:1], T0 + e[1] * MIN + e[0], *e[2:]) for e in events]
        topic = "imp" if kind == IMPRESSION else "clk"
        batch = RawBatch(topic, 0, kind, values, list(range(offset, offset + len(values))))
        offset += len(values)
        prepared = prep.prepare(batch, now_ms=NOW)
        record.append((sorted(prepared.excluded.items()), prepared.frontier_ms,
                       [repr(d) for d in prepared.dead_letters]))
        for shard, chunk in prep.chunks(prepared):
            eids, offsets, raws = chunk.row_columns()
            record.append((shard, chunk.kind, chunk.ts_ms.tolist(), list(chunk.campaign_ids),
                           list(eids), list(chunk.dims), list(offsets), list(raws or ()),
                           chunk.keys.tolist()))
            for out in states[shard].ingest(chunk):
                record.append(repr(out) if isinstance(out, WindowDecision)
                              else repr(out))
    for state in states:
        record += [repr(o) for o in state.flush()]
        record.append(state.stats.as_dict())
    return record, pickle.dumps(states)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(_batch, max_size=8), shards=st.sampled_from([1, 3, 16]))
def test_compiled_loops_give_what_the_python_reference_gives(batches, shards):
    compiled = _run(batches, shards)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "_SHARD", None)
        reference = _run(batches, shards)
    assert reference == compiled


def test_a_stream_with_everything_goes_through_both_paths_alike(monkeypatch):
    # Several windows per batch, duplicates, late events, folded segment values, and
    # campaigns that appear in a later window first: the cases the loops branch on.
    batches = [
        (IMPRESSION, [(i % 30, (i * 7) % 25, i % 5, i % 4, i % 3) for i in range(200)]),
        (CLICK, [(i % 9, (i * 5) % 25, i % 5, (i + 1) % 4, None) for i in range(60)]),
        (IMPRESSION, [(i, 29 - i % 3, 6, None, None) for i in range(20)]),
        (IMPRESSION, [(i, -3 + i % 2, i % 7, 0, 0) for i in range(10)]),     # late
        (CLICK, [(i, 28, i % 7, i % 4, i % 3) for i in range(30)]),
    ]
    compiled = _run(batches, 4)
    decided = [r for r in compiled[0] if isinstance(r, str) and "WindowDecision" in r]
    assert len(decided) > 20
    assert any(isinstance(r, str) and "stage='late'" in r for r in compiled[0])
    prepared = [r for r in compiled[0] if isinstance(r, tuple) and len(r) == 3]
    assert {k for r in prepared for k, _ in r[0]} == {"internal", "bot_user_agent"}
    assert any("stage='future'" in d for r in prepared for d in r[2])
    monkeypatch.setattr(engine, "_SHARD", None)
    assert _run(batches, 4) == compiled


# -- close_window ---------------------------------------------------------------------


def test_closing_evicts_and_decides_as_the_python_loop_does(monkeypatch):
    # A series_ttl of three windows: c0 falls silent and is evicted, c2 too and then comes
    # back as a new campaign; c1 and c3 (alarms: impressions, no clicks) stay throughout.
    batches = [
        (IMPRESSION, [(i, i % 10, i % 4, i % 4, i % 3) for i in range(40)]),
        (CLICK, [(i, i % 10, i % 3, i % 4, None) for i in range(0, 40, 3)]),
        (IMPRESSION, [(100 + i, 10 + i % 60, 1 + 2 * (i % 2), i % 4, i % 3)
                      for i in range(120)]),
        (CLICK, [(100 + i, 10 + i % 60, 1, i % 4, i % 3) for i in range(0, 120, 4)]),
        (IMPRESSION, [(300 + i, 75 + i % 10, 2, 0, 1) for i in range(30)]),
    ]
    compiled = _run(batches, 1, "  series_ttl: 15m\n")
    stats = compiled[0][-1]
    assert stats["evicted_campaigns"] >= 2 and stats["alerts"] > 0
    monkeypatch.setattr(engine, "_SHARD", None)
    assert _run(batches, 1, "  series_ttl: 15m\n") == compiled


class _FailingMonitor:
    """Decides nothing, but fails on a window of a series with tablets."""

    def update(self, window, counts):
        if "device=tablet" in counts:
            raise RuntimeError("monitor failed")
        return []


def test_a_failing_monitor_leaves_the_state_the_python_loop_leaves(monkeypatch):
    batches = [(IMPRESSION, [(i, i % 25, i % 5, i % 3 if i < 50 else 2, None)
                             for i in range(80)])]

    def run():
        s = _settings(1)
        prep = EventPreparer(s)
        state = ShardState(s, ["imp:0", "clk:0"], _FailingMonitor)
        values = [_message(e[0], T0 + e[1] * MIN + e[0], *e[2:]) for e in batches[0][1]]
        prepared = prep.prepare(RawBatch("imp", 0, IMPRESSION, values, list(range(80))),
                                now_ms=NOW)
        for _, chunk in prep.chunks(prepared):
            state.ingest(chunk)
        with pytest.raises(RuntimeError, match="monitor failed"):
            state.flush()
        return state.stats.as_dict(), pickle.dumps(state)

    compiled = run()
    assert compiled[0]["windows"] > 0  # the decisions before the failure were counted
    monkeypatch.setattr(engine, "_SHARD", None)
    assert run() == compiled


def test_close_window_refuses_malformed_arguments():
    args = [{}, {}, 0, 3, (None, "s", "e"), [], [], None, None, [], None, None, "ok", None,
            None, None]
    with pytest.raises(TypeError, match="when must be"):
        engine._SHARD.close_window(*args[:4], (None,), *args[5:])
    with pytest.raises(AttributeError):  # a Window has start and end
        engine._SHARD.close_window(*args)


# -- split ----------------------------------------------------------------------------


def test_split_is_a_stable_counting_sort_of_every_column():
    ids = np.array([2, 0, 2, 1, 0, 2], dtype=np.intp)
    a, b = ["a0", "a1", "a2", "a3", "a4", "a5"], (10, 11, 12, 13, 14, 15)
    buf, counts, parts = engine._SHARD.split(4, ids, (a, b))
    assert np.frombuffer(buf, dtype=np.intp).tolist() == [1, 4, 3, 0, 2, 5]
    assert counts == [2, 1, 3, 0]
    assert parts == [(["a1", "a4"], [11, 14]), (["a3"], [13]),
                     (["a0", "a2", "a5"], [10, 12, 15]), None]


def test_split_holds_one_reference_per_placed_item():
    item = object()
    before = sys.getrefcount(item)
    out = engine._SHARD.split(2, np.array([0, 1, 1], dtype=np.intp), ([item] * 3,))
    assert sys.getrefcount(item) == before + 3
    del out
    assert sys.getrefcount(item) == before


@pytest.mark.parametrize(("args", "error"), [
    ((2, np.array([0, 2], dtype=np.intp), (["a", "b"],)), ValueError),     # id out of range
    ((2, np.array([0, -1], dtype=np.intp), (["a", "b"],)), ValueError),
    ((2, np.array([0, 1], dtype=np.intp), (["a"],)), ValueError),          # lengths differ
    ((2, np.array([0, 1], dtype=np.int32), (["a", "b"],)), TypeError),     # not intp
    ((0, np.array([], dtype=np.intp), ()), ValueError),
    ((2, np.array([0, 1], dtype=np.intp), (5,)), TypeError),               # not a sequence
])
def test_split_refuses_what_it_cannot_do(args, error):
    with pytest.raises(error):
        engine._SHARD.split(*args)


def test_shard_ids_looks_every_campaign_up_or_answers_none():
    cache = {"a": 2, "b": 0, "c": 2}
    ids, first = engine._SHARD.shard_ids(cache, ["a", "b", "a", "c"])
    assert np.frombuffer(ids, dtype=np.intp).tolist() == [2, 0, 2, 2] and first == -1
    ids, first = engine._SHARD.shard_ids(cache, ("c", "a", "a"))
    assert np.frombuffer(ids, dtype=np.intp).tolist() == [2, 2, 2] and first == 2
    assert engine._SHARD.shard_ids(cache, ["a", "x", "b"]) is None  # "x": not cached yet
    ids, first = engine._SHARD.shard_ids(cache, [])
    assert len(ids) == 0 and first == -1
    with pytest.raises(TypeError):
        engine._SHARD.shard_ids(cache, ["a", ["unhashable"]])
    with pytest.raises(TypeError):
        engine._SHARD.shard_ids({"a": "not an int"}, ["a"])


# -- count ----------------------------------------------------------------------------


def test_count_adds_up_and_calls_back_for_new_windows_and_keys():
    opened, new_keys = [], []

    def on_window(cid, wid, by_campaign):
        opened.append((cid, wid))
        counts = by_campaign[cid] = {}
        return counts

    open_: dict = {}
    engine._SHARD.count(open_, {}, [7, 7, 8, 7], ["a", "b", "a", "a"], ["m", "m", "m", "d"],
                        None, on_window, lambda cid, dk: new_keys.append((cid, dk)))
    assert open_ == {7: {"a": {"m": 1, "d": 1}, "b": {"m": 1}}, 8: {"a": {"m": 1}}}
    assert opened == [("a", 7), ("b", 7), ("a", 8)]
    assert new_keys == [("a", "m"), ("b", "m"), ("a", "m"), ("a", "d")]
    wrap: dict = {}
    engine._SHARD.count(open_, {}, 8, ["a", "a"], ["m", "m"], wrap, on_window,
                        lambda cid, dk: new_keys.append((cid, dk)))
    assert open_[8]["a"] == {"m": 1, ("m",): 2} and wrap == {"m": ("m",)}
    assert open_[8]["a"].keys() & {wrap["m"]} and new_keys[-1] == ("a", "m")


def test_count_opens_a_known_campaigns_window_itself():
    # What ShardState._open_window does for a campaign the shard has, without calling it.
    class Camp:
        __slots__ = ("dims", "first_wid", "last_event_wid")

        def __init__(self, first, last):
            self.dims = type("D", (), {"segs": {"m": ("all",)}})()
            self.first_wid, self.last_event_wid = first, last

    camps = {"a": Camp(5, 6), "b": Camp(5, 6), "c": Camp(5, 6)}
    opened = []

    def on_window(cid, wid, by_campaign):
        opened.append(cid)
        by_campaign[cid] = {}
        return by_campaign[cid]

    open_: dict = {}
    engine._SHARD.count(open_, camps, np.array([3, 9, 6, 4, 9], dtype=np.int64),
                        ["a", "b", "c", "a", "x"], ["m"] * 5, None, on_window,
                        lambda cid, dk: None)
    assert opened == ["x"]
    # A window opened ahead leaves last_event_wid (the last closed window with events, set
    # when a window closes) as it is; an earlier one lowers both.
    assert [(c.first_wid, c.last_event_wid) for c in camps.values()] == [(3, 3), (5, 6),
                                                                         (5, 6)]
    assert open_ == {3: {"a": {"m": 1}}, 9: {"b": {"m": 1}, "x": {"m": 1}},
                     6: {"c": {"m": 1}}, 4: {"a": {"m": 1}}}
    with pytest.raises(AttributeError):
        engine._SHARD.count({}, {"a": object()}, 1, ["a"], ["m"], None, on_window,
                            lambda cid, dk: None)


def test_count_takes_window_ids_as_an_int64_array_alike():
    def on_window(cid, wid, by_campaign):
        by_campaign[cid] = {}
        return by_campaign[cid]

    wids = [7, 7, 8, 7, -1]
    args = (["a", "b", "a", "a", "b"], ["m", "m", "m", "d", "m"], None, on_window,
            lambda cid, dk: None)
    from_list: dict = {}
    from_array: dict = {}
    engine._SHARD.count(from_list, {}, wids, *args)
    engine._SHARD.count(from_array, {}, np.array(wids, dtype=np.int64), *args)
    assert from_array == from_list == {7: {"a": {"m": 1, "d": 1}, "b": {"m": 1}},
                                       8: {"a": {"m": 1}}, -1: {"b": {"m": 1}}}
    with pytest.raises(TypeError, match="int64"):
        engine._SHARD.count({}, {}, np.array(wids, dtype=np.int32), *args)
    with pytest.raises(ValueError, match="length"):
        engine._SHARD.count({}, {}, np.array(wids[:4], dtype=np.int64), *args)


# -- span and group -------------------------------------------------------------------


def test_span_and_group_find_the_windows_as_floor_division_does():
    ts = np.array([1_000, 299_999, 300_000, -1, 905_000, 1_000, -300_001], dtype=np.int64)
    wids = ts // 300_000
    assert engine._SHARD.span(ts, 300_000) == (wids.min(), wids.max()) == (-2, 3)
    got, order, counts = engine._SHARD.group(ts, 300_000, -2, 6)
    assert np.frombuffer(got, dtype=np.int64).tolist() == wids.tolist()
    assert np.frombuffer(order, dtype=np.intp).tolist() == np.argsort(
        wids, kind="stable").tolist()
    assert counts == np.bincount(wids + 2).tolist() == [1, 1, 3, 1, 0, 1]
    assert engine._SHARD.span(wids, 1) == (-2, 3)
    with pytest.raises(ValueError):
        engine._SHARD.span(np.array([], dtype=np.int64), 1)
    with pytest.raises(ValueError, match="outside"):
        engine._SHARD.group(ts, 300_000, -1, 6)
    with pytest.raises(TypeError, match="int64"):
        engine._SHARD.span(ts.astype(np.float64), 1)


def test_chunks_far_apart_in_time_and_in_any_layout_count_alike():
    # Windows more than 1024 apart (numpy's way), before the epoch, a strided and a
    # big-endian times array: the compiled path and the reference keep the same state.
    def run():
        s = _settings(1)
        state = ShardState(s, ["imp:0"], ZeroClickMonitor)
        out = []
        day = 86_400_000
        times = [T0, T0 + 9 * day, T0 + 1, T0 + 9 * day + 5, T0 + 2]
        rows = [engine.Prepared(t, IMPRESSION, f"e{i % 4}", f"c{i % 2}", ("mobile", None),
                                b"", i) for i, t in enumerate(times)]
        out += state.ingest(engine.Chunk.of("imp:0", None, False, rows))
        chunk = engine.Chunk.of("imp:0", None, False, rows[:2] * 2)
        chunk.ts_ms = np.repeat(chunk.ts_ms, 2)[::2]      # strided
        out += state.ingest(chunk)
        chunk = engine.Chunk.of("imp:0", None, False, rows[2:])
        chunk.ts_ms = chunk.ts_ms.astype(">i8")              # not native
        out += state.ingest(chunk)
        early = [engine.Prepared(-5 * MIN + i, IMPRESSION, f"x{i}", "c0", ("tv", None), b"", i)
                 for i in range(3)]
        out += state.ingest(engine.Chunk.of("imp:0", None, False, early + rows[:1]))
        out += state.flush()
        return [repr(o) for o in out], state.stats.as_dict(), pickle.dumps(state)

    compiled = run()
    assert compiled[1]["events"] > 0 and compiled[1]["duplicates"] > 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "_SHARD", None)
        assert run() == compiled


def test_merge_is_a_stable_sort_of_two_ascending_runs():
    rng = np.random.default_rng(3)
    for na, nb in [(0, 0), (0, 3), (4, 0), (1, 1), (50, 7), (7, 50), (300, 300)]:
        a = np.sort(rng.integers(0, 2**64 - 1, na, dtype=np.uint64, endpoint=True))
        b = np.sort(rng.integers(0, 2**64 - 1, nb, dtype=np.uint64, endpoint=True))
        if na and nb:
            b[0] = a[na // 2]  # an equal key across the runs
            b.sort()
        got = np.frombuffer(engine._SHARD.merge(a, b), dtype=np.uint64)
        assert got.tolist() == np.sort(np.concatenate((a, b)), kind="stable").tolist()
    with pytest.raises(TypeError):
        engine._SHARD.merge(b"abc", b"")


def test_ok_figures_are_the_reference_figures():
    counts = {"all": engine._counts(10, 3), "device=m": engine._ZERO,
              "device=d": engine._counts(0, 2), "geo=DE": engine._counts(1000, 1)}
    got = engine._SHARD.ok_figures("c1", counts, engine._ZERO, "s", "e", 60, "ok", (),
                                   engine._figure)
    want = tuple(engine.Figure("c1", seg, "s", "e", 60, c.impressions, c.clicks,
                               c.clicks / c.impressions if c.impressions > 0 else 0.0, "ok",
                               ())
                 for seg, c in counts.items() if c is not engine._ZERO)
    assert got == want and [f.ctr for f in got] == [0.3, 0.0, 0.001]
    with pytest.raises(AttributeError):
        engine._SHARD.ok_figures("c1", {"all": object()}, engine._ZERO, "s", "e", 60, "ok",
                                 (), engine._figure)


class _PlainCounts:  # no slots: its fields are read by name
    def __init__(self, impressions, clicks):
        self.impressions, self.clicks = impressions, clicks


@pytest.mark.parametrize("make", [engine._counts, _PlainCounts])
def test_ok_figures_divide_as_python_does_at_any_size(make):
    # Below 2**53 the division is done on doubles; above, and for a bool or a float, by
    # Python's operator. Either way the ctr is Python's.
    big = 2**53
    pairs = [(3, 1), (7, 7), (big, big - 1), (big + 1, 3), (big - 1, big + 7), (3 * big, 1),
             (10**30, 10**29 + 1), (0, 5), (-4, 2), (5, -2), (True, True), (4.0, 1)]
    counts = {f"s{i}": make(n, k) for i, (n, k) in enumerate(pairs)}
    got = engine._SHARD.ok_figures("c1", counts, engine._ZERO, "s", "e", 60, "ok", (),
                                   engine._figure)
    want = [(k / n if n > 0 else 0.0) for n, k in pairs]
    assert [f.ctr for f in got] == want
    assert [type(f.ctr) for f in got] == [type(x) for x in want]
    assert [(f.impressions, f.clicks) for f in got] == pairs


def test_count_propagates_errors_from_callbacks_and_bad_arguments():
    def on_window(cid, wid, by_campaign):
        by_campaign[cid] = {}
        return by_campaign[cid]

    def boom(cid, dk):
        raise RuntimeError("on_key failed")

    with pytest.raises(RuntimeError, match="on_key failed"):
        engine._SHARD.count({}, {}, 1, ["a"], ["m"], None, on_window, boom)
    with pytest.raises(TypeError, match="must return a dict"):
        engine._SHARD.count({}, {}, 1, ["a"], ["m"], None, lambda *a: None, boom)
    with pytest.raises(ValueError, match="length"):
        engine._SHARD.count({}, {}, [1, 2], ["a"], ["m"], None, on_window, boom)
    with pytest.raises(ValueError, match="length"):
        engine._SHARD.count({}, {}, 1, ["a", "b"], ["m"], None, on_window, boom)
    with pytest.raises(TypeError):
        engine._SHARD.count({}, {}, 1, ["a"], ["m"], [], on_window, boom)
    with pytest.raises(TypeError, match="1-tuples"):
        engine._SHARD.count({}, {}, 1, ["a"], ["m"], {"m": "m"}, on_window, boom)


# -- series_counts --------------------------------------------------------------------


class _Camp:
    """What series_counts reads of a campaign: its series and its segments per dims key."""

    def __init__(self, series, segs):
        self.series = series
        self.dims = type("D", (), {})()
        self.dims.segs = segs


def test_series_counts_sums_every_series_and_takes_new_values_in():
    camp = _Camp(("all", "device=m"), {"m": ("all", "device=m")})

    def take_in(c, dk):  # a new value: a new series at the end, and new segments
        c.series = (*c.series, f"device={dk}")
        c.dims = type("D", (), {})()
        c.dims.segs = {"m": ("all", "device=m"), dk: ("all", f"device={dk}")}
        return c.dims.segs[dk]

    table = engine._SMALL_COUNTS
    out = engine._SHARD.series_counts(camp, {"m": 3, ("m",): 1, "d": 200, ("d",): 20},
                                      take_in, table, engine._counts)
    assert list(out) == ["all", "device=m", "device=d"]
    assert [(c.impressions, c.clicks) for c in out.values()] == [(203, 21), (3, 1), (200, 20)]
    assert out["device=m"] is table[3][1]            # small counts: the shared objects
    assert camp.series[-1] == "device=d"


def test_series_counts_gives_zero_counts_to_series_without_events():
    camp = _Camp(("all", "geo=DE", "device=m"), {"m": ("all", "device=m")})
    out = engine._SHARD.series_counts(camp, {("m",): 2}, None, engine._SMALL_COUNTS,
                                      engine._counts)
    assert out == {"all": engine._counts(0, 2), "geo=DE": engine._ZERO,
                   "device=m": engine._counts(0, 2)}


def test_series_counts_refuses_malformed_state():
    with pytest.raises(TypeError, match="tuple"):
        engine._SHARD.series_counts(_Camp(["all"], {}), {}, None, [], engine._counts)
    with pytest.raises(TypeError, match="segments"):
        engine._SHARD.series_counts(_Camp(("all",), {"m": ["all"]}), {"m": 1}, None, [],
                                    engine._counts)
    with pytest.raises(RuntimeError, match="take_in"):
        engine._SHARD.series_counts(_Camp(("all",), {}), {"m": 1}, _raise, [], engine._counts)


def _raise(*args):
    raise RuntimeError("take_in failed")


# -- slot_maker -----------------------------------------------------------------------


# (Figure is a msgspec Struct: built by its own constructor, not by the slot maker)
@pytest.mark.parametrize("cls", ["Counts", "Window", "WindowDecision"])
def test_slot_maker_builds_what_the_dataclass_builds(cls):
    from dataclasses import fields

    from ctrguard import records
    from ctrguard.detectors import base

    klass = getattr(records, cls, None) or getattr(base, cls)
    names = tuple(f.name for f in fields(klass))
    values = {"Counts": (120, 3), "Window": (0, 300),
              "WindowDecision": ("c1", 0, 300, (), ())}[cls]
    made = engine._SHARD.slot_maker(klass, names)(*values)
    python = engine._slot_constructor_py(klass, list(names))(*values)
    assert type(made) is klass
    assert made == klass(*values) == python
    assert pickle.loads(pickle.dumps(made)) == made
    assert [getattr(made, n) for n in names] == list(values)


def test_slot_maker_holds_one_reference_per_value_and_checks_its_arguments():
    from ctrguard.records import WindowDecision

    make = engine._slot_constructor(WindowDecision)
    value = object()
    before = sys.getrefcount(value)
    decision = make("c1", 0, 300, (), value)
    assert sys.getrefcount(value) == before + 1
    del decision
    assert sys.getrefcount(value) == before
    with pytest.raises(TypeError, match="5 positional"):
        make("c1", 0, 300, ())


def test_slot_maker_refuses_what_is_not_a_plain_slot():
    class NoSlots:
        pass

    class Slotted:
        __slots__ = ("a",)

    class OwnNew:
        __slots__ = ("a",)

        def __new__(cls):
            return super().__new__(cls)

    with pytest.raises(TypeError, match="not a slot"):
        engine._SHARD.slot_maker(NoSlots, ("a",))
    with pytest.raises(TypeError, match="not a slot"):
        engine._SHARD.slot_maker(Slotted, ("b",))
    with pytest.raises(TypeError, match="object.__new__"):
        engine._SHARD.slot_maker(OwnNew, ("a",))
    assert engine._SHARD.slot_maker(Slotted, ("a",))(5).a == 5


# -- admit ----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.lists(st.integers(0, 60), min_size=1, max_size=50), max_size=12),
       spread=st.sampled_from([0, 1, 57, 63]))
def test_admit_decides_what_the_python_reference_decides(chunks, spread):
    # Few distinct keys, so that repeats within and across chunks are common; ``spread``
    # moves them to the top bits (the map's slots) or leaves them in the low ones.
    compiled, reference = engine._Seen(), engine._Seen()
    for chunk in chunks:
        keys = np.array([k << spread if spread < 63 else (k % 2) << 63 | k for k in chunk],
                        dtype=np.uint64)
        got = compiled.admit(keys.copy())
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(engine, "_SHARD", None)
            want = reference.admit(keys.copy())
        assert (got is None) == (want is None)
        if got is not None:
            assert got.tolist() == want.tolist()
        assert [r.tolist() for r in compiled.runs] == [r.tolist() for r in reference.runs]
        assert compiled.marks.tobytes() == reference.marks.tobytes()
    assert pickle.dumps(compiled) == pickle.dumps(reference)
    # Closing the window: the runs merged into one (in C, run by run) as the reference sorts
    # them, every key still found.
    compiled.compact()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "_SHARD", None)
        reference.compact()
    assert [r.tolist() for r in compiled.runs] == [r.tolist() for r in reference.runs]
    assert len(compiled.runs) <= 1 and compiled.marks is None
    assert pickle.dumps(compiled) == pickle.dumps(reference)
    assert all(k in compiled for k in (reference.runs[0] if reference.runs else ()))


def test_admit_refuses_what_it_cannot_read():
    seen = engine._Seen()
    seen.admit(np.array([1, 2], dtype=np.uint64))
    with pytest.raises(ValueError, match="marks"):
        engine._SHARD.admit(np.array([2**64 - 1], dtype=np.uint64), np.zeros(1, np.uint8), 0,
                            [])
    with pytest.raises(BufferError):
        engine._SHARD.admit(np.array([1], dtype=np.uint64), bytes(8), 60, [])  # read-only
    with pytest.raises(TypeError, match="uint64"):
        engine._SHARD.admit(np.array([1], dtype=np.uint64), seen.marks, 60,
                            [np.zeros(3, np.uint8)])

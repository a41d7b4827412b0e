"""The shard state's compact form: de-duplication keys, shared segment state, snapshots."""

from __future__ import annotations

import copyreg
import io
import pickle
import random
from collections import Counter
from pathlib import Path

import msgspec
import numpy as np
import pytest

from ctrguard.config import load_config_text
from ctrguard.detectors.base import ALL
from ctrguard.errors import ConfigError
from ctrguard.flows import engine
from ctrguard.flows.engine import (
    CLICK,
    IMPRESSION,
    Chunk,
    EventPreparer,
    Prepared,
    RawBatch,
    ShardState,
    dedup_keys,
    load_snapshot,
)
from ctrguard.records import WindowDecision
from tests.test_fast_path import figure_totals

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a window boundary
MIN = 60_000
NOW = T0 + 30 * 24 * 3600 * 1000


class Recorder:
    def __init__(self):
        self.orders: list[tuple[str, ...]] = []

    def update(self, window, counts):
        self.orders.append(tuple(counts))
        return []


def _settings(dims="device", cap=50):
    return load_config_text(
        "windows:\n  length: 5m\n  allowed_lateness: 2m\n  shards: 1\n"
        "event_time:\n  frontier_quorum: 1\n"  # one event moves a frontier here
        f"segments:\n  dimensions: [{dims}]\n  max_values_per_dimension: {cap}\n", env={})


def _ev(eid, ts, campaign="c1", **extra):
    return msgspec.json.encode({"event_id": eid, "ts": ts, "campaign_id": campaign, **extra})


def _batch(kind, lines, idle=False, partition=0):
    topic = "imp" if kind == IMPRESSION else "clk"
    return RawBatch(topic, partition, kind, lines, list(range(len(lines))), idle)


def _feed(state, prep, batches):
    out = []
    for b in batches:
        for _, chunk in prep.chunks(prep.prepare(b, now_ms=NOW)):
            out += state.ingest(chunk)
    return out


def _figures(out):
    return {(f.campaign_id, f.segment, f.window_start_s): (f.impressions, f.clicks)
            for d in out if isinstance(d, WindowDecision) for f in d.figures}


# --------------------------------------------------------------------------- keys


def test_dedup_key_depends_on_the_pair_only_not_on_the_batch():
    pairs = [("c1", "e1"), ("c2", "e1"), ("ab", "c"), ("a", "bc"), ("c1", "ü-1"),
             ("c1", "x" * 256), ("c" * 256, "y")]
    alone = [int(dedup_keys([c], [e])[0]) for c, e in pairs]
    together = dedup_keys([c for c, _ in pairs], [e for _, e in pairs]).tolist()
    assert together == alone
    assert len(set(alone)) == len(alone)  # campaign scopes the id; no ambiguous split
    # ASCII batches take numpy's encoder, others UTF-8 per id: same bytes, same key.
    assert int(dedup_keys(["c1"], ["e1"])[0]) == int(dedup_keys(["c1", "c9"], ["e1", "é"])[0])
    assert dedup_keys([], []).dtype == np.uint64


def test_dedup_keys_of_many_structured_ids_are_distinct():
    n = 200_000
    keys = dedup_keys([f"c{i % 7}" for i in range(n)], [f"imp-{i:08x}" for i in range(n)])
    assert len(np.unique(keys)) == n


def test_seen_runs_stay_logarithmic_and_find_every_key():
    seen = engine._Seen()
    rng = np.random.default_rng(5)
    every = []
    for size in [1, 7, 300, 1, 1, 5000, 2, 64] * 20:
        keys = rng.integers(0, 2**64 - 1, size, dtype=np.uint64)
        pos = seen.admit(keys)
        assert pos is None  # random 64-bit keys: all new
        every.append(keys)
        assert len(seen.runs) <= 2 + int(np.log2(len(seen)))
    allkeys = np.concatenate(every)
    again = seen.admit(allkeys[::-1].copy())
    assert again is not None and again.size == 0
    assert len(seen) == len(allkeys)
    runs = seen.runs
    assert all(len(a) > 2 * len(b) for a, b in zip(runs, runs[1:], strict=False))
    assert all(np.all(r[1:] > r[:-1]) for r in runs)
    seen.compact()
    assert len(seen.runs) == 1 and len(seen) == len(allkeys)


def test_seen_admits_the_first_arrival_of_each_new_key():
    seen = engine._Seen()
    assert seen.admit(np.array([5, 3, 5, 9, 3], dtype=np.uint64)).tolist() == [0, 1, 3]
    assert seen.admit(np.array([9, 4, 4, 3, 8], dtype=np.uint64)).tolist() == [1, 4]
    assert seen.admit(np.array([4], dtype=np.uint64)).tolist() == []
    assert seen.admit(np.array([10], dtype=np.uint64)) is None
    assert sorted(np.concatenate(seen.runs).tolist()) == [3, 4, 5, 8, 9, 10]


# --------------------------------------------------------------------------- dedup


def test_duplicates_in_one_chunk_across_windows_and_campaigns():
    s = _settings()
    state = ShardState(s, ["imp:0", "clk:0"], Recorder)
    w0, w1 = T0, T0 + 5 * MIN
    rows = [(w0 + 1, "e1", "c1"), (w1 + 1, "e1", "c1"),   # same id, other window: counted
            (w0 + 2, "e1", "c2"),                          # same id, other campaign: counted
            (w0 + 3, "e1", "c1"), (w1 + 2, "e2", "c1"), (w1 + 3, "e2", "c1")]
    chunk = Chunk.of("imp:0", w1 + 3, False,
                     [Prepared(t, IMPRESSION, e, c, ("mobile",), b"", i)
                      for i, (t, e, c) in enumerate(rows)])
    state.ingest(chunk)
    # The same events again, in a chunk built without keys (computed on the shard).
    bare = Chunk("imp:0", w1 + 3, False, IMPRESSION, chunk.ts_ms, chunk.campaign_ids,
                 chunk.event_ids, chunk.dims, chunk.offsets, chunk.raws)
    state.ingest(bare)
    out = state.ingest(Chunk("imp:0", None, True)) + state.ingest(Chunk("clk:0", None, True))
    out += state.flush()
    figs = _figures(out)
    assert figs[("c1", ALL, w0 // 1000)] == (1, 0)
    assert figs[("c1", ALL, w1 // 1000)] == (2, 0)
    assert figs[("c2", ALL, w0 // 1000)] == (1, 0)
    assert state.stats.duplicates == 2 + len(rows)
    assert state.stats.events == 4


def test_restored_snapshot_still_knows_the_counted_events():
    s = _settings()
    prep = EventPreparer(s)
    state = ShardState(s, ["imp:0", "clk:0"], Recorder)
    first = [_ev(f"i{i}", T0 + i * 1000, device="mobile") for i in range(10)]
    clicks = [_ev("k1", T0 + 5000, device="mobile")]
    _feed(state, prep, [_batch(IMPRESSION, first), _batch(CLICK, clicks)])
    # Both sources reach 8 minutes past the first window: it closes (5m + 2m lateness).
    later = [_ev("j1", T0 + 8 * MIN, device="mobile")]
    out = _feed(state, prep, [_batch(IMPRESSION, later), _batch(CLICK, [_ev("k2", T0 + 8 * MIN)])])
    assert _figures(out)[("c1", ALL, T0 // 1000)] == (10, 1)

    restored = pickle.loads(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)).bind(
        s, Recorder)
    assert restored.series() == state.series()
    # Repeats of counted events: of the closed window (within the allowed lateness: a
    # duplicate, not late) and of the open one; then one new event of each.
    again = _feed(restored, prep, [
        _batch(IMPRESSION, first[:3] + later + [_ev("j2", T0 + 8 * MIN + 1, device="mobile")]),
        _batch(CLICK, clicks + [_ev("k2", T0 + 8 * MIN)]),
        _batch(IMPRESSION, [_ev("new-late", T0 + 1, device="mobile")]),
        _batch(IMPRESSION, [], idle=True), _batch(CLICK, [], idle=True)])
    again += restored.flush()
    dead = [o for o in again if not isinstance(o, WindowDecision)]
    assert [d.stage for d in dead] == ["late"] and dead[0].raw == _ev("new-late", T0 + 1,
                                                                      device="mobile")
    assert _figures(again)[("c1", ALL, T0 // 1000 + 300)] == (2, 1)
    assert restored.stats.duplicates == state.stats.duplicates + 6
    assert restored.stats.late == 1


def _v2_snapshot(campaigns: bool) -> bytes:
    """A snapshot as version 2 wrote it: NEWOBJ of the engine's classes, then the values of
    their version-2 ``__getstate__`` (the same opcodes, written by hand)."""
    states: dict[int, object] = {}

    def old(cls, state):
        obj = cls.__new__(cls)
        states[id(obj)] = (obj, state)
        return obj

    class Writer(pickle.Pickler):
        def reducer_override(self, obj):
            if id(obj) in states:
                return copyreg.__newobj__, (type(obj),), states[id(obj)][1]
            return NotImplemented

    win = old(engine._WindowAcc, (({"i1"}, set()), ({"mobile": 1}, {})))
    camp = old(engine._Campaign, ({7: win}, Recorder(), {ALL: None}, {}, {}, 7, 7, {}))
    shard = old(ShardState, {"_version": 2, "_campaigns": {"c1": camp} if campaigns else {},
                             "_next_close": None})
    buf = io.BytesIO()
    Writer(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(shard)
    assert b"_restore_shard_state" not in buf.getvalue()
    return buf.getvalue()


@pytest.mark.parametrize("campaigns", [True, False])
def test_snapshot_of_the_previous_version_is_refused_clearly(campaigns):
    with pytest.raises(ValueError, match="incompatible ctrguard version.*fresh recovery"):
        pickle.loads(_v2_snapshot(campaigns))


def test_snapshot_of_another_version_is_refused_before_its_contents_load(monkeypatch):
    data = pickle.dumps(ShardState(_settings(), ["imp:0"], Recorder))
    monkeypatch.setattr(engine, "_STATE_VERSION", engine._STATE_VERSION + 1)
    with pytest.raises(ValueError, match="incompatible ctrguard version"):
        pickle.loads(data)


# --------------------------------------------------------------------------- segments


def _reference(events, dims, cap):
    """Version 2's segment rules, per campaign: a value gets a series of its own while the
    campaign has fewer than ``cap`` values of that dimension, later ones count as "other";
    series in order of first appearance. ``events``: (cid, window, kind, values), counted
    ones, in processing order."""
    seen: dict[str, dict[str, set]] = {}
    series: dict[str, dict[str, None]] = {}
    cache: dict[tuple, tuple] = {}
    counts: Counter = Counter()
    for cid, wid, kind, values in events:
        segs = cache.get((cid, values))
        if segs is None:
            dim_values = seen.setdefault(cid, {})
            order = series.setdefault(cid, {ALL: None})
            segs = [ALL]
            for name, value in zip(dims, values, strict=True):
                if value is None:
                    continue
                got = dim_values.setdefault(name, set())
                if value not in got:
                    if len(got) >= cap:
                        value = "other"
                    else:
                        got.add(value)
                seg = f"{name}={value}"
                segs.append(seg)
                order.setdefault(seg, None)
            segs = cache[(cid, values)] = tuple(segs)
        for seg in segs:
            counts[(cid, seg, wid * 300, kind)] += 1
    return counts, {cid: tuple(order) for cid, order in series.items()}


@pytest.mark.parametrize("seed", range(4))
def test_segments_with_a_value_cap_match_the_per_campaign_rules(seed):
    rng = random.Random(seed)
    dims = ("device", "channel")
    cap = 2
    s = _settings(", ".join(dims), cap)
    prep = EventPreparer(s)
    monitors: dict[int, Recorder] = {}

    def factory():
        monitors[len(monitors)] = Recorder()
        return monitors[len(monitors) - 1]

    state = ShardState(s, ["imp:0", "clk:0"], factory)
    lines: dict[int, list[bytes]] = {IMPRESSION: [], CLICK: []}
    t = T0
    for _ in range(3000):
        t += rng.randrange(0, 1500)
        kind = IMPRESSION if rng.random() < 0.8 else CLICK
        eid = f"e{rng.randrange(2800)}"  # ~ 7% repeats of an id (duplicates if same window)
        cid = f"c{rng.randrange(8)}"
        values = (rng.choice(["a", "b", "c", "other", None]), rng.choice(["x", "y", "z", None]))
        extra = {k: v for k, v in zip(dims, values, strict=True) if v is not None}
        lines[kind].append(_ev(eid, t, cid, **extra))
    # Batches of either topic at random: the expectation follows the order the engine sees.
    seen_order = []
    out = []
    pos = {IMPRESSION: 0, CLICK: 0}
    while pos[IMPRESSION] < len(lines[IMPRESSION]) or pos[CLICK] < len(lines[CLICK]):
        kind = rng.choice([k for k in lines if pos[k] < len(lines[k])])
        size = rng.choice([1, 5, 50, 400])
        part = lines[kind][pos[kind]:pos[kind] + size]
        pos[kind] += len(part)
        seen_order += [(kind, line) for line in part]
        out += _feed(state, prep, [_batch(kind, part, pos[kind] >= len(lines[kind]))])
    out += state.flush()
    assert [o for o in out if not isinstance(o, WindowDecision)] == []
    done: set = set()
    counted = []
    for kind, line in seen_order:
        ev = msgspec.json.decode(line)
        key = (ev["campaign_id"], ev["ts"] // 300_000, kind, ev["event_id"])
        if key not in done:
            done.add(key)
            counted.append((key[0], key[1], kind, tuple(ev.get(d) for d in dims)))
    expect, order = _reference(counted, dims, cap)
    got = figure_totals(out)
    assert +got == +expect
    assert {cid: camp.series for cid, camp in state._campaigns.items()} == order
    # Campaigns in the same position share their segment state.
    by_values = {}
    for camp in state._campaigns.values():
        assert by_values.setdefault((camp.dims.values, camp.dims.folded), camp.dims) is camp.dims


def test_campaigns_with_the_same_segments_share_series_and_dims():
    s = _settings()
    prep = EventPreparer(s)
    state = ShardState(s, ["imp:0", "clk:0"], Recorder)
    lines = [_ev(f"i{c}-{d}", T0 + 1, f"c{c}", device=d)
             for c in range(50) for d in ("mobile", "desktop")]
    _feed(state, prep, [_batch(IMPRESSION, lines)])
    camps = list(state._campaigns.values())
    assert camps[0].series == (ALL, "device=mobile", "device=desktop")
    assert all(c.series is camps[0].series and c.dims is camps[0].dims for c in camps)
    restored = pickle.loads(pickle.dumps(state)).bind(s, Recorder)
    camps = list(restored._campaigns.values())
    assert all(c.series is camps[0].series and c.dims is camps[0].dims for c in camps)
    # New campaigns after a restore join the restored shared objects.
    _feed(restored, prep, [_batch(IMPRESSION, [_ev("n1", T0 + 2, "new", device="mobile"),
                                               _ev("n2", T0 + 2, "new", device="desktop")])])
    assert restored._campaigns["new"].series is camps[0].series


# --------------------------------------------------------------------------- settings


def _secret_settings(length="5m", dims="device"):
    return load_config_text(
        f"windows:\n  length: {length}\n  shards: 1\nsegments:\n  dimensions: [{dims}]\n",
        env={"SLACK_BOT_TOKEN": "xoxb-snap-secret", "CTRGUARD_REDIS_PASSWORD": "redis-snap-pw"})


def _fed_state(s):
    state = ShardState(s, ["imp:0", "clk:0"], Recorder)
    prep = EventPreparer(s)
    _feed(state, prep, [_batch(IMPRESSION, [_ev(f"i{i}", T0 + i * 1000, device="mobile")
                                            for i in range(20)])])
    return state, prep


def test_a_snapshot_holds_state_not_settings():
    s = _secret_settings()
    state, prep = _fed_state(s)
    data = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    for secret in (b"xoxb-snap-secret", b"redis-snap-pw", b"Settings", b"SecretStr"):
        assert secret not in data
    restored = pickle.loads(data).bind(s, Recorder)
    assert restored.settings is s
    more = [_ev("n1", T0 + 2, "new", device="mobile"), _ev("i1", T0 + 1000, device="mobile")]
    out_a = _feed(state, prep, [_batch(IMPRESSION, more)]) + state.flush()
    out_b = _feed(restored, prep, [_batch(IMPRESSION, more)]) + restored.flush()
    assert _figures(out_a) == _figures(out_b) and state.stats == restored.stats


def test_a_snapshot_written_with_its_settings_still_loads_without_them(monkeypatch):
    s = _secret_settings()
    state, _ = _fed_state(s)
    with monkeypatch.context() as m:  # what snapshots held before settings were left out
        m.setattr(ShardState, "_NOT_STATE", ())
        old = pickle.dumps(state)
    assert b"xoxb-snap-secret" in old
    restored = pickle.loads(old)
    assert restored.settings is None
    other = _secret_settings()
    assert restored.bind(other, Recorder).settings is other
    assert b"xoxb-snap-secret" not in pickle.dumps(restored)


@pytest.mark.parametrize("length, dims", [("10m", "device"), ("5m", "channel")])
def test_a_snapshot_of_another_window_length_or_dimensions_is_refused_clearly(length, dims):
    state, _ = _fed_state(_secret_settings())
    restored = pickle.loads(pickle.dumps(state))
    with pytest.raises(ConfigError, match="snapshot was taken with windows.length 300s"):
        restored.bind(_secret_settings(length, dims), Recorder)
    with pytest.raises(RuntimeError, match="needs bind"):
        restored._monitor_factory()


def _as_before_the_namespace(data: bytes) -> bytes:
    """A protocol-3 pickle (classes named by GLOBAL opcodes, as text) rewritten as the pre-namespace code wrote it: every class of
    ``ctrguard.flows``/``detectors``/... under its old top-level module."""
    for new, old in ((b"ctrguard._shard", b"flows._shard"), (b"ctrguard.flows.", b"flows."),
                     (b"ctrguard.detectors.", b"detectors.")):
        data = data.replace(b"c" + new, b"c" + old)
    assert b"\nc" + b"ctrguard.flows." not in data and b"cflows.engine\n" in data
    return data


def test_a_snapshot_written_before_the_namespace_resumes_identically():
    from ctrguard.detectors.monitor import build_monitor

    s = _settings()
    prep = EventPreparer(s)

    def factory():
        return build_monitor(s.detectors)

    state = ShardState(s, ["imp:0", "clk:0"], factory)
    imps = [_ev(f"i{w}-{i}", T0 + w * 5 * MIN + i * 1000, device=["mobile", "desktop"][i % 2])
            for w in range(12) for i in range(40)]
    clicks = [_ev(f"k{w}", T0 + w * 5 * MIN + 2000, device="mobile") for w in range(12)]
    _feed(state, prep, [_batch(IMPRESSION, imps), _batch(CLICK, clicks)])
    old = _as_before_the_namespace(pickle.dumps(state, protocol=3))
    restored = load_snapshot(old).bind(s, factory)
    assert type(restored) is ShardState
    same = pickle.loads(pickle.dumps(state)).bind(s, factory)
    more = [_batch(IMPRESSION, [_ev(f"m{i}", T0 + 60 * MIN + i * 1000, device="mobile")
                                for i in range(30)]),
            _batch(CLICK, [_ev("m-k", T0 + 60 * MIN + 5000, device="mobile")]),
            _batch(IMPRESSION, [], idle=True), _batch(CLICK, [], idle=True)]
    a = _feed(restored, prep, more) + restored.flush()
    b = _feed(same, prep, more) + same.flush()
    assert _figures(a) == _figures(b) and len(_figures(a)) > 0
    with pytest.raises(ValueError, match="not a shard snapshot"):
        load_snapshot(pickle.dumps({"not": "a state"}))


# ------------------------------------------------- a monitor pickled before detectors split

#: A campaign monitor pickled by revision 736b843, whose detector core was one module
#: (``ctrguard.detectors.monitor``): after window 44 of :func:`_split_stream`, with an
#: incident open on every series and the drift detector's state (3 KB).
_PRE_SPLIT = Path(__file__).parent / "data" / "monitor-736b843.pickle"


def _split_stream():
    """70 windows of a campaign with two segments: clicks stop on desktop at window 30
    (a segment break) and on the whole campaign at window 40 (a click outage)."""
    from ctrguard.detectors.base import Counts, Window

    rng = np.random.default_rng(19)
    t0 = T0 // 1000
    out = []
    for t in range(70):
        n_m, n_d = int(rng.poisson(1200)), int(rng.poisson(800))
        k_m = int(rng.binomial(n_m, 0.0 if t >= 40 else 0.03))
        k_d = int(rng.binomial(n_d, 0.0 if t >= 30 else 0.02))
        out.append((Window(t0 + 300 * t, t0 + 300 * t + 300),
                    {ALL: Counts(n_m + n_d, k_m + k_d), "device=desktop": Counts(n_d, k_d),
                     "device=mobile": Counts(n_m, k_m)}))
    return out


def test_a_monitor_pickled_before_the_detector_split_resumes_identically():
    """Snapshots name the monitor's parts by the module they were defined in then
    (``ctrguard.detectors.monitor._restore_series`` & co.): they load, through the
    snapshot loader, into a monitor that goes on with the incidents it had, and that
    continues exactly as a copy of itself saved in today's format.

    (The snapshot's state was made by the detectors of its day; a deliberate change of the
    detectors since, such as how fast a segment's factor learns, moves the expectations a
    monitor that never stopped would have now, not the incidents.)"""
    from ctrguard.detectors.monitor import build_monitor
    from ctrguard.detectors.settings import DetectorSettings

    blob = _PRE_SPLIT.read_bytes()
    assert b"ctrguard.detectors.monitor" in blob
    restored = engine._SnapshotUnpickler(io.BytesIO(blob)).load()
    assert sorted(restored.series) == [ALL, "device=desktop", "device=mobile"]
    copy = pickle.loads(pickle.dumps(restored))
    stream = _split_stream()
    # (The snapshot holds the settings of its day: segment_alpha was 0.02 then.)
    whole = build_monitor(DetectorSettings(segment_alpha=0.02))
    for window, counts in stream[:44]:
        whole.update(window, counts)
    a = [restored.update(w, c) for w, c in stream[44:]]
    assert [repr(copy.update(w, c)) for w, c in stream[44:]] == [repr(v) for v in a]
    b = [whole.update(w, c) for w, c in stream[44:]]

    def incidents(verdicts):
        return [[(v.segment, v.kind, v.suspected_cause, v.incident, v.quarantine) for v in vs]
                for vs in verdicts]

    assert incidents(a) == incidents(b)
    assert all(v.quarantine for vs in a for v in vs) and any(vs for vs in a)

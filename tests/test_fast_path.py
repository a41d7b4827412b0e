"""The bulk paths give exactly what the careful, one-message-at-a-time paths give.

``decode_batch`` against ``decode_event`` message by message (hostile batches included);
the vectorised RFC 3339 parser against ``datetime``; the engine's figures against a plain
hand count under any batching, sharding and interleaving; the replay file reader against
``readline``; chunks and shard state across pickling (what crosses processes and snapshots).
"""

from __future__ import annotations

import gzip
import json
import pickle
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctrguard.config import load_config_text
from ctrguard.detectors.base import ALL
from ctrguard.errors import EventError
from ctrguard.events import (
    CLICK,
    IMPRESSION,
    _rfc3339_z_to_ms,
    decode_batch,
    decode_event,
)
from ctrguard.flows.engine import Chunk, EventPreparer, RawBatch, ShardState
from ctrguard.records import WindowDecision
from tests.test_hostile import events as hostile_events

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
NOW = T0 + 30 * 86_400_000


def _single(raw, max_bytes):
    try:
        return ("ok", decode_event(raw, max_bytes=max_bytes).ts)
    except EventError as exc:
        return ("err", exc.reason)


def _batch(values, max_bytes):
    out = decode_batch(values, max_bytes=max_bytes)
    got = {}
    positions = out.positions if out.positions is not None else range(len(values))
    assert len(positions) == len(out.events) == len(out.ts_ms)
    for i, ts in zip(positions, out.ts_ms.tolist(), strict=True):
        got[i] = ("ok", ts)
    for i, exc in out.errors:
        assert i not in got
        got[i] = ("err", exc.reason)
    assert [i for i, _ in out.errors] == sorted(i for i, _ in out.errors)
    return [got[i] for i in range(len(values))], out


def _ts_text(draw_dt: datetime, form: int) -> str | int:
    ms = draw_dt.microsecond // 1000
    base = draw_dt.strftime("%Y-%m-%dT%H:%M:%S")
    return [f"{base}.{ms:03d}Z", f"{base}Z", f"{base}.{ms:03d}+00:00", f"{base}.{ms:03d}z",
            f"{base}.{draw_dt.microsecond:06d}Z", int(draw_dt.timestamp() * 1000),
            f"{base}+02:00", base][form]


# hypothesis takes naive bounds and attaches the timezone itself.
NAIVE_1999, NAIVE_2000 = datetime(1999, 12, 31), datetime(2000, 1, 1)  # noqa: DTZ001
NAIVE_2099, NAIVE_2100 = datetime(2099, 12, 31), datetime(2100, 1, 2)  # noqa: DTZ001
good_times = st.builds(_ts_text, st.datetimes(min_value=NAIVE_1999, max_value=NAIVE_2100,
                                              timezones=st.just(UTC)),
                       st.integers(0, 7))
odd_times = st.sampled_from([
    "2026-02-29T00:00:00.000Z", "2024-02-29T12:00:00.000Z", "2026-13-01T00:00:00Z",
    "2026-01-01T24:00:00Z", "2026-01-01T23:59:60Z", "2026-01-01T00:00:00.00Z",
    "2026-01-01 00:00:00Z", "2026-01-01T00:00:00.000Z ", "20260101T000000Z", "",
    "2100-01-01T00:00:00Z", "1999-12-31T23:59:59.999Z", "2000-01-01T00:00:00.000Z",
    "2026-04-31T00:00:00Z", "2026-1a-01T00:00:00Z", "0000-00-00T00:00:00.000Z",
])
well_formed = st.builds(
    lambda i, ts, dev, extra: msgspec.json.encode({"event_id": f"e{i}", "ts": ts,
                                            "campaign_id": "c1", "device": dev, **extra}),
    st.integers(0, 10**6), st.one_of(good_times, odd_times),
    st.sampled_from(["mobile", "tab\u00e9", "a\\b", None, "x" * 1100]),
    st.sampled_from([{}, {"is_internal": True}, {"geo": 5}, {"channel": "\x7f"},
                     {"user_agent": "Googlebot"}, {"impression_id": ""}]))
messages = st.one_of(well_formed, well_formed, well_formed,
                     hostile_events.map(lambda d: json.dumps(d).encode()),
                     st.binary(max_size=80), st.none(), st.just(b'{"event_id":"x"}' + b" " * 300))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, max_size=30), st.sampled_from([64, 512, 65536]))
def test_decode_batch_equals_decode_event_message_by_message(values, max_bytes):
    expected = [_single(v, max_bytes) for v in values]
    got, _ = _batch(values, max_bytes)
    assert got == expected


def test_decode_batch_common_case_takes_the_bulk_path():
    values = [msgspec.json.encode({"event_id": f"e{i}", "ts": "2026-01-01T00:00:01.500Z" if i % 2 else
                            T0 + i, "campaign_id": "c"}) for i in range(10)]
    got, out = _batch(values, 65536)
    assert out.positions is None and not out.errors
    assert [ts for _, ts in got] == [T0 + 1500 if i % 2 else T0 + i for i in range(10)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.datetimes(min_value=NAIVE_2000, max_value=NAIVE_2099, timezones=st.just(UTC)),
                min_size=1, max_size=20),
       st.booleans())
def test_rfc3339_parser_is_exact(times, with_ms):
    texts = [t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{t.microsecond // 1000:03d}Z" if with_ms
                                                else "Z") for t in times]
    expect = [(t.replace(microsecond=(t.microsecond // 1000 * 1000) if with_ms else 0)
               - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1) for t in times]
    assert _rfc3339_z_to_ms(texts).tolist() == expect


# --------------------------------------------------------------------------- engine


class Recorder:
    """Test double: records what it is fed, never alarms."""

    def update(self, window, counts):
        return []


def _settings(shards: int, dims: str) -> object:
    return load_config_text(f"windows:\n  length: 5m\n  allowed_lateness: 2m\n  shards: {shards}\n"
                            "event_time:\n  frontier_quorum: 1\n"  # one event moves a frontier
                            f"segments:\n  dimensions: [{dims}]\n", env={})


def _random_stream(rng: random.Random, n: int):
    """Events in time order per topic, with duplicates (same topic) and missing dimensions."""
    imps, clicks = [], []
    t = T0
    for i in range(n):
        t += rng.randrange(0, 4000)
        camp = f"c{rng.randrange(12)}"
        extra = {}
        if rng.random() < 0.9:
            extra["device"] = rng.choice(["mobile", "desktop", "tablet"])
        if rng.random() < 0.8:
            extra["channel"] = rng.choice(["search", "email"])
        ev = {"event_id": f"i{i}", "ts": t if i % 3 else datetime.fromtimestamp(
            t / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", "campaign_id": camp,
              **extra}
        imps.append(msgspec.json.encode(ev))
        if rng.random() < 0.1:
            imps.append(msgspec.json.encode(ev))                      # redelivered
        if rng.random() < 0.05:
            clicks.append(msgspec.json.encode({**ev, "event_id": f"k{i}"}))
            if rng.random() < 0.3:
                clicks.append(msgspec.json.encode({**ev, "event_id": f"k{i}"}))
    return imps, clicks


def _hand_count(imps, clicks, dims):
    seen = set()
    counts: Counter = Counter()
    for kind, lines in ((IMPRESSION, imps), (CLICK, clicks)):
        for line in lines:
            ev = decode_event(line)
            wid = ev.ts // 300_000
            key = (ev.campaign_id, wid, kind, ev.event_id)
            if key in seen:
                continue
            seen.add(key)
            segs = [ALL] + [f"{d}={getattr(ev, d)}" for d in dims if getattr(ev, d) is not None]
            for seg in segs:
                counts[(ev.campaign_id, seg, wid * 300, kind)] += 1
    return counts


def figure_totals(decisions) -> Counter:
    """Impressions and clicks per (campaign, segment, window start, kind) in the figures of
    ``decisions``, the shape :func:`_hand_count` returns."""
    got: Counter = Counter()
    for d in decisions:
        for f in d.figures:
            got[(f.campaign_id, f.segment, f.window_start_s, IMPRESSION)] += f.impressions
            got[(f.campaign_id, f.segment, f.window_start_s, CLICK)] += f.clicks
    return got


def _run_engine(s, imps, clicks, rng, batch_sizes):
    prep = EventPreparer(s)
    states = {}
    out = []
    sources = ["imp:0", "clk:0"]
    pos = {IMPRESSION: 0, CLICK: 0}
    streams = {IMPRESSION: imps, CLICK: clicks}
    while pos[IMPRESSION] < len(imps) or pos[CLICK] < len(clicks):
        kind = rng.choice([k for k in streams if pos[k] < len(streams[k])])
        size = rng.choice(batch_sizes)
        lines = streams[kind][pos[kind]:pos[kind] + size]
        start = pos[kind]
        pos[kind] += len(lines)
        batch = RawBatch("imp" if kind == IMPRESSION else "clk", 0, kind, lines,
                         list(range(start, start + len(lines))),
                         pos[kind] >= len(streams[kind]))
        for shard, chunk in prep.chunks(prep.prepare(batch, now_ms=NOW)):
            # Every chunk crosses a process boundary in a cluster: pickle it.
            chunk = pickle.loads(pickle.dumps(chunk))
            state = states.get(shard)
            if state is None:
                state = states[shard] = ShardState(s, sources, Recorder)
            out += state.ingest(chunk)
            if rng.random() < 0.05:  # a snapshot and restore in the middle
                states[shard] = pickle.loads(pickle.dumps(states[shard])).bind(s, Recorder)
    for state in states.values():
        out += state.flush()
    return out, states


@pytest.mark.parametrize("seed", range(6))
def test_engine_figures_equal_hand_count_under_any_batching_and_sharding(seed):
    rng = random.Random(seed)
    imps, clicks = _random_stream(rng, 1500)
    dims = ("device", "channel") if seed % 2 else ("device",)
    expect = _hand_count(imps, clicks, dims)
    for shards in (1, 16):
        s = _settings(shards, ", ".join(dims))
        out, states = _run_engine(s, imps, clicks, rng, [1, 7, 100, 700])
        late = [o for o in out if not isinstance(o, WindowDecision)]
        assert late == []  # each topic is in time order; the lateness covers the interleaving
        got = figure_totals(out)
        assert +got == +expect
        assert sum(st.stats.events for st in states.values()) == sum(
            v for (_, seg, _, _), v in expect.items() if seg == ALL)


def test_chunk_crosses_processes_with_its_own_rows_and_without_raw_bytes():
    s = _settings(16, "device")
    prep = EventPreparer(s)
    lines = [msgspec.json.encode({"event_id": f"e{i}", "ts": T0 + i, "campaign_id": f"c{i}",
                           "device": "mobile", "pad": "x" * 200}) for i in range(400)]
    pb = prep.prepare(RawBatch("imp", 0, IMPRESSION, lines, list(range(400))), now_ms=NOW)
    for c in pb.chunks.values():
        data = pickle.dumps(c)
        back = pickle.loads(data)
        assert back.raws is None
        assert [r._replace(raw=None) for r in back.rows(1)] == \
            [r._replace(raw=None) for r in c.rows(1)]
        # Its own rows only, and none of the 250-byte messages.
        assert len(data) < len(c) * 60 + 1000
    assert sum(len(c) for c in pb.chunks.values()) == 400


def test_late_event_of_a_chunk_from_another_process_names_its_message():
    s = _settings(1, "device")
    prep = EventPreparer(s)
    state = ShardState(s, ["imp:3", "clk:0"], Recorder)
    late = msgspec.json.encode({"event_id": "late", "ts": T0 + 1000, "campaign_id": "c1"})
    batches = [RawBatch("imp", 3, IMPRESSION, [
                   msgspec.json.encode({"event_id": "a", "ts": T0, "campaign_id": "c1"}),
                   msgspec.json.encode({"event_id": "b", "ts": T0 + 20 * 60_000, "campaign_id": "c1"})],
                   [9, 10]),
               RawBatch("clk", 0, CLICK, [], [], True),
               RawBatch("imp", 3, IMPRESSION, [late], [11])]
    out = []
    for b in batches:
        for _, chunk in prep.chunks(prep.prepare(b, now_ms=NOW)):
            out += state.ingest(pickle.loads(pickle.dumps(chunk)))
    dead = [o for o in out if not isinstance(o, WindowDecision)]
    assert [(d.stage, d.topic, d.partition, d.offset, d.raw) for d in dead] == \
        [("late", "imp", 3, 11, None)]


@pytest.mark.integration
def test_dead_letter_sink_reads_back_the_bytes_of_late_events(broker, unique_topics):
    from ctrguard.flows.engine import DeadLetter
    from ctrguard.sinks.kafka_out import DeadLetterSink
    from devtools.services import consume_to_eof, produce_all

    values = [b'{"n":%d}' % i for i in range(5000)]
    produce_all(broker.bootstrap, unique_topics["impressions"], values)
    s = load_config_text(
        f'kafka:\n  brokers: ["{broker.bootstrap}"]\n  topics:\n'
        f'    impressions: {unique_topics["impressions"]}\n'
        f'    deadletter: {unique_topics["deadletter"]}\n', env={})
    part = DeadLetterSink(s.kafka)
    wanted = [4999, 3, 4, 2500, 17]  # any order, near and far apart
    part.write_batch([DeadLetter("late", "window closed", unique_topics["impressions"], 0, o,
                                 None) for o in wanted]
                     + [DeadLetter("parse", "bad", unique_topics["impressions"], 0, 9999,
                                   b"kept")])
    part.close()
    got = [(dict(m.headers())["ctrguard-source-offset"], m.value())
           for m in consume_to_eof(broker.bootstrap, unique_topics["deadletter"])]
    assert got == [(str(o).encode(), values[o]) for o in wanted] + [(b"9999", b"kept")]


def test_chunk_of_rows_round_trips():
    rows = [(T0 + i, IMPRESSION, f"e{i}", "c1", ("mobile",), b"raw", i) for i in range(3)]
    from ctrguard.flows.engine import Prepared

    chunk = Chunk.of("imp:0", T0 + 2, False, [Prepared(*r) for r in rows])
    assert [tuple(p) for p in chunk.rows(1)] == rows
    with pytest.raises(ValueError):
        Chunk.of("imp:0", T0, False, [Prepared(*rows[0]), Prepared(T0, CLICK, "k", "c1", (),
                                                                    b"", 0)])


# --------------------------------------------------------------------------- replay reader


def _readline_chunks(path, n):
    from ctrguard.replay.run import open_lines

    fh = open_lines(path)
    line_no, done, out = 0, False, []
    while not done:
        values, offsets = [], []
        for _ in range(n):
            line = fh.readline()
            if not line:
                done = True
                fh.close()
                break
            line_no += 1
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            values.append(line)
            offsets.append(line_no)
        out.append((values, offsets, done))
    return out


def test_replay_block_reader_equals_readline(tmp_path, monkeypatch):
    import ctrguard.replay.run as rr

    rng = random.Random(3)
    pieces = [b'{"a":1}', b"", b"  ", b"\t", b"x\r", b'{"b":2}\r', b"\r", b'{"c":"  "}']
    for trial in range(150):
        lines = [rng.choice(pieces) if rng.random() < 0.3 else b'{"e":%d}' % i
                 for i in range(rng.randrange(0, 40))]
        data = b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")
        path = tmp_path / (f"t{trial}.jsonl" + (".gz" if trial % 2 else ""))
        path.write_bytes(gzip.compress(data) if trial % 2 else data)
        for n in (1, 3, 40):
            monkeypatch.setattr(rr, "READ_BLOCK", rng.choice([1, 7, 64, 1 << 22]))
            src = rr._FileSource(path, "t", IMPRESSION, n)
            got = []
            while not src.done:
                b = src.read_chunk()
                got.append((list(b.values), list(b.offsets), b.idle))
            assert got == _readline_chunks(path, n), (data, n)


# --------------------------------------------------------------------------- shard routing


@pytest.mark.parametrize("workers", [2, 4])
def test_shard_keys_spread_evenly_over_bytewax_workers(workers):
    """Bytewax itself routes the keys: every worker holds the same number of shards."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource, cluster_main

    from ctrguard.flows.ctr_flow import shard_keys

    where: dict[str, int] = {}

    class Part(StatelessSinkPartition):
        def __init__(self, index):
            self.index = index

        def write_batch(self, items):
            for key, _ in items:
                where[key] = self.index

    class Sink(DynamicSink):
        def build(self, step_id, index, count):
            return Part(index)

    keys = shard_keys(16)
    flow = Dataflow("routing")
    keyed = op.input("in", flow, TestingSource([(k, 1) for k in keys]))
    op.output("out", op.stateful_map("state", keyed, _keep), Sink())
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    assert Counter(where.values()) == {w: 16 // workers for w in range(workers)}
    assert [where[k] for k in keys] == [n % workers for n in range(16)]


def _keep(state, value):
    return state, value


# --------------------------------------------------------------------------- sink adapter


class _RecordingSink:
    """A sink of ours (no Bytewax base class): what it was given, and whether it closed."""

    made: list[_RecordingSink] = []

    def __init__(self, tag: str):
        self.tag = tag
        self.batches: list[list[int]] = []
        self.closed = False
        _RecordingSink.made.append(self)

    def write_batch(self, items: list[int]) -> None:
        self.batches.append(list(items))

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_sink_builds_one_sink_per_worker_and_closes_it(workers):
    """Bytewax reaches our sinks through ``WorkerSink`` only: one sink built per worker,
    every item handed over in whole batches, each sink closed at the end of the input."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource, cluster_main

    from ctrguard.flows.ctr_flow import WorkerSink

    _RecordingSink.made = []
    flow = Dataflow("sink_adapter")
    items = op.input("in", flow, TestingSource(list(range(100)), batch_size=10))
    op.output("out", items, WorkerSink(partial(_RecordingSink, "t")))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    made = _RecordingSink.made
    assert len(made) == workers and all(s.tag == "t" and s.closed for s in made)
    assert sorted(x for s in made for b in s.batches for x in b) == list(range(100))
    assert sum(len(s.batches) for s in made) < 100  # batches, not an item per call

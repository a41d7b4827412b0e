"""Replay's fast output and input paths against simple references, byte for byte.

The figure lines (:func:`ctrguard.records.encode_figures`, msgspec) must be exactly what
``orjson.dumps`` (the previous implementation) wrote for each figure a run can produce, and a
whole replay (block reader, figure lines, batched writes) must write exactly what a plain
``readline`` reader with one ``orjson.dumps`` per record writes, on inputs with
non-ASCII text, escapes, CRLF and blank lines, invalid lines, a last line without newline,
several gzip members; a damaged gzip file fails as the gzip module fails.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import random
import zlib
from collections import Counter
from pathlib import Path

import msgspec
import orjson
import pytest

from ctrguard.config import load_config_text
from ctrguard.events import CLICK, IMPRESSION
from ctrguard.records import Figure, WindowDecision, encode_figures
from ctrguard.replay import run as replay_run
from ctrguard.replay.evaluate import ReplayInputError
from ctrguard.replay.run import open_lines, run_replay

WS, WE, S = "2026-01-05T00:00:00Z", "2026-01-05T00:05:00Z", 1767571200
TRICKY = ["c1", "all", "device=mobile", "café", "日本語", 'q"uote', "back\\slash", "per%cent%d",
          "%b%s", "tab\tnew\nline", "\x00\x1f", "emoji 🎯", "\u2028", "", " "]


def _fig(cid="c1", seg="all", ws=WS, we=WE, s=S, imps=10, clicks=1, ctr=0.1, status="ok",
         ids=()) -> Figure:
    return Figure(cid, seg, ws, we, s, imps, clicks, ctr, status, ids)


def _as_before(obj):
    """orjson's ``default``: a Figure (a dataclass when orjson wrote it) as its fields."""
    if isinstance(obj, Figure):
        return msgspec.structs.asdict(obj)
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


def _reference(figures) -> bytes:
    return b"".join(orjson.dumps(f, default=_as_before) + b"\n" for f in figures)


def _lines(figures) -> bytes:
    """figures.jsonl's text for these figures, as replay writes it."""
    return b"\n".join(encode_figures(figures)) + b"\n"


def test_figure_lines_equal_orjson_on_tricky_values():
    figures = [_fig(cid=c, seg=g) for c in TRICKY for g in TRICKY[:6]]
    figures += [_fig(ctr=x, clicks=k, imps=n) for x, k, n in [
        (0.0, 0, 5), (1.0, 3, 3), (1e-7, 1, 10_000_000), (1 / 3, 1, 3), (2.5, 5, 2),
        (9999999999999998.0, 1, 1), (123456789.125, 1, 1), (-0.0, 0, 1), (5e-324, 1, 1),
        (math.nan, 0, 0), (math.inf, 1, 0), (-math.inf, 1, 0)]]
    figures += [
        _fig(ids=("a1b2",)), _fig(ids=("x", "y")), _fig(ids=["listed"]),
        _fig(status="quarantined", ids=("a",)), _fig(status="ok"),
        _fig(ctr=0),              # an int where a float belongs: orjson writes 0, not 0.0
        _fig(ctr=0.0),            # the same value as a float: written as orjson writes it
        _fig(imps=True, clicks=False),         # bools are ints to %d, not to orjson
        _fig(imps=10.0, clicks=1.0),           # floats: orjson writes 10.0
        _fig(imps=-3, clicks=2**63 - 1), _fig(s=-1), _fig(s=0),
        _fig(seg=None), _fig(status=None), _fig(cid=None), _fig(ws=None), _fig(s=1.5),
        _fig(cid="c2", ws="2026-01-05T00:05:00Z", we="2026-01-05T00:10:00Z", s=S + 300),
        _fig(cid="c1"),           # back to an earlier campaign and window
    ]
    assert _lines(figures) == _reference(figures)


def test_figure_lines_equal_but_not_identical_window_values():
    # The fast path notices a shared campaign/window by identity; equal copies must give the
    # same text (the engine may build them per figure one day).
    a = _fig(cid="".join(["c", "7"]), ws="".join(WS), we="".join(WE), s=int(str(S)))
    b = _fig(cid="".join(["c", "7"]), ws="".join(WS), we="".join(WE), s=int(str(S)),
             seg="device=tv")
    assert _lines([a, b, a]) == _reference([a, b, a])


def test_figure_lines_of_other_objects_equal_orjson():
    @dataclasses.dataclass(frozen=True, slots=True)
    class Other:
        campaign_id: str
        segment: str

    class Sub(Figure, frozen=True):
        pass

    items = [Other("c1", "all"), Sub("c1", "all", WS, WE, S, 1, 0, 0.0, "ok"), _fig()]
    assert _lines(items) == _reference(items)


def test_figure_lines_random_streams_equal_orjson():
    rng = random.Random(11)
    windows = [(f"2026-01-05T00:{m:02d}:00Z", f"2026-01-05T00:{m + 5:02d}:00Z", S + 60 * m)
               for m in range(0, 50, 5)]
    for _ in range(200):
        ws, we, s = rng.choice(windows)
        cid = rng.choice(TRICKY)
        figures = []
        for seg in rng.sample(TRICKY, rng.randrange(1, 5)):
            n = rng.choice([0, 1, 7, 40, 10**6])
            k = rng.randrange(0, n + 2)
            ctr = k / n if n else rng.choice([0.0, 0, math.nan])
            ids = tuple(f"{rng.getrandbits(40):010x}" for _ in range(rng.choice([0, 0, 1, 2])))
            figures.append(_fig(cid, seg, ws, we, s, n, k, ctr,
                                rng.choice(["ok", "quarantined"]), ids))
        assert _lines(figures) == _reference(figures)


# --------------------------------------------------------------------------- whole replay


SETTINGS_YAML = "segments:\n  dimensions: [device]\nwindows:\n  shards: 4\n"


def _readline_source(path: Path, chunk_lines: int):
    """Chunks of (values, offsets, done) as a readline loop cuts them."""
    fh = open_lines(path)
    line_no, done = 0, False
    try:
        while not done:
            values, offsets = [], []
            for _ in range(chunk_lines):
                line = fh.readline()
                if not line:
                    done = True
                    break
                line_no += 1
                line = line.rstrip(b"\r\n")
                if line.strip():
                    values.append(line)
                    offsets.append(line_no)
            yield values, offsets, done
    finally:
        fh.close()


def _reference_replay(imp: Path, clk: Path, settings, out: Path, chunk_lines: int,
                      baselines: bool) -> None:
    """The replay written the plain way: readline, one orjson.dumps and write per record."""
    import time

    from ctrguard.detectors import baselines as bl
    from ctrguard.detectors.monitor import build_monitor
    from ctrguard.flows.engine import EventPreparer, RawBatch, ShardState, conservation
    from ctrguard.replay.run import dead_letter_record

    out.mkdir(parents=True)
    sources = [["impressions", IMPRESSION, _readline_source(imp, chunk_lines), None, False],
               ["clicks", CLICK, _readline_source(clk, chunk_lines), None, False]]
    preparer = EventPreparer(settings)
    ids = ["impressions:0", "clicks:0"]
    state = ShardState(settings, ids, lambda: build_monitor(settings.detectors))
    others = {}
    if baselines:
        others = {"raw_river": ShardState(settings, ids,
                                          lambda: bl.RawRiverBaseline(settings.detectors)),
                  "ztest": ShardState(settings, ids,
                                      lambda: bl.ZTestBaseline(settings.detectors))}
    names = ("alerts", "figures", "deadletter", *(f"alerts_{n}" for n in others))
    files = {n: open(out / f"{n}.jsonl", "wb") for n in names}  # noqa: SIM115
    read = parse_errors = 0
    excluded: Counter = Counter()
    dead: Counter = Counter()
    now_ms = int(time.time() * 1000)

    def write(name, obj):
        files[name].write(orjson.dumps(obj, default=_as_before) + b"\n")

    def emit(items):
        for item in items:
            if isinstance(item, WindowDecision):
                for f in item.figures:
                    write("figures", f)
                for a in item.alerts:
                    write("alerts", a)
            else:
                dead[item.stage] += 1
                write("deadletter", dead_letter_record(item))

    def emit_alerts(name, items):
        for item in items:
            if isinstance(item, WindowDecision):
                for a in item.alerts:
                    write(f"alerts_{name}", a)

    while True:
        pending = [s for s in sources if not s[4]]
        if not pending:
            break
        src = min(pending, key=lambda s: (s[3] is not None, s[3] or 0))
        values, offsets, src[4] = next(src[2])
        batch = RawBatch(src[0], 0, src[1], values, offsets, idle=src[4])
        read += len(values)
        prepared = preparer.prepare(batch, now_ms=now_ms)
        if prepared.frontier_ms is not None:
            src[3] = prepared.frontier_ms
        excluded.update(prepared.excluded)
        for d in prepared.dead_letters:
            parse_errors += d.stage == "parse"
            dead[d.stage] += 1
            write("deadletter", dead_letter_record(d))
        merged = preparer.merged(prepared, batch.kind)
        emit(state.ingest(merged))
        for name, other in others.items():
            emit_alerts(name, other.ingest(merged))
    emit(state.flush())
    for name, other in others.items():
        emit_alerts(name, other.flush())
    for fh in files.values():
        fh.close()
    stats = state.stats.as_dict()
    (out / "summary.json").write_bytes(orjson.dumps({
        "events_read": read, "events_counted": stats["events"],
        "excluded": dict(sorted(excluded.items())), "excluded_total": sum(excluded.values()),
        "duplicates": stats["duplicates"], "late": stats["late"],
        "dead_lettered": sum(dead.values()), "dead_lettered_by_stage": dict(sorted(dead.items())),
        "invalid": parse_errors, "windows": stats["windows"],
        "quarantined_windows": stats["quarantined"], "alerts": stats["alerts"],
        "campaigns": state.campaigns, "series": state.series(),
        "baseline_alerts": {name: other.stats.alerts for name, other in others.items()},
        "conservation": conservation(state.tally),
    }, option=orjson.OPT_INDENT_2))


_RENAME = {"c000": 'c000-café "quoted" \\ 100%', "c001": "日本-%s-%d", "c002": "c002\ttab"}
_DEVICES = {"mobile": "móvil", "tablet": "tablette 🎯"}


def _tricky_lines(lines: list[bytes], rng: random.Random) -> list[bytes]:
    """The generator's lines with non-ASCII and escaped text, CRLF and blank lines, invalid
    JSON and bytes, duplicates and a late event mixed in."""
    out = []
    for i, line in enumerate(lines):
        ev = orjson.loads(line)
        ev["campaign_id"] = _RENAME.get(ev["campaign_id"], ev["campaign_id"])
        ev["device"] = _DEVICES.get(ev["device"], ev["device"])
        line = orjson.dumps(ev) if (ev["campaign_id"] != orjson.loads(line)["campaign_id"]
                                    or ev["device"] in _DEVICES.values()) else line
        r = rng.random()
        if r < 0.01:
            line += b"\r"                       # CRLF line ending
        elif r < 0.015:
            out.append(rng.choice([b"", b"   ", b"\t", b"\r"]))
        elif r < 0.018:
            out.append(rng.choice([b"{not json", b'{"event_id":"x"}', b"\xff\xfe garbage",
                                   b'["a list"]', "{\"ts\":\"é\"}".encode()]))
        elif r < 0.02:
            out.append(line)                    # a duplicate
        if i == len(lines) // 2:
            out.append(lines[0])                # far behind: late
        out.append(line)
    return out


@pytest.fixture(scope="module")
def tricky_inputs(tmp_path_factory):
    from ctrguard.replay.generator import render_lines, simulate

    d = tmp_path_factory.mktemp("tricky")
    sim = simulate(seed=3, campaigns=4, hours=8, volume_scale=1, incident_rate=1.0,
                   trap_rate=0.0)
    rng = random.Random(5)
    imps = _tricky_lines(render_lines(sim, "impressions"), rng)
    clicks = _tricky_lines(render_lines(sim, "clicks"), rng)
    files = {}
    # Impressions: gzip in three members, cut mid-line, last line without a newline.
    data = b"\n".join(imps)
    cuts = sorted(rng.sample(range(1, len(data)), 2))
    files["imp_gz"] = d / "imp.jsonl.gz"
    files["imp_gz"].write_bytes(b"".join(gzip.compress(p) for p in (
        data[:cuts[0]], data[cuts[0]:cuts[1]], data[cuts[1]:])))
    files["imp_plain"] = d / "imp.jsonl"
    files["imp_plain"].write_bytes(data)
    files["clk"] = d / "clk.jsonl"
    files["clk"].write_bytes(b"\r\n".join(clicks) + b"\r\n")
    return files


@pytest.mark.parametrize("imp_key,chunk_lines,block,baselines", [
    ("imp_gz", 5000, None, False), ("imp_plain", 777, 4096, True), ("imp_gz", 100, 333, False)])
def test_replay_outputs_equal_a_plain_reference(tricky_inputs, tmp_path, monkeypatch,
                                                imp_key, chunk_lines, block, baselines):
    import ctrguard.replay.run as rr

    if block is not None:
        monkeypatch.setattr(rr, "READ_BLOCK", block)
    settings = load_config_text(SETTINGS_YAML, env={})
    imp, clk = tricky_inputs[imp_key], tricky_inputs["clk"]
    result = run_replay(imp, clk, settings, tmp_path / "new", chunk_lines=chunk_lines,
                        baselines=baselines)
    _reference_replay(imp, clk, settings, tmp_path / "ref", chunk_lines, baselines)
    s = result.summary
    # The inputs do exercise what they are meant to.
    assert s["alerts"] > 0 and s["invalid"] > 0 and s["late"] > 0 and s["duplicates"] > 0
    figures = (tmp_path / "new" / "figures.jsonl").read_bytes()
    assert "日本-%s-%d".encode() in figures and "móvil".encode() in figures
    assert b"raw_base64" in (tmp_path / "new" / "deadletter.jsonl").read_bytes()
    names = sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "new").iterdir())
    assert len(names) == (6 if baselines else 4)
    if baselines:
        assert all(result.summary["baseline_alerts"].values())
    for name in names:
        new, ref = (tmp_path / "new" / name).read_bytes(), (tmp_path / "ref" / name).read_bytes()
        assert new == ref, name
    # Nothing vanishes: per file, every line read is counted, excluded, a duplicate or a
    # dead letter, and the accounts add up to the summary's totals.
    rows = s["conservation"]
    assert set(rows) == {"impressions:0", "clicks:0"}
    assert all(r["balanced"] for r in rows.values()), rows
    for key, total in (("consumed", "events_read"), ("counted", "events_counted"),
                       ("excluded", "excluded_total"), ("duplicates", "duplicates"),
                       ("dead_lettered", "dead_lettered")):
        assert sum(r[key] for r in rows.values()) == s[total], key


def _damaged(tmp_path: Path, good: bytes, how: str) -> Path:
    data = gzip.compress(good)
    if how == "truncated":
        data = data[:len(data) // 2]
    elif how == "crc":
        data = data[:-8] + (zlib.crc32(good) ^ 1).to_bytes(4, "little") + data[-4:]
    elif how == "trailing garbage":
        data += b"not gzip"
    path = tmp_path / f"{how.replace(' ', '_')}.jsonl.gz"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("decompressor", ["default", "stdlib"])
@pytest.mark.parametrize("how", ["truncated", "crc", "trailing garbage"])
def test_damaged_gzip_is_an_input_error_naming_the_file(tmp_path, how, decompressor,
                                                        monkeypatch):
    good = b"".join(b'{"event_id":"e%d","ts":%d,"campaign_id":"c1"}\n' % (i, 1767571200000 + i)
                    for i in range(20000))
    path = _damaged(tmp_path, good, how)
    with pytest.raises(Exception) as expected:   # the gzip module refuses it too
        open_lines(path).read()
    if decompressor == "stdlib":
        monkeypatch.setattr(replay_run, "_GzipFile", gzip.GzipFile)
    clk = tmp_path / "clk.jsonl"
    clk.write_bytes(b"")
    with pytest.raises(ReplayInputError) as got:
        run_replay(path, clk, load_config_text("", env={}), tmp_path / "out")
    assert str(got.value).startswith(f"{path}: unreadable (damaged gzip data?): ")
    if decompressor == "stdlib":
        assert str(got.value).endswith(f"{type(expected.value).__name__}: {expected.value}")


def test_gzip_input_reads_the_same_with_either_decompressor(tmp_path, monkeypatch):
    lines = [b'{"event_id":"e%d","ts":%d,"campaign_id":"c%d"}' % (i, 1767571200000 + i, i % 7)
             for i in range(30000)]
    path = tmp_path / "imp.jsonl.gz"
    # Several members, a CRLF line, no newline at the end.
    text = b"\n".join(lines)
    path.write_bytes(gzip.compress(text[:100000]) + gzip.compress(text[100000:] + b"\r\n"
                                                                     + lines[0]))
    got = []
    for cls in (replay_run._GzipFile, gzip.GzipFile):
        monkeypatch.setattr(replay_run, "_GzipFile", cls)
        source = replay_run._FileSource(path, "impressions", 0, 7000)
        batches = []
        while not source.done:
            batch = source.read_chunk()
            batches.append((list(batch.values), list(batch.offsets)))
        got.append(batches)
    assert got[0] == got[1] and sum(len(v) for v, _ in got[0]) == len(lines) + 1

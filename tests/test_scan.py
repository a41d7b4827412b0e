"""The C scanner (ctrguard/_scan.c) against its reference, msgspec decoding.

The scanner may refuse a batch that msgspec would accept (the batch is then decoded by
msgspec), but where it answers it must answer exactly what ``decode_batch`` and the rest
of preparation would: same events, same columns, same de-duplication keys.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctrguard import events
from ctrguard.config import load_config_text
from ctrguard.events import MAX_ATTR_CHARS, MAX_ID_CHARS, decode_batch, scan_batch
from ctrguard.flows.engine import CLICK, IMPRESSION, EventPreparer, RawBatch, dedup_keys, ref_keys

pytestmark = pytest.mark.skipif(events._SCANNER is None,
                                reason="the C scanner is not built (make native)")

DIMS = ("device", "channel", "geo", "creative_id")


def _reference(values: list[bytes], dims: tuple[str, ...]):
    """What the scanner must return for a batch that msgspec decodes without an error."""
    decoded = decode_batch(values)
    if decoded.errors:
        return None
    evs = decoded.events
    return ([e.campaign_id for e in evs], [e.event_id for e in evs], decoded.ts_ms.tolist(),
            tuple([getattr(e, d) for e in evs] for d in dims),
            [e.user_agent for e in evs], [i for i, e in enumerate(evs) if e.is_internal])


def _check(values: list[bytes], dims: tuple[str, ...] = ("device",)) -> bool:
    """Compares the scanner with the reference; True when the scanner answered."""
    got = scan_batch(values, dims, user_agents=True, refs=True)
    if got is None:
        assert scan_batch(values, dims, user_agents=True) is None  # refs refuse nothing more
        return False
    want = _reference(values, dims)
    assert want is not None, f"the scanner accepted a batch msgspec rejects: {values!r}"
    assert (got.campaign_ids, got.event_ids, got.ts_ms.tolist(), got.dims, got.user_agents,
            got.internal) == want, values
    assert got.keys.tolist() == dedup_keys(got.campaign_ids, got.event_ids).tolist()
    # The keys of user_id and impression_id, as ref_keys makes them from msgspec's values.
    evs = decode_batch(values).events
    assert got.users.tolist() == ref_keys(got.campaign_ids, [e.user_id for e in evs]).tolist()
    assert got.refs.tolist() == ref_keys(got.campaign_ids,
                                         [e.impression_id for e in evs]).tolist()
    return True


def _event(**fields) -> bytes:
    base = {"event_id": "e1", "ts": 1767225600000, "campaign_id": "c1"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...},
                      separators=(",", ":")).encode()


def test_plain_events_are_scanned_and_equal_the_reference():
    values = [_event(event_id=f"e{i}", campaign_id=f"c{i % 7}", device=["mobile", None][i % 2],
                     user_agent="Mozilla/5.0 (X11)" if i % 3 else None,
                     ts="2026-01-01T00:00:00.250Z" if i % 4 == 0 else 1767225600000 + i,
                     is_internal=i % 5 == 0, geo="DE", extra=1.5e3)
              for i in range(200)]
    assert _check(values, DIMS)
    assert _check(values, ())


def test_interned_values_are_shared_and_equal():
    values = [_event(event_id=f"e{i}", campaign_id="camp-" + "x" * (i % 3)) for i in range(50)]
    got = scan_batch(values, ())
    assert got is not None
    assert got.campaign_ids == [("camp-" + "x" * (i % 3)) for i in range(50)]
    assert got.campaign_ids[0] is got.campaign_ids[3]  # one str per distinct value


@pytest.mark.parametrize("raw", [
    b'{"event_id":"e1","ts":1767225600000}',                                   # missing field
    b'{"event_id":"","ts":1767225600000,"campaign_id":"c"}',                  # empty id
    b'{"event_id":"e","ts":1767225600000,"campaign_id":"c","device":5}',      # wrong type
    b'{"event_id":"e","ts":1767225600000.0,"campaign_id":"c"}',               # float time
    b'{"event_id":"e","ts":99,"campaign_id":"c"}',                            # out of range
    b'{"event_id":"e","ts":"2026-02-29T00:00:00Z","campaign_id":"c"}',        # no such day
    b'{"event_id":"e","ts":"2026-01-01T00:00:00+01:00","campaign_id":"c"}',   # other ISO form
    b'{"event_id":"e","ts":1767225600000,"campaign_id":"c","is_internal":1}',
    b'{"event_id":"e","ts":1767225600000,"campaign_id":"c","x":[1,2]}',        # nested
    b'{"event_id":"e","ts":1767225600000,"campaign_id":"c","x":{"a":1}}',
    b'{"event_id":"e\\u0041","ts":1767225600000,"campaign_id":"c"}',          # escape
    b'{"event_id":"\xc3\xa9","ts":1767225600000,"campaign_id":"c"}',          # non-ASCII
    b'{"event_id":"e","event_id":"f","ts":1767225600000,"campaign_id":"c"}',  # repeated
    b'{"event_id":"e","ts":1767225600000,"campaign_id":"c"} x',               # trailing data
    b'{"event_id":"e","ts":1767225600000,"campaign_id":"c",}',                # trailing comma
    b'{"event_id":"e","ts":01767225600000,"campaign_id":"c"}',                # leading zero
    b'{"event_id":"e","ts":1767225600000,"campaign_id":"c","x":-}',
    b'{"event_id":"e","ts":1767225600000,"campaign_id":"c"',                  # truncated
    b'\xef\xbb\xbf{"event_id":"e","ts":1767225600000,"campaign_id":"c"}',     # BOM
    b'{"event_id":"e","ts":1767225600000,"campaign_id":"c","x":"a\tb"}',      # raw tab
    b'{"event_id":"e","ts":1767225600000,"campaign_id":"c","x":"\x7f"}',      # DEL
    b'[]', b'', b'{}', b'null',
])
def test_anything_unusual_is_refused_and_left_to_msgspec(raw):
    good = _event()
    assert scan_batch([good], ()) is not None
    assert scan_batch([good, raw, good], ("device",), user_agents=True) is None


@pytest.mark.parametrize("bad", [b"\\", b"\x00", b"\x1f", b"\x7f", b"\x80", b"\xc3\xa9",
                                 b"\xff"])
def test_a_bad_byte_is_found_at_every_place_in_a_string(bad):
    # Strings are scanned 16 bytes at a time and the last < 16 bytes of a message byte by
    # byte: a refused byte must be found in either part, at every offset in a block, in a
    # key or a value, and a clean string of every length must come out whole.
    for length in range(0, 40):
        text = "".join(chr(ord("a") + i % 26) for i in range(length))
        assert _check([_event(user_agent=text or ..., geo="US")], ("geo",)) or length == 0
        for cut in range(length + 1):
            raw = _event(user_agent="@" * length, geo="US")
            at = raw.index(b"@" * length) + cut
            tainted = raw[:at] + bad + raw[at + 1:] if cut < length else raw[:at] + bad + raw[at:]
            assert scan_batch([tainted], ("geo",), user_agents=True) is None, tainted
            # the same in a key, and in the last value (its quote near the message's end)
            key = b'{"' + b"k" * cut + bad + b'":1,"event_id":"e","ts":1767225600000,"campaign_id":"c"}'
            assert scan_batch([key], ()) is None, key
            tail = (b'{"event_id":"e","ts":1767225600000,"campaign_id":"c","z":"'
                    + b"z" * cut + bad + b'"}')
            assert scan_batch([tail], ()) is None, tail
    # A quote right at the end of a block, and a message whose last string ends it.
    for length in range(12, 36):
        assert _check([b'{"event_id":"e","ts":1767225600000,"campaign_id":"'
                       + b"c" * length + b'"}'], ())


def test_lengths_at_and_past_the_limits():
    assert _check([_event(event_id="e" * MAX_ID_CHARS, device="d" * MAX_ATTR_CHARS,
                          user_agent="u" * MAX_ATTR_CHARS)])
    assert scan_batch([_event(event_id="e" * (MAX_ID_CHARS + 1))], ()) is None
    assert scan_batch([_event(campaign_id="c" * (MAX_ID_CHARS + 1))], ()) is None
    assert scan_batch([_event(geo="g" * (MAX_ATTR_CHARS + 1))], ()) is None
    assert scan_batch([_event(user_agent="u" * (MAX_ATTR_CHARS + 1))], ()) is None
    big = _event(pad="p" * 70_000)
    assert scan_batch([big], ()) is None  # larger than max_event_bytes: a dead letter
    assert scan_batch([big], (), max_bytes=100_000) is not None
    # The limit holds for every message of the batch, to the byte (the scanner checks it).
    one = _event()
    assert scan_batch([one, one, big], (), max_bytes=100_000) is not None
    assert scan_batch([one, big, one], ()) is None
    assert scan_batch([one, one], (), max_bytes=len(one)) is not None
    assert scan_batch([one, one], (), max_bytes=len(one) - 1) is None


def test_no_value_and_empty_batches():
    assert scan_batch([], ()) is None
    assert scan_batch([_event(), None], ()) is None  # type: ignore[list-item]


def test_time_edges():
    assert _check([_event(ts=events.MIN_TS_MS), _event(ts=events.MAX_TS_MS - 1),
                   _event(ts="2000-01-01T00:00:00Z"), _event(ts="2099-12-31T23:59:59.999Z"),
                   _event(ts="2024-02-29T12:00:00Z")])
    for ts in (events.MAX_TS_MS, events.MIN_TS_MS - 1, "2026-01-01T24:00:00Z",
               "2026-01-01T00:00:60Z", "2026-13-01T00:00:00Z", "2026-01-01t00:00:00Z",
               "2026-01-01T00:00:00.5Z", "1999-12-31T23:59:59Z", True, None):
        assert scan_batch([_event(ts=ts)], ()) is None, ts


# -- generated messages: the scanner never accepts what msgspec rejects, and agrees

_KEYS = ["event_id", "ts", "campaign_id", "device", "channel", "geo", "creative_id",
         "user_id", "user_agent", "impression_id", "is_internal", "extra", "Device", ""]
_STRINGS = st.one_of(st.sampled_from(["", "a", "mobile", "x" * 256, "y" * 257, "z" * 1025,
                                      "2026-01-01T00:00:00Z", "2026-01-01T00:00:00.123Z",
                                      "2026-02-29T00:00:00Z", "2026-01-01T00:00:00+00:00",
                                      "a\\nb", "\\u00e9", "tab\there", "caf\u00e9", "\x7f"]),
                     st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                             max_size=12))
_NUMBERS = st.sampled_from(["0", "-0", "1767225600000", "946684800000", "946684799999",
                            "4102444800000", "4102444799999", "01", "1.5", "1e3", "-1E-2",
                            "123456789012345678901234", "1767225600000.0", "1.", ".5", "-",
                            "1e", "2E+2"])
_VALUES = st.one_of(_STRINGS.map(lambda s: '"' + s + '"'), _NUMBERS,
                    st.sampled_from(["true", "false", "null", "[]", "{}", '[1,"a"]',
                                     '{"k":"v"}', "tru", "nul"]))
_WS = st.sampled_from(["", " ", "\n", "\t", "\r\n ", "\x0b"])


@st.composite
def _messages(draw) -> bytes:
    if draw(st.booleans()):  # mostly valid, with one field changed
        fields = {"event_id": f'"e{draw(st.integers(0, 9))}"', "ts": "1767225600000",
                  "campaign_id": f'"c{draw(st.integers(0, 3))}"'}
        for _ in range(draw(st.integers(0, 3))):
            key = draw(st.one_of(st.sampled_from(["event_id", "ts", "campaign_id"]),
                                 st.sampled_from(_KEYS)))
            fields[key] = draw(_VALUES)
        pairs = [(k, v) for k, v in fields.items()]
    else:
        pairs = [(draw(st.sampled_from(_KEYS)), draw(_VALUES))
                 for _ in range(draw(st.integers(0, 6)))]
    if pairs and draw(st.integers(0, 9)) == 0:
        pairs.append(pairs[0])  # a repeated key
    ws = draw(_WS)
    body = ws + "{" + ws + ("," + ws).join(f'"{k}"{ws}:{ws}{v}' for k, v in pairs) + ws + "}"
    body += draw(st.sampled_from(["", "", " ", "\n", "x", ",", "}"]))
    return body.encode("utf-8")


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_messages(), min_size=1, max_size=4),
       st.sampled_from([(), ("device",), ("geo", "channel"), DIMS]))
def test_generated_batches_agree_with_msgspec(values, dims):
    _check(values, dims)


_POOL = (["1767225600000", "946684800000", "946684799999", "4102444800000", "4102444799999",
          "0", "-0", "01", "1.5", "1e3", "-1E-2", "123456789012345678901234", "1767225600000.0",
          "1767225600000e0", "1.", ".5", "-", "1e", "2E+2", "true", "false", "null", "[]", "{}",
          '[1,"a"]', '{"k":"v"}', "tru", "nul", '""', '"a"', '"mobile"', '"' + "x" * 256 + '"',
          '"' + "y" * 257 + '"', '"' + "z" * 1024 + '"', '"' + "z" * 1025 + '"',
          '"2026-01-01T00:00:00Z"', '"2026-01-01T00:00:00.123Z"', '"2026-02-29T00:00:00Z"',
          '"2026-01-01T00:00:00+00:00"', '"2026-01-01 00:00:00Z"', '"a\\nb"', '"\\u00e9"',
          '"tab\there"', '"caf\u00e9"', '"\x7f"', '"x'])


@pytest.mark.parametrize("key", _KEYS)
def test_every_field_with_every_kind_of_value(key):
    """One field replaced by each value of a pool (exhaustive, unlike the generated
    batches): the scanner answers as msgspec does or refuses, and it does answer for some."""
    answered = 0
    for value in _POOL:
        fields = {"event_id": '"e"', "ts": "1767225600000", "campaign_id": '"c"', key: value}
        raw = ("{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}").encode()
        answered += _check([raw], DIMS)
    assert answered >= 1


def test_the_generator_reaches_both_answers():
    """The property above is only worth something if the scanner answers for part of the
    generated batches and refuses others: count both over a fixed sample."""
    rng = random.Random(7)
    answered = refused = 0
    for _ in range(400):
        pairs = {"event_id": '"e"', "ts": "1767225600000", "campaign_id": '"c"'}
        key = rng.choice(_KEYS)
        pairs[key] = rng.choice(['"v"', "1", "true", "null", "[1]", '""', '"x\\ty"'])
        raw = ("{" + ",".join(f'"{k}":{v}' for k, v in pairs.items()) + "}").encode()
        if _check([raw]):
            answered += 1
        else:
            refused += 1
    assert answered > 50 and refused > 50, (answered, refused)


# -- preparation: the same result with and without the scanner

def _mixed_batch(n: int = 3000) -> list[bytes]:
    rng = random.Random(11)
    out = []
    for _ in range(n):
        ev = {"event_id": f"e{rng.randrange(n // 2)}", "campaign_id": f"c{rng.randrange(40)}",
              "ts": 1767225600000 + rng.randrange(7_200_000),
              "device": rng.choice(["mobile", "desktop", "tablet", None]),
              "user_agent": rng.choice(["Mozilla/5.0", "Googlebot/2.1", "curl/8.0", None]),
              "is_internal": rng.random() < 0.05}
        out.append(json.dumps(ev).encode())
    return out


@pytest.mark.parametrize("dims", [(), ("device",), ("device", "channel")])
def test_prepare_is_the_same_with_and_without_the_scanner(monkeypatch, dims):
    text = "segments:\n  dimensions: [" + ", ".join(dims) + "]\n"
    settings_ = load_config_text(text, source="test", env={})
    values = _mixed_batch()
    batch = RawBatch("impressions", 0, IMPRESSION, values, list(range(len(values))))
    fast = EventPreparer(settings_).prepare(batch, now_ms=1767225600000)
    assert scan_batch(values, dims, user_agents=True) is not None  # the fast path ran
    monkeypatch.setattr(events, "_SCANNER", None)
    slow = EventPreparer(settings_).prepare(batch, now_ms=1767225600000)
    assert fast.excluded == slow.excluded and fast.excluded["bot_user_agent"] > 0
    assert fast.excluded["internal"] > 0
    assert fast.dead_letters == slow.dead_letters and fast.dead_letters  # future events
    assert fast.frontier_ms == slow.frontier_ms
    assert fast.by_shard == slow.by_shard
    for s, chunk in fast.chunks.items():
        assert np.array_equal(chunk.keys, slow.chunks[s].keys)
        assert np.array_equal(chunk.ts_ms, slow.chunks[s].ts_ms)


def test_click_columns_are_the_same_with_and_without_the_scanner(monkeypatch):
    rng = random.Random(5)
    values = []
    for i in range(2000):
        ev = {"event_id": f"k{i}", "campaign_id": f"c{rng.randrange(40)}",
              "ts": 1767225600000 + rng.randrange(3_600_000),
              "user_id": rng.choice([f"u{rng.randrange(500)}", None, "", ...]),
              "impression_id": rng.choice([f"i{rng.randrange(5000)}", None, ...])}
        values.append(json.dumps({k: v for k, v in ev.items() if v is not ...}).encode())
    settings_ = load_config_text("windows:\n  shards: 4\n", source="test", env={})
    batch = RawBatch("clicks", 0, CLICK, values, list(range(len(values))))
    fast = EventPreparer(settings_).prepare(batch, now_ms=1767225600000)
    monkeypatch.setattr(events, "_SCANNER", None)
    slow = EventPreparer(settings_).prepare(batch, now_ms=1767225600000)
    assert fast.chunks.keys() == slow.chunks.keys() and len(fast.chunks) == 4
    for s, chunk in fast.chunks.items():
        assert len(chunk.users) == len(chunk.refs) == len(chunk) > 0
        assert np.array_equal(chunk.users, slow.chunks[s].users)
        assert np.array_equal(chunk.refs, slow.chunks[s].refs)
        assert (chunk.users == 0).any() and (chunk.refs != 0).any()
    # Impressions carry no click columns.
    imps = RawBatch("impressions", 0, IMPRESSION, values, list(range(len(values))))
    assert all(len(c.users) == 0 for c in EventPreparer(settings_).prepare(imps).chunks.values())


def test_the_scanner_can_be_switched_off():
    probe = "from ctrguard import events; print(events._SCANNER is not None)"
    env = {k: v for k, v in os.environ.items() if k != events.NO_SCANNER_ENV}
    on = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                        env=env, check=True)
    off = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**env, events.NO_SCANNER_ENV: "1"}, check=True)
    assert (on.stdout.strip(), off.stdout.strip()) == ("True", "False")


# --------------------------------------------------------------------------- lines

_LINE_BYTES = st.sampled_from([b"\n", b"\r", b"\r\n", b" ", b"\t", b"\x0b", b"\x0c", b"x",
                               b'{"a":1}', b"\xff", b"\x00"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINE_BYTES, max_size=40).map(b"".join), st.integers(0, 12),
       st.integers(0, 40))
def test_line_bounds_equal_the_reference_and_a_readline_loop(buffer, limit, pos):
    pos = min(pos, len(buffer))
    got = events._LINES.line_bounds(buffer, pos, limit)
    assert got == events._line_bounds_py(buffer, pos, limit)
    bounds, numbers, consumed, seen = got
    # What a readline loop over the same bytes keeps (lines rstripped of \r\n, blank
    # ones skipped), up to limit complete lines.
    lines = buffer[pos:consumed].split(b"\n")[:-1] if consumed > pos else []
    assert len(lines) == seen <= limit
    kept = [(i, ln.rstrip(b"\r\n")) for i, ln in enumerate(lines) if ln.strip()]
    assert list(events.LineBlock(buffer, bounds)) == [ln for _, ln in kept]
    index = np.frombuffer(numbers, dtype=np.int64).tolist() if numbers is not None else \
        list(range(seen))
    assert index == [i for i, _ in kept]
    # Nothing complete was left behind while the limit allowed more.
    assert seen == limit or b"\n" not in buffer[consumed:]


def test_line_bounds_equal_the_reference_on_every_short_buffer():
    # Exhaustive over the short buffers (three pieces of the alphabet above): every white
    # space byte alone on a line, before and after "\r", at the end without a newline.
    pieces = [b"\n", b"\r", b" ", b"\t", b"\x0b", b"\x0c", b"x", b"\xff"]
    for a in pieces:
        for b in pieces:
            for c in pieces:
                buffer = a + b + c
                for limit in (1, 2, 4):
                    assert events._LINES.line_bounds(buffer, 0, limit) == \
                        events._line_bounds_py(buffer, 0, limit), (buffer, limit)


def test_line_bounds_refuse_bad_arguments():
    # A limit far above what the buffer can hold is no allocation of that size.
    assert events._LINES.line_bounds(b"a\nb\n", 0, 10**18) == \
        events._line_bounds_py(b"a\nb\n", 0, 10**18)
    for f in (events._LINES.line_bounds, events._line_bounds_py):
        with pytest.raises(ValueError):
            f(b"ab\n", 4, 1)
        with pytest.raises(ValueError):
            f(b"ab\n", 0, -1)


def test_scanning_a_line_block_equals_scanning_its_lines():
    rng = random.Random(7)
    lines = [_event(event_id=f"e{i}", device=rng.choice(["mobile", "desktop"]),
                    user_agent="Mozilla/5.0 " + "x" * rng.randrange(40)) for i in range(300)]
    buffer = b"\r\n".join(lines) + b"\n"
    bounds, numbers, consumed, seen = events.line_bounds(buffer, 0, 1000)
    block = events.LineBlock(buffer, bounds)
    assert (numbers, consumed, seen) == (None, len(buffer), 300) and list(block) == lines
    got, want = (scan_batch(v, ("device",), user_agents=True) for v in (block, lines))
    assert got is not None and want is not None
    assert (got.campaign_ids, got.event_ids, got.ts_ms.tolist(), got.dims, got.user_agents,
            got.keys.tolist()) == (want.campaign_ids, want.event_ids, want.ts_ms.tolist(),
                                   want.dims, want.user_agents, want.keys.tolist())
    # A refused message inside the block refuses the block; so does a line too long.
    bad = buffer.replace(b'"e7"', b'"e\\u0037"')
    b2, _, _, _ = events.line_bounds(bad, 0, 1000)
    assert scan_batch(events.LineBlock(bad, b2), ("device",)) is None
    assert scan_batch(block, ("device",), max_bytes=len(lines[0]) - 1) is None
    # Bounds outside the buffer are an error, not a read past it.
    with pytest.raises(ValueError):
        events._SCANNER.scan((b"{}", np.array([0, 3], dtype=np.int64).tobytes()), (),
                             False, 0, 1, 10, 10)
    assert pickle.loads(pickle.dumps(block)) == lines


def test_campaign_ids_and_dimension_values_are_the_same_objects_in_every_batch():
    scanner = events._SCANNER
    scanner.kept_clear()
    one = scan_batch([_event(campaign_id="camp-a", device="mobile", event_id="1"),
                      _event(campaign_id="camp-b", device="desktop", event_id="2")],
                     ("device",), user_agents=True)
    kept = scanner.kept_count()
    assert kept == 4  # two ids, two devices (event ids and user agents are not kept)
    two = scan_batch([_event(campaign_id="camp-b", device="mobile", event_id="3",
                             user_agent="ua")], ("device",), user_agents=True)
    assert two.campaign_ids[0] is one.campaign_ids[1]
    assert two.dims[0][0] is one.dims[0][0]
    assert scanner.kept_count() == kept
    scanner.kept_clear()
    three = scan_batch([_event(campaign_id="camp-b")], ())
    assert three.campaign_ids == ["camp-b"] and scanner.kept_count() == 1


def test_the_kept_values_are_bounded():
    # Past 2**17 values the table starts over: ever new ids cannot grow it without end.
    scanner = events._SCANNER
    scanner.kept_clear()
    batch = [_event(campaign_id=f"c{i}", event_id="e") for i in range(5000)]
    for k in range(30):
        got = scan_batch([_event(campaign_id=f"c{k}-{i}", event_id="e") for i in range(5000)]
                         if k else batch, ())
        assert got is not None
        assert scanner.kept_count() <= 2**17 + 5000
    assert scanner.kept_count() < 30 * 5000
    scanner.kept_clear()


# -- format controls: one predicate for both paths (ctrguard.events.is_refused_char)

#: Text mixing printable ASCII with characters of every refused category and non-ASCII
#: characters that are allowed, raw or written as JSON escapes.
_MIXED_TEXT = st.lists(st.one_of(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'),
    st.sampled_from([chr(a) for r in events.REFUSED_RANGES for a in r if not 0xD800 <= a <= 0xDFFF]),
    st.characters(codec="utf-8")), max_size=12).map("".join)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["event_id", "campaign_id", "device", "geo"]),
                          _MIXED_TEXT, st.booleans()), min_size=1, max_size=4))
def test_scanner_and_msgspec_agree_on_format_controls(fields):
    values = []
    for field, text, escaped in fields:
        obj = {"event_id": "e", "ts": 1767225600000, "campaign_id": "c", field: text or "x"}
        values.append(json.dumps(obj, ensure_ascii=escaped).encode())
    _check(values, DIMS)
    decoded = decode_batch(values)
    for i, (field, text, _) in enumerate(fields):
        clean = not any(map(events.is_refused_char, text or "x"))
        assert (i not in {j for j, _ in decoded.errors}) == clean, (field, text)

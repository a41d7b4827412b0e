"""Control, format and separator characters in ids and segment values (issue 15, item 6).

Reproduction: an impression whose ``event_id`` ends in U+061C (ARABIC LETTER MARK, a bidi
control) was counted: ``ctrguard/events.py`` refused a hand-made list of bidi characters,
not Unicode's categories. Now one predicate, :func:`ctrguard.events.is_refused_char`
(categories Cc, Cf, Cs, Zl, Zp), decides for both decoding paths: msgspec checks it as a
pattern; the C scanner accepts printable ASCII only, the complement of the predicate's
ASCII part, and leaves every other message to msgspec.
"""

from __future__ import annotations

import json
import sys
import unicodedata

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctrguard import events
from ctrguard.errors import EventError
from ctrguard.events import (
    REFUSED_CATEGORIES,
    REFUSED_RANGES,
    decode_batch,
    decode_event,
    is_refused_char,
    scan_batch,
)
from devtools.services import consume_to_eof, produce_all
from tests.test_reliability_support import T0, W, config_yaml, ev, start_run

#: Characters the hand-made list let through (all Cf).
MISSED_BEFORE = ["\u061c", "\u00ad", "\u0600", "\u06dd", "\u180e", "\ufff9",
                 "\U000110bd", "\U0001d173", "\U000e0001", "\U000e0041"]


def _computed_ranges() -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    start = None
    for cp in range(sys.maxunicode + 2):
        refused = cp <= sys.maxunicode and unicodedata.category(chr(cp)) in REFUSED_CATEGORIES
        if refused and start is None:
            start = cp
        elif not refused and start is not None:
            ranges.append((start, cp - 1))
            start = None
    return ranges


def test_the_listed_ranges_are_the_categories_of_this_python():
    assert list(REFUSED_RANGES) == _computed_ranges(), (
        f"unicodedata {unicodedata.unidata_version}: update events.REFUSED_RANGES")


def test_the_predicate_is_the_categories_on_every_code_point():
    refused = [cp for cp in range(sys.maxunicode + 1) if is_refused_char(chr(cp))]
    assert refused == [cp for cp in range(sys.maxunicode + 1)
                       if unicodedata.category(chr(cp)) in REFUSED_CATEGORIES]


def test_the_scanner_alphabet_is_the_ascii_the_predicate_allows():
    # The scanner takes a message only when every byte is printable ASCII: exactly the
    # ASCII characters the predicate allows (plus nothing: '"' and '\\' end or escape).
    for b in range(128):
        allowed = not is_refused_char(chr(b))
        assert allowed == (0x20 <= b <= 0x7E), hex(b)
        if chr(b) in '"\\':
            continue
        raw = (b'{"event_id":"e' + bytes([b]) + b'","ts":1767225600000,"campaign_id":"c"}')
        got = scan_batch([raw], ())
        if events._SCANNER is not None:
            assert (got is not None) == allowed, hex(b)
        if got is not None:
            assert got.event_ids == [f"e{chr(b)}"]


def _obj(field: str, value: str) -> dict:
    obj = {"event_id": "e1", "ts": 1767225600000, "campaign_id": "c1"}
    obj[field] = value
    return obj


@pytest.mark.parametrize("field", ["event_id", "campaign_id", "device", "channel", "geo",
                                   "creative_id", "user_id", "impression_id"])
@pytest.mark.parametrize("char", MISSED_BEFORE + ["\u202e", "\u2028", "\x85", "\ufeff"])
def test_a_refused_character_anywhere_in_an_id_or_value_is_refused(field, char):
    for value in (f"x{char}", f"{char}x", f"x{char}y"):
        obj = _obj(field, value)
        for raw in (json.dumps(obj, ensure_ascii=False).encode(), json.dumps(obj).encode()):
            with pytest.raises(EventError, match="contains control characters") as err:
                decode_event(raw)
            assert err.value.code == "bad_text"
            out = decode_batch([raw, ev("ok", T0)])
            assert [i for i, _ in out.errors] == [0] and len(out.events) == 1
            assert scan_batch([raw], ("device",)) is None


def test_each_range_is_refused_at_both_ends_and_its_neighbours_are_not():
    for lo, hi in REFUSED_RANGES:
        for cp in {lo, hi}:
            if 0xD800 <= cp <= 0xDFFF:
                continue  # a lone surrogate is not valid JSON at all (below)
            with pytest.raises(EventError):
                decode_event(msgspec.json.encode(_obj("campaign_id", "c" + chr(cp))))
        for cp in (lo - 1, hi + 1):
            if 0 <= cp <= sys.maxunicode and not is_refused_char(chr(cp)) \
                    and not 0xD800 <= cp <= 0xDFFF:
                assert decode_event(json.dumps(_obj("campaign_id", "c" + chr(cp)),
                                               ensure_ascii=False).encode()).campaign_id \
                    == "c" + chr(cp)


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\ud800\\u0041", "a\\udc00"])
def test_unpaired_surrogates_are_refused(escape):
    raw = b'{"event_id":"' + escape.encode() + b'","ts":1767225600000,"campaign_id":"c"}'
    with pytest.raises(EventError):
        decode_event(raw)


def test_user_agents_are_free_text():
    # Not an id nor a segment value: matched against bot patterns only.
    ua = "Mozilla/5.0 \u061c\u200b"
    assert decode_event(msgspec.json.encode(_obj("user_agent", ua))).user_agent == ua


@settings(max_examples=600, deadline=None)
@given(st.text(min_size=1, max_size=40), st.sampled_from(["event_id", "campaign_id", "device"]))
def test_any_text_is_accepted_exactly_when_the_predicate_allows_it(text, field):
    raw = json.dumps(_obj(field, text), ensure_ascii=False).encode("utf-8", "surrogatepass")
    clean = not any(map(is_refused_char, text))
    try:
        got = getattr(decode_event(raw), field)
    except EventError:
        got = None
    assert (got == text) == clean
    batch = decode_batch([raw])
    assert (len(batch.events) == 1) == clean
    scanned = scan_batch([raw], ("device",))
    assert scanned is None or clean


# --------------------------------------------------------------------------- the flow


@pytest.mark.slow
def test_the_flow_dead_letters_every_format_control_and_counts_the_rest(
        broker, unique_topics, redis_url, tmp_path):
    good = [ev(f"i{i}", T0 + i * 10, device="mobile") for i in range(60)]
    # Non-ASCII that is not a control: kept (and so left to msgspec by the scanner).
    good += [ev("café", T0 + 7, device="écran"), ev("e\u00e9", T0 + 8, campaign="c\u4e2d")]
    bad = [ev(f"bad{i}{c}", T0 + 20 + i) for i, c in enumerate(MISSED_BEFORE)]
    bad += [ev("x", T0 + 30, device="m\u061c"), ev("y", T0 + 31, campaign="c1\u2066")]
    mixed = good[:30] + bad + good[30:]
    produce_all(broker.bootstrap, unique_topics["impressions"], mixed)
    produce_all(broker.bootstrap, unique_topics["clicks"], [ev("k", T0 + 9)])
    path = tmp_path / "c.yaml"
    path.write_text(config_yaml(broker.bootstrap, unique_topics, redis_url, batch_size=50))
    proc = start_run(path, tmp_path / "run.log", extra_args=["--no-slack"])
    assert proc.wait(180) == 0, proc.log()[-3000:]
    dead = consume_to_eof(broker.bootstrap, unique_topics["deadletter"])
    assert sorted(m.value() for m in dead) == sorted(bad)
    assert {dict(m.headers())["ctrguard-reason-code"] for m in dead} == {b"bad_text"}
    figs = [msgspec.json.decode(m.value()) for m in consume_to_eof(broker.bootstrap,
                                                             unique_topics["figures"])]
    counted = {(f["campaign_id"], f["window_start_s"]): f["impressions"] for f in figs
               if f["segment"] == "all"}
    assert counted == {("c1", T0): 31, ("c1", T0 + W): 30, ("c\u4e2d", T0): 1}

"""The C figure encoder (``ctrguard/_records.c``) against its reference, ``orjson.dumps``
of each figure and the key ``campaign|segment|window_start_s``. Where it cannot tell that
it writes the same, it must decline (None), and ``encode_figures`` then takes the Python
path (tested with every kind of value in tests/test_release_sink_fast.py)."""

from __future__ import annotations

import math
import string

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctrguard import records
from ctrguard.records import Figure, encode_figures, figure_keys, figure_records

pytestmark = pytest.mark.skipif(records._RECORDS is None,
                                reason="ctrguard._records not built (make native)")

PLAIN = "".join(c for c in string.printable if c not in '"\\' and 0x20 <= ord(c) < 0x7f)


def reference(figures):
    return ([orjson.dumps(f) for f in figures],
            [f"{f.campaign_id}|{f.segment}|{f.window_start_s}".encode() for f in figures])


def c_encode(figures, with_keys=True):
    return records._RECORDS.encode_figures(figures, Figure, with_keys)


plain_text = st.text(alphabet=PLAIN, max_size=30)
plain_figure = st.builds(
    Figure, campaign_id=plain_text, segment=plain_text, window_start=plain_text,
    window_end=plain_text, window_start_s=st.integers(-(2**63), 2**63 - 1),
    impressions=st.integers(-(2**63), 2**63 - 1), clicks=st.integers(0, 2**63 - 1),
    ctr=st.one_of(st.floats(1e-4, 1e16, exclude_max=True), st.floats(-1e16, -1e-4,
                                                                      exclude_min=True),
                  st.just(0.0), st.just(-0.0), st.integers(0, 10**6).map(lambda k: k / 997)),
    status=st.sampled_from(["ok", "quarantined"]) | plain_text,
    alert_ids=st.lists(plain_text, max_size=4).map(tuple))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(plain_figure, max_size=30))
def test_plain_figures_are_encoded_in_c_exactly_as_orjson_does(figures):
    got = c_encode(figures)
    assert got is not None  # plain: the C encoder answers
    assert got == reference(figures)
    assert figure_records(figures) == reference(figures)
    assert c_encode(figures, with_keys=False) == reference(figures)[0]


@pytest.mark.parametrize("change", [
    {"campaign_id": "c\u00e9"}, {"segment": 'a"b'}, {"segment": "a\\b"}, {"status": "\n"},
    {"window_start": "\x7f"}, {"alert_ids": ("ok", "\x01")}, {"alert_ids": ["a"]},
    {"ctr": 9.99e-5}, {"ctr": 1e-7}, {"ctr": 1e16}, {"ctr": math.inf}, {"ctr": math.nan},
    {"ctr": 0}, {"ctr": True}, {"impressions": True}, {"impressions": 2**63},
    {"window_start_s": -(2**63) - 1}, {"clicks": 1.0}, {"segment": 7},
])
def test_what_it_cannot_vouch_for_is_declined_and_encoded_by_the_reference(change):
    base = dict(campaign_id="c1", segment="all", window_start="a", window_end="b",
                window_start_s=1767571200, impressions=40, clicks=3, ctr=0.075, status="ok",
                alert_ids=())
    figures = [Figure(**base), Figure(**{**base, **change}), Figure(**base)]
    assert c_encode(figures) is None
    try:
        expected = [orjson.dumps(f) for f in figures]
    except orjson.JSONEncodeError:  # (an int beyond 64 bits) raised as before
        with pytest.raises(orjson.JSONEncodeError):
            encode_figures(figures)
        return
    assert encode_figures(figures) == expected
    values, keys = figure_records(figures)
    assert values == expected and keys == figure_keys(figures)


def test_boundaries_of_the_ctr_range_are_written_as_orjson_writes_them():
    edge = [0.0, -0.0, 1e-4, math.nextafter(1e-4, 1), math.nextafter(1e16, 0), 1.0, 0.5,
            1 / 3, 2 / 3, 0.1 + 0.2, 123456.789]
    figures = [Figure("c", "all", "a", "b", 0, 1, 1, x, "ok") for x in edge]
    assert c_encode(figures) == reference(figures)
    below = [Figure("c", "all", "a", "b", 0, 1, 1, math.nextafter(1e-4, 0), "ok")]
    assert c_encode(below) is None


def test_other_classes_are_declined():
    class Other:
        pass

    assert c_encode([Other()]) is None
    assert c_encode([]) == ([], [])
    with pytest.raises(TypeError):
        c_encode(5)


def test_a_figure_with_an_unset_field_is_declined():
    hollow = object.__new__(Figure)   # (no field set: the reference path decides)
    assert c_encode([hollow]) is None
    assert c_encode([Figure("c", "all", "a", "b", 0, 1, 1, 1.0, "ok"), hollow]) is None

"""The C figure encoder (``ctrguard/_records.c``) against its reference, ``orjson.dumps``
of each figure and the key ``campaign|segment|window_start_s`` (UTF-8, surrogates passed,
``%`` and ``|`` in campaign and segment escaped as ``%25`` and ``%7C``).
A figure it cannot tell that it writes the same must go to the fallback (the reference),
in its place, and only that figure (every kind of value is also tested through
``encode_figures`` in tests/test_release_sink_fast.py)."""

from __future__ import annotations

import math
import string

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctrguard import records
from ctrguard.records import (
    Figure,
    WindowDecision,
    decision_records,
    encode_figures,
    figure_keys,
    figure_records,
)

pytestmark = pytest.mark.skipif(records._RECORDS is None,
                                reason="ctrguard._records not built (make native)")

PLAIN = "".join(c for c in string.printable if c not in '"\\' and 0x20 <= ord(c) < 0x7f)


def key_text(text):
    """A campaign id or segment in a record key: ``%`` and the separator ``|`` escaped."""
    return f"{text}".replace("%", "%25").replace("|", "%7C")


def reference(figures):
    return ([orjson.dumps(f) for f in figures],
            [f"{key_text(f.campaign_id)}|{key_text(f.segment)}|{f.window_start_s}"
             .encode("utf-8", "surrogatepass") for f in figures])


class Fallback:
    """The reference record of a figure, noting which figures it was asked for."""

    def __init__(self, with_keys=True):
        self.with_keys = with_keys
        self.asked = []

    def __call__(self, f):
        self.asked.append(f)
        value = orjson.dumps(f)
        return (value, reference([f])[1][0]) if self.with_keys else value


def c_encode(figures, with_keys=True):
    """The C encoder's result and the figures it handed to the fallback."""
    fallback = Fallback(with_keys)
    return records._RECORDS.encode_figures(figures, Figure, with_keys, fallback), fallback.asked


def texts(alphabet=None):
    return st.text(alphabet=alphabet, max_size=30) if alphabet else st.text(max_size=30)


def figures_of(text):
    return st.builds(
        Figure, campaign_id=text, segment=text, window_start=text, window_end=text,
        window_start_s=st.integers(-(2**63), 2**63 - 1),
        impressions=st.integers(-(2**63), 2**63 - 1), clicks=st.integers(0, 2**63 - 1),
        ctr=st.one_of(st.floats(1e-4, 1e16, exclude_max=True),
                      st.floats(-1e16, -1e-4, exclude_min=True),
                      st.just(0.0), st.just(-0.0), st.integers(0, 10**6).map(lambda k: k / 997)),
        status=st.sampled_from(["ok", "quarantined"]) | text,
        alert_ids=st.lists(text, max_size=4).map(tuple))


plain_figure = figures_of(texts(PLAIN))
#: Any text without lone surrogates: controls, quotes, backslashes, non-ASCII of every width.
any_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=30)
any_text_figure = figures_of(any_text | texts('"\\\x00\x08\t\n\x0c\r\x1f\x7f\u2028é日🎉a'))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(plain_figure, max_size=30))
def test_plain_figures_are_encoded_in_c_exactly_as_orjson_does(figures):
    assert c_encode(figures) == (reference(figures), [])   # the fallback is never asked
    assert figure_records(figures) == reference(figures)
    assert c_encode(figures, with_keys=False) == (reference(figures)[0], [])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_text_figure, max_size=20))
def test_any_text_is_escaped_in_c_exactly_as_orjson_escapes_it(figures):
    assert c_encode(figures) == (reference(figures), [])
    assert decision_records([WindowDecision("c", 0, 300, tuple(figures), ())]) \
        == reference(figures)


@pytest.mark.parametrize("change", [
    {"campaign_id": "c\udc80"}, {"segment": "\ud800x"}, {"status": "\udfff"},
    {"alert_ids": ("ok", "\udc80")}, {"alert_ids": ["a"]},
    {"ctr": 9.99e-5}, {"ctr": 1e-7}, {"ctr": 1e16}, {"ctr": math.inf}, {"ctr": math.nan},
    {"ctr": 0}, {"ctr": True}, {"impressions": True}, {"impressions": 2**63},
    {"window_start_s": -(2**63) - 1}, {"clicks": 1.0}, {"segment": 7},
])
def test_what_it_cannot_vouch_for_goes_to_the_fallback_alone(change):
    base = dict(campaign_id="c1", segment="all", window_start="a", window_end="b",
                window_start_s=1767571200, impressions=40, clicks=3, ctr=0.075, status="ok",
                alert_ids=())
    odd = Figure(**{**base, **change})
    figures = [Figure(**base), odd, Figure(**{**base, "campaign_id": "c\u00e9"})]
    try:
        expected = [orjson.dumps(f) for f in figures]
    except orjson.JSONEncodeError:  # (an int beyond 64 bits, a lone surrogate) as before
        with pytest.raises(orjson.JSONEncodeError):
            c_encode(figures)
        with pytest.raises(orjson.JSONEncodeError):
            encode_figures(figures)
        return
    got, asked = c_encode(figures)
    assert asked == [odd] and got == reference(figures)
    assert encode_figures(figures) == expected
    values, keys = figure_records(figures)
    assert values == expected and keys == figure_keys(figures)


def test_boundaries_of_the_ctr_range_are_written_as_orjson_writes_them():
    edge = [0.0, -0.0, 1e-4, math.nextafter(1e-4, 1), math.nextafter(1e16, 0), 1.0, 0.5,
            1 / 3, 2 / 3, 0.1 + 0.2, 123456.789]
    figures = [Figure("c", "all", "a", "b", 0, 1, 1, x, "ok") for x in edge]
    assert c_encode(figures) == (reference(figures), [])
    below = [Figure("c", "all", "a", "b", 0, 1, 1, math.nextafter(1e-4, 0), "ok")]
    assert c_encode(below) == (reference(below), below)


def test_other_classes_go_to_the_fallback():
    class Other:
        pass

    other = Other()
    asked = []
    assert records._RECORDS.encode_figures([other], Figure, True,
                                           lambda f: asked.append(f) or (b"v", b"k")) \
        == ([b"v"], [b"k"])
    assert asked == [other]
    assert c_encode([]) == (([], []), [])
    with pytest.raises(TypeError):
        c_encode(5)
    with pytest.raises(TypeError, match=r"\(value, key\)"):
        records._RECORDS.encode_figures([other], Figure, True, lambda f: b"v")


def test_a_figure_with_an_unset_field_goes_to_the_fallback():
    hollow = object.__new__(Figure)   # (no field set: the reference decides)
    plain = Figure("c", "all", "a", "b", 0, 1, 1, 1.0, "ok")
    asked = []
    got = records._RECORDS.encode_figures([plain, hollow], Figure, True,
                                          lambda f: asked.append(f) or (b"v", b"k"))
    assert got == ([orjson.dumps(plain), b"v"], [b"c|all|0", b"k"]) and asked == [hollow]


def test_decisions_are_walked_in_order_and_odd_ones_leave_it_to_python():
    f = [Figure(f"c{i}", "all", "a", "b", i, 1, 1, 0.5, "ok") for i in range(5)]
    decisions = [WindowDecision("c", 0, 300, (f[0], f[1]), ()),
                 WindowDecision("c", 0, 300, (), ()),
                 WindowDecision("c", 0, 300, (f[2], f[3], f[4]), ())]
    assert decision_records(decisions) == reference(f)
    assert decision_records(tuple(decisions)) == reference(f)
    assert decision_records([]) == ([], [])
    listed = WindowDecision("c", 0, 300, [f[0]], ())   # not a tuple: the Python path
    assert records._RECORDS.decision_records([listed], WindowDecision, Figure, None) is None
    assert decision_records([listed, decisions[0]]) == reference([f[0], f[0], f[1]])
    assert records._RECORDS.decision_records([f[0]], WindowDecision, Figure, None) is None
    with pytest.raises(AttributeError):
        decision_records([f[0]])   # (as the list of figures raised before)


SEPARATORS = st.text(alphabet="|%7Cae\u00e9\U0001f389", max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(SEPARATORS, SEPARATORS), min_size=1, max_size=20))
def test_keys_with_separators_in_ids_are_unambiguous_in_c_and_python(ids):
    figures = [Figure(c, s, "a", "b", 1767225600, 1, 1, 0.5, "ok") for c, s in ids]
    (_, keys), asked = c_encode(figures)
    assert asked == [] and keys == reference(figures)[1] == figure_keys(figures)
    # One key per series, and each splits at "|" into exactly what it was made of.
    assert len(set(keys)) == len(set(ids))
    assert [records.parse_figure_key(k) for k in keys] == [(c, s, 1767225600) for c, s in ids]


def test_the_ambiguous_pair_of_the_issue_gets_two_keys(monkeypatch):
    pair = [Figure("x|device=mobile", "all", "a", "b", 300, 1, 1, 0.5, "ok"),
            Figure("x", "device=mobile|all", "a", "b", 300, 2, 1, 0.5, "ok")]
    expected = [b"x%7Cdevice=mobile|all|300", b"x|device=mobile%7Call|300"]
    assert figure_records(pair)[1] == expected
    monkeypatch.setattr(records, "_RECORDS", None)     # the Python path writes the same
    assert figure_records(pair)[1] == expected == figure_keys(pair)

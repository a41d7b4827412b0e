"""The release sink's encoding (msgspec) writes exactly what the previous implementation
wrote for every record a run can produce, and still writes Redis before Kafka (real
redis-server and tansu broker from conftest.py).

The references below are the previous implementation, written out: ``orjson.dumps`` of each
figure and alert (orjson stays a development dependency for this comparison only; a
``Figure``, a msgspec Struct since, is handed to it as the dataclass it was: its fields in
order), keys ``campaign|segment|window_start_s`` as UTF-8 with surrogates passed
(``%`` and ``|`` in campaign and segment escaped as ``%25`` and ``%7C``),
and the record script's payload written by ``json.dumps``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import msgspec
import orjson
import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ctrguard.sinks.quarantine as quarantine
from bench.workloads import ReleaseScenario as Scenario
from ctrguard import probes, records
from ctrguard.config import Settings
from ctrguard.errors import QuarantineError, RedisUnavailable
from ctrguard.records import (
    Alert,
    Figure,
    WindowDecision,
    encode_figures,
    figure_keys,
    make_alert_id,
)
from ctrguard.sinks.kafka_out import produce_many
from ctrguard.sinks.quarantine import QuarantineReader, QuarantineStore, iso_utc
from ctrguard.sinks.release import ReleaseGate, ReleaseSink
from devtools.services import consume_to_eof

T0 = 1_767_225_600
LENGTH = 300
NOW = float(T0 + 10 * LENGTH)


# --------------------------------------------------------------------------- references


def as_before(obj):
    """orjson's ``default``: a Figure (a dataclass when orjson wrote it) as its fields."""
    if isinstance(obj, Figure):
        return msgspec.structs.asdict(obj)
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


def reference_values(figures: list[Figure]) -> list[bytes]:
    return [orjson.dumps(f, default=as_before) for f in figures]


def reference_keys(figures: list[Figure]) -> list[bytes]:
    def part(text: str) -> str:   # "%" and the separator "|" escaped
        return f"{text}".replace("%", "%25").replace("|", "%7C")

    return [f"{part(f.campaign_id)}|{part(f.segment)}|{f.window_start_s}"
            .encode("utf-8", "surrogatepass") for f in figures]


def outcome(fn, *args):
    """The result, or the type and message of the exception raised."""
    try:
        return ("ok", fn(*args))
    except Exception as exc:
        return ("raised", type(exc), str(exc))


def fig(cid: str = "c1", segment: str = "all", *, start: int = T0, impressions: int = 40,
        clicks: int = 3, ctr: float = 0.075, status: str = "ok",
        alert_ids: tuple = ()) -> Figure:
    return Figure(cid, segment, iso_utc(start), iso_utc(start + LENGTH), start, impressions,
                  clicks, ctr, status, alert_ids)


# --------------------------------------------------------------------------- figures


def test_live_shaped_figures_are_encoded_as_before():
    scenario = Scenario(300, 4, 4, seed=3, alert_rate=0.05)
    decisions = [d for i in range(len(scenario)) for batch in scenario.call(i) for d in batch]
    figures = [f for d in decisions for f in d.figures]
    assert len(figures) > 800 and any(f.alert_ids for f in figures)
    assert any(not f.campaign_id.isascii() for f in figures)
    assert encode_figures(figures) == reference_values(figures)
    assert records.decision_records(decisions) == (reference_values(figures),
                                                   reference_keys(figures))


HOSTILE_TEXT = [
    '},{"campaign_id":', '"},{"campaign_id":"x', "\n", "a\nb", '\\', '\\"', '"', "{}", "[]",
    "\u2028", "\x00", "\x1f", "\x7f", "é", "日本", "🎉", "", " ", "%", "|", ",", "null",
    "%7C", "a|b%c",
]


@pytest.mark.parametrize("text", HOSTILE_TEXT)
def test_any_text_in_any_string_field_gives_the_same_bytes(text):
    figures = [fig(text), fig("c2", text), fig("c3", status=text),
               fig("c4", alert_ids=(text, text + "x")), fig("c5"),
               Figure(text, text, text, text, T0, 1, 1, 1.0, text, (text,))]
    assert encode_figures(figures) == reference_values(figures)
    decision = WindowDecision(text, T0, T0 + LENGTH, tuple(
        Figure(text, seg, "a", "b", T0, 1, 1, 0.5, "ok") for seg in (text, "all", text)), ())
    assert records.decision_records([decision]) == (reference_values(decision.figures),
                                                    reference_keys(decision.figures))


@pytest.mark.parametrize("value", [
    0.0, -0.0, 1e-7, 5e-324, 1 / 3, 0.1 + 0.2, 1e15, 9999999999999998.0, 1.5e-300,
    math.inf, -math.inf, math.nan, 0, 1, True, None, 2**63 - 1, 2**64 - 1, -(2**63),
])
def test_numbers_of_every_form_give_the_same_bytes(value):
    figures = [fig(ctr=value), fig("c2", impressions=value, clicks=value),
               Figure("c3", "all", "a", "b", value, 1, 1, 0.5, "ok")]
    assert encode_figures(figures) == reference_values(figures)


def test_what_msgspec_writes_otherwise_no_run_produces():
    """Where the text differs from orjson's (or an error replaces another): values no count,
    CTR or window of a run reaches. A float from 1e16 on has no ``+`` in its exponent; an
    integer beyond 64 bits is written where orjson refused it; a lone surrogate (which the
    event decoder refuses) raises UnicodeEncodeError where orjson raised its own TypeError;
    a subclass of str (the decoder makes plain ones) is refused where orjson wrote it."""
    assert encode_figures([fig(ctr=1e16)]) == [orjson.dumps(fig(ctr=1e16), default=as_before).replace(
        b"1e+16", b"1e16")]
    assert encode_figures([fig(ctr=-2.5e17)])[0].endswith(b'"ctr":-2.5e17,"status":"ok",'
                                                          b'"alert_ids":[]}')
    assert b'"impressions":18446744073709551616' in encode_figures([fig(impressions=2**64)])[0]
    with pytest.raises(UnicodeEncodeError):
        encode_figures([fig("x\udc80")])

    class Name(str):
        pass

    with pytest.raises(TypeError):
        encode_figures([fig(Name("c1"))])


@dataclass(frozen=True, slots=True)
class Nested:
    campaign_id: str
    segment: str


@pytest.mark.parametrize("odd", [
    [{"campaign_id": "x"}, {"campaign_id": "y"}],       # the boundary text inside a figure
    ({"campaign_id": "x", "y": [1, 2]},),
    (Nested("c9", "all"), Nested("c8", "all")),
    ["a", 1, 2.5, None, [True]],
])
def test_fields_holding_objects_give_the_same_bytes(odd):
    figures = [fig(), fig("c2", alert_ids=odd), fig("c3"),
               Figure("c4", "all", odd, "b", T0, 1, 1, 0.5, "ok")]
    assert encode_figures(figures) == reference_values(figures)


@pytest.mark.parametrize("bad", [object(), 2.5j, len])
def test_what_cannot_be_written_raises(bad):
    figures = [fig(), fig("c2", segment="all", alert_ids=(bad,)), fig("c3")]
    assert outcome(reference_values, figures)[0] == "raised"
    assert outcome(encode_figures, figures)[0] == "raised"


def test_other_types_than_figure_are_written_as_before():
    class Wider(Figure, frozen=True):  # one more field
        extra: str = "x"

    items = [fig(), Wider("c2", "all", "a", "b", T0, 1, 1, 0.5, "ok"), {"campaign_id": "c3"}]
    assert encode_figures(items) == reference_values(items)
    assert encode_figures([]) == [] and records.decision_records([]) == ([], [])
    # Equal segments of other types (1 and True) have other keys.
    odd = [Figure("c", seg, "a", "b", T0, 1, 1, 0.5, "ok") for seg in ("1", 1, True, "1")]
    decisions = [WindowDecision("c", T0, T0 + LENGTH, (f,), ()) for f in odd]
    assert records.decision_records(decisions)[1] == reference_keys(odd)


#: Text a run can put in a record: anything but a lone surrogate (the event decoder refuses
#: those, and Python cannot encode one as UTF-8).
run_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
#: A float as a run writes it (CTRs, scores, expectations): never 1e16 or beyond.
run_float = st.floats(allow_nan=True, allow_infinity=True).filter(
    lambda x: not abs(x) >= 1e16 or math.isinf(x))
run_int = st.integers(-(2**63), 2**63 - 1)


def figure_strategy(campaign_id=run_text, window_start_s=run_int):
    return st.builds(
        Figure, campaign_id=campaign_id, segment=run_text | st.sampled_from(["all", "device=m"]),
        window_start=run_text, window_end=run_text, window_start_s=window_start_s,
        impressions=st.integers(0, 2**63 - 1), clicks=st.integers(0, 2**63 - 1),
        ctr=run_float | st.integers(0, 10), status=st.sampled_from(["ok", "quarantined"]),
        alert_ids=st.lists(run_text, max_size=3).map(tuple))


@st.composite
def decisions_strategy(draw):
    """A decision's figures are made of its campaign and window objects (as the engine makes
    them), now and then one of an equal copy, an equal value of another type (a float
    window start: another key), of another campaign or window."""
    cid = draw(run_text)
    start = draw(run_int | st.integers(-3, 3))
    same = figure_strategy(st.just(cid), st.just(start))
    other = figure_strategy(run_text | st.just("".join(["", cid])),
                            run_int | st.just(int(str(start)))
                            | st.just(float(start) if abs(start) < 1e15 else start))
    figures = draw(st.lists(same | other, max_size=5))
    alerts = draw(st.lists(alert_strategy, max_size=2))
    return WindowDecision(cid, start, start + LENGTH, tuple(figures), tuple(alerts))


alert_strategy = st.builds(
    Alert, alert_id=run_text, campaign_id=run_text, segment=run_text, window_start=run_text,
    window_end=run_text, window_start_s=run_int, impressions=st.integers(0, 2**63 - 1),
    clicks=st.integers(0, 2**63 - 1), ctr=run_float, kind=run_text, severity=run_text,
    detector=run_text, baseline_ctr=run_float, score=run_float, confidence=run_float,
    ctr_low=run_float, ctr_high=run_float, expected_clicks=run_float,
    expected_impressions=run_float, suspected_cause=run_text, quarantine=st.booleans(),
    incident=run_text, expected=run_text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(decisions_strategy(), max_size=12))
def test_records_equal_the_previous_implementation(decisions):
    """Values and keys of figures, and alerts, as orjson and the old key code wrote them."""
    figures = [f for d in decisions for f in d.figures]
    assert encode_figures(figures) == reference_values(figures)
    assert records.decision_records(decisions) == (reference_values(figures),
                                                   reference_keys(figures))
    assert figure_keys(figures) == reference_keys(figures)
    alerts = [a for d in decisions for a in d.alerts]
    assert [records.encode_record(a) for a in alerts] == [orjson.dumps(a) for a in alerts]


# --------------------------------------------------------------------------- produce_many


@pytest.fixture
def figures_topic(topic_factory) -> str:
    return topic_factory(keys=("figures",))["figures"]


def test_produce_many_keeps_order_when_the_local_queue_fills(broker, figures_topic):
    # A queue of 7 messages overflows again and again: every record must still arrive
    # once, in order (a record retried twice or skipped shows here).
    producer = Producer({**broker.client_config(), "queue.buffering.max.messages": 7,
                         "linger.ms": 0, "acks": "all", "enable.idempotence": True})
    values = [b"v%04d" % i for i in range(300)]
    keys = [b"k%04d" % i for i in range(300)]
    produce_many(producer, figures_topic, values, keys)
    assert producer.flush(30) == 0
    got = consume_to_eof(broker.bootstrap, figures_topic)
    assert [(m.key(), m.value()) for m in got] == list(zip(keys, values, strict=True))


def test_produce_many_refuses_lists_of_different_lengths_as_before(broker, figures_topic):
    producer = Producer(broker.client_config())
    with pytest.raises(ValueError):
        produce_many(producer, figures_topic, [b"a", b"b"], [b"k"])
    producer.flush(30)


# --------------------------------------------------------------------------- Redis payload


def _alert(cid: str, segment: str, start: int, detector: str = "binomial_cusum", *,
           quarantine: bool = True, cause: str = "tracking outage") -> Alert:
    return Alert(
        alert_id=make_alert_id(cid, segment, start, detector, "ctr_drop"), campaign_id=cid,
        segment=segment, window_start=iso_utc(start), window_end=iso_utc(start + LENGTH),
        window_start_s=start, impressions=1000, clicks=2, ctr=0.002, kind="ctr_drop",
        severity="critical", detector=detector, baseline_ctr=0.02, score=9.0,
        confidence=0.99, ctr_low=0.001, ctr_high=0.004, expected_clicks=20.0,
        expected_impressions=1000.0, suspected_cause=cause, quarantine=quarantine)


def _decision(cid: str, start: int, *alerts: Alert, figures: tuple = ()) -> WindowDecision:
    return WindowDecision(cid, start, start + LENGTH, figures, tuple(alerts))


ODD_IDS = ["café:ü", "日本 25%", "promo🎉", 'q"uote\\', "tab\tnew\nline", "\u2028", "x" * 300]


def redis_state(client) -> dict:
    state = {}
    for key in sorted(client.scan_iter(count=1000)):
        kind = client.type(key)
        if kind == "hash":
            value = client.hgetall(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            value = [fields for _, fields in client.xrange(key)]
        state[key] = (kind, value, client.ttl(key) > 0)
    return state


def record_batches(url: str, batches, monkeypatch, *, reference: bool) -> dict:
    client = quarantine.redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    with monkeypatch.context() as m:
        if reference:
            m.setattr(quarantine, "_payload_json", json.dumps)
        store = QuarantineStore(client, Settings().quarantine, "t", window_length_s=LENGTH,
                                clock=lambda: NOW)
        for batch in batches:
            store.record(batch)
    state = redis_state(client)
    client.close()
    return state


def test_record_leaves_what_the_json_payload_left(redis_url, monkeypatch):
    batches = [
        [_decision(c, T0) for c in ["c1", "c2", *ODD_IDS]],
        # Several windows of one campaign in a call, latest first: the watermark is the max.
        [_decision("c4", T0 + 2 * LENGTH), _decision("c2", T0 + LENGTH),
         _decision("c4", T0 + LENGTH), _decision("c3", T0 + LENGTH)],
        [_decision(c, T0 + 3 * LENGTH, _alert(c, "all", T0 + 3 * LENGTH),
                   _alert(c, "device=ü", T0 + 3 * LENGTH, "adwin", cause="bot 🎉"),
                   _alert(c, "all", T0 + 3 * LENGTH, "page_hinkley", quarantine=False))
         for c in ["c1", *ODD_IDS]],
        [_decision("c2", T0 + 4 * LENGTH, _alert("c2", "x", T0 + 4 * LENGTH))] * 2,
    ]
    new = record_batches(redis_url, batches, monkeypatch, reference=False)
    old = record_batches(redis_url, batches, monkeypatch, reference=True)
    assert new == old
    checked = dict(new["t:checked:v2"][1])
    assert checked["c4"] == T0 + 3 * LENGTH and checked["c3"] == T0 + 2 * LENGTH
    assert checked["c1"] == T0 + 4 * LENGTH
    # Members are encoded as in flag keys (key layout 2).
    assert checked[quarantine.encode_key_part("café:ü")] == T0 + 4 * LENGTH
    assert set(checked) == {quarantine.encode_key_part(c) for c in ["c1", "c2", "c3", "c4",
                                                                     *ODD_IDS]}
    flags = [k for k in new if k.startswith("t:flag:")]
    assert len(flags) == 2 * (1 + len(ODD_IDS)) + 1


def test_payload_decodes_in_the_script_to_what_json_text_decodes_to(redis_url):
    client = quarantine.redis.Redis.from_url(redis_url)
    canonical = client.register_script(
        "local p = cjson.decode(ARGV[1]) local out = {} "
        "for i = 1, #p.checked, 2 do out[#out + 1] = p.checked[i + 1] .. '=' .. p.checked[i] end "
        "return {table.concat(out, '\\31'), tostring(p.max_end), p.now, p.actor}")
    payload = {"flags": [],
               "checked": [x for i, c in enumerate(ODD_IDS) for x in (str(T0 + i), c)],
               "max_end": T0 + 9, "now": "2026-01-01T00:00:00Z", "actor": "ctrguard ü"}
    fast = quarantine._payload_json(payload)
    assert isinstance(fast, bytes)   # msgspec wrote it
    assert canonical(args=[fast]) == canonical(args=[json.dumps(payload)])
    client.close()


def test_lone_surrogate_campaign_fails_before_anything_is_written(redis_url, monkeypatch):
    # (msgspec refuses lone surrogates in events; only a direct caller can pass one.) Its
    # key cannot be encoded: an error, and nothing of the batch is written.
    batch = [_decision("ok", T0), _decision("bad\udc80", T0)]
    for reference in (False, True):
        with monkeypatch.context() as m:
            if reference:
                m.setattr(quarantine, "_payload_json", json.dumps)
            client = quarantine.redis.Redis.from_url(redis_url, decode_responses=True)
            store = QuarantineStore(client, Settings().quarantine, "t", window_length_s=LENGTH)
            with pytest.raises(QuarantineError, match="not valid Unicode"):
                store.record(batch)
            assert client.zscore("t:checked:v2", "ok") is None   # nothing was written
            assert client.keys("*") == []
            client.close()


# --------------------------------------------------------------------------- the sink


def sink_settings(redis_url: str, broker, topics: dict[str, str]) -> Settings:
    return Settings.model_validate({
        "kafka": {"brokers": [broker.bootstrap],
                  "topics": {"figures": topics["figures"], "alerts": topics["alerts"]}},
        "redis": {"url": redis_url, "key_prefix": "t", "retry_backoff_s": 0.01,
                  "retry_backoff_max_s": 0.02, "socket_timeout_s": 0.5,
                  "connect_timeout_s": 0.5},
        "windows": {"length": LENGTH},
    })


def close(part: ReleaseSink) -> None:
    """Flush, and drop the partition's producer now: its gate holds bound methods of the
    partition (a cycle), which would keep a client connecting after the broker stopped."""
    part.close()
    part._gate = None  # type: ignore[assignment]


def test_sink_publishes_the_old_bytes_after_redis_holds_every_decision(
        redis_url, broker, unique_topics, monkeypatch):
    """At the fault point between Redis and Kafka, Redis already decides every figure of the
    call and Kafka holds none of them; afterwards Kafka holds exactly the old records, and
    each published figure's status in Redis agrees with the figure (nothing pending)."""
    scenario = Scenario(60, 3, 4, seed=11, alert_rate=0.1)
    calls = [scenario.call(i) for i in range(len(scenario))]
    decisions = [d for items in calls for batch in items for d in batch]
    figures = [f for d in decisions for f in d.figures]
    alerts = [a for d in decisions for a in d.alerts]
    assert any(f.status == "quarantined" for f in figures)
    part = ReleaseSink(sink_settings(redis_url, broker, unique_topics))
    reader = QuarantineReader(redis_url, "t", window_length_s=LENGTH)
    published = 0
    seen: list[str] = []

    def at(name: str) -> None:
        nonlocal published
        seen.append(name)
        on_kafka = consume_to_eof(broker.bootstrap, unique_topics["figures"])
        if name == "release.after_redis":
            assert len(on_kafka) == published           # nothing of this call yet
            for d in current:
                assert reader.checked_through(d.campaign_id) >= d.window_end_s
                for f in d.figures:
                    st = reader.status(f.campaign_id, f.segment, f.window_start_s)
                    assert st.state == ("clean" if f.status == "ok" else "quarantined")
        elif name == "release.after_publish":
            published = len(on_kafka)

    monkeypatch.setattr(probes, "point", at)
    for items in calls:
        current = [d for batch in items for d in batch]
        part.write_batch(items)
    close(part)
    assert seen == ["release.after_redis", "release.after_publish"] * len(calls)

    got = consume_to_eof(broker.bootstrap, unique_topics["figures"])
    assert [m.value() for m in got] == reference_values(figures)
    assert [m.key() for m in got] == reference_keys(figures)
    got_alerts = consume_to_eof(broker.bootstrap, unique_topics["alerts"])
    assert [(m.key(), m.value()) for m in got_alerts] == [
        (a.alert_id.encode(), orjson.dumps(a)) for a in alerts]


def test_sink_publishes_nothing_while_redis_is_down(redis_factory, broker, unique_topics):
    server = redis_factory()
    part = ReleaseSink(sink_settings(server.url, broker, unique_topics))
    part._gate = ReleaseGate(part._store.record, part._publish, backoff_s=0.01,
                             backoff_max_s=0.02, max_wait_s=0.1)
    batch = Scenario(20, 1, 2, seed=5).call(0)
    server.stop()
    with pytest.raises(RedisUnavailable):
        part.write_batch(batch)
    assert consume_to_eof(broker.bootstrap, unique_topics["figures"]) == []
    server.restart()
    part.write_batch(batch)
    close(part)
    n = sum(len(d.figures) for b in batch for d in b)
    assert len(consume_to_eof(broker.bootstrap, unique_topics["figures"])) == n

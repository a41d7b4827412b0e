"""Poison messages: nothing a producer can write stops the flow (issue 15, item 4).

Reproductions, run through ``ctrguard run`` against the tansu broker and a ``redis-server``:

* a 2 KB event with 1,000 nested ``[`` in an unknown field raised RecursionError out of the
  prepare step (msgspec's decoder; the C scanner refuses nested values and was not
  involved), and every restart raised it again;
* a 1,040,000-byte event (a default broker takes up to 1,048,588) was refused as too big,
  but the dead-letter producer kept librdkafka's ``message.max.bytes`` of 1,000,000 and
  failed with MSG_SIZE_TOO_LARGE, killing the step.

Both now end as dead letters, the flow runs on, and a message at the broker's limit goes to
the dead-letter topic cut to fit, with headers giving its size, SHA-256 and source offset.
A message that still makes the prepare step raise (injected with ``CTRGUARD_RAISE_ON``) is
isolated by splitting its batch and dead-lettered alone with reason code ``crash``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import msgspec
import pytest

from ctrguard.config import load_config_text
from ctrguard.flows.ctr_flow import DEAD, SYSTEMIC_CRASH_MIN, bisect_batch
from ctrguard.flows.engine import RawBatch
from devtools.services import consume_to_eof, produce_all
from tests.test_reliability_support import T0, W, config_yaml, ev, start_run

NESTED = (b'{"event_id":"deep","ts":1767225600000,"campaign_id":"c1","x":' + b"[" * 1000
          + b"]" * 1000 + b"}")


def _sized(eid: str, ts_s: float, size: int) -> bytes:
    """A valid event of exactly ``size`` bytes (an unknown field pads it)."""
    return ev(eid, ts_s, pad="x" * (size - len(ev(eid, ts_s, pad=""))))


BIG = _sized("big", T0 + 5, 1_040_000)
#: As large as a broker with Kafka's defaults takes: too large for the dead-letter topic
#: once headers are added.
AT_LIMIT = _sized("limit", T0 + 6, 1_048_588)
LARGE_PRODUCER = {"message.max.bytes": 2_000_000}


def _good(n: int = 600) -> list[bytes]:
    return [ev(f"i{i}", T0 + i * 12, device="mobile" if i % 3 else "desktop") for i in range(n)]


def _expected_all(values: list[bytes]) -> dict[int, int]:
    return dict(Counter(T0 + (json.loads(v)["ts"] // 1000 - T0) // W * W for v in values))


def _figures_all(bootstrap: str, topic: str) -> dict[int, int]:
    out = {}
    for m in consume_to_eof(bootstrap, topic):
        f = msgspec.json.decode(m.value())
        if f["segment"] == "all":
            out[f["window_start_s"]] = f["impressions"]
    return out


def _write_config(tmp_path, broker, topics, redis_url, batch_size=100):
    path = tmp_path / "c.yaml"
    path.write_text(config_yaml(broker.bootstrap, topics, redis_url, batch_size=batch_size))
    return path


@pytest.mark.slow
def test_poison_messages_are_dead_lettered_and_the_flow_runs_on(broker, unique_topics,
                                                                redis_url, tmp_path):
    assert len(NESTED) < 2100 and len(BIG) == 1_040_000 and len(AT_LIMIT) == 1_048_588
    good = _good()
    produce_all(broker.bootstrap, unique_topics["impressions"],
                good[:200] + [NESTED, BIG] + good[200:400] + [AT_LIMIT] + good[400:],
                client_config=LARGE_PRODUCER)
    produce_all(broker.bootstrap, unique_topics["clicks"], [ev("k1", T0 + 7)])
    path = _write_config(tmp_path, broker, unique_topics, redis_url)
    proc = start_run(path, tmp_path / "run1.log", extra_args=["--no-slack"])
    assert proc.wait(240) == 0, proc.log()[-4000:]
    assert _figures_all(broker.bootstrap, unique_topics["figures"]) == _expected_all(good)

    dead = consume_to_eof(broker.bootstrap, unique_topics["deadletter"])
    by_offset = {int(dict(m.headers())["ctrguard-source-offset"]): m for m in dead}
    assert sorted(by_offset) == [200, 201, 402], [dict(m.headers()) for m in dead]
    nested, big, limit = by_offset[200], by_offset[201], by_offset[402]
    h = dict(nested.headers())
    assert nested.value() == NESTED
    assert h["ctrguard-reason-code"] == b"too_deep" and h["ctrguard-stage"] == b"parse"
    h = dict(big.headers())
    assert big.value() == BIG, "a message that fits is kept whole"
    assert h["ctrguard-reason-code"] == b"too_large" and "ctrguard-truncated" not in h
    h = dict(limit.headers())
    assert h["ctrguard-reason-code"] == b"too_large"
    assert h["ctrguard-truncated"] == b"true"
    assert h["ctrguard-original-size"] == b"1048588"
    assert h["ctrguard-original-sha256"] == hashlib.sha256(AT_LIMIT).hexdigest().encode()
    assert h["ctrguard-source-topic"] == unique_topics["impressions"].encode()
    assert 1_040_000 < len(limit.value()) < 1_048_588
    assert AT_LIMIT.startswith(limit.value())

    # A restart (no recovery: it reads everything again) neither crashes nor doubles them.
    proc = start_run(path, tmp_path / "run2.log", extra_args=["--no-slack"])
    assert proc.wait(240) == 0, proc.log()[-4000:]
    assert len(consume_to_eof(broker.bootstrap, unique_topics["deadletter"])) == 3
    print(f"[measure] poison: dead-letter record of the {len(AT_LIMIT):,}-byte message: "
          f"{len(limit.value()):,} bytes")


@pytest.mark.slow
def test_a_message_that_makes_prepare_raise_is_isolated_and_dead_lettered(
        broker, unique_topics, redis_url, tmp_path):
    good = _good(400)
    poison = ev("p1", T0 + 100, campaign="c1", note="BOOM-4f1c")
    produce_all(broker.bootstrap, unique_topics["impressions"], good[:150] + [poison] + good[150:])
    produce_all(broker.bootstrap, unique_topics["clicks"], [ev("k1", T0 + 7)])
    path = _write_config(tmp_path, broker, unique_topics, redis_url)
    proc = start_run(path, tmp_path / "run.log", extra_args=["--no-slack"],
                     env={"CTRGUARD_RAISE_ON": "BOOM-4f1c"})
    assert proc.wait(240) == 0, proc.log()[-4000:]
    assert _figures_all(broker.bootstrap, unique_topics["figures"]) == _expected_all(good)
    dead = consume_to_eof(broker.bootstrap, unique_topics["deadletter"])
    assert [m.value() for m in dead] == [poison]
    h = dict(dead[0].headers())
    assert h["ctrguard-reason-code"] == b"crash" and h["ctrguard-stage"] == b"crash"
    assert b"InjectedFault" in h["ctrguard-reason"]
    assert h["ctrguard-source-offset"] == b"150"
    assert "splitting the batch" in proc.log()


@pytest.mark.slow
def test_a_step_that_raises_on_every_message_stops_the_flow(broker, unique_topics, redis_url,
                                                            tmp_path):
    # A lone click, a batch under SYSTEMIC_CRASH_MIN, may be read first (the consumer's
    # timing): the made-up canary raises too, so it stops the flow as the impressions'
    # batch would, and is not dead-lettered (once seen in CI before the canary).
    produce_all(broker.bootstrap, unique_topics["impressions"], _good(200))
    produce_all(broker.bootstrap, unique_topics["clicks"], [ev("k1", T0 + 7)])
    path = _write_config(tmp_path, broker, unique_topics, redis_url)
    proc = start_run(path, tmp_path / "run.log", extra_args=["--no-slack"],
                     env={"CTRGUARD_RAISE_ON": "event_id"})
    assert proc.wait(240) == 1, proc.log()[-4000:]
    assert "InjectedFault" in proc.log()
    assert consume_to_eof(broker.bootstrap, unique_topics["deadletter"]) == []


@pytest.mark.slow
def test_a_step_that_breaks_mid_run_stops_the_flow_on_small_batches(broker, unique_topics,
                                                                    redis_url, tmp_path):
    """Batches of 5 (under SYSTEMIC_CRASH_MIN): after the first, the step raises on every
    batch. Each batch alone looks like poison; the canary (a message of the first batch)
    raising too shows the step broke: exit 1, nothing dead-lettered (without it, the other
    95 events would be dead letters and the flow would exit 0)."""
    produce_all(broker.bootstrap, unique_topics["impressions"], _good(100))
    path = _write_config(tmp_path, broker, unique_topics, redis_url, batch_size=5)
    proc = start_run(path, tmp_path / "run.log", extra_args=["--no-slack"],
                     env={"CTRGUARD_BREAK_AFTER": "1"})
    assert proc.wait(240) == 1, proc.log()[-4000:]
    assert "the step is broken" in proc.log() and "raises now too" in proc.log()
    assert consume_to_eof(broker.bootstrap, unique_topics["deadletter"]) == []


# --------------------------------------------------------------------------- bisect_batch


def _batch(values, idle=True):
    return RawBatch("t", 3, 0, values, list(range(100, 100 + len(values))), idle)


def _step_failing_on(bad: set[bytes], calls: list[RawBatch]):
    def step(batch: RawBatch):
        calls.append(batch)
        if bad.intersection(batch.values):
            raise KeyError("x")
        return [("k", (v, batch.idle)) for v in batch.values]
    return step


@pytest.mark.parametrize("bad_at", [[0], [6], [2, 3], [0, 6], [1, 2, 4, 5]])
def test_bisect_isolates_exactly_the_bad_messages_in_order(bad_at):
    values = [f"m{i}".encode() for i in range(7)]
    bad = {values[i] for i in bad_at}
    calls: list[RawBatch] = []
    out = bisect_batch(_batch(values), _step_failing_on(bad, calls), KeyError("x"))
    assert [item[1].raw if item[0] == DEAD else item[1][0] for item in out] == values
    dead = [item[1] for item in out if item[0] == DEAD]
    assert [d.offset for d in dead] == [100 + i for i in bad_at]
    assert all(d.stage == "crash" and d.code == "crash" and "KeyError" in d.reason
               for d in dead)
    # Only a part ending the batch is idle.
    assert calls and all(c.idle == (c.offsets[-1] == 106) for c in calls)


def test_bisect_raises_when_every_message_fails_alone():
    values = [f"m{i}".encode() for i in range(SYSTEMIC_CRASH_MIN)]
    with pytest.raises(KeyError):
        bisect_batch(_batch(values), _step_failing_on(set(values), []), KeyError("x"))
    # Fewer than that: poison, dead-lettered.
    out = bisect_batch(_batch(values[:3]), _step_failing_on(set(values), []), KeyError("x"))
    assert [k for k, _ in out] == [DEAD] * 3
    # ... unless ``broken()`` (the prepare step's canary) says the step is at fault.
    asked: list[int] = []

    def broken(answer: bool):
        return lambda: asked.append(1) or answer

    with pytest.raises(KeyError):
        bisect_batch(_batch(values[:3]), _step_failing_on(set(values), []), KeyError("x"),
                     broken=broken(True))
    out = bisect_batch(_batch(values[:3]), _step_failing_on(set(values), []), KeyError("x"),
                       broken=broken(False))
    assert [k for k, _ in out] == [DEAD] * 3 and len(asked) == 2
    # Not asked when some message went through, nor for a batch that stops anyway.
    bisect_batch(_batch(values[:3]), _step_failing_on({values[0]}, []), KeyError("x"),
                 broken=broken(True))
    with pytest.raises(KeyError):
        bisect_batch(_batch(values), _step_failing_on(set(values), []), KeyError("x"),
                     broken=broken(False))
    assert len(asked) == 2


# --------------------------------------------------------------------------- the canary


class _Breakable:
    """A batch observer (``probes.install_batch``) that raises on marked messages, or on
    every message once ``broken``."""

    def __init__(self):
        self.broken = False

    def __call__(self, values):
        if self.broken or any(v is not None and b"POISON" in v for v in values):
            raise RuntimeError("prepare failed")


@pytest.fixture()
def breakable():
    from ctrguard import probes

    handler = _Breakable()
    probes.install_batch(handler)
    yield handler
    probes.install_batch(None)


def _prepare_step():
    from ctrguard.flows.ctr_flow import PrepareStep

    return PrepareStep(load_config_text("", env={}))


def _raw(values, first):
    from ctrguard.flows.engine import IMPRESSION

    return RawBatch("imps", 0, IMPRESSION, values, list(range(first, first + len(values))))


def _dead(items):
    return [d.offset for key, d in items if key == DEAD]


def test_a_small_batch_that_all_raises_after_the_step_broke_stops_the_flow(breakable):
    """A quiet partition polls a few messages at a time: when the step breaks (a bad
    deploy), every small batch raises on every message. The canary (a message that
    prepared before) raises too, so the flow stops instead of dead-lettering valid events
    batch after batch."""
    step = _prepare_step()
    assert _dead(step(_raw(_good(40)[:20], 0))) == []          # a clean batch: the canary
    breakable.broken = True
    with pytest.raises(RuntimeError, match="prepare failed"):
        step(_raw(_good(40)[20:23], 20))                         # 3 < SYSTEMIC_CRASH_MIN


def test_a_small_batch_of_poison_after_a_clean_one_is_dead_lettered(breakable):
    """The canary still prepares: the messages are poison, not the step."""
    step = _prepare_step()
    step(_raw(_good(40)[:20], 0))
    poison = [ev("p1", T0 + 500, note="POISON"), ev("p2", T0 + 510, note="POISON")]
    assert _dead(step(_raw(poison, 20))) == [20, 21]
    good = _good(40)[20:23]
    assert _dead(step(_raw(good[:1] + poison[:1] + good[1:], 22))) == [23]


def test_before_any_clean_batch_a_made_up_event_is_the_canary(breakable):
    """No real canary yet (a bad deploy starting on a quiet partition): a made-up valid
    event stands in. A broken step raises on it too and stops; poison does not."""
    step = _prepare_step()
    poison = [ev("p1", T0 + 500, note="POISON"), ev("p2", T0 + 510, note="POISON")]
    assert _dead(step(_raw(poison, 0))) == [0, 1]
    breakable.broken = True
    with pytest.raises(RuntimeError, match="prepare failed"):
        step(_raw(_good(3), 2))


def test_the_made_up_canary_is_a_valid_event_of_either_kind():
    """Prepared by a healthy step it is counted nowhere and dead-lettered for nothing: it
    tests the path valid events take."""
    import time

    from ctrguard.flows.ctr_flow import synthetic_canary
    from ctrguard.flows.engine import CLICK, IMPRESSION

    step = _prepare_step()
    now = int(time.time() * 1000)
    for kind in (IMPRESSION, CLICK):
        prepared = step._preparer.prepare(
            synthetic_canary(RawBatch("t", 0, kind, [b"x"], [5]), now), now_ms=now)
        assert prepared.dead_letters == [] and not prepared.excluded
        assert sum(len(c.campaign_ids) for c in prepared.chunks.values()) == 1


def test_the_dead_letter_limit_comes_from_the_settings_when_stated():
    from ctrguard.kafka_admin import message_limit

    s = load_config_text("kafka:\n  client:\n    message.max.bytes: 3000000\n", env={})
    assert message_limit(s.kafka, ["any"]) == 3_000_000


# --------------------------------------------------------------------------- nesting

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ctrguard.errors import EventError  # noqa: E402
from ctrguard.events import MAX_JSON_DEPTH, decode_batch, decode_event, json_depth  # noqa: E402

_BASE = b'{"event_id":"e","ts":1767225600000,"campaign_id":"c","x":'


def _verdict(raw: bytes):
    try:
        ev_ = decode_event(raw)
    except EventError as exc:
        return ("error", exc.code)
    return ("ok", ev_.event_id)


@st.composite
def _nested(draw) -> bytes:
    depth = draw(st.integers(0, 3 * MAX_JSON_DEPTH))
    opens = b"".join(draw(st.sampled_from([b"[", b'{"k":'])) for _ in range(depth))
    closes = b"".join(b"]" if o == ord("[") else b"}" for o in reversed(
        [c for c in opens if c in b"[{"]))
    inner = draw(st.sampled_from([b"1", b'"[[[{"', b'"a\\"]]"', b"[]", b"{}", b'"\\\\"']))
    raw = _BASE + opens + inner + closes + b"}"
    return raw[:draw(st.integers(len(raw) - 3, len(raw)))]  # sometimes cut short


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_nested(), min_size=1, max_size=6))
def test_every_nesting_gets_the_same_verdict_on_every_path(values):
    alone = [_verdict(v) for v in values]
    batch = decode_batch(values)
    errors = dict(batch.errors)
    kept = iter(batch.events)
    for i, want in enumerate(alone):
        got = ("error", errors[i].code) if i in errors else ("ok", next(kept).event_id)
        assert got == want, (values[i][:200], got, want)
        depth = json_depth(values[i])
        if depth > MAX_JSON_DEPTH:
            assert want == ("error", "too_deep")
        elif want[0] == "error":
            assert want[1] != "too_deep"


def test_a_megabyte_of_brackets_is_refused_as_too_deep_when_size_allows():
    raw = _BASE + b"[" * 1_000_000
    assert _verdict(raw) == ("error", "too_large")
    with pytest.raises(EventError, match="nested deeper than 64 levels"):
        decode_event(raw, max_bytes=2_000_000)
    assert json_depth(raw) == 1_000_001


def test_a_cluster_that_reports_no_limit_gets_kafkas_default_and_a_log_line(
        broker, unique_topics, caplog):
    import logging

    from ctrguard.kafka_admin import KAFKA_DEFAULT_MESSAGE_BYTES, message_limit

    s = load_config_text(f'kafka:\n  brokers: ["{broker.bootstrap}"]\n', env={})
    caplog.set_level(logging.INFO, logger="ctrguard.kafka_admin")
    # tansu answers DescribeConfigs with no entries, for topics and brokers alike.
    assert message_limit(s.kafka, [unique_topics["deadletter"]]) == KAFKA_DEFAULT_MESSAGE_BYTES
    assert any("reports no record size limit" in r.getMessage() and
               unique_topics["deadletter"] in r.getMessage() for r in caplog.records)

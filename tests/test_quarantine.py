"""Quarantine flags against a real redis-server (fixtures in tests/conftest.py)."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest
import redis
from pydantic import SecretStr

from ctrguard.errors import QuarantineError, RedisUnavailable, ServiceError
from ctrguard.records import Alert, WindowDecision, make_alert_id
from ctrguard.sinks.quarantine import (
    CLEAN,
    EXPIRED,
    PENDING,
    QUARANTINED,
    RELEASED,
    QuarantineReader,
    QuarantineStore,
    decode_key_part,
    encode_key_part,
    flag_key,
    parse_flag_key,
)
from ctrguard.sinks.redis_client import CLIENT_RETRIES, make_redis, redact_url
from ctrguard.sinks.settings import QuarantineSettings, RedisSettings

LENGTH = 300
PREFIX = "t"
#: A recent aligned window start: statuses of windows older than the retention are "expired".
T0 = (int(time.time()) // LENGTH) * LENGTH - 20 * LENGTH


def make_alert(campaign: str, segment: str, start: int, *, detector: str = "binomial_cusum",
               kind: str = "ctr_drop", severity: str = "critical",
               quarantine: bool = True) -> Alert:
    return Alert(
        alert_id=make_alert_id(campaign, segment, start, detector, kind),
        campaign_id=campaign, segment=segment, window_start="", window_end="",
        window_start_s=start, impressions=1000, clicks=2, ctr=0.002, kind=kind,
        severity=severity, detector=detector, baseline_ctr=0.02, score=9.0, confidence=0.99,
        ctr_low=0.001, ctr_high=0.004, expected_clicks=20.0, expected_impressions=1000.0,
        suspected_cause="tracking outage", quarantine=quarantine,
    )


def decision(campaign: str, start: int, *alerts: Alert) -> WindowDecision:
    return WindowDecision(campaign, start, start + LENGTH, (), tuple(alerts))


def redis_settings(url: str, **kwargs) -> RedisSettings:
    options = dict(url=url, key_prefix=PREFIX, socket_timeout_s=0.5, connect_timeout_s=0.5,
                   retry_backoff_s=0.05, retry_backoff_max_s=0.2)
    options.update(kwargs)
    return RedisSettings(**options)


def make_store(url: str, *, settings: QuarantineSettings | None = None, clock=time.time,
               **redis_kwargs) -> QuarantineStore:
    client = make_redis(redis_settings(url, **redis_kwargs))
    return QuarantineStore(client, settings or QuarantineSettings(), PREFIX,
                           window_length_s=LENGTH, clock=clock)


def audit_count(store: QuarantineStore) -> int:
    return store.client.xlen(store.audit_key)


# --------------------------------------------------------------------------- statuses


def test_record_then_status_quarantined_clean_pending(redis_url):
    store = make_store(redis_url)
    alert = make_alert("c1", "device=mobile", T0)
    store.record([decision("c1", T0, alert, make_alert("c1", "all", T0, quarantine=False))])

    flagged = store.status("c1", "device=mobile", T0)
    assert flagged.state == QUARANTINED and not flagged.publishable
    assert flagged.alert_ids == (alert.alert_id,)
    assert (flagged.detector, flagged.kind, flagged.severity) == (
        "binomial_cusum", "ctr_drop", "critical")
    assert "tracking outage" in flagged.reason
    assert flagged.window_end_s == T0 + LENGTH and flagged.flagged_at
    # Same campaign and window, another series: its figure is clean (state per series).
    assert store.status("c1", "all", T0).state == CLEAN
    assert store.is_released("c1", "all", T0)[0] is True
    # The next window is not decided yet; another campaign has no watermark at all.
    assert store.status("c1", "all", T0 + LENGTH).state == PENDING
    assert store.is_released("c1", "all", T0 + LENGTH)[0] is False
    assert store.status("c2", "all", T0).state == PENDING
    # Non-quarantining alerts write no flag.
    assert store.list_flags() == [flagged]


def test_reader_needs_no_configuration(redis_url):
    store = make_store(redis_url)
    store.record([decision("c1", T0, make_alert("c1", "all", T0))])
    # From a URL, window length and retention read from what the writer stored.
    reader = QuarantineReader(redis_url, PREFIX)
    assert reader.status("c1", "all", T0).state == QUARANTINED
    assert reader.status("c1", "geo=fr", T0).state == CLEAN
    assert reader.is_released("c1", "geo=fr", T0 + LENGTH)[0] is False
    # A client without decode_responses works as well.
    raw = QuarantineReader(redis.Redis.from_url(redis_url, decode_responses=False), PREFIX)
    assert raw.status("c1", "all", T0) == reader.status("c1", "all", T0)
    assert raw.list_flags() == reader.list_flags()
    with pytest.raises(ValueError, match="aligned"):
        reader.status("c1", "geo=fr", T0 + 7)


def test_watermark_never_moves_backwards(redis_url):
    store = make_store(redis_url)
    store.record([decision("c1", T0 + 2 * LENGTH)])
    assert store.checked_through("c1") == T0 + 3 * LENGTH
    # A re-delivered older batch must not lower it.
    store.record([decision("c1", T0), decision("c1", T0 + LENGTH)])
    assert store.checked_through("c1") == T0 + 3 * LENGTH
    # The watermark covers every earlier window.
    assert [store.status("c1", "all", T0 + i * LENGTH).state for i in range(4)] == [
        CLEAN, CLEAN, CLEAN, PENDING]
    # Within one batch the latest window wins, whatever the order.
    store.record([decision("c2", T0 + LENGTH), decision("c2", T0)])
    assert store.checked_through("c2") == T0 + 2 * LENGTH


def test_watermarks_of_thousands_of_campaigns_in_one_call(redis_url):
    # The script sets them with a few ZADDs of many members (in chunks): each campaign
    # still gets its own watermark, and none moves backwards.
    store = make_store(redis_url)
    ids = [f"c{i}" for i in range(2501)]
    store.record([decision(c, T0 + (i % 3) * LENGTH) for i, c in enumerate(ids)])
    store.record([decision(c, T0 + LENGTH) for c in ids])
    got = dict(store.client.zrange(store.checked_key, 0, -1, withscores=True))
    assert {_key(k): int(v) for k, v in got.items()} == {
        c: T0 + (2 if i % 3 == 2 else 1) * LENGTH + LENGTH for i, c in enumerate(ids)}


def _key(k) -> str:
    return k.decode() if isinstance(k, bytes) else k


def test_rerecord_after_release_stays_released_without_new_audit(redis_url):
    store = make_store(redis_url)
    batch = [decision("c1", T0, make_alert("c1", "all", T0))]
    store.record(batch)
    store.record(batch)                      # at-least-once: a duplicate delivery
    assert audit_count(store) == 1
    store.release("c1", "all", T0, by="ana", reason="tag fixed, data verified")
    assert audit_count(store) == 2

    store.record(batch)                      # re-delivery after a restart
    st = store.status("c1", "all", T0)
    assert st.state == RELEASED and st.publishable
    assert (st.released_by, st.release_reason) == ("ana", "tag fixed, data verified")
    assert audit_count(store) == 2
    assert [e.action for e in store.audit()] == ["released", "flagged"]


def test_new_alarm_requarantines_a_released_flag(redis_url):
    store = make_store(redis_url)
    first = make_alert("c1", "all", T0)
    store.record([decision("c1", T0, first)])
    store.release("c1", "all", T0, by="ana", reason="ok")
    other = make_alert("c1", "all", T0, detector="adwin", kind="ctr_spike", severity="warning")
    store.record([decision("c1", T0, first, other)])
    st = store.status("c1", "all", T0)
    assert st.state == QUARANTINED and st.released_by is None
    assert set(st.alert_ids) == {first.alert_id, other.alert_id}
    assert st.detector == "binomial_cusum,adwin" and st.severity == "critical"
    assert store.audit(limit=1)[0].action == "requarantined"
    assert store.audit(limit=1)[0].alert_ids == (other.alert_id,)


def test_release_refuses_unknown_and_repeated(redis_url):
    store = make_store(redis_url)
    with pytest.raises(QuarantineError, match="no quarantine flag"):
        store.release("c1", "all", T0, by="ana", reason="x")
    store.record([decision("c1", T0, make_alert("c1", "all", T0))])
    with pytest.raises(QuarantineError, match="needs a name"):
        store.release("c1", "all", T0, by=" ", reason="x")
    store.release("c1", "all", T0, by="ana", reason="x")
    with pytest.raises(QuarantineError, match="already released by ana"):
        store.release("c1", "all", T0, by="bo", reason="y")
    assert audit_count(store) == 2


def test_list_flags_filters_and_show_history(redis_url):
    store = make_store(redis_url)
    store.record([
        decision("c1", T0, make_alert("c1", "all", T0), make_alert("c1", "device=tv", T0)),
        decision("c2", T0, make_alert("c2", "all", T0)),
        decision("c1", T0 + LENGTH, make_alert("c1", "all", T0 + LENGTH)),
    ])
    store.release("c1", "device=tv", T0, by="ana", reason="known test traffic")
    flags = store.list_flags()
    assert [(f.campaign_id, f.segment, f.window_start_s) for f in flags][:1] == [
        ("c1", "all", T0 + LENGTH)]       # newest window first
    assert len(flags) == 4
    assert {f.segment for f in store.list_flags(state=RELEASED)} == {"device=tv"}
    assert {f.campaign_id for f in store.list_flags(campaign="c2")} == {"c2"}
    assert len(store.list_flags(state=QUARANTINED, campaign="c1")) == 2
    assert len(store.list_flags(limit=1)) == 1
    status, history = store.show("c1", "device=tv", T0)
    assert status.state == RELEASED
    assert [e.action for e in history] == ["flagged", "released"]
    assert history[1].who == "ana" and history[1].why == "known test traffic"


def test_auto_release_only_when_configured_and_only_covered_flags(redis_url):
    a1 = make_alert("c1", "all", T0)
    a2 = make_alert("c1", "all", T0 + LENGTH)
    a3 = make_alert("c1", "all", T0 + LENGTH, detector="adwin")   # not in the incident
    batch = [decision("c1", T0, a1), decision("c1", T0 + LENGTH, a2, a3)]

    off = make_store(redis_url)
    off.record(batch)
    assert off.link_incident("inc-7", [a1, a2]) == 2
    assert off.auto_release("inc-7", [a1, a2]) == []
    assert off.status("c1", "all", T0).state == QUARANTINED
    assert off.status("c1", "all", T0).incident_id == "inc-7"

    on = make_store(redis_url, settings=QuarantineSettings(auto_release=True))
    released = on.auto_release("inc-7", [a1, a2])
    assert released == [on.flag_key("c1", "all", T0)]
    st = on.status("c1", "all", T0)
    assert (st.state, st.released_by, st.incident_id) == (RELEASED, "auto:incident:inc-7",
                                                          "inc-7")
    assert on.status("c1", "all", T0 + LENGTH).state == QUARANTINED
    assert on.audit(limit=1)[0].action == "auto_released"


def test_a_flag_that_cannot_be_written_leaves_the_watermark_behind(redis_url):
    store = make_store(redis_url)
    store.record([decision("c1", T0)])
    # Something else wrote a string where the flag hash of the next window goes.
    store.client.set(store.flag_key("c1", "all", T0 + LENGTH), "not a hash")
    with pytest.raises(ServiceError) as info:
        store.record([decision("c1", T0 + LENGTH, make_alert("c1", "all", T0 + LENGTH)),
                      decision("c2", T0)])
    assert "WRONGTYPE" in str(info.value)
    # Fail closed: no watermark moved, so nothing of that batch reads as clean.
    assert store.checked_through("c1") == T0 + LENGTH
    assert store.checked_through("c2") is None
    assert store.status("c1", "device=tv", T0 + LENGTH).state == PENDING


# --------------------------------------------------------------------------- retention


def test_retention_ttls_and_trimming(redis_url):
    now = [float(T0 + 2 * LENGTH)]
    store = make_store(redis_url, settings=QuarantineSettings(retention_days=2),
                       clock=lambda: now[0])
    # Audit stream ids are the server's clock: entries from 3 days and 1 day ago.
    server_now_ms = store.client.time()[0] * 1000
    for campaign, age_days in (("old", 3), ("recent", 1)):
        store.client.xadd(store.audit_key, {"action": "flagged", "campaign_id": campaign},
                          id=f"{server_now_ms - age_days * 86400 * 1000}-0")
    store.record([decision("c1", T0, make_alert("c1", "all", T0))])
    assert [e.campaign_id for e in store.audit()] == ["c1", "recent"]
    ttl = store.client.ttl(store.flag_key("c1", "all", T0))
    assert 2 * 86400 - 60 <= ttl <= 2 * 86400
    assert store.client.hget(store.meta_key, "retention_s") == str(2 * 86400)
    store.release("c1", "all", T0, by="ana", reason="ok")
    assert 2 * 86400 - 60 <= store.client.ttl(store.flag_key("c1", "all", T0)) <= 2 * 86400

    # Three days later the flag has expired: statuses of those windows are no longer known.
    now[0] += 3 * 86400
    store.client.delete(store.flag_key("c1", "all", T0))   # what EXPIRE will have done
    assert store.status("c1", "all", T0).state == EXPIRED
    assert store.status("c1", "geo=fr", T0).state == EXPIRED
    assert store.is_released("c1", "geo=fr", T0)[0] is False
    # The next write drops the old watermark and index entries.
    later = (int(now[0]) // LENGTH) * LENGTH - LENGTH
    store.record([decision("c2", later, make_alert("c2", "all", later))])
    assert store.checked_through("c1") is None
    assert store.client.zrange(store.index_key, 0, -1) == [store.flag_key("c2", "all", later)]


def test_replayed_history_is_judged_by_when_it_was_written(redis_url):
    # A replay writes windows from a year ago now: their flags live for the retention
    # period from now, so their statuses are known (not "expired") for as long.
    old = T0 - 365 * 86400
    now = [time.time()]
    store = make_store(redis_url, clock=lambda: now[0])
    store.record([decision("c1", old, make_alert("c1", "all", old)),
                  decision("c1", old + LENGTH)])
    assert store.status("c1", "all", old).state == QUARANTINED
    assert store.status("c1", "geo=fr", old).state == CLEAN
    assert store.status("c1", "geo=fr", old + LENGTH).state == CLEAN
    for key in (store.checked_key, store.meta_key, store.index_key, store.audit_key):
        assert 0 < store.client.ttl(key) <= 30 * 86400
    # Thirty-one days later, with no write since, the flag may have expired: not clean.
    now[0] += 31 * 86400
    assert store.status("c1", "geo=fr", old).state == EXPIRED


def test_list_flags_drops_expired_keys_from_index(redis_url):
    store = make_store(redis_url)
    store.record([decision("c1", T0, make_alert("c1", "all", T0), make_alert("c1", "x", T0))])
    store.client.delete(store.flag_key("c1", "x", T0))
    assert [f.segment for f in store.list_flags()] == ["all"]
    assert store.client.zcard(store.index_key) == 1


# --------------------------------------------------------------------------- outages


def test_redis_down_fails_fast_then_recovers_without_loss(redis_factory):
    server = redis_factory()
    store = make_store(server.url)
    store.record([decision("c1", T0, make_alert("c1", "all", T0))])
    server.kill()

    batch = [decision("c1", T0 + LENGTH, make_alert("c1", "all", T0 + LENGTH)),
             decision("c2", T0 + LENGTH)]
    started = time.monotonic()
    with pytest.raises(RedisUnavailable) as info:
        store.record(batch)
    assert info.value.retryable
    settings = redis_settings(server.url)
    bound = (CLIENT_RETRIES + 1) * (settings.connect_timeout_s + settings.socket_timeout_s) \
        + settings.retry_backoff_max_s * CLIENT_RETRIES
    assert time.monotonic() - started < bound + 1.0
    with pytest.raises(RedisUnavailable):
        store.status("c1", "all", T0)       # readers fail closed too

    server.restart()                         # empty: no persistence
    store.record(batch)                      # the caller's retry, on the same store
    assert store.status("c1", "all", T0 + LENGTH).state == QUARANTINED
    assert store.status("c2", "all", T0 + LENGTH).state == CLEAN
    assert store.checked_through("c1") == T0 + 2 * LENGTH
    assert audit_count(store) == 1


def test_hung_redis_times_out_within_the_configured_bound(redis_factory):
    server = redis_factory()
    store = make_store(server.url)
    store.record([decision("c1", T0)])
    pid = server.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(RedisUnavailable, match="Timeout"):
            store.record([decision("c1", T0 + LENGTH, make_alert("c1", "all", T0 + LENGTH))])
        elapsed = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    settings = redis_settings(server.url)
    bound = (CLIENT_RETRIES + 1) * (settings.connect_timeout_s + settings.socket_timeout_s) \
        + settings.retry_backoff_max_s * CLIENT_RETRIES
    assert elapsed < bound + 1.0
    # The write may or may not have been applied before the timeout; retrying is safe.
    store.record([decision("c1", T0 + LENGTH, make_alert("c1", "all", T0 + LENGTH))])
    assert store.status("c1", "all", T0 + LENGTH).state == QUARANTINED
    assert audit_count(store) == 1


# --------------------------------------------------------------------------- secrets


PASSWORD = "s3cr3t p@ss:word"


def _assert_secret_free(text: str) -> None:
    from urllib.parse import quote

    assert PASSWORD not in text
    assert quote(PASSWORD, safe="") not in text


def test_password_protected_redis(redis_factory, caplog):
    caplog.set_level(logging.DEBUG)
    server = redis_factory(password=PASSWORD)
    store = make_store(server.url_without_password, password=SecretStr(PASSWORD))
    store.record([decision("c1", T0, make_alert("c1", "all", T0))])
    assert store.status("c1", "all", T0).state == QUARANTINED
    # A password in the URL works as well.
    assert QuarantineReader(server.url, PREFIX).status("c1", "all", T0).state == QUARANTINED

    # Refused credentials: retrying cannot help, and the message says what to check.
    wrong = make_store(server.url_without_password, password=SecretStr("wrong " + PASSWORD))
    with pytest.raises(ServiceError) as info:
        wrong.record([decision("c1", T0)])
    assert not info.value.retryable and "CTRGUARD_REDIS_PASSWORD" in str(info.value)
    for text in (str(info.value), repr(info.value), str(info.value.__cause__)):
        _assert_secret_free(text)

    with_url = make_store(server.url)
    server.kill()
    with pytest.raises(RedisUnavailable) as info:
        with_url.record([decision("c1", T0)])
    _assert_secret_free(str(info.value))
    _assert_secret_free(str(info.value.__cause__))
    _assert_secret_free(caplog.text)
    _assert_secret_free(redact_url(server.url))


def test_no_password_is_refused_by_protected_redis(redis_factory):
    server = redis_factory(password=PASSWORD)
    store = make_store(server.url_without_password)
    with pytest.raises(ServiceError, match="Authentication") as info:
        store.status("c1", "all", T0)
    assert not info.value.retryable


# --------------------------------------------------------------------------- hostile ids


HOSTILE = [
    ("acme:spring 25%", "geo=Zürich:a b"),
    ("日本のキャンペーン", "device=📱"),
    ("a*b?[c]\\d", "channel=x\ty\nz"),
    ("%3A", "%"),
    ("", "all"),
]


@pytest.mark.parametrize(("campaign", "segment"), HOSTILE)
def test_hostile_ids_round_trip(redis_url, campaign, segment):
    store = make_store(redis_url)
    store.record([decision(campaign, T0, make_alert(campaign, segment, T0))])
    st = store.status(campaign, segment, T0)
    assert (st.state, st.campaign_id, st.segment) == (QUARANTINED, campaign, segment)
    assert parse_flag_key(PREFIX, st.key) == (campaign, segment, T0)
    assert decode_key_part(encode_key_part(segment)) == segment
    assert [(f.campaign_id, f.segment) for f in store.list_flags(campaign=campaign)] == [
        (campaign, segment)]
    assert store.status(campaign, "other", T0).state == CLEAN
    store.release(campaign, segment, T0, by="ana", reason="ok")
    assert store.audit(limit=1)[0].campaign_id == campaign
    # Keys hold no separator, escape or glob character from the ids themselves.
    body = st.key[len(f"{PREFIX}:flag:"):]
    assert body.count(":") == 2
    assert not set(body) & set(" \t\n*?[]\\")


def test_ids_with_separators_do_not_collide():
    assert flag_key("p", "a:b", "c", 0) != flag_key("p", "a", "b:c", 0)
    assert flag_key("p", "a%3Ab", "c", 0) != flag_key("p", "a:b", "c", 0)

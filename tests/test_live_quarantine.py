"""Quarantine through the running flow (real tansu broker, real redis-server, Slack in
console mode): figure keys of ids holding ``|``, flags that carry their incident's id, and
``quarantine.auto_release`` releasing them when the incident resolves, also after a restart.
"""

from __future__ import annotations

import re

import msgspec
import pytest

from ctrguard.records import parse_figure_key
from ctrguard.sinks.incidents import make_incident_id
from ctrguard.sinks.quarantine import CLEAN, QUARANTINED, RELEASED, QuarantineStore
from ctrguard.sinks.quarantine_incidents import list_incidents
from ctrguard.sinks.redis_client import make_redis
from devtools.services import consume_to_eof, produce_all
from tests.test_live_flow import T0, W, ev, flow_settings, outage_stream, read_json, run_flow


def test_ids_holding_the_key_separator_get_their_own_figure_keys(broker, redis_url,
                                                                unique_topics):
    # Campaign "x|device=mobile" (segment all) and campaign "x" with device "mobile|all"
    # (segment "device=mobile|all") once both had the key "x|device=mobile|all|W".
    imps = [ev("i1", T0 + 10, campaign="x|device=mobile"),
            ev("i2", T0 + 20, campaign="x|device=mobile"),
            ev("i3", T0 + 30, campaign="x", device="mobile|all"),
            ev("i4", T0 + 3 * W + 200, campaign="x")]        # moves event time on
    produce_all(broker.bootstrap, unique_topics["impressions"], imps)
    produce_all(broker.bootstrap, unique_topics["clicks"], [ev("k1", T0 + 40, campaign="x")])
    settings = flow_settings(broker, redis_url, unique_topics)
    run_flow(settings, "run_main", slack=False)

    records = consume_to_eof(broker.bootstrap, unique_topics["figures"])
    figures = [(m.key(), msgspec.json.decode(m.value())) for m in records]
    w0 = [(k, f) for k, f in figures if f["window_start_s"] == T0]
    by_series = {(f["campaign_id"], f["segment"]): (k, f["impressions"]) for k, f in w0}
    assert by_series[("x|device=mobile", "all")] == (b"x%7Cdevice=mobile|all|" + str(T0).encode(), 2)
    assert by_series[("x", "device=mobile|all")] == (b"x|device=mobile%7Call|" + str(T0).encode(), 1)
    # Every key splits into what its record holds, and no two records share a key.
    for key, f in figures:
        assert parse_figure_key(key) == (f["campaign_id"], f["segment"], f["window_start_s"])
    assert len({k for k, _ in figures}) == len(figures)
    # The quarantine keys of the same ids are decided and read back.
    store = QuarantineStore(make_redis(settings.redis), settings.quarantine,
                            settings.redis.key_prefix, window_length_s=W)
    assert store.check_many([("x|device=mobile", "all", T0), ("x", "device=mobile|all", T0)]) \
        == [store.status("x|device=mobile", "all", T0), store.status("x", "device=mobile|all", T0)]
    assert store.status("x", "device=mobile|all", T0).state == CLEAN


@pytest.mark.parametrize("runner", ["run_main", "cluster2"])
def test_auto_release_in_the_running_flow_without_slack(broker, redis_url, unique_topics,
                                                        runner, capsys):
    imps, clicks = outage_stream()
    produce_all(broker.bootstrap, unique_topics["impressions"], imps)
    produce_all(broker.bootstrap, unique_topics["clicks"], clicks)
    settings = flow_settings(broker, redis_url, unique_topics)
    assert settings.slack.effective_mode == "console"       # no Slack configured
    settings = settings.model_copy(update={"quarantine": settings.quarantine.model_copy(
        update={"auto_release": True})})
    run_flow(settings, runner)
    printed = capsys.readouterr().out

    store = QuarantineStore(make_redis(settings.redis), settings.quarantine,
                            settings.redis.key_prefix, window_length_s=W)
    flags = store.list_flags(limit=10_000)
    assert flags, "the outage quarantined nothing"
    # The incident id each flag carries is the one the (console) Slack message shows.
    shown = set(re.findall(r"incident ([0-9a-f]{20})", printed))
    incidents = {f.incident_id for f in flags}
    assert None not in incidents and incidents <= shown
    first = min(f.window_start_s for f in flags)
    assert make_incident_id("big", first) in incidents
    resolved = {i.incident_id for i in list_incidents(store, include_resolved=True)
                if i.status == "resolved"}
    assert incidents <= resolved and "RESOLVED" in printed
    for f in flags:
        assert (f.state, f.released_by) == (RELEASED, f"auto:incident:{f.incident_id}")
    audit = store.audit(limit=10_000)
    assert sorted(e.key for e in audit if e.action == "auto_released") == sorted(
        f.key for f in flags)

    # A restart without recovery reads everything again: nothing changes, nothing is
    # quarantined again, no audit entry is added.
    run_flow(settings, runner)
    assert store.list_flags(limit=10_000) == flags
    assert len(store.audit(limit=10_000)) == len(audit)
    assert not any(f.state == QUARANTINED for f in store.list_flags(limit=10_000))
    assert read_json(broker, unique_topics["figures"])        # figures were published

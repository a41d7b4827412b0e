"""A source that stalls for most campaigns at once: one pipeline incident, one Slack message.

The detectors emit one ``ingestion_stall`` alert per affected campaign-window, all with the
incident id ``stall:<impressions|clicks>:<first stalled window start>``. These tests build
such alerts (the contract) and check the Slack side: one message naming the topic, the time
and the number of campaigns, edited in place as the stall grows, resolved when it ends,
never one message per campaign, and idempotent across restarts and two workers.
"""

# ruff: noqa: F811 - pytest fixtures imported from tests.slack_fixtures

from __future__ import annotations

import random
import threading

import pytest

from ctrguard.records import Alert, WindowDecision, make_alert_id
from ctrguard.sinks.incidents import iso
from ctrguard.sinks.slack import SlackSink
from ctrguard.sinks.slack_render import render_console, render_incident, render_thread_reply
from ctrguard.sinks.stalls import StallTracker, parse_stall_id
from tests.slack_fixtures import (  # noqa: F401 - fixtures
    T0,
    WINDOW_S,
    make_alert,
    make_settings,
    slack_emulator,
    slack_redis_url,
)

GAP = 3
TOPIC = "prod.ad-impressions"


def stall_alert(cid: str, window: int, first: int = 0, source: str = "impressions") -> Alert:
    ws = T0 + window * WINDOW_S
    return Alert(
        alert_id=make_alert_id(cid, "all", ws, "ingestion_stall", "ingestion_stall"),
        campaign_id=cid, segment="all", window_start=iso(ws), window_end=iso(ws + WINDOW_S),
        window_start_s=ws, impressions=0, clicks=0, ctr=0.0, kind="ingestion_stall",
        severity="critical", detector="ingestion_stall", baseline_ctr=0.02, score=30.0,
        confidence=1.0, ctr_low=0.0, ctr_high=1.0, expected_clicks=20.0,
        expected_impressions=1000.0, suspected_cause="ingestion_stall", quarantine=True,
        incident=f"stall:{source}:{T0 + first * WINDOW_S}")


def tick(cid: str, window: int, *alerts: Alert) -> WindowDecision:
    ws = T0 + window * WINDOW_S
    return WindowDecision(cid, ws, ws + WINDOW_S, (), tuple(alerts))


def settings_for(redis_url, emulator, **slack):
    s = make_settings(redis_url, emulator, incident_gap_windows=GAP, **slack)
    kafka = s.kafka.model_copy(update={"topics": s.kafka.topics.model_copy(
        update={"impressions": TOPIC})})
    return s.model_copy(update={"kafka": kafka})


def ok_calls(emulator, method):
    return [c for c in emulator.calls if c.method == method and c.ok]


def fields_of(msg) -> dict[str, str]:
    return {f["text"].split("\n", 1)[0]: f["text"].split("\n", 1)[1]
            for b in msg.blocks for f in b.get("fields", [])}


@pytest.fixture
def partitions():
    made: list[SlackSink] = []

    def make(settings, **kw) -> SlackSink:
        p = SlackSink(settings, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.notifier.stop()


# --------------------------------------------------------------------------- pure


def test_stall_ids_are_parsed_strictly():
    assert parse_stall_id("stall:impressions:1767225600") == ("impressions", 1767225600)
    for bad in ("stall:", "stall:clicks:", "stall:clicks:12x", "stall:Clicks:1",
                "1767225600:bot_clicks", "stall:clicks:1:2"):
        assert parse_stall_id(bad) is None


def test_many_campaigns_make_one_incident_that_grows_then_resolves():
    t = StallTracker(window_s=WINDOW_S, gap_windows=GAP, topics={"impressions": TOPIC})
    counted: set[str] = set()
    kinds, sizes = [], []
    for window in range(4):
        batch = [stall_alert(f"c{i:02d}", window) for i in range(10 * (window + 1))]
        ups, added = t.observe(batch, {f"stall:impressions:{T0}": set(counted)})
        counted.update(*added.values())
        kinds += [u.kind for u in ups]
        sizes += [u.incident.campaigns_affected for u in ups]
    assert kinds == ["open", "update", "update", "update"] and sizes == [10, 20, 30, 40]
    (u,) = t.advance(T0 + (4 + GAP) * WINDOW_S)
    inc = u.incident
    assert (u.kind, inc.scope, inc.topic, inc.campaigns_affected) == \
        ("resolve", "pipeline", TOPIC, 40)
    assert inc.first_window_start == iso(T0) and inc.last_window_end == iso(T0 + 4 * WINDOW_S)
    # Late alerts of a stall already over change nothing.
    ups, added = t.observe([stall_alert("c99", 3)], {})
    assert ups == [] and added == {} and t.stale_alerts == 1


def test_two_sources_are_two_incidents():
    t = StallTracker(window_s=WINDOW_S, gap_windows=GAP)
    ups, _ = t.observe([stall_alert("c1", 0), stall_alert("c1", 0, source="clicks")], {})
    assert sorted((u.incident.source, u.incident.topic) for u in ups) == \
        [("clicks", "clicks"), ("impressions", "impressions")]
    assert len({u.incident.incident_id for u in ups}) == 2


def test_message_names_topic_time_and_campaigns_and_is_inert():
    t = StallTracker(window_s=WINDOW_S, gap_windows=GAP, topics={"impressions": "<!channel>"})
    (u,) = t.observe([stall_alert(f"c{i}", 2, first=2) for i in range(7)], {})[0]
    msg = render_incident(u, owner="U0OWNER01")
    text = render_console(msg)
    assert "ingestion stall on topic ‹!channel›" in text
    assert "7 campaigns affected" in text and "2026-01-01 00:10 UTC" in text
    assert "<!channel>" not in msg.text and "&lt;!channel&gt;" in msg.text
    (r,) = t.advance(T0 + (3 + GAP) * WINDOW_S)
    assert "delivered again" in render_thread_reply(r)


# --------------------------------------------------------------------------- running sink


def stall_batches(n_campaigns: int, n_windows: int, seed: int = 1) -> list[list]:
    """Decisions of ``n_campaigns`` stalled for ``n_windows`` windows, in shuffled batches,
    with a campaign incident of its own (bot clicks on c00) in the middle."""
    rng = random.Random(seed)
    batches = []
    for window in range(n_windows):
        items = [tick(f"c{i:02d}", window, stall_alert(f"c{i:02d}", window))
                 for i in range(n_campaigns) if rng.random() < 0.9 or window == 0]
        rng.shuffle(items)
        cut = rng.randint(1, len(items) - 1)
        batches += [items[:cut], items[cut:]]
    return batches


def test_one_message_for_all_campaigns_updated_in_place_and_resolved(
        slack_emulator, slack_redis_url, partitions):
    settings = settings_for(slack_redis_url, slack_emulator, default_owner="U0OWNER01")
    sink = partitions(settings)
    batches = stall_batches(40, 4)
    sink.write_batch(batches[0])
    assert sink.drain(10)
    (first,) = slack_emulator.messages("#ctr-alerts", top_level=True)
    opened_with = int(fields_of(first)["*Campaigns affected*"])
    for b in batches[1:]:
        sink.write_batch(b)
        assert sink.drain(10)
    (msg,) = slack_emulator.messages("#ctr-alerts", top_level=True)
    f = fields_of(msg)
    assert msg.ts == first.ts and len(msg.history) >= 1         # edited in place
    assert f["*Topic*"] == f"`{TOPIC}`"
    assert f["*Stalled since*"] == "2026-01-01 00:00 UTC"
    assert opened_with < int(f["*Campaigns affected*"]) == 40
    assert TOPIC in msg.text and "40 campaigns affected" in msg.text
    # The stall ends: windows close without stall alerts (two quiet, then the gap is over).
    sink.write_batch([tick(f"c{i:02d}", 4 + GAP - 2) for i in range(40)])
    assert sink.drain(10)
    assert "RESOLVED" not in slack_emulator.messages("#ctr-alerts", top_level=True)[0] \
        .blocks[0]["text"]["text"]
    sink.write_batch([tick(f"c{i:02d}", 4 + GAP - 1) for i in range(40)])
    assert sink.drain(10)
    (msg,) = slack_emulator.messages("#ctr-alerts", top_level=True)
    assert msg.blocks[0]["text"]["text"].startswith(f"✅ RESOLVED: ingestion stall on topic "
                                                    f"{TOPIC}")
    (reply,) = slack_emulator.replies("#ctr-alerts", msg.ts)
    assert "delivered again" in reply.text and "40 campaigns" in reply.text
    assert len(ok_calls(slack_emulator, "chat.postMessage")) == 2   # the message, the reply


def test_stall_beside_a_campaign_incident(slack_emulator, slack_redis_url, partitions):
    """A campaign's own incident still gets its message; its stall windows do not."""
    sink = partitions(settings_for(slack_redis_url, slack_emulator))
    sink.write_batch([tick("c00", 0, stall_alert("c00", 0), make_alert("c00", 0)),
                      *[tick(f"c{i:02d}", 0, stall_alert(f"c{i:02d}", 0))
                        for i in range(1, 30)]])
    assert sink.drain(10)
    heads = sorted(m.blocks[0]["text"]["text"] for m in
                   slack_emulator.messages("#ctr-alerts", top_level=True))
    assert len(heads) == 2
    assert heads[0].startswith("🔴 CRITICAL: ingestion stall on topic")
    assert heads[1].startswith("🟠 WARNING: CTR incident on c00")


def test_restart_redelivery_posts_and_edits_nothing_more(
        slack_emulator, slack_redis_url, partitions):
    settings = settings_for(slack_redis_url, slack_emulator)
    batches = stall_batches(25, 3, seed=2)
    first = partitions(settings)
    for b in batches:
        first.write_batch(b)
    assert first.drain(10)
    first.close()
    calls = (len(ok_calls(slack_emulator, "chat.postMessage")),
             len(ok_calls(slack_emulator, "chat.update")))
    second = partitions(settings)           # a new process: Bytewax re-delivers
    for b in batches:
        second.write_batch(b)
    assert second.drain(10)
    assert (len(ok_calls(slack_emulator, "chat.postMessage")),
            len(ok_calls(slack_emulator, "chat.update"))) == calls
    (msg,) = slack_emulator.messages("#ctr-alerts", top_level=True)
    assert fields_of(msg)["*Campaigns affected*"] == "25"


def test_two_workers_at_once_make_one_message_counting_each_campaign_once(
        slack_emulator, slack_redis_url, partitions):
    """Each worker has its own sink (and delivery thread); they write their campaigns'
    stall alerts at the same time, re-delivering some: one message, every campaign once."""
    settings = settings_for(slack_redis_url, slack_emulator)
    workers = [partitions(settings), partitions(settings)]
    batches = stall_batches(60, 5, seed=3)
    halves: list[list[list]] = [[], []]
    for b in batches:
        for w in (0, 1):
            part = [d for d in b if int(d.campaign_id[1:]) % 2 == w]
            halves[w] += [part, part[: len(part) // 3]]       # and a partial re-delivery
    errors: list[BaseException] = []

    def run(w: int) -> None:
        try:
            for part in halves[w]:
                if part:
                    workers[w].write_batch(part)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    assert all(w.drain(15) for w in workers)
    (msg,) = slack_emulator.messages("#ctr-alerts", top_level=True)
    assert fields_of(msg)["*Campaigns affected*"] == "60"
    assert len(ok_calls(slack_emulator, "chat.postMessage")) == 1


def test_routes_and_mutes_match_a_stall_by_its_id():
    from ctrguard.sinks.settings import SlackSettings
    from ctrguard.sinks.slack import Router

    t = StallTracker(window_s=WINDOW_S, gap_windows=GAP)
    (u,), _ = t.observe([stall_alert("shop-1", 0)], {})
    r = Router(SlackSettings.model_validate({
        "routes": [{"campaigns": ["shop-*"], "channel": "#shop"},
                   {"campaigns": ["stall:*"], "channel": "#data-eng", "owner": "S0DATA001"}],
        "mutes": [{"campaigns": ["stall:clicks:*"], "until": "2027-01-01T00:00:00Z"}]}))
    d = r.decide(u)
    assert (d.channel, d.owner, d.notify) == ("#data-eng", "S0DATA001", True)
    (c,), _ = t.observe([stall_alert("shop-1", 0, source="clicks")], {})
    assert r.decide(c).notify is False

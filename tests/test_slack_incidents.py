"""Pure parts of Slack escalation: incident grouping, routing, rendering of hostile input."""

from __future__ import annotations

import json
import pickle

import pytest

from ctrguard.sinks.incidents import IncidentTracker, update_from_json, update_to_json
from ctrguard.sinks.settings import SlackSettings
from ctrguard.sinks.slack import Router
from ctrguard.sinks.slack_render import render_console, render_incident, render_thread_reply
from tests.slack_fixtures import T0, WINDOW_S, make_alert


def tracker(**kw) -> IncidentTracker:
    return IncidentTracker(window_s=WINDOW_S, gap_windows=3, **kw)


def test_alerts_close_in_time_form_one_incident_with_deterministic_id():
    t = tracker()
    kinds = []
    for w in (0, 1, 3, 6):                       # gaps of 1, 2, 3 windows: all join
        kinds += [u.kind for u in t.observe([make_alert(window=w)])]
    assert kinds == ["open", "update", "update", "update"]
    (inc,) = t.open_incidents()
    t2 = tracker()
    t2.observe([make_alert(window=0)])
    assert t2.open_incidents()[0].incident_id == inc.incident_id
    assert inc.alert_count == 4 and inc.first_window_start_s == T0


def test_alert_after_the_gap_resolves_and_opens_a_new_incident():
    t = tracker()
    (first,) = t.observe([make_alert(window=0)])
    ups = t.observe([make_alert(window=4)])      # window 4 starts after 3 quiet windows
    assert [u.kind for u in ups] == ["resolve", "open"]
    assert ups[0].incident.incident_id == first.incident.incident_id
    assert ups[1].incident.incident_id != first.incident.incident_id


def test_redelivered_and_stale_alerts_change_nothing():
    t = tracker()
    batch = [make_alert(window=0), make_alert(window=0, segment="device=mobile")]
    assert len(t.observe(batch)) == 1
    assert t.observe(batch) == []                # same alert ids
    (res,) = t.advance(T0 + 4 * WINDOW_S)
    assert res.kind == "resolve"
    assert t.observe(batch) == []                # replay after resolution: stale
    assert t.stale_alerts == 2
    assert t.open_incidents() == []


def test_impact_driving_segment_cause_and_revenue():
    t = tracker(value_per_click=0.5)
    ups = t.observe([
        make_alert(window=0, clicks=5, expected=20.0),                          # all: -15
        make_alert(window=0, segment="device=mobile", clicks=1, expected=14.0),  # -13
        make_alert(window=0, segment="device=desktop", clicks=4, expected=6.0),  # -2
        make_alert(window=0, detector="other", clicks=5, expected=20.0),  # same series/window
        make_alert(window=1, segment="channel=search", clicks=50, expected=10.0,
                   cause="bot_clicks", severity="critical"),                     # +40, no "all"
    ])
    inc = ups[-1].incident
    # One series, never a mix: channel=search has the largest summed |observed - expected|
    # (40 against 15 for all), so its numbers are the incident's.
    b = inc.totals
    assert (b.segment, b.windows, b.clicks, b.impressions, b.expected_clicks) == \
        ("channel=search", 1, 50, 1000, 10.0)
    assert inc.clicks_delta == b.clicks - b.expected_clicks == 40
    assert inc.revenue_delta == 20.0
    assert inc.driving_segment == "channel=search"
    assert inc.suspected_cause == "bot_clicks"
    assert inc.severity == "critical"
    assert inc.segments == ("all", "channel=search", "device=desktop", "device=mobile")


def test_notable_changes_are_reported_once():
    t = tracker()
    t.observe([make_alert(window=0)])
    (u,) = t.observe([make_alert(window=1, severity="critical"),
                      make_alert(window=1, segment="geo=FR", clicks=0, expected=30.0)])
    assert dict(u.changes) == {"severity": "critical", "driving_segment": "geo=FR",
                               "segments_added": "geo=FR"}
    (u2,) = t.observe([make_alert(window=2, severity="critical")])
    assert u2.changes == ()


def test_state_survives_json_and_pickle_and_continues_identically():
    a, b = tracker(), tracker()
    a.observe([make_alert(window=w) for w in range(3)])
    b.import_state("c1", json.loads(json.dumps(a.export_state("c1"))))
    c = pickle.loads(pickle.dumps(a))
    later = [make_alert(window=4, severity="critical"), make_alert(window=4, segment="x")]
    assert a.observe(later) == b.observe(later) == c.observe(later)
    assert a.advance(T0 + 20 * WINDOW_S) == b.advance(T0 + 20 * WINDOW_S)


def test_long_incident_state_stays_bounded():
    t = IncidentTracker(window_s=WINDOW_S, gap_windows=3, keep_windows=12)
    for w in range(500):
        t.observe([make_alert(window=w), make_alert(window=w, segment="s")])
    state = t.export_state("c1")
    assert len(state["open"]["seen"]) <= 12 and len(state["open"]["windows"]) <= 12
    assert t.open_incidents()[0].clicks_delta == -15 * 500


def test_update_json_roundtrip():
    t = tracker()
    (u,) = t.observe([make_alert(window=0, campaign_id="<!channel>")])
    assert update_from_json(json.loads(json.dumps(update_to_json(u)))) == u


# --------------------------------------------------------------------------- routing


def router(**kw) -> Router:
    return Router(SlackSettings.model_validate(kw))


def test_routes_by_glob_and_label_first_match_wins():
    r = router(default_channel="#ctr", default_owner="ads-oncall",
               campaign_labels={"retail": ["shop-*", "store-42"]},
               routes=[{"campaigns": ["shop-vip-*"], "channel": "#vip", "owner": "U0VIP0001"},
                       {"labels": ["retail"], "channel": "#retail", "owner": "S0RETAIL1",
                        "min_severity": "critical"}])
    assert r.route("shop-vip-1") == ("#vip", "U0VIP0001", "warning")
    assert r.route("store-42") == ("#retail", "S0RETAIL1", "critical")
    assert r.route("other") == ("#ctr", "ads-oncall", "warning")


def test_min_severity_and_mute_expiry_use_event_time():
    t = tracker()
    r = router(routes=[{"campaigns": ["c1"], "min_severity": "critical"}],
               mutes=[{"campaigns": ["m*"], "until": "2026-01-01T00:30:00Z", "reason": "test"}])
    (warn,) = t.observe([make_alert(window=0)])
    assert r.decide(warn).notify is False
    (crit,) = t.observe([make_alert(window=1, severity="critical")])
    assert r.decide(crit).notify is True
    (m1,) = t.observe([make_alert("m1", window=4)])        # ends 00:25: muted
    assert r.decide(m1).notify is False and "muted" in r.decide(m1).reason
    (m2,) = t.observe([make_alert("m1", window=5)])        # ends 00:30: mute expired
    assert r.decide(m2).notify is True


def test_routing_config_errors_are_reported():
    with pytest.raises(ValueError, match="unknown label"):
        SlackSettings.model_validate({"routes": [{"labels": ["nope"]}]})
    with pytest.raises(ValueError):
        SlackSettings.model_validate({"routes": [{"campaigns": ["x"], "owner": "<!channel>"}]})
    with pytest.raises(ValueError, match="needs"):
        SlackSettings.model_validate({"mutes": [{"until": "2026-01-01T00:00:00Z"}]})
    with pytest.raises(ValueError):                           # naive datetime refused
        SlackSettings.model_validate({"mutes": [{"campaigns": ["x"],
                                                 "until": "2026-01-01T00:00:00"}]})


# --------------------------------------------------------------------------- rendering

HOSTILE = ["<!channel>", "<!here|here>", "<@U123ABC>", "<https://evil.example|click me>",
           "```\ncode fence```", "a & b > c", "*bold* _it_ ~s~", "\x1b[31mred\x1b[0m",
           "x" * 10_000, "<" * 5000]


def _all_text(msg) -> list[str]:
    out = [msg.text]
    for b in msg.blocks:
        if "text" in b:
            out.append(b["text"]["text"])
        out += [f["text"] for f in b.get("fields", [])]
        out += [e.get("text", "") for e in b.get("elements", [])]
    return out


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_fields_render_inert_and_truncated(hostile):
    t = tracker()
    (u,) = t.observe([make_alert(hostile, window=0, segment=hostile)])
    (u2,) = t.observe([make_alert(hostile, window=1, segment=hostile + "2",
                                  severity="critical")])
    msg = render_incident(u, owner="U0OWNER01")
    texts = _all_text(msg) + [render_thread_reply(u2, owner="U0OWNER01")]
    for text in texts:
        assert "<!" not in text.replace("<!subteam^", "")
        assert "<@U123" not in text and "<http" not in text
        assert "```" not in text and "\x1b" not in text
    assert "<@U0OWNER01>" in msg.text                      # the configured owner still is
    assert len(msg.blocks[0]["text"]["text"]) <= 150
    assert all(len(t) <= 3000 for t in texts)
    assert all(len(f["text"]) <= 2000 for f in msg.blocks[2]["fields"])
    assert max(len(line) for line in msg.blocks[1]["text"]["text"].split("\n")) < 400


def test_console_rendering_reads_like_slack():
    t = tracker(value_per_click=0.25)
    (u,) = t.observe([make_alert("shop & co", window=0, severity="critical")])
    text = render_console(render_incident(u, owner="U0OWNER01", currency="EUR"))
    assert "CRITICAL: CTR incident on shop & co" in text
    assert "−15 clicks (−3.75 EUR)" in text
    assert "@U0OWNER01" in text and "&amp;" not in text


def test_an_owner_is_a_mention_only_when_it_is_exactly_an_id():
    from ctrguard.sinks.slack_render import mention

    assert mention("U123ABC") == "<@U123ABC>" and mention("S0ABC") == "<!subteam^S0ABC>"
    # A final newline (which re.match's "$" lets through) makes it text, not a mention.
    for owner in ("U123ABC\n", "S0ABC\n"):
        assert "<@" not in mention(owner) and "<!subteam" not in mention(owner)

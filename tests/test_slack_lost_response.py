"""Slack acted but its answer never reached us: the retry must not post a second message."""

from __future__ import annotations

from ctrguard.sinks.slack import SlackSink
from tests.slack_fixtures import make_alert, make_settings, slack_emulator  # noqa: F401


def test_post_whose_response_was_lost_is_not_posted_again(slack_emulator, redis_url):  # noqa: F811
    settings = make_settings(redis_url, slack_emulator, timeout_s=1)
    # The emulator posts the message but answers only after the client gave up (1 s).
    slack_emulator.lose_response_next(2.5, method="chat.postMessage")
    sink = SlackSink(settings)
    try:
        sink.write_batch([make_alert(window=0, severity="critical")])
        assert sink.drain(20)
        sink.write_batch([make_alert(window=1, severity="critical", clicks=1)])
        assert sink.drain(20)
    finally:
        sink.notifier.stop()
    channel = slack_emulator.channel_id(settings.slack.default_channel)
    top = slack_emulator.messages(channel, top_level=True)
    assert len(top) == 1, [m.text[:60] for m in top]
    # The later update edited that one message in place.
    assert any(c.method == "chat.update" and c.ok for c in slack_emulator.calls)

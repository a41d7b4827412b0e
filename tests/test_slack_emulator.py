"""The Slack emulator speaks the protocol slack_sdk expects (status codes, Retry-After)."""

# ruff: noqa: F811 - pytest fixtures imported from tests.slack_fixtures

from __future__ import annotations

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

from tests.slack_fixtures import TOKEN, slack_emulator  # noqa: F401 - fixture


def client(emulator, token=TOKEN) -> WebClient:
    # (a generous timeout: what is tested is the answer, and a loaded machine is slow)
    return WebClient(token=token, base_url=emulator.base_url, timeout=10, retry_handlers=[])


def test_bearer_token_is_checked(slack_emulator):
    assert client(slack_emulator).auth_test()["ok"]
    with pytest.raises(SlackApiError) as info:
        client(slack_emulator, "xoxb-wrong").chat_postMessage(channel="#a", text="x")
    assert info.value.response["error"] == "invalid_auth"
    assert slack_emulator.messages() == []
    assert all("xoxb" not in str(c.payload) for c in slack_emulator.calls)


def test_post_update_thread_and_history(slack_emulator):
    c = client(slack_emulator)
    first = c.chat_postMessage(channel="#a", text="one", blocks=[
        {"type": "section", "text": {"type": "mrkdwn", "text": "one"}}])
    c.chat_update(channel=first["channel"], ts=first["ts"], text="two")
    c.chat_postMessage(channel=first["channel"], text="reply", thread_ts=first["ts"])
    (msg,) = slack_emulator.messages("#a", top_level=True)
    assert msg.text == "two" and msg.history[0]["text"] == "one"
    assert [m.text for m in slack_emulator.replies("#a", msg.ts)] == ["reply"]
    with pytest.raises(SlackApiError):                     # chat.update needs the id
        c.chat_update(channel="#a", ts=first["ts"], text="three")


def test_scripted_rate_limit_and_server_error(slack_emulator):
    c = client(slack_emulator)
    slack_emulator.fail_next(429, retry_after=7, method="chat.postMessage")
    slack_emulator.fail_next(503)
    with pytest.raises(SlackApiError) as info:
        c.chat_postMessage(channel="#a", text="x")
    assert info.value.response.status_code == 429
    assert info.value.response.headers["Retry-After"] == "7"
    with pytest.raises(SlackApiError) as info:
        c.chat_postMessage(channel="#a", text="x")
    assert info.value.response.status_code == 503
    assert c.chat_postMessage(channel="#a", text="x")["ok"]
    assert [x.status for x in slack_emulator.calls] == [429, 503, 200]


def test_block_limits_are_enforced(slack_emulator):
    c = client(slack_emulator)
    with pytest.raises(SlackApiError) as info:
        c.chat_postMessage(channel="#a", text="x", blocks=[
            {"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}])
    assert info.value.response["error"] == "invalid_blocks"


def test_webhook(slack_emulator):
    good = WebhookClient(slack_emulator.webhook_url, timeout=10)
    assert good.send(text="hi").status_code == 200
    bad = WebhookClient(slack_emulator.url + "/webhook/T/B/nope", timeout=10)
    assert bad.send(text="hi").status_code == 404
    slack_emulator.fail_next(429, retry_after=3, method="webhook")
    resp = good.send(text="hi")
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "3"
    assert [m.text for m in slack_emulator.messages("#webhook")] == ["hi"]

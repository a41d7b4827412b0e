"""Slack injection end to end: hostile campaign ids and segment values, through the real flow,
into the Slack emulator. Mentions, links and code fences must arrive inert, and long values
truncated."""

from __future__ import annotations

import json

import numpy as np
import pytest

from devtools.services import produce_all
from tests.test_reliability_support import T0, ev

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVIL_CAMPAIGN = "<!channel> <@U123> <https://x|y> ```boom``` *b* " + "A" * 190
EVIL_DEVICE = "```<!everyone>``` <!here> <#C999> " + "d" * 900
RAW_MARKUP = ["<!channel>", "<@U123>", "<https://x|y>", "<!everyone>", "<!here>", "<#C999>",
              "```"]


def evil_stream(seed: int = 3, hours: int = 5, outage=(3 * 3600, 3 * 3600 + 45 * 60)):
    rng = np.random.default_rng(seed)
    imps, clicks = [], []
    n = 0
    for minute in range(hours * 60):
        base = T0 + minute * 60
        for off in np.sort(rng.uniform(0, 60, rng.poisson(120))):
            n += 1
            dev = EVIL_DEVICE if rng.random() < 0.6 else "desktop"
            imps.append(ev(f"i{n}", base + off, campaign=EVIL_CAMPAIGN, device=dev))
            if rng.random() < 0.04 and not (outage[0] <= minute * 60 < outage[1]):
                clicks.append(ev(f"k{n}", base + off + 2, campaign=EVIL_CAMPAIGN, device=dev))
    return imps, clicks


def test_hostile_ids_render_inert_and_truncated_in_slack(broker, redis_url, unique_topics,
                                                         slack_emulator):
    from tests.test_live_flow import flow_settings, run_flow

    imps, clicks = evil_stream()
    produce_all(broker.bootstrap, unique_topics["impressions"], imps)
    produce_all(broker.bootstrap, unique_topics["clicks"], clicks)
    settings = flow_settings(broker, redis_url, unique_topics,
                             slack_base_url=slack_emulator.base_url)
    run_flow(settings, "run_main")
    posted = [c for c in slack_emulator.calls if c.method in ("chat.postMessage", "chat.update")]
    assert any(c.ok and c.method == "chat.postMessage" for c in posted), "no alert reached Slack"
    assert all(c.ok for c in posted), [c.error for c in posted if not c.ok]
    for c in posted:
        payload = c.payload
        blocks = payload.get("blocks")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        shown = json.dumps({"text": payload.get("text"), "blocks": blocks}, ensure_ascii=False)
        for markup in RAW_MARKUP:
            assert markup not in shown, (markup, shown[:400])
        # Long untrusted values are cut: never the 900-character segment value, never the
        # whole campaign id.
        assert "d" * 100 not in shown and "A" * 190 not in shown
        assert len(payload.get("text") or "") <= 3000
    text = slack_emulator.messages("#ctr-alerts", top_level=True)[0].text
    assert "&lt;!channel&gt;" in text or "‹!channel›" in text, text[:300]

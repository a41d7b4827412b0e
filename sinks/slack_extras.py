"""What the Slack delivery thread adds to an incident beyond its text (Web API mode).

* Feedback: the *Confirmed* / *False alarm* / *Expected* buttons and the latest vote under
  the message (:func:`ctrguard.sinks.slack_render.render_feedback_blocks`), and the incident's facts
  kept for ``ctrguard feedback export`` (:meth:`ctrguard.sinks.feedback.FeedbackStore.remember_incident`).
* Planned changes: an incident overlapping one says so ("Expected: ...").
* Charts: a PNG of the driving series in the thread when the message is posted, replaced
  by a final one at resolution (:mod:`ctrguard.sinks.slack_chart`).

Everything here runs on the delivery thread (never on the dataflow's): one Redis read for
the latest vote per update, the planned changes at most every ``annotations.refresh_s``,
and matplotlib only when a chart is due.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis

from ctrguard.errors import RedisUnavailable, SlackDeliveryError
from ctrguard.sinks.annotations import AnnotationCache, expected_part
from ctrguard.sinks.feedback import FeedbackStore
from ctrguard.sinks.slack_chart import render_chart
from ctrguard.sinks.slack_render import (
    RenderedMessage,
    render_feedback_blocks,
    sanitize,
    with_feedback_blocks,
)

if TYPE_CHECKING:
    from ctrguard.config import Settings
    from ctrguard.sinks.incidents import Incident, IncidentUpdate

__all__ = ["IncidentExtras"]

log = logging.getLogger("ctrguard.slack")


class IncidentExtras:
    """Feedback blocks, planned-change notes and charts of incident messages."""

    def __init__(self, settings: Settings, client: redis.Redis):
        self.buttons = settings.feedback.buttons
        self.charts = settings.charts.enabled
        self.feedback = FeedbackStore(client, settings.redis.key_prefix,
                                      retention_s=settings.feedback.retention_days * 86400)
        self.annotations = AnnotationCache(settings, client)
        self.window_s = settings.windows.length_s
        self.charts_uploaded = 0

    def expected(self, inc: Incident) -> str | None:
        """The planned change the incident's span overlaps, as text, or None."""
        found = self._expected(inc)
        return None if found is None else found[0].label

    def _expected(self, inc: Incident) -> tuple[Any, list[tuple[int, int]] | None] | None:
        return expected_part(self.annotations.current(), inc.campaign_id,
                             inc.first_window_start_s,
                             max(inc.last_window_end_s, inc.first_window_start_s + 1),
                             self.window_s)

    def decorate(self, message: RenderedMessage, inc: Incident) -> RenderedMessage:
        """The message with the feedback blocks (and planned-change note) of ``inc``."""
        found = self._expected(inc)
        expected, spans = (None, None) if found is None else (found[0].label, found[1])
        if not self.buttons and expected is None:
            return message
        latest = None
        if self.buttons:
            try:
                latest = self.feedback.latest(inc.incident_id)
            except RedisUnavailable as exc:
                raise redis.ConnectionError(str(exc)) from None  # the thread retries it
        return with_feedback_blocks(message, render_feedback_blocks(
            inc.incident_id, latest, expected, buttons=self.buttons, expected_spans=spans))

    def delivered(self, api: Any, step: Callable[..., Any], update: IncidentUpdate,
                  fields: dict[str, str], channel: str, ts: str, *, posted: bool,
                  msg_key: str, client: redis.Redis) -> list[str]:
        """After the message was posted or edited: keep the facts, post or replace the chart.

        ``step`` is the notifier's once-per-update runner of Slack calls. Returns the actions
        taken (``chart``, ``chart_replaced``).
        """
        inc = update.incident
        self.feedback.remember_incident(inc, channel, ts)
        raw = fields.get("series")
        if not (self.charts and raw and (posted or update.kind == "resolve")):
            return []
        key = update.idempotency_key
        old = client.hget(msg_key, "chart_file")

        def upload() -> str | None:
            doc = json.loads(raw)
            state = "resolved" if inc.status == "resolved" else "open"
            title = (f"CTR of {sanitize(inc.campaign_id, 60)} · {sanitize(doc['segment'], 40)}"
                     f" ({state})")
            png = render_chart(doc, title=title)
            try:
                return api.upload_png(channel, ts, png, filename=f"ctr-{inc.incident_id}.png",
                                      title=title, alt_text=f"CTR chart: {title}")
            except SlackDeliveryError as err:
                if err.retryable:
                    raise
                # A missing files:write scope must not hold the incident's updates back.
                log.warning("slack chart of %s not posted: %s", inc.incident_id, err)
                return None

        file_id = step(key, "chart", upload)
        if not file_id:
            return []
        client.hset(msg_key, "chart_file", file_id)
        self.charts_uploaded += 1
        if old and old != file_id:
            try:
                api.delete_file(old)
            except SlackDeliveryError as err:
                log.info("slack: old chart %s of %s not deleted: %s", old, inc.incident_id, err)
            return ["chart_replaced"]
        return ["chart"]

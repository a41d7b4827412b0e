"""Slack escalation: incidents (not alerts), routed, delivered through a durable outbox.

Pieces
------
* :class:`Router` (pure): campaign -> channel, owner, minimum severity; mutes with an
  expiry compared with the alerts' event time.
* :class:`SlackNotifier`: ``submit(updates)`` appends to a Redis Stream outbox and returns
  at once; a background delivery thread drains it in order, honours 429 ``Retry-After``,
  retries 5xx and timeouts with exponential back-off, and records every Slack call it made
  under an idempotency key before removing the entry, so a restart never posts twice.
  Modes: Web API (``chat.postMessage`` then ``chat.update`` + thread replies), incoming
  webhook (posts opens and resolves only) and console (prints what Slack would show).
* :class:`SlackSink`: one worker's sink (the flow wraps it in a Bytewax sink,
  :mod:`ctrguard.flows.ctr_flow`). Each ``write_batch`` loads the incident
  state of the campaigns that can change (alerts in the batch, an open incident that is
  due or ticks, a ticking campaign that has state) from Redis, runs the pure
  :class:`~ctrguard.sinks.incidents.IncidentTracker`, and writes the new state and the outbox
  entries in one ``MULTI``/``EXEC`` transaction (``WATCH`` on the states and on the open
  and known sets), so re-delivered alerts after a restart change nothing and no update is
  lost between the two. The thousands of campaigns that merely tick cost a set lookup.

Redis keys (``P`` = ``redis.key_prefix``)
-----------------------------------------
``P:slack:outbox``                 stream of pending updates (entries deleted once delivered)
``P:slack:deadletter``             stream of updates Slack refused for good, with the reason
``P:slack:outbox:lease``           which delivery thread may drain the outbox (one at a time)
``P:slack:done:<key>``             "delivered" mark per idempotency key (incident:revision)
``P:slack:step:<key>:<step>``      "done" mark per Slack call of an update (post/edit/reply)
``P:slack:msg:<incident_id>``      hash: channel id and ts of the incident's message (and
                                   ``chart_file``, its chart's file id; sinks/slack_extras.py)
``P:slack:state:<campaign hash>``  JSON incident state of one campaign (with a TTL)
``P:slack:open``                   sorted set: campaigns with an open incident, by last end
``P:slack:known``                  set: every campaign with a state key (and a few whose
                                   state expired, removed when they next tick)
``P:slack:known:ready``            "the known set holds the states written before it existed"
``P:slack:clock``                  sorted set, member ``clock``: the latest window end seen
``P:slack:stall:<id hash>``        JSON state of one pipeline-level stall incident
``P:slack:stall:<id hash>:campaigns``  set: the campaigns it has counted
``P:slack:stalls``                 sorted set: open stall ids, by the end of their last window
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

import redis

from ctrguard import metrics, probes
from ctrguard.errors import RedisUnavailable, SlackDeliveryError
from ctrguard.records import Alert, WindowDecision
from ctrguard.sinks.incidents import (
    SEVERITY_RANK,
    IncidentTracker,
    IncidentUpdate,
    update_from_json,
    update_to_json,
)
from ctrguard.sinks.quarantine_incidents import IncidentFlagLinks
from ctrguard.sinks.redis_client import make_redis
from ctrguard.sinks.slack_chart import SeriesHistory
from ctrguard.sinks.slack_extras import IncidentExtras
from ctrguard.sinks.slack_render import render_console, render_incident, render_thread_reply
from ctrguard.sinks.stalls import StallTracker, is_stall

if TYPE_CHECKING:
    from ctrguard.config import Settings
    from ctrguard.sinks.settings import SlackSettings

__all__ = ["Decision", "Router", "SlackNotifier", "SlackSink", "NotifierStats"]

log = logging.getLogger("ctrguard.slack")
#: Handed to slack-sdk clients: at DEBUG they log request URLs (a webhook URL is a secret).
_sdk_log = logging.getLogger("ctrguard.slack.sdk")
_sdk_log.setLevel(logging.WARNING)

_TOKEN = re.compile(r"xox[a-zA-Z]-[A-Za-z0-9-]+|xapp-[A-Za-z0-9-]+")

#: Slack ``ok: false`` errors worth retrying (the rest mean bad input or configuration).
_RETRYABLE_ERRORS = {"internal_error", "fatal_error", "service_unavailable",
                     "request_timeout", "ratelimited", "rate_limited"}
#: ``chat.update`` errors meaning the message is gone (deleted by a person).
_GONE_ERRORS = {"message_not_found", "cant_update_message", "edit_window_closed"}

LEASE_MS = 30_000
READ_BATCH = 50


class _Redact(logging.Filter):
    """Removes secrets from records of our loggers, whatever a library put in them."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record must not break logging
            return True
        clean = _TOKEN.sub("xox?-***", msg)
        for secret in self.secrets:
            if secret:
                clean = clean.replace(secret, "***")
        if clean != msg:
            record.msg, record.args = clean, ()
        return True


_redact = _Redact()
log.addFilter(_redact)
_sdk_log.addFilter(_redact)


_REVISION = re.compile(r"revision \d+")


def _message_digest(message: Any) -> str:
    """What a Slack message shows, but for its revision number: equal digests need no
    ``chat.update`` (a revision that changes nothing else is not worth an edit)."""
    text = getattr(message, "text", message)
    blocks = getattr(message, "blocks", None)
    raw = _REVISION.sub("revision", json.dumps([text, blocks], sort_keys=True, default=str))
    return hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def _series_field(history: SeriesHistory, u: IncidentUpdate) -> dict[str, str]:
    """The chart data of an update's driving series, as an outbox field (bounded)."""
    doc = history.series_for(u.incident)
    return {} if doc is None else {"series": json.dumps(doc, separators=(",", ":"))}


def _campaign_hash(campaign_id: str) -> str:
    return hashlib.blake2b(campaign_id.encode("utf-8", "surrogatepass"),
                           digest_size=12).hexdigest()


# --------------------------------------------------------------------------- routing


@dataclass(frozen=True, slots=True)
class Decision:
    """Where an update goes and whether it may notify people.

    ``notify=False`` (muted, or below the route's minimum severity) still lets an existing
    message be edited silently, but never posts a message or a thread reply.
    """

    channel: str
    owner: str | None
    notify: bool
    reason: str = ""


class Router:
    """Routes campaigns to channels and owners; applies mutes (pure, no I/O).

    >>> from ctrguard.sinks.settings import SlackSettings
    >>> s = SlackSettings.model_validate({
    ...     "default_channel": "#ctr", "campaign_labels": {"retail": ["shop-*"]},
    ...     "routes": [{"labels": ["retail"], "channel": "#retail", "owner": "U024BE7LH"}],
    ...     "mutes": [{"campaigns": ["shop-test*"], "until": "2026-01-01T00:00:00Z"}]})
    >>> r = Router(s)
    >>> r.route("shop-42"), r.route("other")
    (('#retail', 'U024BE7LH', 'warning'), ('#ctr', None, 'warning'))
    >>> r.muted("shop-test1", 1767225599), r.muted("shop-test1", 1767225600)
    ('until 2026-01-01T00:00:00+00:00', None)
    """

    def __init__(self, settings: SlackSettings):
        self.settings = settings
        self._mutes = [(m, int(m.until.timestamp())) for m in settings.mutes]

    def labels_of(self, campaign_id: str) -> set[str]:
        return {label for label, patterns in self.settings.campaign_labels.items()
                if _matches(campaign_id, patterns)}

    def _rule_matches(self, rule: Any, campaign_id: str, labels: set[str] | None) -> bool:
        if _matches(campaign_id, rule.campaigns):
            return True
        if rule.labels:
            labels = self.labels_of(campaign_id) if labels is None else labels
            return bool(labels & set(rule.labels))
        return False

    def route(self, campaign_id: str) -> tuple[str, str | None, str]:
        """``(channel, owner, min_severity)`` of a campaign: the first matching route."""
        s = self.settings
        labels = self.labels_of(campaign_id) if s.campaign_labels else set()
        for r in s.routes:
            if self._rule_matches(r, campaign_id, labels):
                return (r.channel or s.default_channel, r.owner or s.default_owner,
                        r.min_severity or s.min_severity)
        return s.default_channel, s.default_owner, s.min_severity

    def muted(self, campaign_id: str, event_time_s: int) -> str | None:
        """The reason a campaign is muted at this event time, or None."""
        for m, until_s in self._mutes:
            if event_time_s < until_s and self._rule_matches(m, campaign_id, None):
                return f"until {m.until.isoformat()}" + (f" ({m.reason})" if m.reason else "")
        return None

    def decide(self, update: IncidentUpdate) -> Decision:
        inc = update.incident
        channel, owner, min_severity = self.route(inc.campaign_id)
        mute = self.muted(inc.campaign_id, update.event_time_s)
        if mute is not None:
            return Decision(channel, owner, False, f"muted {mute}")
        if SEVERITY_RANK.get(inc.severity, 0) < SEVERITY_RANK[min_severity]:
            return Decision(channel, owner, False, f"below {min_severity}")
        return Decision(channel, owner, True)


def _matches(campaign_id: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(campaign_id, p) for p in patterns)


# --------------------------------------------------------------------------- transports


def _slack_error(exc: BaseException, what: str) -> SlackDeliveryError:
    """A :class:`SlackDeliveryError` from whatever slack-sdk or urllib raised.

    Built from the status and Slack's error code only: the sdk's exception holds the
    request (with the bearer token) and must not travel further.
    """
    from slack_sdk.errors import SlackApiError

    if isinstance(exc, SlackApiError):
        resp = exc.response
        status = getattr(resp, "status_code", None)
        data = resp.data if isinstance(getattr(resp, "data", None), dict) else {}
        code = str(data.get("error") or "")[:100]
        if status == 429 or code in ("ratelimited", "rate_limited"):
            return SlackDeliveryError(f"{what}: rate limited", retryable=True, status=status,
                                      retry_after=_retry_after(resp.headers))
        retryable = (status is not None and status >= 500) or code in _RETRYABLE_ERRORS
        return SlackDeliveryError(f"{what}: {code or 'HTTP ' + str(status)}",
                                  retryable=retryable, status=status)
    # URLError, timeouts, connection resets: Slack may or may not have acted. Retry.
    return SlackDeliveryError(f"{what}: {type(exc).__name__}", retryable=True)


def _retry_after(headers: Any) -> float:
    value = None
    if headers:
        for k, v in dict(headers).items():
            if str(k).lower() == "retry-after":
                value = v[0] if isinstance(v, list) else v
    try:
        return max(float(value), 0.0) if value is not None else 1.0
    except (TypeError, ValueError):
        return 1.0


class _WebApi:
    """Slack Web API through slack-sdk, without its retry handlers (we retry ourselves)."""

    def __init__(self, settings: SlackSettings):
        from slack_sdk import WebClient

        kwargs: dict[str, Any] = {}
        if settings.base_url:
            kwargs["base_url"] = settings.base_url
        assert settings.bot_token is not None
        self._client = WebClient(token=settings.bot_token.get_secret_value(),
                                 timeout=int(max(1, round(settings.timeout_s))),
                                 logger=_sdk_log, retry_handlers=[], **kwargs)

    def post(self, channel: str, msg: Any, *, thread_ts: str | None = None,
             metadata: dict[str, Any] | None = None) -> tuple[str, str]:
        try:
            resp = self._client.chat_postMessage(
                channel=channel, text=msg.text if hasattr(msg, "text") else msg,
                blocks=getattr(msg, "blocks", None) or None, thread_ts=thread_ts,
                unfurl_links=False, unfurl_media=False, metadata=metadata)
        except Exception as exc:  # noqa: BLE001 - mapped to our error, the sdk's dropped
            raise _slack_error(exc, "chat.postMessage") from None
        return str(resp["channel"]), str(resp["ts"])

    def find_post(self, channel: str, key: str,
                  thread_ts: str | None = None) -> list[str] | None:
        """Our message carrying idempotency ``key`` if Slack already has it, else None.

        Used before re-posting after a call whose outcome is unknown (a timeout): Slack may
        have posted it and only the answer was lost.
        """
        try:
            if thread_ts is None:
                resp = self._client.conversations_history(channel=channel, limit=200,
                                                          include_all_metadata=True)
            else:
                resp = self._client.conversations_replies(channel=channel, ts=thread_ts,
                                                          limit=200, include_all_metadata=True)
            found = next((m for m in resp.get("messages") or []
                          if ((m.get("metadata") or {}).get("event_payload") or {}).get("key")
                          == key), None)
            if found is None:
                return None
            info = self._client.conversations_info(channel=channel)
            return [str(info["channel"]["id"]), str(found["ts"])]
        except Exception as exc:  # noqa: BLE001 - cannot verify: the caller posts again
            log.warning("slack: could not check whether %s was already posted (%s); "
                        "posting it again", key, type(_slack_error(exc, "lookup")).__name__)
            return None

    def edit(self, channel: str, ts: str, msg: Any) -> None:
        try:
            self._client.chat_update(channel=channel, ts=ts, text=msg.text,
                                     blocks=msg.blocks or None)
        except Exception as exc:  # noqa: BLE001
            raise _slack_error(exc, "chat.update") from None

    def upload_png(self, channel: str, thread_ts: str, data: bytes, *, filename: str,
                   title: str, alt_text: str) -> str:
        """Share a PNG in a thread with ``files_upload_v2``; returns the file id."""
        try:
            resp = self._client.files_upload_v2(
                channel=channel, thread_ts=thread_ts, file=data, filename=filename,
                title=title, alt_txt=alt_text)
        except Exception as exc:  # noqa: BLE001
            raise _slack_error(exc, "files_upload_v2") from None
        return str((resp.get("file") or {}).get("id") or "")

    def delete_file(self, file_id: str) -> None:
        try:
            self._client.files_delete(file=file_id)
        except Exception as exc:  # noqa: BLE001
            raise _slack_error(exc, "files.delete") from None


class _Webhook:
    def __init__(self, settings: SlackSettings):
        from slack_sdk.webhook import WebhookClient

        assert settings.webhook_url is not None
        self._client = WebhookClient(settings.webhook_url.get_secret_value(),
                                     timeout=int(max(1, round(settings.timeout_s))),
                                     logger=_sdk_log, retry_handlers=[])

    def post(self, msg: Any) -> None:
        try:
            resp = self._client.send(text=msg.text, blocks=msg.blocks or None,
                                     unfurl_links=False, unfurl_media=False)
        except Exception as exc:  # noqa: BLE001 - urllib errors; the URL must not leak
            raise SlackDeliveryError(f"webhook: {type(exc).__name__}", retryable=True) from None
        # WebhookClient.send does not raise on HTTP errors: look at the status ourselves.
        if resp.status_code == 200:
            return
        body = str(resp.body or "")[:100]
        if resp.status_code == 429:
            raise SlackDeliveryError("webhook: rate limited", retryable=True, status=429,
                                     retry_after=_retry_after(resp.headers))
        raise SlackDeliveryError(f"webhook: HTTP {resp.status_code} {body}",
                                 retryable=resp.status_code >= 500, status=resp.status_code)


# --------------------------------------------------------------------------- notifier


@dataclass
class NotifierStats:
    submitted: int = 0
    delivered: int = 0
    skipped_duplicate: int = 0
    suppressed: int = 0
    slack_calls: int = 0
    retries: int = 0
    rate_limited: int = 0
    dead_lettered: int = 0


class _Gone(Exception):
    """The incident's message was deleted in Slack."""


class SlackNotifier:
    """Delivers :class:`~ctrguard.sinks.incidents.IncidentUpdate` records to Slack, at least once
    into the outbox and at most once into Slack (per Slack call, barring a response lost
    after Slack acted).

    Parameters
    ----------
    settings
        The whole configuration (``slack``, ``redis``).
    redis_client
        A client (``decode_responses=True``); built from ``settings.redis`` when None.
    stream
        Where console mode prints (``sys.stdout`` at the time of printing when None).
    autostart
        Start the delivery thread now.
    """

    def __init__(self, settings: Settings, *, redis_client: redis.Redis | None = None,
                 stream: IO[str] | None = None, autostart: bool = True):
        self.settings = settings
        self.slack = settings.slack
        self.mode = self.slack.effective_mode
        self.router = Router(self.slack)
        self.redis = redis_client if redis_client is not None else make_redis(settings.redis)
        self.prefix = f"{settings.redis.key_prefix}:slack"
        self.outbox_key = f"{self.prefix}:outbox"
        self.deadletter_key = f"{self.prefix}:deadletter"
        self.lease_key = f"{self.prefix}:outbox:lease"
        self.stats = NotifierStats()
        metrics.track_slack(self.stats)  # counted in ctrguard_slack_* (read when scraped)
        self._stream = stream
        self._consumer = uuid.uuid4().hex
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread: threading.Thread | None = None
        self._transport: Any = None
        #: Feedback buttons, planned-change notes and charts (Web API mode only).
        self.extras = IncidentExtras(settings, self.redis) if self.mode == "web" else None
        #: Set by the sink when charts are on: the chart data sent with each update.
        self.series: SeriesHistory | None = None
        for secret in (self.slack.bot_token, self.slack.webhook_url):
            if secret is not None:
                _redact.secrets.add(secret.get_secret_value())
        if autostart:
            self.start()

    # ------------------------------------------------------------------ producer side

    def submit(self, updates: Iterable[IncidentUpdate], *,
               pipeline: redis.client.Pipeline | None = None) -> int:
        """Append updates to the outbox and return at once (the number appended).

        With ``pipeline``, the ``XADD`` commands are queued on it (the caller executes it,
        e.g. in the transaction that also stores incident state); otherwise one pipeline
        round trip is made here.
        """
        updates = list(updates)
        if not updates:
            return 0
        own = pipeline is None
        pipe = self.redis.pipeline(transaction=True) if own else pipeline
        for u in updates:
            d = self.router.decide(u)
            fields = {"key": u.idempotency_key, "incident": u.incident.incident_id,
                      "kind": u.kind, "channel": d.channel, "owner": d.owner or "",
                      "notify": "1" if d.notify else "0", "why": d.reason,
                      "update": json.dumps(update_to_json(u), separators=(",", ":"))}
            if self.series is not None:
                fields.update(_series_field(self.series, u))
            pipe.xadd(self.outbox_key, fields)
        if own:
            try:
                pipe.execute()
            except redis.RedisError as exc:
                raise RedisUnavailable(f"slack outbox: {type(exc).__name__}: {exc}") from None
        self.stats.submitted += len(updates)
        self._wake.set()
        return len(updates)

    def pending(self) -> int:
        """Entries waiting in the outbox (of every notifier sharing this Redis)."""
        return int(self.redis.xlen(self.outbox_key))

    def dead_letters(self) -> list[dict[str, str]]:
        return [fields for _, fields in self.redis.xrange(self.deadletter_key, "-", "+")]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ctrguard-slack-delivery",
                                        daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until the outbox is empty (True) or ``timeout`` seconds pass (False)."""
        self.start()
        deadline = time.monotonic() + timeout
        while True:
            self._wake.set()
            try:
                if self.pending() == 0 and self._idle.is_set():
                    return True
            except redis.RedisError:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(0.02, remaining))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the delivery thread (pending entries stay in the outbox for next time)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None
        with contextlib.suppress(redis.RedisError):
            self._release_lease()

    def close(self, timeout: float = 30.0) -> bool:
        """Deliver what is pending (up to ``timeout`` seconds), then stop. True if drained."""
        drained = self.drain(timeout)
        self.stop()
        return drained

    # ------------------------------------------------------------------ delivery thread

    def _sleep(self, seconds: float) -> bool:
        """Wait without blocking anyone but this thread; False if asked to stop.

        Long waits (a long Retry-After) renew the delivery lease, so no other worker's
        thread takes over the entry this one is still responsible for.
        """
        deadline = time.monotonic() + max(seconds, 0.0)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return not self._stop.is_set()
            if self._stop.wait(min(remaining, LEASE_MS / 3000)):
                return False
            with contextlib.suppress(redis.RedisError):
                self._hold_lease()

    def _backoff(self, attempt: int) -> float:
        return min(self.slack.retry_backoff_s * 2 ** (attempt - 1), self.slack.retry_backoff_max_s)

    _LEASE_SCRIPT = """
    local cur = redis.call('GET', KEYS[1])
    if cur == false then
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1
    elseif cur == ARGV[1] then
        redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1
    end
    return 0
    """
    _RELEASE_SCRIPT = """
    if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
    return 0
    """

    def _hold_lease(self) -> bool:
        return bool(self.redis.eval(self._LEASE_SCRIPT, 1, self.lease_key, self._consumer,
                                    LEASE_MS))

    def _release_lease(self) -> None:
        self.redis.eval(self._RELEASE_SCRIPT, 1, self.lease_key, self._consumer)

    def _nap(self, seconds: float) -> None:
        """Wait up to ``seconds`` for :meth:`wake`; not at all once :meth:`stop` was called.

        :meth:`stop` sets ``_stop`` and then ``_wake``; the loop clears ``_wake`` before it
        looks at the outbox, so a stop that lands in between would otherwise be slept
        through (every close of a busy sink waited the whole nap).
        """
        if not self._stop.is_set():
            self._wake.wait(seconds)

    def _run(self) -> None:
        redis_failures = 0
        while not self._stop.is_set():
            try:
                if not self._hold_lease():
                    # Another worker's thread delivers; keep order by never racing it.
                    self._idle.set()
                    self._nap(1.0)
                    self._wake.clear()
                    continue
                self._wake.clear()
                entries = self.redis.xrange(self.outbox_key, "-", "+", count=READ_BATCH)
                redis_failures = 0
                if not entries:
                    self._idle.set()
                    self._nap(0.5)
                    continue
                self._idle.clear()
                self._deliver_batch(entries)
            except redis.RedisError as exc:
                redis_failures += 1
                log.warning("slack delivery: redis unavailable (%s); retrying",
                            type(exc).__name__)
                self._sleep(min(self.settings.redis.retry_backoff_s * 2 ** redis_failures,
                                self.settings.redis.retry_backoff_max_s))
            except Exception:  # noqa: BLE001 - the thread must survive a bug in one entry
                log.exception("slack delivery: unexpected error; retrying")
                self._sleep(self.slack.retry_backoff_s)
        self._idle.set()

    def _deliver_batch(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        last_index: dict[str, int] = {}
        for i, (_, fields) in enumerate(entries):
            last_index[fields.get("incident", "")] = i
        for i, (entry_id, fields) in enumerate(entries):
            if self._stop.is_set():
                return
            # A later update of the same incident is queued: its edit supersedes this one's.
            superseded = last_index.get(fields.get("incident", "")) != i
            self._deliver_entry(entry_id, fields, superseded)

    def _deliver_entry(self, entry_id: str, fields: dict[str, str], superseded: bool) -> None:
        key = fields["key"]
        done_key = f"{self.prefix}:done:{key}"
        if self.redis.exists(done_key):
            self.stats.skipped_duplicate += 1
            self.redis.xdel(self.outbox_key, entry_id)
            return
        update = update_from_json(json.loads(fields["update"]))
        attempt = 0
        while not self._stop.is_set():
            try:
                result = self._apply(update, fields, superseded)
            except SlackDeliveryError as err:
                if err.retry_after is not None:
                    # Slack said when; wait here (the dataflow thread never waits on Slack).
                    self.stats.rate_limited += 1
                    log.info("slack rate limited; waiting %.1f s", err.retry_after)
                    self._sleep(err.retry_after)
                    continue
                attempt += 1
                if err.retryable and attempt < self.slack.max_attempts:
                    self.stats.retries += 1
                    log.warning("slack delivery of %s failed (%s); attempt %d of %d",
                                key, err, attempt, self.slack.max_attempts)
                    self._sleep(self._backoff(attempt))
                    continue
                self._dead_letter(entry_id, fields, str(err))
                return
            pipe = self.redis.pipeline(transaction=True)
            pipe.set(done_key, json.dumps(result), nx=True, ex=self.slack.idempotency_ttl_s)
            pipe.xdel(self.outbox_key, entry_id)
            pipe.execute()
            self.stats.delivered += 1
            return

    def _dead_letter(self, entry_id: str, fields: dict[str, str], reason: str) -> None:
        self.stats.dead_lettered += 1
        log.error("slack delivery of %s gave up: %s (kept in %s)", fields.get("key"), reason,
                  self.deadletter_key)
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.deadletter_key, {**fields, "reason": reason[:500]})
        pipe.xdel(self.outbox_key, entry_id)
        pipe.execute()

    # ------------------------------------------------------------------ one update

    def _transport_for_mode(self) -> Any:
        if self._transport is None:
            if self.mode == "web":
                self._transport = _WebApi(self.slack)
            elif self.mode == "webhook":
                self._transport = _Webhook(self.slack)
        return self._transport

    def _step(self, key: str, step: str, fn: Any, recover: Any = None) -> Any:
        """Run one Slack call at most once per idempotency key, recording it when done.

        ``recover`` finds the result of an earlier attempt whose answer was lost (Slack
        acted, we timed out or crashed); it is asked only when such an attempt exists.
        """
        step_key = f"{self.prefix}:step:{key}:{step}"
        done = self.redis.get(step_key)
        if done is not None:
            return json.loads(done)
        attempt_key = f"{step_key}:attempted"
        result = None
        if recover is not None and self.redis.get(attempt_key) is not None:
            result = recover()
            if result is not None:
                self.stats.skipped_duplicate += 1
        if result is None:
            if recover is not None:
                self.redis.set(attempt_key, "1", ex=self.slack.idempotency_ttl_s)
            try:
                result = fn()
            except SlackDeliveryError as exc:
                # An answer that says Slack did nothing (429, an API error) is definite;
                # only timeouts, dropped connections and 5xx leave the outcome unknown.
                if recover is not None and exc.status is not None and (
                        exc.status == 429 or exc.status < 500):
                    self.redis.delete(attempt_key)
                raise
        self.stats.slack_calls += 1
        self.redis.set(step_key, json.dumps(result), ex=self.slack.idempotency_ttl_s)
        probes.point("slack.after_call")
        return result

    def _apply(self, u: IncidentUpdate, fields: dict[str, str],
               superseded: bool) -> dict[str, Any]:
        inc = u.incident
        key = u.idempotency_key
        notify = fields.get("notify") == "1"
        owner = fields.get("owner") or None
        msg_key = f"{self.prefix}:msg:{inc.incident_id}"
        ref = self.redis.hgetall(msg_key)
        message = render_incident(u, owner=owner, currency=self.slack.currency)
        reply = render_thread_reply(u, owner=owner, currency=self.slack.currency)
        if not notify:
            self.stats.suppressed += 1
        actions: list[str] = []

        def remember(channel: str, ts: str) -> None:
            self.redis.hset(msg_key, mapping={"channel": channel, "ts": ts})
            self.redis.expire(msg_key, self.slack.idempotency_ttl_s)

        if self.mode == "web":
            api = self._transport_for_mode()
            if self.extras is not None:
                message = self.extras.decorate(message, inc)
            if not ref:
                if notify and u.kind != "resolve":
                    meta = {"event_type": "ctrguard_incident",
                            "event_payload": {"incident_id": inc.incident_id, "key": key}}
                    channel, ts = self._step(
                        key, "post",
                        lambda: list(api.post(fields["channel"], message, metadata=meta)),
                        recover=lambda: api.find_post(fields["channel"], key))
                    remember(channel, ts)
                    self.redis.hset(msg_key, "digest", _message_digest(message))
                    actions.append("post")
                    actions += self._delivered(api, u, fields, channel, ts, msg_key, True)
                return {"actions": actions}
            channel, ts = ref["channel"], ref["ts"]
            digest = _message_digest(message)
            if ref.get("digest") == digest:
                # A new revision that renders exactly as the message already shows (the
                # incident grew by a window that changes no figure shown): no edit.
                actions.append("unchanged")
            elif not (superseded and u.kind == "update"):
                try:
                    self._step(key, "edit", lambda: self._edit(api, channel, ts, message))
                    self.redis.hset(msg_key, "digest", digest)
                    actions.append("edit")
                except _Gone:
                    # Someone deleted the message: forget it; the next notable update posts.
                    self.redis.delete(msg_key)
                    return {"actions": ["gone"]}
            actions += self._delivered(api, u, fields, channel, ts, msg_key, False)
            if notify and reply is not None:
                reply_meta = {"event_type": "ctrguard_incident_reply",
                              "event_payload": {"incident_id": inc.incident_id, "key": key}}
                self._step(key, "reply",
                           lambda: list(api.post(channel, reply, thread_ts=ts,
                                                 metadata=reply_meta)),
                           recover=lambda: api.find_post(channel, key, thread_ts=ts))
                actions.append("reply")
            return {"actions": actions}

        # Webhook and console cannot edit: post opens (or the first notable update of an
        # incident nobody was told about yet) and resolutions.
        if not notify:
            return {"actions": actions}
        if u.kind in ("open", "update") and not ref:
            self._step(key, "post", lambda: self._post_simple(message))
            remember(fields["channel"], "posted")
            actions.append("post")
        elif u.kind == "resolve" and ref:
            self._step(key, "post", lambda: self._post_simple(message))
            actions.append("post")
        elif u.kind == "update" and ref and reply is not None and self.mode == "console":
            self._step(key, "reply", lambda: self._print(reply, thread=True))
            actions.append("reply")
        return {"actions": actions}

    def _delivered(self, api: _WebApi, u: IncidentUpdate, fields: dict[str, str],
                   channel: str, ts: str, msg_key: str, posted: bool) -> list[str]:
        if self.extras is None:
            return []
        return self.extras.delivered(api, self._step, u, fields, channel, ts, posted=posted,
                                     msg_key=msg_key, client=self.redis)

    def _edit(self, api: _WebApi, channel: str, ts: str, message: Any) -> bool:
        try:
            api.edit(channel, ts, message)
        except SlackDeliveryError as err:
            if any(code in str(err) for code in _GONE_ERRORS):
                raise _Gone() from None
            raise
        return True

    def _post_simple(self, message: Any) -> bool:
        if self.mode == "webhook":
            self._transport_for_mode().post(message)
        else:
            self._print(message)
        return True

    def _print(self, message: Any, thread: bool = False) -> bool:
        stream = self._stream if self._stream is not None else sys.stdout
        text = render_console(message)
        if thread:
            text = "\n".join("  ↳ " + line for line in text.splitlines())
        print(text + "\n", file=stream, flush=True)
        return True


# --------------------------------------------------------------------------- sink


class SlackSink:
    """One worker's sink: alerts (or ``WindowDecision`` records) in, Slack incidents out.

    Resolution needs event time to advance: feed ``WindowDecision`` records (every closed
    window, with or without alerts) for per-campaign resolution; with alerts alone, an
    incident resolves once any later alert shows that event time moved on.
    """

    def __init__(self, settings: Settings, *, redis_client: redis.Redis | None = None,
                 stream: IO[str] | None = None, autostart: bool = True):
        self.settings = settings
        self.redis = redis_client if redis_client is not None else make_redis(settings.redis)
        self.notifier = SlackNotifier(settings, redis_client=self.redis, stream=stream,
                                      autostart=autostart)
        slack = settings.slack
        self.window_s = settings.windows.length_s
        self.prefix = self.notifier.prefix
        self.open_key = f"{self.prefix}:open"
        self.clock_key = f"{self.prefix}:clock"
        self.known_key = f"{self.prefix}:known"
        self.known_ready_key = f"{self.prefix}:known:ready"
        self.stalls_key = f"{self.prefix}:stalls"
        topics = settings.kafka.topics
        self._stall_args = {"window_s": self.window_s, "gap_windows": slack.incident_gap_windows,
                            "topics": {"impressions": topics.impressions,
                                       "clicks": topics.clicks}}
        self._index_ready = False
        self._known_size_hint: int | None = None
        self._tracker_args = {"window_s": self.window_s, "gap_windows": slack.incident_gap_windows,
                              "value_per_click": slack.value_per_click,
                              "false_alarm_budget":
                                  settings.detectors.false_alarms_per_campaign_day}
        self.stale_alerts = 0
        # Flags carry their incident's id; auto-release (console mode too) follows it.
        self._flag_links = IncidentFlagLinks(settings, self.redis)
        #: Recent windows of every series, for the charts (Web API mode with charts on).
        self.history = None
        if settings.charts.enabled and self.notifier.mode == "web":
            self.history = self.notifier.series = SeriesHistory(settings.charts.windows,
                                                                self.window_s)

    def _state_key(self, campaign_id: str) -> str:
        return f"{self.prefix}:state:{_campaign_hash(campaign_id)}"

    def write_batch(self, items: list[Any]) -> None:
        """Fold a batch of alerts (or whole ``WindowDecision`` records) into incidents and
        queue the resulting updates: one Redis transaction, no Slack call here."""
        alerts: list[Alert] = []
        ticks: dict[str, int] = {}
        series: dict[tuple[str, int], int] = {}
        tick_of = ticks.get
        for item in items:
            # Thousands of records a batch, almost none with alerts: keep this loop lean.
            if isinstance(item, WindowDecision):
                if item.alerts:
                    alerts.extend(item.alerts)
                    # The series of an alerted campaign-window, for the evidence statement.
                    series[(item.campaign_id, item.window_start_s)] = len(item.figures)
                cid, end = item.campaign_id, item.window_end_s
                prev = tick_of(cid)
                if prev is None:
                    ticks[cid] = end if end > 0 else 0
                elif end > prev:
                    ticks[cid] = end
            elif isinstance(item, Alert):
                alerts.append(item)
            else:
                raise TypeError(f"SlackSink takes Alert or WindowDecision, not "
                                f"{type(item).__name__}")
        if self.history is not None:
            self.history.observe(items)
        if not alerts and not ticks:
            return
        self._write_with_retries(alerts, ticks, series)

    def _write_with_retries(self, alerts: list[Alert], ticks: dict[str, int],
                            series: dict[tuple[str, int], int] | None = None) -> None:
        # Like the release sink, wait for Redis rather than crash or drop: the incident state
        # and outbox live there, and the alerts of this batch must not be lost.
        r = self.settings.redis
        delay = r.retry_backoff_s
        conflicts = 0
        deadline = time.monotonic() + r.slack_outage_wait_s
        while True:
            try:
                self._write(alerts, ticks, series)
                return
            except redis.WatchError:
                conflicts += 1  # another worker changed one of these campaigns; recompute
                if conflicts >= 50:
                    raise RedisUnavailable(
                        "slack incident state: too many concurrent changes") from None
            except redis.RedisError as exc:
                if isinstance(exc, redis.AuthenticationError) or time.monotonic() > deadline:
                    raise RedisUnavailable(f"slack incident state: {type(exc).__name__}: "
                                           f"{exc}") from None
                log.warning("slack sink: redis unavailable (%s); %d alerts wait; retrying in "
                            "%.1f s", type(exc).__name__, len(alerts), delay)
                time.sleep(delay)
                delay = min(delay * 2, r.retry_backoff_max_s)

    def _write(self, alerts: list[Alert], ticks: dict[str, int],
               series: dict[tuple[str, int], int] | None = None) -> None:
        """One transaction for the batch, touching only the campaigns that can change.

        A campaign is *relevant* when it has alerts in the batch, is a member of the open
        set (an open incident, possibly written by another worker or an earlier process),
        or ticks and may have incident state in Redis (a member of the known set). For any
        other ticking campaign there is no state: the tracker knows nothing of it, so
        ``advance`` cannot change anything and there is nothing to store or to remove from
        the open set -- the unfiltered computation did exactly nothing for it. The open
        and known sets are WATCHed before they are read, and the states of the relevant
        campaigns before those are read, so the transaction commits only if what it was
        computed from is still current at ``EXEC`` (otherwise it is recomputed).
        """
        if not self._index_ready:
            self._build_known_index()
        batch_clock = max(ticks.values(), default=0)
        lengths: dict[tuple[str, str], int] = {}
        alert_cids: set[str] = set()
        stall_alerts = [a for a in alerts if is_stall(a)]
        if stall_alerts:
            # One pipeline incident per stall, never one per campaign.
            alerts = [a for a in alerts if not is_stall(a)]
        for a in stall_alerts:
            batch_clock = max(batch_clock, a.window_start_s + _length_s(a, self.window_s))
        for a in alerts:
            alert_cids.add(a.campaign_id)
            span = (a.window_start, a.window_end)
            length = lengths.get(span)
            if length is None:
                length = lengths[span] = _length_s(a, self.window_s)
            batch_clock = max(batch_clock, a.window_start_s + length)
        gap_s = self._tracker_args["gap_windows"] * self.window_s
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.watch(self.open_key, self.known_key, self.stalls_key)
            # Read after the WATCH (on another pooled connection, in one round trip): a
            # change to either set from now on makes EXEC fail and the batch recompute.
            reads = self.redis.pipeline(transaction=False)
            reads.zscore(self.clock_key, "clock")
            reads.zrange(self.open_key, 0, -1, withscores=True)
            reads.scard(self.known_key)
            reads.zrange(self.stalls_key, 0, -1, withscores=True)
            candidates = [c for c in ticks if c not in alert_cids]
            by_members = self._known_size_hint is not None \
                and self._known_size_hint <= len(candidates)
            if candidates:
                if by_members:
                    reads.smembers(self.known_key)
                else:
                    reads.smismember(self.known_key, candidates)
            raw_clock, open_set, known_size, stall_set, *known = reads.execute()
            self._known_size_hint = int(known_size)
            # The clock is not watched: every worker moves it (ZADD GT keeps the maximum).
            clock = max(int(raw_clock or 0), batch_clock)
            relevant = set(alert_cids)
            for cid, last_end in open_set:
                # Due (resolves at this clock) or open and ticking: the open set holds
                # every campaign whose state has an open incident (written together).
                if last_end <= clock - gap_s or cid in ticks:
                    relevant.add(cid)
            if candidates:
                if by_members:
                    members = known[0]
                    relevant.update(c for c in candidates if c in members)
                else:
                    relevant.update(c for c, m in zip(candidates, known[0], strict=True)
                                    if m)
            campaigns = sorted(relevant)
            keys = [self._state_key(c) for c in campaigns]
            if keys:
                pipe.watch(*keys)
            states = pipe.mget(keys) if keys else []
            tracker = IncidentTracker(**self._tracker_args)
            for cid, raw in zip(campaigns, states, strict=True):
                if raw is not None:
                    tracker.import_state(cid, json.loads(raw))
            before_stale = tracker.stale_alerts
            updates = tracker.observe(alerts, series)
            for cid in campaigns:
                end = ticks.get(cid)
                if end is not None:
                    updates += tracker.advance(end, [cid])
            updates += tracker.advance(clock, campaigns)
            self.stale_alerts += tracker.stale_alerts - before_stale
            stalls, stall_added = None, {}
            if stall_alerts or stall_set:
                stalls, stall_updates, stall_added = self._stalls(
                    pipe, stall_alerts, stall_set, clock, gap_s)
                updates += stall_updates
            pipe.multi()
            open_now = tracker.open_campaigns()
            for cid, key in zip(campaigns, keys, strict=True):
                state = tracker.export_state(cid)
                if state is None:
                    # No state in Redis (none was read, none made): not known any more.
                    pipe.srem(self.known_key, cid)
                    continue
                pipe.set(key, json.dumps(state, separators=(",", ":")),
                         ex=self.settings.slack.state_ttl_s)
                pipe.sadd(self.known_key, cid)
            for cid in campaigns:
                if cid in open_now:
                    pipe.zadd(self.open_key, {cid: open_now[cid]})
                else:
                    pipe.zrem(self.open_key, cid)
            if clock > 0:
                pipe.zadd(self.clock_key, {"clock": clock}, gt=True)
            if stalls is not None:
                self._store_stalls(pipe, stalls, stall_added)
            self.notifier.submit(updates, pipeline=pipe)
            self._flag_links.queue(pipe, tracker, updates,
                                   *(() if stalls is None else (stalls,)))
            pipe.execute()
        if updates:
            self.notifier.wake()

    def _stall_key(self, stall_id: str) -> str:
        return f"{self.prefix}:stall:{_campaign_hash(stall_id)}"

    def _stalls(self, pipe: Any, stall_alerts: list[Alert], stall_set: list[Any], clock: int,
                gap_s: int) -> tuple[StallTracker, list[IncidentUpdate], dict[str, list[str]]]:
        """Fold the batch's stall alerts into their pipeline incidents and resolve the due
        ones (reads under WATCH, like the campaign states)."""
        ids = {a.incident for a in stall_alerts}
        ids.update(sid for sid, last_end in stall_set if last_end <= clock - gap_s)
        tracker = StallTracker(**self._stall_args)
        if not ids:
            return tracker, [], {}
        order = sorted(ids)
        keys = [self._stall_key(s) for s in order]
        pipe.watch(*keys, *[k + ":campaigns" for k in keys])
        for sid, raw in zip(order, pipe.mget(keys), strict=True):
            if raw is not None:
                tracker.import_state(sid, json.loads(raw))
        counted: dict[str, set[str]] = {}
        by_id: dict[str, set[str]] = {}
        for a in stall_alerts:
            by_id.setdefault(a.incident, set()).add(a.campaign_id)
        for sid, cids in by_id.items():
            names = sorted(cids)
            flags = pipe.smismember(self._stall_key(sid) + ":campaigns", names)
            counted[sid] = {c for c, f in zip(names, flags, strict=True) if f}
        before = tracker.stale_alerts
        updates, added = tracker.observe(stall_alerts, counted)
        updates += tracker.advance(clock, order)
        self.stale_alerts += tracker.stale_alerts - before
        return tracker, updates, added

    def _store_stalls(self, pipe: Any, tracker: StallTracker,
                      added: dict[str, list[str]]) -> None:
        ttl = self.settings.slack.state_ttl_s
        open_now = tracker.open_stalls()
        for sid in tracker.stall_ids():
            key = self._stall_key(sid)
            pipe.set(key, json.dumps(tracker.export_state(sid), separators=(",", ":")), ex=ttl)
            if added.get(sid):
                pipe.sadd(key + ":campaigns", *added[sid])
            pipe.expire(key + ":campaigns", ttl)
            if sid in open_now:
                pipe.zadd(self.stalls_key, {sid: open_now[sid]})
            else:
                pipe.zrem(self.stalls_key, sid)

    def _build_known_index(self) -> None:
        """Once per Redis: add the campaigns of states written before the known set existed.

        Only adds members (an extra member costs one read and is removed when its campaign
        next ticks without state); every state written since is added with it.
        """
        if not self.redis.exists(self.known_ready_key):
            for chunk in _chunks(self.redis.scan_iter(match=f"{self.prefix}:state:*",
                                                      count=1000), 500):
                cids = []
                for raw in self.redis.mget(chunk):
                    if raw is None:
                        continue
                    with contextlib.suppress(ValueError, TypeError, KeyError):
                        cids.append(str(json.loads(raw)["campaign_id"]))
                if cids:
                    self.redis.sadd(self.known_key, *cids)
            self.redis.set(self.known_ready_key, "1")
        self._index_ready = True

    def drain(self, timeout: float = 30.0) -> bool:
        return self.notifier.drain(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush the outbox (up to ``slack.close_timeout``), then stop delivering."""
        if not self.notifier.close(self.settings.slack.timeout_s * 3 if timeout is None
                                   else timeout):
            log.warning("slack sink closed with %d update(s) still queued; they are "
                        "delivered on the next start", self._pending_or_minus_one())

    def _pending_or_minus_one(self) -> int:
        try:
            return self.notifier.pending()
        except redis.RedisError:
            return -1


def _chunks(items: Iterable[str], n: int) -> Iterable[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _length_s(a: Alert, default: int) -> int:
    try:
        length = datetime.fromisoformat(a.window_end) - datetime.fromisoformat(a.window_start)
    except (TypeError, ValueError):
        return default
    return int(length.total_seconds())


"""``ctrguard serve``: the HTTP endpoint Slack sends button presses to; ``ctrguard feedback``.

Slack POSTs every interaction with a message's buttons to the app's *Request URL*
(``feedback.path``, default ``/slack/interactions``) as a form-encoded ``payload=<json>``,
signed with the app's signing secret. For each request the server

1. refuses bodies over ``feedback.max_body_bytes`` (413) before reading them;
2. checks ``X-Slack-Signature`` and ``X-Slack-Request-Timestamp`` with slack-sdk's
   ``SignatureVerifier`` (a bad signature, a missing header or a timestamp more than five
   minutes off: 401, nothing recorded);
3. records each vote in the ``P:feedback`` stream (who, what, when, which incident); Redis
   down: 503, so Slack shows the person that it did not work;
4. answers 200 at once (Slack wants an answer within 3 seconds), then
5. updates the message: the latest vote and the buttons, through ``chat.update`` with the
   bot token, or through the interaction's ``response_url`` without one.

``GET /healthz`` answers ``ok``. Exit codes: 0 stopped, 2 configuration (no signing secret),
3 Redis unreachable at start, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from ctrguard.errors import ConfigError, ConfigIssue, RedisUnavailable
from ctrguard.sinks.annotations import AnnotationCache, expected_part
from ctrguard.sinks.feedback import FeedbackStore, InteractionError, Vote, decode_payload, votes_of
from ctrguard.sinks.slack_render import (
    RenderedMessage,
    render_feedback_blocks,
    with_feedback_blocks,
)

if TYPE_CHECKING:
    from ctrguard.config import Settings

__all__ = ["InteractionServer", "register"]

log = logging.getLogger("ctrguard.serve")


class InteractionServer:
    """Threaded HTTP server for Slack interactions (see the module docstring).

    Parameters
    ----------
    settings
        The configuration (``feedback``, ``redis``, ``slack`` for ``chat.update``).
    client
        A Redis client (built from ``settings.redis`` when None).
    clock
        Wall clock for the signature's timestamp check (tests move it).
    """

    def __init__(self, settings: Settings, *, client: redis.Redis | None = None,
                 host: str | None = None, port: int | None = None,
                 clock: Callable[[], float] = time.time):
        from slack_sdk.signature import Clock, SignatureVerifier

        from ctrguard.sinks.redis_client import make_redis

        fb = settings.feedback
        if fb.signing_secret is None or not fb.signing_secret.get_secret_value().strip():
            raise ConfigError([ConfigIssue(settings.source, None, "feedback.signing_secret",
                                           "ctrguard serve needs the Slack app's signing "
                                           "secret (SLACK_SIGNING_SECRET)")])
        self.settings = settings
        self.client = client if client is not None else make_redis(settings.redis)
        self.store = FeedbackStore(self.client, settings.redis.key_prefix,
                                   retention_s=fb.retention_days * 86400)
        self.annotations = AnnotationCache(settings, self.client)

        class _Clock(Clock):
            def now(self) -> float:
                return clock()

        self.verifier = SignatureVerifier(fb.signing_secret.get_secret_value(), _Clock())
        self.host = fb.host if host is None else host
        self.port = fb.port if port is None else port
        self.path = fb.path
        self.max_body = fb.max_body_bytes
        self.stats = {"accepted": 0, "rejected": 0, "votes": 0, "updated": 0}
        self._web: Any = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> InteractionServer:
        server = self

        class Handler(_Handler):
            pass

        Handler.server_ref = server
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="ctrguard-serve", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> InteractionServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    # ------------------------------------------------------------------ requests

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.stats[what] += n

    def check(self, body: bytes, timestamp: str | None, signature: str | None) -> bool:
        """Slack's signature over ``body`` (and a timestamp within five minutes)."""
        try:
            return bool(self.verifier.is_valid(body, timestamp, signature))
        except (TypeError, ValueError):  # a timestamp that is not a number
            return False

    def record(self, payload: dict[str, Any]) -> list[Vote]:
        votes = votes_of(payload)
        for vote in votes:
            if self.store.record(vote):
                self._count("votes")
                log.info("feedback: %s said %s on incident %s", vote.user_id or vote.user_name,
                         vote.verdict, vote.incident_id)
        return votes

    def update_message(self, payload: dict[str, Any], votes: list[Vote]) -> None:
        """Show the latest vote under the message the buttons belong to."""
        message = payload.get("message") if isinstance(payload.get("message"), dict) else {}
        blocks = message.get("blocks") if isinstance(message.get("blocks"), list) else []
        for vote in {(v.channel_id, v.message_ts, v.incident_id): v for v in votes}.values():
            try:
                latest = self.store.latest(vote.incident_id)
                facts = self.store.incident(vote.incident_id)
            except RedisUnavailable as exc:
                log.warning("feedback: message not updated: %s", exc)
                continue
            expected, spans = None, None
            if facts.get("campaign_id") and facts.get("start_s") and facts.get("end_s"):
                start_s = int(facts["start_s"])
                found = expected_part(self.annotations.current(), facts["campaign_id"],
                                      start_s, max(int(facts["end_s"]), start_s + 1),
                                      self.settings.windows.length_s)
                if found is not None:
                    expected, spans = found[0].label, found[1]
            new = with_feedback_blocks(
                RenderedMessage(text=str(message.get("text") or ""), blocks=list(blocks)),
                render_feedback_blocks(vote.incident_id, latest, expected,
                                       expected_spans=spans))
            try:
                self._send_update(vote, new)
                self._count("updated")
            except Exception as exc:  # noqa: BLE001 - the vote is recorded; log and go on
                log.warning("feedback: message of incident %s not updated: %s",
                            vote.incident_id, type(exc).__name__)

    def _send_update(self, vote: Vote, message: RenderedMessage) -> None:
        slack = self.settings.slack
        if slack.bot_token is not None and vote.channel_id and vote.message_ts:
            if self._web is None:
                from slack_sdk import WebClient

                kwargs = {"base_url": slack.base_url} if slack.base_url else {}
                self._web = WebClient(token=slack.bot_token.get_secret_value(),
                                      timeout=int(max(1, round(slack.timeout_s))),
                                      retry_handlers=[], **kwargs)
            self._web.chat_update(channel=vote.channel_id, ts=vote.message_ts,
                                  text=message.text or "ctrguard incident",
                                  blocks=message.blocks)
            return
        if not vote.response_url:
            raise InteractionError("no bot token and no response_url")
        body = json.dumps({"replace_original": True, "text": message.text,
                           "blocks": message.blocks}).encode()
        req = urllib.request.Request(vote.response_url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=slack.timeout_s) as resp:  # noqa: S310
            resp.read()


class _Handler(BaseHTTPRequestHandler):
    server_ref: InteractionServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: str = "", ctype: str = "text/plain") -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path.split("?")[0] == "/healthz":
            self._send(200, "ok")
        else:
            self._send(404, "not found")

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        srv = self.server_ref
        if self.path.split("?")[0] != srv.path:
            self._send(404, "not found")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > srv.max_body:
            self.close_connection = True
            srv._count("rejected")
            self._send(413 if length > 0 else 400, "request body too large or unreadable")
            return
        body = self.rfile.read(length) if length else b""
        if not srv.check(body, self.headers.get("X-Slack-Request-Timestamp"),
                         self.headers.get("X-Slack-Signature")):
            srv._count("rejected")
            log.warning("serve: refused a request with a bad or stale Slack signature")
            self._send(401, "invalid signature")
            return
        try:
            payload = decode_payload(body)
            votes = srv.record(payload)
        except InteractionError as exc:
            srv._count("rejected")
            self._send(400, str(exc))
            return
        except RedisUnavailable as exc:
            log.error("serve: feedback not recorded: %s", exc)
            self._send(503, "feedback could not be recorded; try again")
            return
        srv._count("accepted")
        self._send(200)
        if votes:
            srv.update_message(payload, votes)


# --------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="receive Slack button presses (feedback on incidents)",
        description="Serve the HTTP endpoint Slack sends interactions to (the app's "
        "Request URL, feedback.path). Verifies Slack's signature (SLACK_SIGNING_SECRET), "
        "records who pressed Confirmed, False alarm or Expected in Redis, and updates the "
        "message. GET /healthz answers ok.",
        epilog="Exit codes: 0 stopped, 2 configuration error, 3 Redis unreachable, "
        "130 interrupted.")
    p.add_argument("--config", metavar="PATH", help="configuration file")
    p.add_argument("--host", default=None, help="listen address (default: feedback.host)")
    p.add_argument("--port", type=int, default=None,
                   help="listen port (default: feedback.port; 0 picks a free one)")
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser(
        "feedback",
        help="list feedback on incidents; export it as labels for replay and tuning",
        description="Read the feedback people gave on incidents in Slack.",
        epilog="Exit codes: 0 ok, 2 usage or configuration error, 3 Redis unreachable.")
    actions = p.add_subparsers(dest="feedback_action", metavar="ACTION")
    actions.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", help="configuration file")
    e = actions.add_parser(
        "export", parents=[common], help="write labels (and traps) from the latest votes",
        description="Write the latest vote per incident as labels: Confirmed incidents to "
        "--out (campaign_id,segment,kind,start,end, the format of ctrguard replay --labels "
        "and ctrguard evaluate --labels); False alarm and Expected to --traps-out (kinds "
        "false_alarm and planned_change), for replay --traps.")
    e.add_argument("--out", type=Path, required=True, metavar="PATH", help="labels CSV")
    e.add_argument("--traps-out", type=Path, default=None, metavar="PATH",
                   help="traps CSV of the incidents people called false or expected")
    e.set_defaults(func=cmd_export)
    ls = actions.add_parser("list", parents=[common], help="votes, newest first",
                            description="Print the votes, newest first.")
    ls.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (default 50)")
    ls.add_argument("--json", action="store_true", help="print JSON lines")
    ls.set_defaults(func=cmd_list)


def _client(args: argparse.Namespace) -> tuple[Settings, redis.Redis, FeedbackStore]:
    from ctrguard.config import load_config
    from ctrguard.sinks.redis_client import make_redis

    settings = load_config(args.config)
    client = make_redis(settings.redis)
    return settings, client, FeedbackStore(
        client, settings.redis.key_prefix,
        retention_s=settings.feedback.retention_days * 86400)


def cmd_serve(args: argparse.Namespace) -> int:
    from ctrguard.config import load_config

    settings = load_config(args.config)
    server = InteractionServer(settings, host=args.host, port=args.port)
    try:
        server.client.ping()
    except redis.RedisError as exc:
        raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    print(f"serve: listening on {server.url}", file=sys.stderr, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        server.stop()
        raise
    server.stop()
    print(f"serve: stopped ({server.stats})", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ctrguard.replay.generator import write_labels

    _settings, client, store = _client(args)
    try:
        labels, traps, skipped = store.labels()
    finally:
        client.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_labels(args.out, labels)
    msg = f"feedback: {len(labels)} confirmed incident(s) -> {args.out}"
    if args.traps_out is not None:
        write_labels(args.traps_out, traps)
        msg += f"; {len(traps)} false or expected -> {args.traps_out}"
    else:
        msg += f"; {len(traps)} false or expected (not written: no --traps-out)"
    if skipped:
        msg += f"; {len(skipped)} incident(s) without known span skipped"
    print(msg, file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    _settings, client, store = _client(args)
    try:
        votes = list(store.entries())
    finally:
        client.close()
    votes = votes[::-1][: max(args.limit, 0)]
    if args.json:
        for v in votes:
            print(json.dumps(v, ensure_ascii=False))
        return 0
    if not votes:
        print("(no feedback)")
    for v in votes:
        who = v.get("user_name") or v.get("user_id") or "?"
        print(f"{v.get('at', '')}  {v.get('verdict', ''):<12} {_cell(who):<20} "
              f"{v.get('incident_id', '')}  {_cell(v.get('campaign_id', ''))}")
    return 0


def _cell(value: Any) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))

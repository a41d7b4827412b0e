"""A local emulator of the parts of the Slack Web API ctrguard uses.

slack.com cannot be reached from development machines, and a mocked client would not test
what matters (HTTP status codes, ``Retry-After``, the JSON the real ``slack_sdk`` sends).
This is a small threaded HTTP server that speaks the same protocol:

* Web API methods under ``/api/``: ``auth.test``, ``chat.postMessage``, ``chat.update``,
  ``conversations.info``, ``conversations.history`` and ``conversations.replies``.
  The bearer token is checked on every call.
* File uploads as ``files_upload_v2`` makes them: ``files.getUploadURLExternal`` hands out
  an upload URL on this server, the client POSTs the bytes there, and
  ``files.completeUploadExternal`` shares the file (in a thread with ``thread_ts``);
  ``files.delete`` removes it. :meth:`SlackEmulator.uploads` returns what arrived (shared
  files are not counted among :meth:`SlackEmulator.messages`).
* Interaction responses: ``response_url`` POSTs (:meth:`SlackEmulator.response_url`)
  replace or add messages, as Slack does for a button's ``response_url``.
* Incoming webhooks under ``/webhook/<path>``.
* Messages are stored per channel with ``ts``, ``thread_ts``, text, blocks, metadata and the
  history of every ``chat.update``.
* Scripted faults: :meth:`SlackEmulator.fail_next` queues responses (429 with
  ``Retry-After``, 5xx, a Slack error such as ``channel_not_found``, or a delay longer than
  the client's timeout).
* Every call is recorded (method, payload, time, status), never the token.

>>> from slack_sdk import WebClient
>>> with SlackEmulator(token="xoxb-doc") as slack:
...     client = WebClient(token="xoxb-doc", base_url=slack.base_url)
...     ts = client.chat_postMessage(channel="#alerts", text="hello")["ts"]
...     _ = client.chat_update(channel=slack.channel_id("#alerts"), ts=ts, text="hello again")
...     [m.text for m in slack.messages("#alerts")], slack.methods()
(['hello again'], ['chat.postMessage', 'chat.update'])
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = ["Call", "Fault", "Message", "SlackEmulator", "Upload"]

# Limits Slack enforces on Block Kit payloads (documented in the Block Kit reference).
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_HEADER_TEXT = 150
MAX_FIELDS = 10
MAX_FIELD_TEXT = 2000
MAX_CONTEXT_ELEMENTS = 10
MAX_MESSAGE_TEXT = 40000


@dataclass
class Message:
    """A message as stored by the emulator."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None = None
    metadata: dict[str, Any] | None = None
    #: Earlier versions, oldest first, as ``{"text": ..., "blocks": ...}``.
    history: list[dict[str, Any]] = field(default_factory=list)
    source: str = "api"  # "api" or "webhook"


@dataclass
class Upload:
    """A file uploaded through ``files.getUploadURLExternal`` + POST + complete."""

    file_id: str
    filename: str
    length: int
    data: bytes | None = None
    title: str = ""
    alt_txt: str = ""
    channel: str | None = None
    thread_ts: str | None = None
    initial_comment: str = ""
    shared: bool = False
    deleted: bool = False


@dataclass(frozen=True)
class Call:
    """One request the emulator received. Tokens are never recorded."""

    method: str
    payload: dict[str, Any]
    time: float
    status: int
    ok: bool
    error: str | None = None


@dataclass
class Fault:
    """A scripted response, consumed by the next matching request."""

    status: int = 500
    error: str | None = None
    retry_after: float | None = None
    delay: float = 0.0
    method: str | None = None
    times: int = 1
    #: Act on the request first, then wait ``delay`` before answering: a lost response.
    act_first: bool = False


class SlackEmulator:
    """Threaded HTTP emulator of the Slack Web API and incoming webhooks.

    Parameters
    ----------
    token
        The bot token every Web API call must present (``Authorization: Bearer``).
    webhook_path
        Path part of the valid incoming-webhook URL (after ``/webhook/``).
    known_channels
        If given, only these channel names (or ids) exist; others get
        ``channel_not_found``. By default channels are created on first use.
    host, port
        Where to listen; port 0 picks a free port.
    """

    def __init__(self, token: str = "xoxb-emulator-token", *,
                 webhook_path: str = "T000/B000/emulatorsecret",
                 known_channels: list[str] | None = None,
                 host: str = "127.0.0.1", port: int = 0):
        self.token = token
        self.webhook_path = webhook_path.strip("/")
        self.known_channels = list(known_channels) if known_channels is not None else None
        self.host = host
        self.port = port
        self._lock = threading.Condition()
        self._faults: deque[Fault] = deque()
        self._calls: list[Call] = []
        self._channels: dict[str, list[Message]] = {}     # channel id -> messages
        self._names: dict[str, str] = {}                  # channel id -> name as first used
        self._ts_counter = 0
        self._uploads: dict[str, Upload] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> SlackEmulator:
        if self._server is not None:
            return self
        self._stopping.clear()
        emulator = self

        class Handler(_Handler):
            pass

        Handler.emulator = emulator
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="slack-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        # Wake requests sleeping in a scripted delay so shutdown does not wait for them.
        self._stopping.set()
        with self._lock:
            self._faults.clear()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SlackEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """For ``slack_sdk.WebClient(base_url=...)`` (it appends the method name)."""
        return f"{self.url}/api/"

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/webhook/{self.webhook_path}"

    # ------------------------------------------------------------------ scripting

    def fail_next(self, status: int = 500, *, retry_after: float | None = None,
                  times: int = 1, error: str | None = None, delay: float = 0.0,
                  method: str | None = None) -> None:
        """Queue a scripted response for the next ``times`` matching requests.

        ``status=429`` answers ``ratelimited`` with ``Retry-After``; a 5xx answers a non-JSON
        body as Slack's edge does; ``status=200`` with ``error`` answers ``ok: false``.
        ``delay`` sleeps before answering (longer than the client's timeout: a timeout),
        then answers normally unless ``status`` is also an error. ``method`` restricts the
        fault to one API method (``"webhook"`` for the incoming webhook).
        """
        if status == 429 and retry_after is None:
            retry_after = 1
        with self._lock:
            self._faults.append(Fault(status=status, error=error, retry_after=retry_after,
                                      delay=delay, method=method, times=times))

    def delay_next(self, seconds: float, *, times: int = 1, method: str | None = None) -> None:
        """Answer the next matching request normally, but only after ``seconds``."""
        self.fail_next(200, delay=seconds, times=times, method=method)

    def lose_response_next(self, seconds: float, *, method: str | None = None) -> None:
        """Carry out the next matching request, then answer only after ``seconds``.

        With ``seconds`` above the client's timeout this is the case where Slack acted but
        the client never learnt it (and may retry).
        """
        with self._lock:
            self._faults.append(Fault(status=200, delay=seconds, method=method, act_first=True))

    def _take_fault(self, method: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method is None or fault.method == method:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def pending_faults(self) -> int:
        with self._lock:
            return sum(f.times for f in self._faults)

    # ------------------------------------------------------------------ inspection

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def methods(self, *, ok_only: bool = True) -> list[str]:
        """Method names of recorded calls, in order (successful ones by default)."""
        return [c.method for c in self.calls if c.ok or not ok_only]

    def channel_id(self, name_or_id: str) -> str:
        """The channel id Slack would answer for a channel name (``#x`` or ``x``)."""
        if name_or_id in self._channels or _looks_like_id(name_or_id):
            return name_or_id
        name = name_or_id.lstrip("#")
        return "C" + hashlib.blake2b(name.encode(), digest_size=5).hexdigest().upper()

    def messages(self, channel: str | None = None, *, top_level: bool = False) -> list[Message]:
        """Messages of one channel (by name or id), or of all channels, in ``ts`` order."""
        with self._lock:
            if channel is None:
                msgs = [m for ms in self._channels.values() for m in ms]
            else:
                msgs = list(self._channels.get(self.channel_id(channel), []))
        msgs.sort(key=lambda m: float(m.ts))
        if top_level:
            msgs = [m for m in msgs if m.thread_ts is None]
        return msgs

    def replies(self, channel: str, thread_ts: str) -> list[Message]:
        return [m for m in self.messages(channel) if m.thread_ts == thread_ts]

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        """Block until ``predicate(self)`` is true (re-checked after every call)."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._lock:
                self._lock.wait(min(remaining, 0.1))

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self._calls.clear()
            self._channels.clear()
            self._names.clear()
            self._uploads.clear()

    def uploads(self, *, shared_only: bool = True,
                include_deleted: bool = False) -> list[Upload]:
        """Files uploaded, in order (shared ones, not deleted, by default)."""
        with self._lock:
            ups = list(self._uploads.values())
        return [u for u in ups if (u.shared or not shared_only)
                and (include_deleted or not u.deleted)]

    def response_url(self, channel: str, ts: str) -> str:
        """The ``response_url`` Slack would put in an interaction on message ``ts``."""
        return f"{self.url}/response/{self.channel_id(channel)}/{ts}"

    # ------------------------------------------------------------------ API logic

    def _record(self, method: str, payload: dict[str, Any], status: int,
                body: dict[str, Any] | None) -> None:
        ok = bool(status == 200 and (body is None or body.get("ok", True)))
        error = None if body is None else body.get("error")
        with self._lock:
            self._calls.append(Call(method=method, payload=payload, time=time.time(),
                                    status=status, ok=ok, error=error))
            self._lock.notify_all()

    def _next_ts(self) -> str:
        with self._lock:
            self._ts_counter += 1
            # Slack ts: seconds "." microseconds, unique per channel; keep them increasing.
            base = 1_700_000_000 + self._ts_counter
            return f"{base}.{self._ts_counter:06d}"

    def _resolve_channel(self, channel: Any) -> tuple[str | None, str | None]:
        if not isinstance(channel, str) or not channel:
            return None, "channel_not_found"
        if self.known_channels is not None:
            known = {self.channel_id(c) for c in self.known_channels}
            if self.channel_id(channel) not in known:
                return None, "channel_not_found"
        cid = self.channel_id(channel)
        with self._lock:
            self._channels.setdefault(cid, [])
            self._names.setdefault(cid, channel.lstrip("#"))
        return cid, None

    def _find(self, cid: str, ts: str) -> Message | None:
        for m in self._channels.get(cid, []):
            if m.ts == ts:
                return m
        return None

    def handle_api(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {"ok": True, "url": "https://emulator.slack.com/", "team": "Emulator",
                    "user": "ctrguard", "team_id": "T000", "user_id": "U000BOT",
                    "bot_id": "B000BOT"}
        if method == "chat.postMessage":
            return self._post_message(payload)
        if method == "chat.update":
            return self._update(payload)
        if method.startswith("files."):
            return self._files(method, payload)
        if method == "conversations.info":
            cid, err = self._resolve_channel(payload.get("channel"))
            if err:
                return {"ok": False, "error": err}
            return {"ok": True, "channel": {"id": cid, "name": self._names.get(cid, cid),
                                            "is_archived": False}}
        if method in ("conversations.history", "conversations.replies"):
            cid, err = self._resolve_channel(payload.get("channel"))
            if err:
                return {"ok": False, "error": err}
            msgs = self.messages(cid)
            if method == "conversations.replies":
                msgs = [m for m in msgs if m.ts == payload.get("ts")
                        or m.thread_ts == payload.get("ts")]
            else:
                msgs = [m for m in msgs if m.thread_ts is None]
                msgs.reverse()  # newest first, as Slack answers
            return {"ok": True, "messages": [_message_json(m) for m in msgs],
                    "has_more": False}
        return {"ok": False, "error": "unknown_method"}

    def _content_error(self, payload: dict[str, Any]) -> str | None:
        text = payload.get("text")
        blocks = payload.get("blocks")
        if isinstance(blocks, str):
            try:
                blocks = json.loads(blocks)
            except ValueError:
                return "invalid_blocks_format"
            payload["blocks"] = blocks
        if not text and not blocks:
            return "no_text"
        if text is not None and len(str(text)) > MAX_MESSAGE_TEXT:
            return "msg_too_long"
        if blocks is not None:
            return _blocks_error(blocks)
        return None

    def _post_message(self, payload: dict[str, Any]) -> dict[str, Any]:
        cid, err = self._resolve_channel(payload.get("channel"))
        if err:
            return {"ok": False, "error": err}
        err = self._content_error(payload)
        if err:
            return {"ok": False, "error": err}
        thread_ts = payload.get("thread_ts") or None
        with self._lock:
            if thread_ts is not None and self._find(cid, thread_ts) is None:
                return {"ok": False, "error": "thread_not_found"}
            msg = Message(channel=cid, ts=self._next_ts(), text=str(payload.get("text") or ""),
                          blocks=payload.get("blocks"), thread_ts=thread_ts,
                          metadata=_metadata(payload.get("metadata")))
            self._channels[cid].append(msg)
        return {"ok": True, "channel": cid, "ts": msg.ts, "message": _message_json(msg)}

    def _update(self, payload: dict[str, Any]) -> dict[str, Any]:
        channel = payload.get("channel")
        # chat.update needs the channel id, not its name (a common bug; Slack refuses it).
        if not isinstance(channel, str) or channel.startswith("#"):
            return {"ok": False, "error": "channel_not_found"}
        err = self._content_error(payload)
        if err:
            return {"ok": False, "error": err}
        with self._lock:
            msg = self._find(channel, str(payload.get("ts")))
            if msg is None:
                return {"ok": False, "error": "message_not_found"}
            msg.history.append({"text": msg.text, "blocks": msg.blocks})
            msg.text = str(payload.get("text") or "")
            msg.blocks = payload.get("blocks")
            if payload.get("metadata") is not None:
                msg.metadata = _metadata(payload.get("metadata"))
        return {"ok": True, "channel": channel, "ts": msg.ts, "text": msg.text}

    def _files(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        if method == "files.getUploadURLExternal":
            try:
                length = int(payload.get("length"))
            except (TypeError, ValueError):
                return {"ok": False, "error": "invalid_arguments"}
            filename = str(payload.get("filename") or "")
            if not filename or length <= 0:
                return {"ok": False, "error": "invalid_arguments"}
            with self._lock:
                file_id = f"F{len(self._uploads) + 1:08d}"
                self._uploads[file_id] = Upload(file_id, filename, length,
                                                alt_txt=str(payload.get("alt_txt") or ""))
            return {"ok": True, "upload_url": f"{self.url}/upload/{file_id}",
                    "file_id": file_id}
        if method == "files.completeUploadExternal":
            try:
                files = json.loads(payload.get("files") or "[]")
            except ValueError:
                return {"ok": False, "error": "invalid_arguments"}
            channel = payload.get("channel_id") or payload.get("channels")
            cid = None
            if channel:
                cid, err = self._resolve_channel(str(channel).split(",")[0])
                if err:
                    return {"ok": False, "error": err}
            thread_ts = payload.get("thread_ts") or None
            out = []
            with self._lock:
                if thread_ts is not None and (cid is None or self._find(cid, thread_ts) is None):
                    return {"ok": False, "error": "invalid_thread_ts"}
                for f in files if isinstance(files, list) else []:
                    up = self._uploads.get(str(f.get("id")))
                    if up is None or up.data is None:
                        return {"ok": False, "error": "file_not_found"}
                    if len(up.data) != up.length:
                        return {"ok": False, "error": "file_upload_size_mismatch"}
                    up.title = str(f.get("title") or up.filename)
                    up.channel, up.thread_ts, up.shared = cid, thread_ts, cid is not None
                    up.initial_comment = str(payload.get("initial_comment") or "")
                    # (Slack shows a shared file in the channel or thread; here it is kept
                    # in uploads(), not among the messages, which count what was posted.)
                    out.append({"id": up.file_id, "name": up.filename, "title": up.title})
                if not out:
                    return {"ok": False, "error": "invalid_arguments"}
            return {"ok": True, "files": out}
        if method == "files.delete":
            with self._lock:
                up = self._uploads.get(str(payload.get("file")))
                if up is None or up.deleted:
                    return {"ok": False, "error": "file_not_found"}
                up.deleted = True
            return {"ok": True}
        return {"ok": False, "error": "unknown_method"}

    def handle_upload(self, file_id: str, data: bytes) -> tuple[int, str]:
        """The POST of a file's bytes to the URL ``files.getUploadURLExternal`` gave."""
        with self._lock:
            up = self._uploads.get(file_id)
            if up is None or up.data is not None:
                return 404, "not found"
            up.data = data
            self._lock.notify_all()
        return 200, f"OK - {len(data)}"

    def handle_response_url(self, channel: str, ts: str,
                            payload: dict[str, Any]) -> tuple[int, str]:
        """A POST to an interaction's ``response_url``: replace the message or add one."""
        err = self._content_error(payload)
        if err:
            return 400, err
        with self._lock:
            msg = self._find(channel, ts)
            if msg is None:
                return 404, "expired_url"
            if str(payload.get("replace_original")).lower() == "true":
                msg.history.append({"text": msg.text, "blocks": msg.blocks})
                msg.text = str(payload.get("text") or "")
                msg.blocks = payload.get("blocks")
            elif str(payload.get("delete_original")).lower() == "true":
                self._channels[channel].remove(msg)
            else:
                self._channels[channel].append(Message(
                    channel=channel, ts=self._next_ts(), text=str(payload.get("text") or ""),
                    blocks=payload.get("blocks"), thread_ts=payload.get("thread_ts")))
            self._lock.notify_all()
        return 200, "ok"

    def handle_webhook(self, path: str, payload: dict[str, Any]) -> tuple[int, str]:
        if path.strip("/") != self.webhook_path:
            return 404, "no_service"
        err = self._content_error(payload)
        if err:
            return 400, "invalid_blocks" if "block" in err else err
        cid, _ = self._resolve_channel("#webhook")
        with self._lock:
            msg = Message(channel=cid, ts=self._next_ts(), text=str(payload.get("text") or ""),
                          blocks=payload.get("blocks"), source="webhook")
            self._channels[cid].append(msg)
        return 200, "ok"


def _looks_like_id(value: str) -> bool:
    return len(value) >= 9 and value[0] in "CGD" and value[1:].isalnum() and value.isupper()


def _metadata(value: Any) -> dict[str, Any] | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _message_json(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "message", "ts": m.ts, "text": m.text}
    if m.blocks is not None:
        out["blocks"] = m.blocks
    if m.thread_ts is not None:
        out["thread_ts"] = m.thread_ts
    if m.metadata is not None:
        out["metadata"] = m.metadata
    return out


def _text_len(obj: Any) -> int:
    return len(obj.get("text", "")) if isinstance(obj, dict) else 0


def _blocks_error(blocks: Any) -> str | None:
    """The subset of Block Kit validation that catches our likely mistakes."""
    if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
        return "invalid_blocks"
    for block in blocks:
        if not isinstance(block, dict):
            return "invalid_blocks"
        kind = block.get("type")
        if kind == "header":
            text = block.get("text") or {}
            if text.get("type") != "plain_text" or not 0 < _text_len(text) <= MAX_HEADER_TEXT:
                return "invalid_blocks"
        elif kind == "section":
            text, fields = block.get("text"), block.get("fields")
            if text is None and not fields:
                return "invalid_blocks"
            if text is not None and not 0 < _text_len(text) <= MAX_SECTION_TEXT:
                return "invalid_blocks"
            if fields is not None and (len(fields) > MAX_FIELDS or any(
                    not 0 < _text_len(f) <= MAX_FIELD_TEXT for f in fields)):
                return "invalid_blocks"
        elif kind == "context":
            elements = block.get("elements") or []
            if not 0 < len(elements) <= MAX_CONTEXT_ELEMENTS:
                return "invalid_blocks"
        elif kind not in ("divider", "actions", "image", "rich_text"):
            return "invalid_blocks"
    return None


class _Handler(BaseHTTPRequestHandler):
    emulator: SlackEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output quiet; calls are recorded instead

    def _payload(self) -> dict[str, Any]:
        split = urlsplit(self.path)
        payload: dict[str, Any] = dict(parse_qsl(split.query))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if raw:
            if ctype == "application/json":
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {}
                if isinstance(body, dict):
                    payload.update(body)
            else:
                payload.update(parse_qsl(raw.decode("utf-8", "replace")))
        return payload

    def _send(self, status: int, body: str, ctype: str,
              headers: dict[str, str] | None = None) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self, payload: dict[str, Any]) -> str | None:
        auth = self.headers.get("Authorization") or ""
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else payload.pop("token", None)
        payload.pop("token", None)
        if not token:
            return "not_authed"
        if token != self.emulator.token:
            return "invalid_auth"
        return None

    def _fault_response(self, method: str, fault: Fault, webhook: bool) -> bool:
        """Apply a scripted fault; True if it produced the response."""
        if fault.delay:
            self.emulator._stopping.wait(fault.delay)
        if fault.status == 429:
            headers = {"Retry-After": str(int(fault.retry_after) if float(
                fault.retry_after).is_integer() else fault.retry_after)}
            if webhook:
                self._send(429, "rate_limited", "text/plain", headers)
            else:
                self._send(429, json.dumps({"ok": False, "error": "ratelimited"}),
                           "application/json", headers)
            return True
        if fault.status >= 500 or (400 <= fault.status < 500):
            # Slack's edge answers 5xx with an HTML page, not JSON.
            self._send(fault.status, f"<html><body>{fault.status}</body></html>", "text/html")
            return True
        if fault.error:
            if webhook:
                self._send(400, fault.error, "text/plain")
            else:
                self._send(200, json.dumps({"ok": False, "error": fault.error}),
                           "application/json")
            return True
        return False

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self.do_POST()

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        emulator = self.emulator
        path = urlsplit(self.path).path
        if path.startswith("/upload/"):
            # The file's raw bytes (files_upload_v2 sends them without a content type).
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length) if length else b""
            file_id = path[len("/upload/"):]
            status, body = emulator.handle_upload(file_id, data)
            emulator._record("upload", {"file_id": file_id, "bytes": len(data)}, status,
                             {"ok": status == 200})
            self._send(status, body, "text/plain")
            return
        payload = self._payload()
        if path.startswith("/response/"):
            channel, _, ts = path[len("/response/"):].partition("/")
            status, body = emulator.handle_response_url(channel, ts, payload)
            emulator._record("response_url", payload, status, {"ok": status == 200})
            self._send(status, body, "text/plain")
            return
        try:
            if path.startswith("/webhook/"):
                fault = emulator._take_fault("webhook")
                if fault is not None and self._fault_response("webhook", fault, True):
                    emulator._record("webhook", payload, fault.status, {
                        "ok": False, "error": fault.error or str(fault.status)})
                    return
                status, body = emulator.handle_webhook(path[len("/webhook/"):], payload)
                emulator._record("webhook", payload, status,
                                 {"ok": status == 200, "error": None if status == 200 else body})
                self._send(status, body, "text/plain")
                return
            if not path.startswith("/api/"):
                self._send(404, "not found", "text/plain")
                return
            method = path[len("/api/"):]
            auth_error = self._authorised(payload)
            if auth_error:
                body = {"ok": False, "error": auth_error}
                emulator._record(method, payload, 200, body)
                self._send(200, json.dumps(body), "application/json")
                return
            fault = emulator._take_fault(method)
            if fault is not None and fault.act_first:
                body = emulator.handle_api(method, payload)
                emulator._record(method, payload, 200, body)
                emulator._stopping.wait(fault.delay)
                self._send(200, json.dumps(body), "application/json")
                return
            if fault is not None and self._fault_response(method, fault, False):
                emulator._record(method, payload, fault.status,
                                 {"ok": False, "error": fault.error or str(fault.status)})
                return
            body = emulator.handle_api(method, payload)
            emulator._record(method, payload, 200, body)
            self._send(200, json.dumps(body), "application/json")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout); the call is recorded already

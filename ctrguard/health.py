"""The operator's side of a running flow: an HTTP endpoint, probes and a heartbeat line.

:class:`Monitoring` runs beside the dataflow in ``ctrguard run`` (and ``ctrguard demo``),
on threads of its own, so none of it waits on or slows the workers:

* ``GET /metrics``: Prometheus text (:mod:`ctrguard.metrics` and the process collectors of
  ``prometheus_client``); ``GET /healthz``: 200 while the process runs; ``GET /readyz``:
  200 when the last probe reached the Kafka cluster and Redis and the watermark is not
  stalled (events arrive but no window can close), 503 otherwise, with the checks as JSON.
* a probe every ``metrics.probe_interval``: Kafka metadata, Redis ``PING``, and from Redis
  the Slack outbox depth, open incidents and quarantined windows (for the whole deployment).
* a heartbeat log line every ``logging.heartbeat``: events/s, watermark, lags, Slack outbox,
  figures held back; ``ctrguard run`` is never silent for long, busy or idle.

>>> verdict = readiness({"kafka_up": 1, "redis_up": 1, "at": 100.0}, now=101.0,
...                     last_event=99.0, last_move=50.0, stall_s=600, probe_s=15)
>>> verdict["ready"], verdict["checks"]["watermark"]["ok"]
(True, True)
>>> readiness({"kafka_up": 1, "redis_up": 0, "at": 100.0}, now=101.0, last_event=0.0,
...           last_move=0.0, stall_s=600, probe_s=15)["checks"]["redis"]
{'ok': False, 'detail': 'unreachable at the last probe'}
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ctrguard import metrics
from ctrguard.config import Settings
from ctrguard.errors import ConfigError, ConfigIssue

log = logging.getLogger("ctrguard.health")

#: Quarantined windows are counted by reading every flag's state: only every few probes
#: (each minute with the default probe interval).
QUARANTINE_COUNT_EVERY = 4
#: Redis reads of the probe, per round trip.
_PAGE = 1000


def readiness(probe: dict[str, Any], *, now: float, last_event: float, last_move: float,
              stall_s: float, probe_s: float) -> dict[str, Any]:
    """The ``/readyz`` verdict from the last probe and the flow's progress (monotonic
    times). The watermark is stalled when events arrived after its last move and that move
    is more than ``stall_s`` old; a quiet input is not a stall."""
    at = probe.get("at")
    fresh = at is not None and now - at <= 3 * probe_s + 10
    checks: dict[str, dict[str, Any]] = {}
    for name in ("kafka", "redis"):
        up = probe.get(f"{name}_up")
        if not fresh:
            checks[name] = {"ok": False, "detail": "no recent probe"}
        elif up:
            checks[name] = {"ok": True, "detail": "reachable"}
        else:
            checks[name] = {"ok": False, "detail": "unreachable at the last probe"}
    stalled = last_event > last_move and now - last_move > stall_s
    checks["watermark"] = {
        "ok": not stalled,
        "detail": (f"events arrive but the watermark has not moved for {now - last_move:.0f} s"
                   if stalled else "moving, or no new events")}
    return {"ready": all(c["ok"] for c in checks.values()), "checks": checks}


def count_quarantined(client: Any, prefix: str) -> int:
    """Flags in state ``quarantined``: every member of ``P:flags``, its ``state`` read in
    pipelined pages (docs/redis-keys.md)."""
    index = f"{prefix}:flags"
    n = start = 0
    while True:
        keys = client.zrange(index, start, start + _PAGE - 1)
        if not keys:
            return n
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.hget(k, "state")
        n += sum(1 for state in pipe.execute() if state == "quarantined")
        start += len(keys)


class _Handler(BaseHTTPRequestHandler):
    monitoring: Monitoring  # set on the subclass made per server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client import REGISTRY
            from prometheus_client.exposition import choose_encoder

            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, encoder(REGISTRY), content_type)
        elif path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/readyz":
            verdict = self.monitoring.readiness()
            body = json.dumps(verdict, indent=1).encode() + b"\n"
            self._send(200 if verdict["ready"] else 503, body, "application/json")
        else:
            self._send(404, b"not found: try /metrics, /healthz or /readyz\n",
                       "text/plain; charset=utf-8")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)


class Monitoring:
    """The endpoint, the probe and the heartbeat of one process (see the module docstring).

    Parameters
    ----------
    settings
        The configuration (``metrics``, ``logging``, ``kafka``, ``redis``).
    port
        Port of the HTTP endpoint; ``None``: no endpoint (probe and heartbeat still run).
    host
        Address to listen on (default ``settings.metrics.host``).
    """

    def __init__(self, settings: Settings, *, port: int | None, host: str | None = None):
        self.settings = settings
        self.port = port
        self.host = host if host is not None else settings.metrics.host
        self._server: ThreadingHTTPServer | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._redis: Any = None
        self._admin: Any = None
        self._probes = 0

    @property
    def url(self) -> str | None:
        """``http://host:port`` of the endpoint (``None`` without one)."""
        if self._server is None:
            return None
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"http://{host}:{self._server.server_address[1]}"

    def start(self, probe: bool = True) -> Monitoring:
        """Listen (a port that cannot be bound is a configuration error, exit code 2), then
        start the heartbeat and (with ``probe``; else :meth:`start_probe` later) the probe
        threads."""
        metrics.set_build_info()
        if self.port is not None:
            handler = type("Handler", (_Handler,), {"monitoring": self})
            try:
                self._server = ThreadingHTTPServer((self.host, self.port), handler)
            except OSError as exc:
                raise ConfigError([ConfigIssue(
                    self.settings.source, None, "metrics.port",
                    f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}")]) from None
            self._server.daemon_threads = True
            self._spawn("ctrguard-metrics-http", self._server.serve_forever)
        if probe:
            self.start_probe()
        if self.settings.logging.heartbeat:
            self._spawn("ctrguard-heartbeat", self._heartbeat_loop)
        return self

    def start_probe(self) -> None:
        """Start asking Kafka and Redis (see :meth:`probe`) every ``probe_interval``; say
        where the endpoint is (once the run is past its start-up checks)."""
        if self._server is not None:
            log.info("metrics on %s/metrics, health on /healthz and /readyz", self.url,
                     extra={"url": self.url})
        self._spawn("ctrguard-probe", self._probe_loop)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(5)
        for client in (self._redis,):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()

    def __enter__(self) -> Monitoring:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, target: Any) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    # ------------------------------------------------------------------ readiness

    def readiness(self) -> dict[str, Any]:
        flow = metrics.FLOW
        return readiness(flow.probe, now=time.monotonic(), last_event=flow.last_event,
                         last_move=flow.last_move,
                         stall_s=self.settings.metrics.watermark_stall,
                         probe_s=self.settings.metrics.probe_interval)

    # ------------------------------------------------------------------ probe

    def _probe_loop(self) -> None:
        while not self._stop.is_set():
            try:
                metrics.FLOW.probe = self.probe()
            except Exception:  # noqa: BLE001 - the probe must outlive any one failure
                log.exception("health probe failed")
            self._stop.wait(self.settings.metrics.probe_interval)

    def probe(self) -> dict[str, Any]:
        """Reach Kafka and Redis once; read the deployment's figures from Redis."""
        result: dict[str, Any] = {"kafka_up": int(self._kafka_reachable())}
        result.update(self._redis_figures())
        result["at"] = time.monotonic()
        return result

    def _kafka_reachable(self) -> bool:
        """Metadata from the cluster; then the latest offsets of the partitions this
        process reads, for the consumer lag (one request)."""
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import AdminClient, OffsetSpec

        if self._admin is None:
            self._admin = AdminClient({**self.settings.kafka.client_config(),
                                       "log.connection.close": False})
        timeout = min(5.0, self.settings.kafka.connect_timeout_s)
        try:
            self._admin.list_topics(timeout=timeout)
        except Exception:  # noqa: BLE001 - KafkaException and timeouts alike
            return False
        keys = {m.key for m in list(metrics.FLOW.sources)}
        if keys:
            try:
                futures = self._admin.list_offsets(
                    {TopicPartition(t, p): OffsetSpec.latest() for t, p in keys},
                    request_timeout=timeout)
                for tp, fut in futures.items():
                    metrics.FLOW.latest[(tp.topic, tp.partition)] = fut.result(timeout).offset
            except Exception as exc:  # noqa: BLE001 - the lag then uses cached offsets only
                log.debug("health probe: latest offsets: %s", exc)
        return True

    def _redis_figures(self) -> dict[str, Any]:
        from ctrguard.sinks.redis_client import make_redis

        if self._redis is None:
            self._redis = make_redis(self.settings.redis)
        prefix = self.settings.redis.key_prefix
        slack = f"{prefix}:slack"  # ctrguard.sinks.slack.SlackNotifier's keys
        out: dict[str, Any] = {"redis_up": 0}
        previous = metrics.FLOW.probe
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.ping()
            pipe.xlen(f"{slack}:outbox")
            pipe.xlen(f"{slack}:deadletter")
            pipe.zcard(f"{slack}:open")
            _, outbox, dead, open_ = pipe.execute()
            out.update(redis_up=1, slack_outbox_messages=outbox,
                       slack_deadletter_messages=dead, incidents_open=open_)
            if self._probes % QUARANTINE_COUNT_EVERY == 0 \
                    or previous.get("quarantined_windows") is None:
                out["quarantined_windows"] = count_quarantined(self._redis, prefix)
            else:
                out["quarantined_windows"] = previous.get("quarantined_windows")
            self._probes += 1
        except Exception as exc:  # noqa: BLE001 - any Redis failure means "not reachable"
            log.debug("health probe: redis: %s", type(exc).__name__)
        return out

    # ------------------------------------------------------------------ heartbeat

    def _heartbeat_loop(self) -> None:
        every = float(self.settings.logging.heartbeat or 60)
        last_t, last_n = time.monotonic(), metrics.consumed_total()
        while not self._stop.wait(every):
            now, summary = time.monotonic(), metrics.FLOW.summary()
            rate = (summary["consumed"] - last_n) / max(now - last_t, 1e-9)
            last_t, last_n = now, summary["consumed"]
            log.info(*heartbeat_message(summary, rate, time.time()),
                     extra=heartbeat_fields(summary, rate, time.time()))


def _iso(ms: int | None) -> str:
    if ms is None:
        return "none yet"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def heartbeat_fields(summary: dict[str, Any], rate: float, now_s: float) -> dict[str, Any]:
    """The heartbeat's figures, as the JSON log line's ``fields``."""
    wm = summary["watermark_ms"]
    front = summary["frontier_ms"]
    return {"events_per_s": round(rate, 1), "events_total": summary["consumed"],
            "watermark": _iso(wm) if wm is not None else None,
            "event_time_lag_s": round(now_s - front / 1000, 1) if front is not None else None,
            "consumer_lag": summary["consumer_lag"], "slack_outbox": summary["slack_outbox"],
            "figures_held_back": summary["held_back"],
            "incidents_open": summary["incidents_open"]}


def heartbeat_message(summary: dict[str, Any], rate: float, now_s: float) -> tuple[Any, ...]:
    """The heartbeat's text line (format and arguments).

    >>> s = {"consumed": 10, "watermark_ms": 1767225600000, "frontier_ms": 1767225720000,
    ...      "consumer_lag": 0, "held_back": 0, "slack_outbox": 2, "incidents_open": 1,
    ...      "quarantined_windows": 4}
    >>> fmt, *args = heartbeat_message(s, 12.5, 1767225730.0)
    >>> print(fmt % tuple(args))
    heartbeat: 12.5 events/s, watermark 2026-01-01T00:00:00Z, event-time lag 10 s, consumer lag 0 messages, slack outbox 2, figures held back 0, open incidents 1
    """
    f = heartbeat_fields(summary, rate, now_s)

    def shown(value: Any, unit: str = "") -> str:
        if value is None:
            return "unknown"
        return f"{value:.0f}{unit}" if isinstance(value, float) else f"{value}{unit}"

    return ("heartbeat: %s events/s, watermark %s, event-time lag %s, consumer lag %s, "
            "slack outbox %s, figures held back %s, open incidents %s",
            f"{rate:.1f}", f["watermark"] or "none yet", shown(f["event_time_lag_s"], " s"),
            shown(f["consumer_lag"], " messages"), shown(f["slack_outbox"]),
            shown(f["figures_held_back"]), shown(f["incidents_open"]))


__all__ = ["Monitoring", "count_quarantined", "readiness"]

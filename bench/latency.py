"""End-to-end latency: from a window's close to its watermark in Redis and its figure in Kafka.

The live flow runs in tail mode in a child process. This process produces a synthetic stream
in event-time order at a fixed rate, with event time running ``speed`` times faster than the
wall clock, and records, for every window end ``E``, the wall time at which it produced the
first event with time >= ``E + allowed lateness`` to *each* input topic. The later of the two
is the window's close: from then on the watermark (the minimum over the partitions) can pass
``E``. A consumer thread stamps the arrival of every figure (series ``all``) on the figures
topic; a poller thread reads ``P:checked:v2`` in Redis every ``poll_s`` and stamps when a
campaign's score first reaches ``E``. Latency = stamp - close, per campaign and window.
The first ``warmup_windows`` windows are left out (the flow is still importing and warming up).
"""

from __future__ import annotations

import bisect
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO, child_env, log, new_topics, stop_process, write_config

DEVICES = ("mobile", "desktop", "tablet")


class _FigureWatcher(threading.Thread):
    """Stamps the arrival of the first figure of each (campaign, window start)."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(name="bench-figures", daemon=True)
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self._consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": "bench-latency-unused",
            "enable.auto.commit": False, "fetch.wait.max.ms": 5, "fetch.min.bytes": 1,
            "log.connection.close": False,
        })
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        self.seen: dict[tuple[str, int], float] = {}
        self.last_arrival = 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                msgs = self._consumer.consume(num_messages=10000, timeout=0.005)
                now = time.time()
                for msg in msgs:
                    if msg.error() is not None:
                        continue
                    cid, seg, ws = msg.key().decode().split("|")
                    if seg == "all":
                        self.seen.setdefault((cid, int(ws)), now)
                        self.last_arrival = now
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


class _CheckedPoller(threading.Thread):
    """Stamps when each campaign's ``P:checked:v2`` score first reaches each window end."""

    def __init__(self, redis_url: str, key: str, window_s: int, poll_s: float):
        super().__init__(name="bench-redis", daemon=True)
        import redis

        self._client = redis.Redis.from_url(redis_url, socket_timeout=5.0,
                                            socket_connect_timeout=5.0)
        self._key = key
        self._window_s = window_s
        self._poll_s = poll_s
        self._last: dict[str, int] = {}
        self.seen: dict[tuple[str, int], float] = {}
        self._halt = threading.Event()

    def _unchanged(self) -> bool:
        """Whether no score moved since the last full read, asked cheaply: the member count,
        and for each end a campaign was last seen at, how many scores passed it. Scores only
        grow, so a campaign that moved on from ``e`` raises the count at ``e + window``.
        (Reading all 2,000 members with their scores costs ~20 ms of CPU in redis-py: every
        10 ms, that took most of a core from the flow on a 2-core machine.)"""
        if not self._last:
            return False
        ends = sorted(set(self._last.values()))
        pipe = self._client.pipeline(transaction=False)
        pipe.zcard(self._key)
        for e in ends:
            pipe.zcount(self._key, e + self._window_s, "+inf")
        replies = pipe.execute()
        card, counts = int(replies[0]), [int(n) for n in replies[1:]]
        if card != len(self._last):
            return False
        held = sorted(self._last.values())
        return all(count == len(held) - bisect.bisect_left(held, e + self._window_s)
                   for e, count in zip(ends, counts, strict=True))

    def poll_once(self) -> None:
        if self._unchanged():
            return
        rows = self._client.zrange(self._key, 0, -1, withscores=True)
        now = time.time()
        for member, score in rows:
            cid = member.decode()
            end = int(score)
            prev = self._last.get(cid)
            if prev is None:
                prev = end - self._window_s
            if end > prev:
                for e in range(prev + self._window_s, end + 1, self._window_s):
                    self.seen.setdefault((cid, e), now)
                self._last[cid] = end

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                self.poll_once()
                self._halt.wait(self._poll_s)
        finally:
            self._client.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def _tail(path: str, lines: int = 30) -> str:
    """The end of the flow's log (the bench's work directory is deleted on the way out)."""
    try:
        return "\n" + "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def _percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None, "samples": 0}
    arr = np.asarray(values) * 1000
    return {"p50_ms": round(float(np.percentile(arr, 50)), 1),
            "p99_ms": round(float(np.percentile(arr, 99)), 1),
            "max_ms": round(float(arr.max()), 1), "samples": int(arr.size)}


def measure_latency(bootstrap: str, redis_url: str, slack_base_url: str | None, workdir: Path,
                    *, campaigns: int = 2000, rate: float = 20_000, speed: float = 60.0,
                    duration_s: float = 60.0, warmup_windows: int = 3, click_rate: float = 0.03,
                    seed: int = 0, poll_s: float = 0.01, window_s: int = 300,
                    lateness_s: int = 120, producer_linger_ms: int = 10) -> dict[str, Any]:
    """Run the live flow in tail mode against a paced stream; return latency statistics."""
    from confluent_kafka import Producer

    topics = new_topics(bootstrap, "latency", 1)
    prefix = f"bench-lat-{int(time.time())}"
    config = write_config(workdir / "latency.yaml", bootstrap=bootstrap, topics=topics,
                          redis_url=redis_url, key_prefix=prefix, tail=True,
                          slack_base_url=slack_base_url)
    stderr = open(workdir / "latency-flow.log", "w")  # noqa: SIM115 - closed below
    flow = subprocess.Popen([sys.executable, "-m", "bench.child", "ctrguard", "--config",
                             str(config)], cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=stderr, start_new_session=True)
    figures = _FigureWatcher(bootstrap, topics["figures"])
    checked = _CheckedPoller(redis_url, f"{prefix}:checked:v2", window_s, poll_s)
    # linger.ms as an upstream producer would batch (librdkafka's default is 5 ms), not 1 ms:
    # tansu's fetch slows down with the number of record batches in a partition, and 1-ms
    # batches (~400/s) made the flow's input lag grow from ~30 ms to 0.1-1 s within a minute
    # (a broker artefact; Kafka finds fetch offsets through an index). The close is stamped
    # when an event is handed to produce(), so the linger counts against ctrguard.
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": producer_linger_ms,
                         "acks": "all",
                         "allow.auto.create.topics": False, "log.connection.close": False})
    rng = np.random.default_rng(seed)
    window_ms, lateness_ms = window_s * 1000, lateness_s * 1000
    passed: dict[str, dict[int, float]] = {"impressions": {}, "clicks": {}}
    produced = {"impressions": 0, "clicks": 0}
    try:
        figures.start()
        checked.start()
        time.sleep(3.0)  # let the child import and connect before the clock starts
        if flow.poll() is not None:
            raise RuntimeError(f"latency flow exited {flow.returncode}: {_tail(stderr.name)}")
        # Event time starts a few hours in the past (aligned to a window), so that even at
        # `speed` it never runs into the future-time bound of the flow.
        ev0 = (int(time.time() * 1000) - 3 * 3600_000) // window_ms * window_ms
        next_pass = {k: ev0 + window_ms + lateness_ms for k in passed}
        wall0 = time.time()
        last_wall, last_ev, carry, seq = wall0, float(ev0), 0.0, 0
        imp_topic, clk_topic = topics["impressions"], topics["clicks"]
        log(f"latency: producing {rate:,.0f} impressions/s for {duration_s:.0f}s, event time "
            f"x{speed:g}, {campaigns} campaigns")
        while True:
            now = time.time()
            if now - wall0 >= duration_s:
                break
            ev_now = ev0 + (now - wall0) * speed * 1000
            carry += rate * (now - last_wall)
            n = int(carry)
            carry -= n
            if n:
                ts = np.sort(rng.uniform(last_ev, ev_now, n)).astype(np.int64)
                camp = rng.integers(0, campaigns, n)
                dev = rng.integers(0, 3, n)
                click = rng.random(n) < click_rate
                for t, c, d, k in zip(ts.tolist(), camp.tolist(), dev.tolist(), click.tolist(),
                                      strict=True):
                    seq += 1
                    body = f'"ts":{t},"campaign_id":"c{c:04d}","device":"{DEVICES[d]}"}}'
                    producer.produce(imp_topic, f'{{"event_id":"i{seq}",{body}'.encode(),
                                     partition=0)
                    if t >= next_pass["impressions"]:
                        stamp = time.time()
                        while t >= next_pass["impressions"]:
                            passed["impressions"][next_pass["impressions"] - lateness_ms] = stamp
                            next_pass["impressions"] += window_ms
                    if k:
                        producer.produce(clk_topic, f'{{"event_id":"k{seq}",{body}'.encode(),
                                         partition=0)
                        produced["clicks"] += 1
                        if t >= next_pass["clicks"]:
                            stamp = time.time()
                            while t >= next_pass["clicks"]:
                                passed["clicks"][next_pass["clicks"] - lateness_ms] = stamp
                                next_pass["clicks"] += window_ms
                produced["impressions"] += n
            producer.poll(0)
            last_wall, last_ev = now, ev_now
            time.sleep(0.002)
        producer.flush(30)
        stopped = time.time()
        closes = {end: max(passed["impressions"][end], passed["clicks"][end])
                  for end in passed["impressions"] if end in passed["clicks"]}
        first = ev0 + (warmup_windows + 1) * window_ms
        measured = sorted(e for e in closes if e >= first)
        # Wait for the last closed window's figures to arrive (or give up after 30 s).
        deadline = time.time() + 30
        want = {(f"c{c:04d}", measured[-1] // 1000 - window_s) for c in range(campaigns)} \
            if measured else set()
        while time.time() < deadline and not want <= figures.seen.keys():
            time.sleep(0.1)
        if flow.poll() is not None:
            raise RuntimeError(f"latency flow exited {flow.returncode}: {_tail(stderr.name)}")
    finally:
        stop_process(flow)
        figures.stop()
        checked.stop()
        stderr.close()
    fig_lat, redis_lat, per_window = [], [], []
    for end in measured:
        close = closes[end]
        ws = end // 1000 - window_s
        window_lat = []
        for c in range(campaigns):
            cid = f"c{c:04d}"
            t = figures.seen.get((cid, ws))
            if t is not None:
                window_lat.append(t - close)
            r = checked.seen.get((cid, end // 1000))
            if r is not None:
                redis_lat.append(r - close)
        fig_lat.extend(window_lat)
        # One window's figures arrive together: the spread across windows is what p99 sees.
        stats = _percentiles(window_lat)
        per_window.append({"closed_after_s": round(close - wall0, 1), "closed_at": round(close, 3),
                           "p50_ms": stats["p50_ms"], "max_ms": stats["max_ms"]})
    elapsed = stopped - wall0
    result = {
        "figures": _percentiles(fig_lat),
        "redis_checked": _percentiles(redis_lat),
        "windows_measured": len(measured),
        "per_window": per_window,
        "campaigns": campaigns,
        "impressions_per_s": round(produced["impressions"] / elapsed),
        "clicks_per_s": round(produced["clicks"] / elapsed),
        "speed": speed,
        "duration_s": duration_s,
        "redis_poll_ms": poll_s * 1000,
    }
    missing = len(measured) * campaigns - len(fig_lat)
    if missing:
        result["figures_missing"] = missing
    return result

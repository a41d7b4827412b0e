"""Traffic produced in (compressed) real time, for the pause tests and the chaos run.

Not a test module. :func:`traffic` makes a seeded stream of impressions and clicks (two
campaigns, one click outage that is a real incident) as messages scheduled in event time;
:class:`PacedProducer` produces them from a thread as the wall clock advances,
``speed`` event-time seconds per wall-clock second, each to its own partition. A flow that
tails the topics meanwhile is then in the state the issue describes: caught up with
every partition most of the time, with new messages arriving on all of them.
"""

from __future__ import annotations

import threading
import time
import zlib
from dataclasses import dataclass

import numpy as np
import orjson
from confluent_kafka import Producer

T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass(frozen=True, order=True)
class Scheduled:
    """One message: produced once the stream's clock reaches ``at_ms``."""

    at_ms: int
    topic: str          # "impressions" or "clicks"
    partition: int
    value: bytes


def _partition(event_id: str, partitions: int) -> int:
    return zlib.crc32(event_id.encode()) % partitions


def traffic(minutes: int, *, seed: int = 5, per_minute: int = 120, partitions: int = 2,
            outage: tuple[int, int] | None = None, t0_ms: int = T0_MS) -> list[Scheduled]:
    """~``per_minute`` impressions a minute for ``minutes``, 70 % of them campaign "big",
    4 % clicked (2 s later); "big" gets no clicks in the minutes ``outage`` (a click
    tracking outage the detectors should flag). Sorted by time."""
    rng = np.random.default_rng(seed)
    out: list[Scheduled] = []
    n = 0
    for minute in range(minutes):
        base = t0_ms + minute * 60_000
        for off in np.sort(rng.uniform(0, 60_000, rng.poisson(per_minute))):
            n += 1
            ts = int(base + off)
            camp = "big" if rng.random() < 0.7 else "small"
            dev = "mobile" if rng.random() < 0.6 else "desktop"
            eid = f"i{n}"
            out.append(Scheduled(ts, "impressions", _partition(eid, partitions), orjson.dumps(
                {"event_id": eid, "ts": ts, "campaign_id": camp, "device": dev})))
            in_outage = outage is not None and outage[0] <= minute < outage[1] and camp == "big"
            if rng.random() < 0.04 and not in_outage:
                kid = f"k{n}"
                out.append(Scheduled(ts + 2000, "clicks", _partition(kid, partitions),
                                     orjson.dumps({"event_id": kid, "ts": ts + 2000,
                                                   "campaign_id": camp, "device": dev})))
    out.sort()
    return out


class PacedProducer(threading.Thread):
    """Produces scheduled messages as the stream's clock, ``speed`` x the wall clock from
    the first message's time, reaches them; ``done`` is set once all are acknowledged."""

    def __init__(self, bootstrap: str, topics: dict[str, str], items: list[Scheduled],
                 speed: float, tick_s: float = 0.1):
        super().__init__(daemon=True)
        self.items = items
        self.topics = topics
        self.speed = speed
        self.tick_s = tick_s  # produced in bursts this far apart (a flow catches up between)
        self.produced = 0
        self.errors: list[str] = []
        self.done = threading.Event()
        self._hold = threading.Event()
        self._held = threading.Event()
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                                   "message.timeout.ms": 120_000, "acks": "all",
                                   "message.max.bytes": 2_000_000})

    def hold(self, timeout: float = 120.0) -> None:
        """Stop producing (after delivering what is sent), e.g. while the broker restarts.
        The stream's clock stops too: a live source whose broker is away for 10 s sends
        events 10 s old when it is back, within any allowed lateness, whereas at ``speed``
        x real time a clock that ran on would make that backlog hours old."""
        if self.done.is_set():
            return
        self._hold.set()
        self._held.wait(timeout)

    def release(self) -> None:
        self._held.clear()
        self._hold.clear()

    def _delivered(self, err, _msg) -> None:
        if err is not None:
            self.errors.append(str(err))

    def run(self) -> None:
        if not self.items:
            self.done.set()
            return
        start = time.monotonic()
        first = self.items[0].at_ms
        i = 0
        while i < len(self.items):
            if self._hold.is_set():
                self._producer.flush(120)
                self._held.set()
                held_at = time.monotonic()
                while self._hold.is_set():
                    time.sleep(0.05)
                start += time.monotonic() - held_at
            horizon = first + (time.monotonic() - start) * 1000 * self.speed
            while i < len(self.items) and self.items[i].at_ms <= horizon:
                item = self.items[i]
                while True:
                    try:
                        self._producer.produce(self.topics[item.topic], item.value,
                                               partition=item.partition,
                                               on_delivery=self._delivered)
                        break
                    except BufferError:  # queue full: let deliveries drain
                        self._producer.poll(0.05)
                i += 1
                self.produced += 1
            self._producer.poll(0)
            time.sleep(self.tick_s)
        left = self._producer.flush(120)
        if left:
            self.errors.append(f"{left} messages not delivered")
        self.done.set()

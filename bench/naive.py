"""The floor: the Bytewax flow a user would write first for the same job.

``KafkaSource -> map(json.loads) -> count_window`` per campaign, device and stream (impressions
or clicks) with an event-time clock and tumbling five-minute windows, into a sink that counts.
No validation, exclusion, dedup, detection, Redis or Slack.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.connectors.kafka import KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import EventClock, TumblingWindower
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import OFFSET_BEGINNING

#: What the count sinks saw, read by the child process after ``run_main`` returns.
COUNTS: dict[str, int] = {"windows": 0, "counted": 0, "late": 0}

ALIGN = datetime(2020, 1, 1, tzinfo=UTC)


def parse(msg: KafkaSourceMessage) -> dict[str, Any]:
    event = json.loads(msg.value)
    event["_stream"] = msg.topic
    return event


def series_key(event: dict[str, Any]) -> str:
    return f"{event['campaign_id']}|{event.get('device')}|{event['_stream']}"


def event_time(event: dict[str, Any]) -> datetime:
    ts = event["ts"]
    if isinstance(ts, int):
        return datetime.fromtimestamp(ts / 1000, tz=UTC)
    return datetime.fromisoformat(ts)


class _CountPartition(StatelessSinkPartition[Any]):
    def __init__(self, field: str):
        self._field = field

    def write_batch(self, items: list[Any]) -> None:
        if self._field == "late":
            COUNTS["late"] += len(items)
            return
        COUNTS["windows"] += len(items)
        COUNTS["counted"] += sum(count for _key, (_wid, count) in items)


class CountSink(DynamicSink[Any]):
    def __init__(self, field: str):
        self._field = field

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CountPartition:
        return _CountPartition(self._field)


def get_flow(brokers: list[str], topics: list[str], batch_size: int) -> Dataflow:
    flow = Dataflow("naive")
    source = KafkaSource(brokers, topics, tail=False, starting_offset=OFFSET_BEGINNING,
                         batch_size=batch_size)
    messages = op.input("kafka_in", flow, source)
    events = op.map("parse", messages, parse)
    clock = EventClock(event_time, wait_for_system_duration=timedelta(minutes=2))
    windower = TumblingWindower(length=timedelta(minutes=5), align_to=ALIGN)
    counted = win.count_window("count", events, clock, windower, series_key)
    op.output("counts", counted.down, CountSink("counts"))
    op.output("late", counted.late, CountSink("late"))
    return flow

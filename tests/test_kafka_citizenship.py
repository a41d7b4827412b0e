"""ctrguard as a Kafka citizen: a real consumer group whose committed offsets lag tools can
read, and no topic created behind the operator's back.

Against the real tansu broker: the flow runs (in-process, drained), then the committed offsets
of the configured group are read back with an admin call and a consumer call; ``ctrguard run``
runs as a process with a misspelt input topic, a missing output topic, and both.
"""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from bytewax.testing import run_main
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from ctrguard.config import load_config_text
from ctrguard.flows.ctr_flow import get_flow
from ctrguard.flows.source import list_partitions
from devtools.services import consume_to_eof, produce_all
from tests.test_reliability_support import REPO, T0, config_yaml, ev

pytestmark = pytest.mark.integration


def _settings(broker, redis_url, topics, extra_kafka: str = ""):
    text = config_yaml(broker.bootstrap, topics, redis_url)
    text = text.replace("  tail: false\n", "  tail: false\n" + extra_kafka)
    return text, load_config_text(text)


def _committed(broker, group: str, tps: list[TopicPartition]) -> dict[tuple[str, int], int]:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])
    result = futures[group].result(15)
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}


def test_offsets_of_the_configured_group_are_committed_for_lag_tools(
        broker, redis_url, topic_factory):
    topics = topic_factory(partitions=2)
    # Keys spread the events over both partitions of each topic.
    imps = [ev(f"i{n}", T0 + n, campaign=f"c{n % 7}") for n in range(2000)]
    clicks = [ev(f"k{n}", T0 + 5 * n + 1, campaign=f"c{n % 7}") for n in range(150)]
    for name, values in (("impressions", imps), ("clicks", clicks)):
        produce_all(broker.bootstrap, topics[name],
                    [(orjson.loads(v)["campaign_id"].encode(), v) for v in values])
    _, settings = _settings(broker, redis_url, topics, "  group_id: ctr-lag-test\n")
    run_main(get_flow(settings, slack=False, partitions=list_partitions(settings.kafka)))

    ends = {}
    for name in ("impressions", "clicks"):
        for m in consume_to_eof(broker.bootstrap, topics[name]):
            key = (m.topic(), m.partition())
            ends[key] = max(ends.get(key, 0), m.offset() + 1)
    assert len(ends) == 4, "the events did not spread over both partitions"
    tps = [TopicPartition(t, p) for t, p in ends]
    # What kafka-consumer-groups --describe reads: the group's committed offsets.
    assert _committed(broker, "ctr-lag-test", tps) == ends
    # The group is the configured one, not a fixed name.
    assert all(off < 0 for off in _committed(broker, "ctrguard", tps).values())


def _run(config_path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctrguard", "run", "--config", str(config_path),
                           "--drain", "--no-slack", *extra], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def _topic_names(broker) -> set[str]:
    return set(AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(
        timeout=15).topics)


@pytest.mark.parametrize("create_topics", [False, True])
def test_a_missing_input_topic_stops_run_and_is_never_created(
        broker, redis_url, topic_factory, tmp_path, create_topics):
    topics = topic_factory()
    typo = topics["impressions"].replace("impressions", "impresions")
    text, _ = _settings(broker, redis_url, {**topics, "impressions": typo},
                        f"  create_topics: {str(create_topics).lower()}\n")
    path = tmp_path / "typo.yaml"
    path.write_text(text)
    proc = _run(path)
    assert proc.returncode == 3, proc.stderr
    assert typo in proc.stderr and "kafka.topics.impressions" in proc.stderr
    assert "never creates input topics" in proc.stderr
    assert typo not in _topic_names(broker)


def test_missing_output_topics_are_created_only_when_asked(broker, redis_url, topic_factory,
                                                           tmp_path):
    inputs = topic_factory(keys=("impressions", "clicks"))
    produce_all(broker.bootstrap, inputs["impressions"], [ev("i1", T0)])
    outputs = {k: f"{inputs['impressions']}-out-{k}" for k in ("figures", "alerts", "deadletter")}
    text, _ = _settings(broker, redis_url, {**inputs, **outputs})
    path = tmp_path / "no-outputs.yaml"
    path.write_text(text)
    proc = _run(path)
    assert proc.returncode == 3, proc.stderr
    assert outputs["figures"] in proc.stderr and "kafka.topics.figures" in proc.stderr
    assert not set(outputs.values()) & _topic_names(broker)

    path.write_text(text.replace("  tail: false\n", "  tail: false\n  create_topics: true\n"))
    proc = _run(path)
    assert proc.returncode == 0, proc.stderr
    assert set(outputs.values()) <= _topic_names(broker)
    assert len(consume_to_eof(broker.bootstrap, outputs["figures"])) == 1  # "all" only


def test_the_lag_of_a_partition_not_read_yet_is_known(broker, topic_factory):
    """A partition that never had a message, or that the consumer has not fetched from
    since a restart, has a lag too: 0 when empty or starting at its end, what it holds
    when starting at its beginning (a restarted cluster showed 7 of 8 partitions' lags)."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, Producer

    from ctrguard import metrics

    topic = topic_factory(partitions=2, keys=("t",))["t"]
    producer = Producer(broker.client_config())
    for i in range(5):
        producer.produce(topic, b"x%d" % i, partition=0)
    producer.flush(10)
    consumer = Consumer({**broker.client_config(), "group.id": "lag-test",
                         "enable.auto.commit": False})
    try:
        metrics.FLOW.latest.update({(topic, 0): 5, (topic, 1): 0})
        full = metrics.SourceMeter(consumer, topic, 0)
        empty = metrics.SourceMeter(consumer, topic, 1)
        tail = metrics.SourceMeter(consumer, topic, 0)
        full.poll(OFFSET_BEGINNING)
        empty.poll(OFFSET_BEGINNING)
        tail.poll(OFFSET_END)
        assert empty.lag() == 0
        assert tail.lag() == 0
        # From the beginning of a partition that holds messages, nothing read and its low
        # watermark not known yet (retention may have moved it): unknown, not a guess.
        assert full.lag() is None
        full.poll(3)
        assert full.lag() == 2
    finally:
        consumer.close()
        for key in ((topic, 0), (topic, 1)):
            metrics.FLOW.latest.pop(key, None)

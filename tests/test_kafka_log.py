"""librdkafka's log goes through Python logging, rate-limited (issues 15 item 7, 18 item 4).

Every client ctrguard builds takes its settings from ``KafkaSettings.client_config``, which
hands librdkafka's log and error callback to ``ctrguard.kafka_log.ROUTER``. Against a port
nothing listens on, a consumer and a producer each retry many times in a few seconds; what
reaches the log is one line per broker and kind, and nothing is written to stderr by
librdkafka itself.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time

import pytest

from ctrguard.config import load_config_text
from ctrguard.kafka_log import ROUTER
from tests.test_reliability_support import REPO

pytestmark = [pytest.mark.integration]


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(port: int):
    return load_config_text(f'kafka:\n  brokers: ["127.0.0.1:{port}"]\n', env={})


def _lines(caplog, port: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "ctrguard.kafka.librdkafka" and f":{port}" in r.getMessage()]


def test_consumer_and_producer_log_once_per_broker_and_kind(caplog):
    from ctrguard.flows.source import KafkaBatchSource
    from ctrguard.sinks.kafka_out import DeliveryTracker, make_producer

    port = _dead_port()
    s = _settings(port)
    caplog.set_level(logging.INFO, logger="ctrguard.kafka.librdkafka")
    part = KafkaBatchSource(s.kafka, [("t", 0)]).build_part("in", "t:0", None)
    producer = make_producer(s.kafka, DeliveryTracker())
    producer.produce("t", b"x")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        part.next_batch()
        producer.poll(0.05)
    part.close()
    attempts = ROUTER.failures().get(f"127.0.0.1:{port}", 0)
    lines = _lines(caplog, port)
    assert attempts >= 10, f"too few attempts to show anything: {attempts}"
    assert 1 <= len(lines) <= 2, lines   # one per kind: "Connect ... failed" (and "down")
    assert all("Connection refused" in ln or "down" in ln for ln in lines), lines


def test_a_later_line_says_how_many_were_left_out(caplog):
    from ctrguard.kafka_log import KafkaLogRouter

    port = _dead_port()
    caplog.set_level(logging.INFO, logger="ctrguard.kafka.librdkafka")
    router = KafkaLogRouter(interval_s=1.0)
    s = _settings(port)
    from confluent_kafka import Producer

    conf = {**s.kafka.client_config(), "logger": router, "error_cb": router.error}
    producer = Producer(conf)
    producer.produce("t", b"x")
    deadline = time.monotonic() + 2.6
    while time.monotonic() < deadline:
        producer.poll(0.05)
    lines = _lines(caplog, port)
    assert 2 <= len(lines) <= 6, lines
    assert any("more in the last" in ln for ln in lines), lines


def test_no_librdkafka_text_on_stderr_from_a_process():
    """The same through a fresh interpreter: librdkafka writes nothing by itself."""
    port = _dead_port()
    code = ("import time\nfrom ctrguard.config import load_config_text\n"
            "from ctrguard.sinks.kafka_out import make_producer\n"
            f"s = load_config_text('kafka:\\n  brokers: [\"127.0.0.1:{port}\"]\\n', env={{}})\n"
            "p = make_producer(s.kafka)\np.produce('t', b'x')\np.flush(2)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "%3|" not in err and "rdkafka#" not in err, err

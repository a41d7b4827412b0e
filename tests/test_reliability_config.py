"""An invalid configuration stops ``ctrguard run`` at start-up: every issue reported with
file, line and field, a non-zero exit, and no topic created, no Redis connection opened.

The configuration otherwise points at a live broker (with ``create_topics: true``) and a
live ``redis-server``, so touching either would show.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid

import pytest
from confluent_kafka.admin import AdminClient

from tests.test_reliability_support import REPO

pytestmark = [pytest.mark.integration]

#: (yaml line to append inside its section, dotted field expected in the report)
INVALID = [
    ("kafka", "  batch_size: zero", "kafka.batch_size"),
    ("kafka", "  producer_acks: some", "kafka.producer_acks"),
    ("kafka", "  starting_offset: yesterday", "kafka.starting_offset"),
    ("kafka", "  connect_timeout_s: -1", "kafka.connect_timeout_s"),
    ("redis", "  key_prefix: 'has space'", "redis.key_prefix"),
    ("redis", "  socket_timeout_s: 0", "redis.socket_timeout_s"),
    ("redis", "  sokcet_timeout_s: 3", "redis.sokcet_timeout_s"),
    ("slack", "  default_channel: 'no-hash'", "slack.default_channel"),
    ("slack", "  mode: web", "slack"),
    ("windows", "  length: 5 minutes", "windows.length"),
    ("windows", "  shards: 0", "windows.shards"),
    ("segments", "  dimensions: [device, shoe_size]", "segments.dimensions.1"),
    ("quarantine", "  retention_days: 0", "quarantine.retention_days"),
    ("top", "max_event_bytes: 10", "max_event_bytes"),
    ("top", "colour: blue", "colour"),
]


def _config(bootstrap: str, prefix: str, redis_url: str, extra: dict[str, list[str]]) -> str:
    sections = {
        "kafka": [f'  brokers: ["{bootstrap}"]', "  create_topics: true", "  topics:",
                  *(f"    {k}: {prefix}-{k}" for k in
                    ("impressions", "clicks", "figures", "alerts", "deadletter"))],
        "redis": [f'  url: "{redis_url}"'],
        "slack": ['  bot_token: null'],
        "windows": ["  allowed_lateness: 2m"],
        "segments": ["  max_values_per_dimension: 10"],
        "quarantine": ["  auto_release: false"],
    }
    lines = []
    for name, body in sections.items():
        lines += [f"{name}:", *body, *extra.get(name, [])]
    lines += extra.get("top", [])
    return "\n".join(lines) + "\n"


def _topics(bootstrap: str) -> set[str]:
    return set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics)


def _connections(redis_server) -> int:
    client = redis_server.client()
    try:
        return int(client.info("stats")["total_connections_received"])
    finally:
        client.close()


def _run(path):
    return subprocess.run([sys.executable, "-m", "ctrguard", "run", "--config", str(path),
                           "--drain"], cwd=REPO, capture_output=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})


def _expect_rejected(broker, redis_server, path, prefix, expected: list[tuple[str, int]]):
    before = _connections(redis_server)
    proc = _run(path)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err[-2000:]
    for field, line in expected:
        assert re.search(rf"{re.escape(str(path))}:{line}: {re.escape(field)}(\.|:| )", err), \
            f"{field} (line {line}) not reported:\n{err}"
    assert not {t for t in _topics(broker.bootstrap) if t.startswith(prefix)}, \
        "a topic was created before the configuration was validated"
    # One connection is ours, made just now to read the counter.
    assert _connections(redis_server) == before + 1, "Redis was contacted"
    return err


@pytest.mark.parametrize("section,line,field", INVALID, ids=[i[2] for i in INVALID])
def test_each_invalid_setting_stops_before_any_topic_or_redis(
        broker, redis_server, tmp_path, section, line, field):
    prefix = f"cfg-{uuid.uuid4().hex[:10]}"
    text = _config(broker.bootstrap, prefix, redis_server.url, {section: [line]})
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    lineno = text.splitlines().index(line) + 1
    if field == "slack":   # a model-level rule: reported on the section's line
        lineno = text.splitlines().index("slack:") + 1
    _expect_rejected(broker, redis_server, path, prefix, [(field, lineno)])


def test_all_invalid_settings_reported_at_once(broker, redis_server, tmp_path):
    prefix = f"cfg-{uuid.uuid4().hex[:10]}"
    extra: dict[str, list[str]] = {}
    for section, line, _field in INVALID:
        if section == "slack" and line.strip().startswith("mode"):
            continue   # model-level rules run only once the fields themselves are valid
        extra.setdefault(section, []).append(line)
    text = _config(broker.bootstrap, prefix, redis_server.url, extra)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    lines = text.splitlines()
    expected = [(f, lines.index(line) + 1) for s, line, f in INVALID if f != "slack"]
    err = _expect_rejected(broker, redis_server, path, prefix, expected)
    assert len(expected) == 14 and err.count(str(path)) >= 14


# ------------------------------------------------- issue 15, item 7: errors of other kinds
#
# Reproduced on main: each of these ended in a Python traceback and exit 1, after the
# Redis check (so Redis was contacted): librdkafka refused the kafka.client settings when
# the first admin client was built, redis-py the URL when the first client was made, and
# the file was read with a strict UTF-8 decode nobody caught.

#: (lines added under kafka:, the field reported, the line that is reported, the words)
CLIENT_INVALID = [
    (["  client:", "    no.such.key: 5"], "kafka.client.no.such.key", 1,
     "No such configuration property"),
    (["  client:", "    security.protocol: bogus"], "kafka.client.security.protocol", 1,
     'Invalid value "bogus"'),
    (["  client:", "    fetch.wait.max.ms: 10", "    linger.ms: lots"], "kafka.client.linger.ms",
     2, "Invalid value for configuration property"),   # named by its alias's target
    (["  client:", "    acks: 1"], "kafka.client.acks", 1, "`acks` must be set to `all`"),
]


@pytest.mark.parametrize("lines,field,at,words", CLIENT_INVALID, ids=[c[1] for c in CLIENT_INVALID])
def test_a_librdkafka_setting_it_refuses_stops_with_its_line(broker, redis_server, tmp_path,
                                                             lines, field, at, words):
    prefix = f"cfg-{uuid.uuid4().hex[:10]}"
    text = _config(broker.bootstrap, prefix, redis_server.url, {"kafka": lines})
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    lineno = text.splitlines().index(lines[at]) + 1
    err = _expect_rejected(broker, redis_server, path, prefix, [(field, lineno)])
    assert words in err and "Traceback" not in err


@pytest.mark.parametrize("url,words", [("http//cache:6379", "must specify one of the following"),
                                       ("redis://cache:notaport/0", "Port could not be cast"),
                                       ("redis://:s3cr3t@cache:99999/0", "Port out of range")])
def test_a_malformed_redis_url_stops_with_its_line_and_no_password(broker, redis_server,
                                                                   tmp_path, url, words):
    prefix = f"cfg-{uuid.uuid4().hex[:10]}"
    text = _config(broker.bootstrap, prefix, redis_server.url, {})
    text = text.replace(f'  url: "{redis_server.url}"', f'  url: "{url}"')
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    lineno = text.splitlines().index(f'  url: "{url}"') + 1
    err = _expect_rejected(broker, redis_server, path, prefix, [("redis.url", lineno)])
    assert words in err and "Traceback" not in err and "s3cr3t" not in err


def test_a_file_that_is_not_utf8_stops_with_its_line(broker, redis_server, tmp_path):
    prefix = f"cfg-{uuid.uuid4().hex[:10]}"
    text = _config(broker.bootstrap, prefix, redis_server.url, {"windows": ["  length: 5m"]})
    data = text.encode().replace(b"  length: 5m", b"  length: 5m  # caf\xe9 au lait")
    path = tmp_path / "latin1.yaml"
    path.write_bytes(data)
    lineno = text.splitlines().index("  length: 5m") + 1
    err = _expect_rejected(broker, redis_server, path, prefix, [("<file>", lineno)])
    assert "not UTF-8: byte 0xe9 at column 20" in err and "Traceback" not in err


def test_an_unreachable_broker_is_one_line_with_the_attempts(redis_server, tmp_path):
    """Reproduced on main: ~98 librdkafka lines in 5 s (about 290 in 15 s) before the
    message, which was a KafkaError repr."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = _config(f"127.0.0.1:{port}", "cfg-x", redis_server.url,
                   {"kafka": ["  connect_timeout_s: 5"]})
    path = tmp_path / "c.yaml"
    path.write_text(text)
    proc = _run(path)
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) <= 2, err
    assert "%3|" not in err and "FAIL" not in err
    match = re.search(rf"error: kafka: cannot reach Kafka at 127.0.0.1:{port} within \d+s: "
                      r"(\d+) connection attempts failed \(.*Connection refused\)", lines[-1])
    assert match, err
    assert int(match.group(1)) >= 5
    print(f"[measure] unreachable broker: {len(lines)} lines on stderr in 5 s, "
          f"{match.group(1)} connection attempts counted")

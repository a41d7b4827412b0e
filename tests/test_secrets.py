"""Secrets (Slack token, Redis password, SASL password) never appear in logs, errors, alerts,
figures, dead letters, Slack payloads or Redis values. ``ctrguard run`` runs as a process at
debug log level against a password-protected ``redis-server``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from devtools.services import consume_to_eof, produce_all
from devtools.slack_emulator import SlackEmulator
from tests.slack_fixtures import TOKEN as SLACK_TOKEN
from tests.test_hostile_slack import evil_stream
from tests.test_reliability_support import REPO, config_yaml, init_recovery, start_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REDIS_PASSWORD = "rEdis-pw-7f3a9c"
SASL_PASSWORD = "sAsl-pw-41be0d"
SECRETS = [SLACK_TOKEN, REDIS_PASSWORD, SASL_PASSWORD, "testtokensecret"]


def _run(config_path, env_extra, *args):
    env = {"PATH": "/usr/bin:/bin", "SLACK_BOT_TOKEN": SLACK_TOKEN,
           "CTRGUARD_REDIS_PASSWORD": REDIS_PASSWORD,
           "CTRGUARD_KAFKA_SASL_PASSWORD": SASL_PASSWORD, **env_extra}
    return subprocess.run([sys.executable, "-m", "ctrguard", "-v", "run", "--config",
                           str(config_path), "--drain", *args], cwd=REPO, env=env,
                          capture_output=True, timeout=180)


def _assert_clean(where: str, data: bytes | str) -> None:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    for secret in SECRETS:
        assert secret not in text, f"{secret[:4]}… appears in {where}"


def test_no_secret_in_logs_outputs_slack_or_redis(broker, unique_topics, redis_factory,
                                                   tmp_path):
    server = redis_factory(password=REDIS_PASSWORD)
    imps, clicks = evil_stream(hours=5)
    produce_all(broker.bootstrap, unique_topics["impressions"],
                imps + [b"{broken", b"\xff"])
    produce_all(broker.bootstrap, unique_topics["clicks"], clicks)
    with SlackEmulator(token=SLACK_TOKEN) as slack:
        # The URL carries no password: it comes from CTRGUARD_REDIS_PASSWORD.
        path = tmp_path / "c.yaml"
        path.write_text(config_yaml(broker.bootstrap, unique_topics, server.url_without_password,
                                    slack_base_url=slack.base_url,
                                    extra="  # sasl_username comes with the password\n"))
        proc = _run(path, {"CTRGUARD_KAFKA_SASL_USERNAME": "svc"})
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        _assert_clean("stdout/stderr", proc.stdout + proc.stderr)
        assert b"DEBUG" in proc.stderr  # the harshest level was on
        calls = slack.calls
        assert any(c.method == "chat.postMessage" and c.ok for c in calls)
        for c in calls:
            _assert_clean(f"Slack {c.method} payload", repr(c.payload))
    for key in ("figures", "alerts", "deadletter"):
        for m in consume_to_eof(broker.bootstrap, unique_topics[key]):
            _assert_clean(f"{key} topic", (m.value() or b"") + repr(m.headers()).encode())
    client = server.client()
    try:
        for k in client.scan_iter(count=1000):
            kind = client.type(k)
            if kind == b"string":
                _assert_clean(f"redis {k!r}", client.get(k))
            elif kind == b"hash":
                _assert_clean(f"redis {k!r}", repr(client.hgetall(k)))
            elif kind == b"stream":
                _assert_clean(f"redis {k!r}", repr(client.xrange(k)))
    finally:
        client.close()


def test_wrong_redis_password_fails_fast_without_showing_either_password(
        broker, unique_topics, redis_factory, tmp_path):
    server = redis_factory(password=REDIS_PASSWORD)
    path = tmp_path / "c.yaml"
    wrong_url = server.url_for(password="wr0ng-pw-d00d")
    path.write_text(config_yaml(broker.bootstrap, unique_topics, wrong_url))
    proc = _run(path, {"CTRGUARD_REDIS_PASSWORD": "wr0ng-pw-d00d"})
    assert proc.returncode == 3, proc.stderr.decode()[-2000:]
    out = (proc.stdout + proc.stderr).decode()
    assert "wr0ng-pw-d00d" not in out
    _assert_clean("stderr", out)
    assert "redis" in out.lower()


def test_slack_refusing_the_token_logs_no_token(broker, unique_topics, redis_factory, tmp_path):
    server = redis_factory(password=REDIS_PASSWORD)
    imps, clicks = evil_stream(hours=5)
    produce_all(broker.bootstrap, unique_topics["impressions"], imps)
    produce_all(broker.bootstrap, unique_topics["clicks"], clicks)
    with SlackEmulator(token="xoxb-the-other-token") as slack:   # ours is refused
        path = tmp_path / "c.yaml"
        path.write_text(config_yaml(broker.bootstrap, unique_topics, server.url_without_password,
                                    slack_base_url=slack.base_url).replace(
                                        "max_attempts: 100", "max_attempts: 2"))
        proc = _run(path, {})
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        assert any(c.error == "invalid_auth" for c in slack.calls)
    _assert_clean("stdout/stderr", proc.stdout + proc.stderr)
    client = server.client()
    try:
        dead = client.xrange("ctrguard:slack:deadletter")
    finally:
        client.close()
    assert dead, "the refused update should be kept in the Slack dead-letter stream"
    _assert_clean("Slack dead-letter stream", repr(dead))


def test_no_secret_in_any_recovery_store(broker, unique_topics, redis_factory, tmp_path):
    """Reproduction (issue 15, item 5): with SLACK_BOT_TOKEN and CTRGUARD_REDIS_PASSWORD
    set, every Bytewax recovery store held both, 31-381 times each: the pickled shard state
    kept the whole Settings. The live flow runs with recovery (snapshots every 0.2 s, two
    workers: two stores), then every file of the recovery directory, the log and every
    output topic is searched for each secret."""
    server = redis_factory(password=REDIS_PASSWORD)
    imps, clicks = evil_stream(hours=5)
    produce_all(broker.bootstrap, unique_topics["impressions"], imps + [b"{broken"])
    produce_all(broker.bootstrap, unique_topics["clicks"], clicks)
    recovery = tmp_path / "recovery"
    init_recovery(recovery, workers=2)
    env = {"CTRGUARD_REDIS_PASSWORD": REDIS_PASSWORD,
           "CTRGUARD_KAFKA_SASL_PASSWORD": SASL_PASSWORD, "CTRGUARD_KAFKA_SASL_USERNAME": "svc"}
    with SlackEmulator(token=SLACK_TOKEN) as slack:
        path = tmp_path / "c.yaml"
        path.write_text(config_yaml(broker.bootstrap, unique_topics, server.url_without_password,
                                    slack_base_url=slack.base_url, batch_size=50))
        proc = start_run(path, tmp_path / "run.log", recovery_dir=recovery, snapshot_s=0.2,
                         extra_args=["--workers", "2"], env=env)
        assert proc.wait(240) == 0, proc.log()[-3000:]
        assert any(c.method == "chat.postMessage" and c.ok for c in slack.calls)
    stores = sorted(p for p in recovery.rglob("*") if p.is_file())
    assert len(stores) >= 2 and sum(p.stat().st_size for p in stores) > 50_000
    snapshots = 0
    for store in stores:
        _assert_clean(f"recovery store {store.name}", store.read_bytes())
        snapshots += store.read_bytes().count(b"_restore_shard_state")
    assert snapshots > 0, "no shard snapshot was written: the test would prove nothing"
    _assert_clean("log", proc.log())
    for key in ("figures", "alerts", "deadletter"):
        for m in consume_to_eof(broker.bootstrap, unique_topics[key]):
            _assert_clean(f"{key} topic", (m.value() or b"") + repr(m.headers()).encode())
    print(f"[measure] secrets: {len(stores)} recovery files, "
          f"{sum(p.stat().st_size for p in stores):,} bytes, {snapshots} shard snapshots")

    # The same recovery directory with another window length: refused at restore with the
    # setting's line and both values, exit 2 (not a traceback, not a misread state).
    path.write_text(path.read_text().replace("  length: 5m", "  length: 10m"))
    proc = start_run(path, tmp_path / "run2.log", recovery_dir=recovery, snapshot_s=0.2,
                     extra_args=["--workers", "2", "--no-slack"], env=env)
    assert proc.wait(120) == 2, proc.log()[-3000:]
    lineno = path.read_text().splitlines().index("  length: 10m") + 1
    assert (f"{path}:{lineno}: windows.length: the snapshot was taken with windows.length "
            "300s") in proc.log()
    _assert_clean("log of the refused restore", proc.log())

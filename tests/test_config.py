"""Configuration is validated once, every issue reported with file, line and field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ctrguard.cli import main
from ctrguard.config import load_config, load_config_text
from ctrguard.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

BAD = """\
kafka:
  brokers: []
  batch_size: zero
windows:
  length: 5 minutes
  allowed_lateness: 2m
segments:
  dimensions: [device, shoe_size]
redis:
  url: redis://127.0.0.1:6379/0
  sokcet_timeout_s: 3
"""


def test_every_issue_is_reported_with_file_line_and_field(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    found = {(i.line, i.field) for i in info.value.issues}
    assert found == {
        (2, "kafka.brokers"),
        (3, "kafka.batch_size"),
        (5, "windows.length"),
        (8, "segments.dimensions.1"),
        (11, "redis.sokcet_timeout_s"),
    }
    assert all(i.file == str(path) for i in info.value.issues)
    text = str(info.value)
    assert f"{path}:11: redis.sokcet_timeout_s: unknown setting" in text


def test_yaml_syntax_error_names_the_line(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("kafka:\n  brokers: [a\nwindows: {\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.issues[0].line is not None
    assert "YAML syntax" in info.value.issues[0].message


def test_defaults_load_and_environment_overrides_secrets():
    s = load_config(None, env={"CTRGUARD_KAFKA_BROKERS": "k1:9092,k2:9092",
                               "CTRGUARD_REDIS_PASSWORD": "hunter2",
                               "SLACK_BOT_TOKEN": "xoxb-secret-token",
                               "CTRGUARD_KAFKA_SASL_PASSWORD": "sasl-secret"})
    assert s.kafka.brokers == ["k1:9092", "k2:9092"]
    assert s.redis.password.get_secret_value() == "hunter2"
    assert s.kafka.client_config()["sasl.password"] == "sasl-secret"
    dumped = repr(s) + str(s.model_dump())
    for secret in ("hunter2", "xoxb-secret-token", "sasl-secret"):
        assert secret not in dumped


def test_librdkafka_settings_pass_through():
    s = load_config_text("kafka:\n  client:\n    security.protocol: SASL_SSL\n"
                         "    sasl.mechanism: SCRAM-SHA-512\n  sasl_username: svc\n", env={})
    conf = s.kafka.client_config()
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.username"] == "svc"


def test_run_with_bad_config_exits_2_before_touching_kafka(tmp_path: Path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3: kafka.batch_size" in err


def test_run_with_unreachable_kafka_exits_3(tmp_path: Path, capsys):
    from devtools.services import free_port

    path = tmp_path / "c.yaml"
    path.write_text(f"kafka:\n  brokers: ['127.0.0.1:{free_port()}']\n"
                    "  connect_timeout_s: 2\n")
    assert main(["run", "--config", str(path)]) == 3
    assert "kafka" in capsys.readouterr().err


def _commands() -> list[list[str]]:
    """Every command and subcommand of the ``ctrguard`` parser (new ones included)."""
    import argparse

    from ctrguard.cli import build_parser

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> list[list[str]]:
        found = [path]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found += walk(child, [*path, name])
        return found

    return walk(build_parser(), [])


@pytest.mark.parametrize("argv", [[*path, "--help"] for path in _commands()]
                         + [["-m", "devtools.demo", "--help"]], ids=" ".join)
def test_every_command_has_help(argv):
    cmd = [sys.executable, *argv] if argv[0] == "-m" else [sys.executable, "-m", "ctrguard",
                                                             *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


def test_shipped_default_yaml_equals_the_embedded_defaults():
    # A wheel install has no config/ directory and falls back to the model's defaults.
    from_file = load_config(None, env={}).model_dump(exclude={"source"})
    embedded = load_config_text("", env={}).model_dump(exclude={"source"})
    assert from_file == embedded

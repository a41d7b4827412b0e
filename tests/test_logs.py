"""``--log-format json``: one JSON object a line on every command, errors included."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys

import pytest

from ctrguard import logs
from ctrguard.cli import build_parser
from tests.test_reliability_support import REPO


def _ctrguard(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctrguard", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def _json_lines(text: str) -> list[dict]:
    docs = [json.loads(line) for line in text.splitlines() if line.strip()]
    for doc in docs:
        assert set(doc) == {"time", "level", "logger", "message", "fields"}, doc
    return docs


def _parsers(parser: argparse.ArgumentParser, path: str = "ctrguard"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_command_takes_log_format():
    found = list(_parsers(build_parser()))
    assert len(found) >= 10  # run, replay, generate, quarantine list/show/..., demo, ...
    missing = [path for path, p in found
               if not any("--log-format" in a.option_strings for a in p._actions)]
    assert not missing


def test_a_config_error_is_a_json_line_with_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("windows:\n  length: -1\n")
    proc = _ctrguard("run", "--config", str(bad), "--log-format", "json")
    assert proc.returncode == 2
    (doc,) = _json_lines(proc.stderr)
    assert doc["level"] == "ERROR" and doc["fields"] == {"error": "ConfigError"}
    assert f"{bad}:2: windows.length: duration must be positive" in doc["message"]


def test_a_service_error_is_a_json_line_from_the_environment_setting(free_redis_url):
    proc = _ctrguard("quarantine", "list",
                     env={"CTRGUARD_REDIS_URL": free_redis_url, "CTRGUARD_LOG_FORMAT": "json"})
    assert proc.returncode == 3
    (doc,) = _json_lines(proc.stderr)
    assert doc["fields"]["error"] == "RedisUnavailable" and "Connection refused" in doc["message"]
    # Text stays text.
    proc = _ctrguard("quarantine", "list", env={"CTRGUARD_REDIS_URL": free_redis_url})
    assert proc.returncode == 3 and proc.stderr.startswith("error: redis:")


@pytest.fixture
def free_redis_url():
    from devtools.services import free_port

    return f"redis://127.0.0.1:{free_port()}/0"


def test_json_formatter_fields_and_exceptions():
    fmt = logs.JsonFormatter()
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.getLogger("x").makeRecord("x", logging.WARNING, __file__, 1,
                                                   "failed: %s", ("a\nb",), sys.exc_info(),
                                                   extra={"batch": 3, "ids": {"c1"}})
    line = fmt.format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["message"] == "failed: a\nb" and doc["level"] == "WARNING"
    assert doc["fields"]["batch"] == 3 and doc["fields"]["ids"] == ["c1"]
    assert "ValueError: bad" in doc["fields"]["exception"]


def test_configure_leaves_a_foreign_handler_alone_and_replaces_its_own():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        root.handlers[:] = []
        logs.configure(logging.INFO, "json")
        logs.configure(logging.DEBUG, "text")
        assert len(root.handlers) == 1 and root.level == logging.DEBUG
        assert not isinstance(root.handlers[0].formatter, logs.JsonFormatter)
        foreign = logging.NullHandler()
        root.handlers[:] = [foreign]
        logs.configure(logging.INFO, "json")
        assert root.handlers == [foreign]
        with pytest.raises(ValueError):
            logs.configure(logging.INFO, "xml")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)

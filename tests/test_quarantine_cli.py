"""``ctrguard quarantine ...`` through ``ctrguard.cli.main`` against a real redis-server."""

from __future__ import annotations

import json

import pytest

from ctrguard.cli import EXIT_FAILURE, EXIT_OK, EXIT_SERVICE, EXIT_USAGE, main
from ctrguard.config import load_config
from ctrguard.services import free_port
from sinks.quarantine import (
    CLEAN,
    QUARANTINED,
    RELEASED,
    QuarantineReader,
    QuarantineStore,
    iso_utc,
)
from sinks.redis_client import make_redis
from tests.test_quarantine import LENGTH, T0, decision, make_alert

PREFIX = "clitest"


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch):
    # The environment overrides the file's Redis settings (see ctrguard.config).
    monkeypatch.delenv("CTRGUARD_REDIS_URL", raising=False)
    monkeypatch.delenv("CTRGUARD_REDIS_PASSWORD", raising=False)


def write_config(tmp_path, url: str) -> str:
    path = tmp_path / "ctrguard.yaml"
    path.write_text(
        f"redis:\n  url: {url}\n  key_prefix: {PREFIX}\n  socket_timeout_s: 0.5\n"
        f"  connect_timeout_s: 0.5\n  retry_backoff_s: 0.05\n"
        f"windows:\n  length: {LENGTH}s\n"
        "quarantine:\n  retention_days: 30\n",
        encoding="utf-8",
    )
    return str(path)


@pytest.fixture
def flagged(redis_url, tmp_path):
    """A config file and a store holding flags for 'acme:spring 25%' (all, device=tv)."""
    config = write_config(tmp_path, redis_url)
    settings = load_config(config)
    store = QuarantineStore(make_redis(settings.redis), settings.quarantine, PREFIX,
                            window_length_s=LENGTH)
    campaign = "acme:spring 25%"
    store.record([decision(campaign, T0, make_alert(campaign, "all", T0),
                           make_alert(campaign, "device=tv", T0))])
    return config, store, campaign


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_release_changes_what_the_reader_returns_and_is_audited(flagged, capsys, redis_url):
    config, _store, campaign = flagged
    reader = QuarantineReader(redis_url, PREFIX)
    assert reader.is_released(campaign, "all", T0)[0] is False

    code, out, _ = run(capsys, "quarantine", "release", campaign, "all", iso_utc(T0),
                       "--by", "ana", "--reason", "pixel fixed", "--config", config)
    assert code == EXIT_OK
    assert "released" in out and "by ana" in out
    released, status = reader.is_released(campaign, "all", T0)
    assert released and status.state == RELEASED and status.released_by == "ana"
    # The other series of the same window stays quarantined.
    assert reader.status(campaign, "device=tv", T0).state == QUARANTINED

    code, out, _ = run(capsys, "quarantine", "audit", "--json", "--config", config)
    assert code == EXIT_OK
    latest = json.loads(out)[0]
    assert (latest["action"], latest["who"], latest["why"], latest["campaign_id"]) == (
        "released", "ana", "pixel fixed", campaign)


def test_release_refusals_exit_1(flagged, capsys):
    config, store, campaign = flagged
    base = ["--by", "ana", "--reason", "r", "--config", config]
    assert run(capsys, "quarantine", "release", campaign, "all", str(T0), *base)[0] == EXIT_OK
    code, _, err = run(capsys, "quarantine", "release", campaign, "all", str(T0), *base)
    assert code == EXIT_FAILURE and "already released by ana" in err
    code, _, err = run(capsys, "quarantine", "release", "nope", "all", str(T0), *base)
    assert code == EXIT_FAILURE and "no quarantine flag" in err
    assert [e.action for e in store.audit()] == ["released", "flagged", "flagged"]


def test_list_and_show(flagged, capsys):
    config, store, campaign = flagged
    store.release(campaign, "device=tv", T0, by="bo", reason="test traffic")

    code, out, _ = run(capsys, "quarantine", "list", "--config", config)
    assert code == EXIT_OK
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["STATE", "CAMPAIGN", "SEGMENT"]
    assert len(lines) == 3 and campaign in out

    code, out, _ = run(capsys, "quarantine", "list", "--state", "released", "--json",
                       "--config", config)
    assert code == EXIT_OK
    assert [(f["segment"], f["released_by"]) for f in json.loads(out)] == [("device=tv", "bo")]
    code, out, _ = run(capsys, "quarantine", "list", "--campaign", "other", "--config", config)
    assert code == EXIT_OK and "(no flags)" in out

    code, out, _ = run(capsys, "quarantine", "show", campaign, "device=tv", str(T0),
                       "--json", "--config", config)
    shown = json.loads(out)
    assert code == EXIT_OK and shown["status"]["state"] == RELEASED
    assert [e["action"] for e in shown["history"]] == ["flagged", "released"]
    code, out, _ = run(capsys, "quarantine", "show", campaign, "geo=fr", iso_utc(T0),
                       "--config", config)
    assert code == EXIT_OK and f"state:          {CLEAN}" in out
    code, out, _ = run(capsys, "quarantine", "show", campaign, "all", iso_utc(T0),
                       "--config", config)
    assert code == EXIT_OK and "history:" in out and "ctr_drop" in out


def test_usage_and_configuration_errors_exit_2(flagged, capsys, tmp_path):
    config, _store, campaign = flagged
    for bad in ("yesterday", "2026-01-01T00:00:00", str(T0 + 7)):
        code, _, err = run(capsys, "quarantine", "show", campaign, "all", bad, "--config", config)
        assert code == EXIT_USAGE, bad
        assert err.startswith("error:")
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("quarantine:\n  retention_days: 0\n", encoding="utf-8")
    code, _, err = run(capsys, "quarantine", "list", "--config", str(bad_config))
    assert code == EXIT_USAGE and "quarantine.retention_days" in err
    with pytest.raises(SystemExit) as info:     # argparse: --by and --reason are required
        main(["quarantine", "release", campaign, "all", str(T0), "--config", config])
    assert info.value.code == EXIT_USAGE


def test_redis_unreachable_exits_3(tmp_path, capsys):
    config = write_config(tmp_path, f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    code, _, err = run(capsys, "quarantine", "list", "--config", config)
    assert code == EXIT_SERVICE
    assert err.startswith("error: redis:") and "hunter2" not in err


@pytest.mark.parametrize("action", ["list", "show", "release", "audit"])
def test_every_action_has_help(action, capsys):
    with pytest.raises(SystemExit) as info:
        main(["quarantine", action, "--help"])
    assert info.value.code == 0
    assert "--config" in capsys.readouterr().out

"""``ctrguard quarantine ...`` through ``ctrguard.cli.main`` against a real redis-server."""

from __future__ import annotations

import json

import pytest

from ctrguard.cli import EXIT_FAILURE, EXIT_OK, EXIT_SERVICE, EXIT_USAGE, main
from ctrguard.config import load_config
from ctrguard.sinks.quarantine import (
    CLEAN,
    QUARANTINED,
    RELEASED,
    QuarantineReader,
    QuarantineStore,
    iso_utc,
)
from ctrguard.sinks.quarantine_cli import EXIT_HELD, EXIT_PENDING, _release_mode
from ctrguard.sinks.redis_client import make_redis
from devtools.services import free_port
from tests.slack_fixtures import T0 as T0_SLACK
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


@pytest.mark.parametrize("action", ["list", "show", "release", "incidents", "check", "audit"])
def test_every_action_has_help(action, capsys):
    with pytest.raises(SystemExit) as info:
        main(["quarantine", action, "--help"])
    assert info.value.code == 0
    assert "--config" in capsys.readouterr().out


# --------------------------------------------------------------------------- unknown


def test_show_of_an_unknown_campaign_says_so_and_exits_1(flagged, capsys):
    config, _store, campaign = flagged
    code, out, err = run(capsys, "quarantine", "show", "no-such-campaign", "all", str(T0),
                         "--config", config)
    assert code == EXIT_FAILURE and out == ""
    assert err.startswith("unknown:") and "no-such-campaign" in err
    # A known campaign's window not decided yet is pending, not unknown.
    code, out, _ = run(capsys, "quarantine", "show", campaign, "all", str(T0 + 50 * LENGTH),
                       "--config", config)
    assert code == EXIT_OK and "state:          pending" in out


# --------------------------------------------------------------------------- bulk release


def incident_config(tmp_path, url: str) -> str:
    from tests.test_quarantine_incidents import PREFIX as INCIDENT_PREFIX

    path = tmp_path / "incidents.yaml"
    path.write_text(f"redis:\n  url: {url}\n  key_prefix: {INCIDENT_PREFIX}\n"
                    "quarantine:\n  auto_release: true\n", encoding="utf-8")
    return str(path)


@pytest.fixture
def incident(redis_url, tmp_path):
    """An open incident of c1 holding 6 series-windows; c2 has flags in no incident."""
    from ctrguard.sinks.incidents import make_incident_id
    from tests.test_quarantine_incidents import Flow, settings_for, window

    flow = Flow(settings_for(redis_url, auto_release=True))
    for w in range(3):
        flow.release(w)
        flow.slack(w)
    flow.close()
    flow.store.record([window(w, "c2") for w in range(3)])
    return incident_config(tmp_path, redis_url), flow.store, make_incident_id("c1", T0_SLACK)


def test_incidents_lists_open_incidents_with_their_held_windows(incident, capsys):
    config, _store, incident_id = incident
    code, out, _ = run(capsys, "quarantine", "incidents", "--windows", "--config", config)
    assert code == EXIT_OK
    header, row = out.splitlines()[:2]
    assert header.split()[:6] == ["INCIDENT", "STATUS", "CAMPAIGN", "FROM", "TO", "HELD"]
    assert row.split()[:3] == [incident_id, "open", "c1"] and row.split()[5] == "6"
    assert f"{incident_id} holds:" in out and "device=mobile" in out
    code, out, _ = run(capsys, "quarantine", "incidents", "--json", "--config", config)
    (listed,) = json.loads(out)
    assert (listed["incident_id"], listed["held_count"], len(listed["held"])) == (
        incident_id, 6, 6)


def test_release_by_incident_in_one_command(incident, capsys):
    config, store, incident_id = incident
    base = ["--by", "ana", "--reason", "tag fixed", "--config", config]
    code, out, _ = run(capsys, "quarantine", "release", "--incident", incident_id,
                       "--dry-run", *base)
    assert code == EXIT_OK and out.count("would release") == 7     # 6 rows and the total
    assert {f.state for f in store.list_flags(campaign="c1")} == {QUARANTINED}

    code, out, _ = run(capsys, "quarantine", "release", "--incident", incident_id, *base)
    assert code == EXIT_OK
    assert out.splitlines()[-1] == f"released 6 series-window(s) of incident {incident_id}"
    assert {(f.state, f.released_by) for f in store.list_flags(campaign="c1")} == {
        (RELEASED, "ana")}
    assert sum(e.action == "released" for e in store.audit(limit=100)) == 6
    # Nothing left: exit 1; an unknown incident: exit 1.
    assert run(capsys, "quarantine", "release", "--incident", incident_id, *base)[0] \
        == EXIT_FAILURE
    code, _, err = run(capsys, "quarantine", "release", "--incident", "nope", *base)
    assert code == EXIT_FAILURE and "no incident 'nope'" in err


def test_release_by_campaign_and_range(incident, capsys):
    config, store, _ = incident
    base = ["--by", "bo", "--reason", "test traffic", "--config", config, "--json"]
    code, out, _ = run(capsys, "quarantine", "release", "--campaign", "c2", "--segment", "all",
                       "--from", iso_utc(T0_SLACK), "--to", str(T0_SLACK + 2 * LENGTH), *base)
    assert code == EXIT_OK
    done = json.loads(out)
    assert [(f["segment"], f["window_start_s"]) for f in done["released"]] == [
        ("all", T0_SLACK), ("all", T0_SLACK + LENGTH)]
    assert store.status("c2", "all", T0_SLACK + 2 * LENGTH).state == QUARANTINED
    assert store.status("c2", "device=mobile", T0_SLACK).state == QUARANTINED


@pytest.mark.parametrize("argv", [
    [],                                                        # nothing to release
    ["c1", "all"],                                             # one flag, incomplete
    ["--incident", "x", "--campaign", "c1"],                   # two modes
    ["c1", "all", "1767225600", "--incident", "x"],
    ["--campaign", "c1", "--from", "1767225600"],              # no --to
    ["--segment", "all"],                                      # --segment alone
    ["--campaign", "c1", "--from", "yesterday", "--to", "1767225600"],
])
def test_release_usage_errors_exit_2(incident, capsys, argv):
    config, _store, _ = incident
    code, _, err = run(capsys, "quarantine", "release", *argv, "--by", "a", "--reason", "r",
                       "--config", config)
    assert code == EXIT_USAGE and err.startswith("error:")


# --------------------------------------------------------------------------- check --csv


def write_csv(tmp_path, rows, header="campaign_id,segment,window_start,extra") -> str:
    path = tmp_path / "figures.csv"
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows),
                    encoding="utf-8")
    return str(path)


def test_check_csv_exit_codes_and_output(flagged, capsys, tmp_path):
    config, store, campaign = flagged
    quoted = f'"{campaign}"'
    clean = [(quoted, "device=mobile", iso_utc(T0), "x"), (quoted, "all", T0 - LENGTH, "y")]
    path = write_csv(tmp_path, clean)
    code, out, err = run(capsys, "quarantine", "check", "--csv", path, "--config", config)
    assert code == EXIT_OK, err
    lines = out.splitlines()
    assert lines[0] == ",".join(("campaign_id", "segment", "window_start_s", "window_start",
                                 "state", "publishable", "incident_id"))
    assert lines[1] == f'{campaign},device=mobile,{T0},{iso_utc(T0)},clean,true,'
    assert "2 publishable" in err

    pending = [*clean, (quoted, "all", T0 + 40 * LENGTH, "")]
    code, out, _ = run(capsys, "quarantine", "check", "--csv", write_csv(tmp_path, pending),
                       "--config", config)
    assert code == EXIT_PENDING and out.splitlines()[3].endswith(",pending,false,")

    held = [*pending, (quoted, "all", T0, "")]
    out_path = tmp_path / "result.csv"
    code, out, err = run(capsys, "quarantine", "check", "--csv", write_csv(tmp_path, held),
                         "--only-held", "--out", str(out_path), "--config", config)
    assert code == EXIT_HELD and out == ""
    written = out_path.read_text(encoding="utf-8").splitlines()
    assert [r.split(",")[4] for r in written[1:]] == ["pending", "quarantined"]
    assert "1 quarantined" in err and "1 pending" in err

    store.release(campaign, "all", T0, by="ana", reason="ok")
    code, _, _ = run(capsys, "quarantine", "check", "--csv", write_csv(tmp_path, held),
                     "--config", config)
    assert code == EXIT_PENDING            # released now; the future window still pending
    code, _, err = run(capsys, "quarantine", "check", "--csv", write_csv(tmp_path, held),
                       "--out", str(tmp_path / "no" / "such" / "dir.csv"), "--config", config)
    assert code == EXIT_FAILURE and err.startswith("error: cannot write")


def test_check_csv_problems_are_reported_with_line_and_column(flagged, capsys, tmp_path):
    config, _store, _ = flagged
    path = write_csv(tmp_path, [("c1", "all", T0, ""), ("c1", "", T0, ""),
                                ("c1", "all", "yesterday", ""), ("c1", "all", T0 + 7, "")])
    code, out, err = run(capsys, "quarantine", "check", "--csv", path, "--config", config)
    assert code == EXIT_USAGE and out == ""
    assert f"{path}:3: segment: missing value" in err
    assert f"{path}:4: window_start: not epoch seconds or ISO-8601" in err
    bad_header = write_csv(tmp_path, [("c1", "all")], header="campaign,segment")
    code, _, err = run(capsys, "quarantine", "check", "--csv", bad_header, "--config", config)
    assert code == EXIT_USAGE and "missing column(s) campaign_id, window_start" in err
    aligned = write_csv(tmp_path, [("c1", "all", T0 + 7, "")])
    code, _, err = run(capsys, "quarantine", "check", "--csv", aligned, "--config", config)
    assert code == EXIT_USAGE and "is not the start of a window" in err


def test_check_csv_with_redis_down_exits_3(tmp_path, capsys):
    config = write_config(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    path = write_csv(tmp_path, [("c1", "all", T0, "")])
    code, out, err = run(capsys, "quarantine", "check", "--csv", path, "--config", config)
    assert code == EXIT_SERVICE and out == "" and err.startswith("error: redis:")


def test_the_demos_last_step_releases_one_incident_in_one_command(incident, capsys):
    from pathlib import Path

    from devtools.demo import release_one_incident

    config, store, incident_id = incident
    release_one_incident(store, Path(config))
    out = capsys.readouterr().out
    assert f"$ ctrguard quarantine release --incident {incident_id} --by demo" in out
    assert f"released 6 series-window(s) of incident {incident_id}" in out
    assert "exit code 0; 6 series-windows still quarantined" in out      # c2's
    assert {f.state for f in store.list_flags(campaign="c1")} == {RELEASED}


def test_every_documented_quarantine_command_parses():
    import re
    import shlex
    from pathlib import Path

    from ctrguard.cli import build_parser

    root = Path(__file__).resolve().parent.parent
    found = []
    for doc in ("README.md", "docs/redis-keys.md"):
        text = (root / doc).read_text(encoding="utf-8").replace("\\\n", " ")
        for block in re.findall(r"```(?:sh|console)\n(.*?)```", text, re.S):
            for line in block.splitlines():
                line = line.strip().removeprefix("$ ")
                if line.startswith("ctrguard quarantine "):
                    found.append(shlex.split(line, comments=True))
    assert len(found) >= 10
    parser = build_parser()
    for argv in found:
        args = parser.parse_args(argv[1:])          # exits 2 on an unknown flag
        if args.quarantine_action == "release":
            assert _release_mode(args) is not None, argv

"""An ingestion stall's quarantined windows belong to its one pipeline incident.

A stall's alerts (``ingestion_stall``, incident ``stall:<source>:<start>``) go to the Slack
step's :class:`~ctrguard.sinks.stalls.StallTracker`, not to the campaign incidents. Their flags must
still carry the incident id the stall's Slack message shows, so that an operator can list
and release the stall's windows in one command (``ctrguard quarantine incidents``,
``release --incident``) and ``quarantine.auto_release`` releases them when the stall ends.
The two sinks of the flow (the Slack step and the release step's flag writes) run over one
real redis-server, in either order; the commands run through ``ctrguard.cli.main``.
"""

from __future__ import annotations

import io

import pytest

from ctrguard.cli import EXIT_OK, main
from ctrguard.config import load_config
from ctrguard.records import WindowDecision
from ctrguard.sinks.incidents import make_incident_id
from ctrguard.sinks.quarantine import QUARANTINED, RELEASED, QuarantineStore
from ctrguard.sinks.redis_client import make_redis
from ctrguard.sinks.slack import SlackSink
from tests.slack_fixtures import T0, WINDOW_S
from tests.test_slack_stalls import stall_alert

PREFIX = "stallq"
CAMPAIGNS = [f"c{i:02d}" for i in range(12)]
STALLED = range(3)          # windows 0-2 stalled; 3 quiet windows after them resolve it
QUIET_UNTIL = 7
STALL_ID = f"stall:clicks:{T0}"
INCIDENT = make_incident_id(STALL_ID, T0)


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch):
    monkeypatch.delenv("CTRGUARD_REDIS_URL", raising=False)
    monkeypatch.delenv("CTRGUARD_REDIS_PASSWORD", raising=False)


def write_config(tmp_path, url: str, *, auto_release: bool) -> str:
    path = tmp_path / "ctrguard.yaml"
    path.write_text(
        f"redis:\n  url: {url}\n  key_prefix: {PREFIX}\n  retry_backoff_s: 0.05\n"
        f"  retry_backoff_max_s: 0.2\n"
        f"slack:\n  mode: console\n  incident_gap_windows: 3\n"
        f"quarantine:\n  auto_release: {'true' if auto_release else 'false'}\n",
        encoding="utf-8")
    return str(path)


def window(w: int) -> list[WindowDecision]:
    ws = T0 + w * WINDOW_S
    return [WindowDecision(c, ws, ws + WINDOW_S, (),
                           (stall_alert(c, w, source="clicks"),) if w in STALLED else ())
            for c in CAMPAIGNS]


class Flow:
    def __init__(self, config: str):
        self.settings = load_config(config)
        self.out = io.StringIO()
        self.slack_part = SlackSink(self.settings, stream=self.out)
        self.store = QuarantineStore(make_redis(self.settings.redis), self.settings.quarantine,
                                     PREFIX, window_length_s=WINDOW_S)

    def run(self, windows: range, order: str) -> None:
        for w in windows:
            if order == "release_first":
                self.store.record(window(w))
                self.slack_part.write_batch(window(w))
            else:
                self.slack_part.write_batch(window(w))
                self.store.record(window(w))

    def close(self) -> str:
        self.slack_part.close(5)
        return self.out.getvalue()


def cli(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().out


@pytest.mark.parametrize("order", ["release_first", "slack_first"])
def test_stall_flags_carry_its_incident_and_auto_release_when_it_ends(
        redis_url, tmp_path, capsys, order):
    config = write_config(tmp_path, redis_url, auto_release=True)
    flow = Flow(config)
    flow.run(range(QUIET_UNTIL), order)
    text = flow.close()
    assert f"incident {INCIDENT}" in text and "RESOLVED: ingestion stall" in text
    flags = flow.store.list_flags(limit=1000)
    assert len(flags) == len(CAMPAIGNS) * len(STALLED)
    # Without the link the flags had no incident and stayed quarantined for ever.
    assert {(f.state, f.incident_id, f.released_by) for f in flags} == {
        (RELEASED, INCIDENT, f"auto:incident:{INCIDENT}")}
    code, out = cli(capsys, "quarantine", "incidents", "--all", "--config", config)
    assert code == EXIT_OK
    (row,) = [line.split() for line in out.splitlines() if line.startswith(INCIDENT)]
    assert row[1:3] == ["resolved", STALL_ID]
    assert row[5:7] == ["0", str(len(flags))]                     # held, released


def test_an_open_stall_lists_its_windows_and_is_released_in_one_command(
        redis_url, tmp_path, capsys):
    config = write_config(tmp_path, redis_url, auto_release=False)
    flow = Flow(config)
    flow.run(STALLED, "release_first")
    flow.close()
    code, out = cli(capsys, "quarantine", "incidents", "--config", config)
    assert code == EXIT_OK
    (row,) = [line.split() for line in out.splitlines() if line.startswith(INCIDENT)]
    assert row[1:3] == ["open", STALL_ID]
    assert row[5] == str(len(CAMPAIGNS) * len(STALLED))            # windows held
    code, out = cli(capsys, "quarantine", "release", "--incident", INCIDENT, "--by", "ana",
                    "--reason", "collector restarted, events replayed", "--config", config)
    assert code == EXIT_OK
    flags = flow.store.list_flags(limit=1000)
    assert len(flags) == len(CAMPAIGNS) * len(STALLED)
    assert {(f.state, f.released_by) for f in flags} == {(RELEASED, "ana")}


def test_a_late_stall_alert_after_the_stall_ended_joins_it(redis_url, tmp_path):
    """At-least-once input: a stall alert re-delivered after its stall resolved (the
    tracker ignores it as stale) still gets the stall's id, and is released with it."""
    config = write_config(tmp_path, redis_url, auto_release=True)
    flow = Flow(config)
    flow.run(range(QUIET_UNTIL), "slack_first")
    late = [d for d in window(1) if d.campaign_id == "c00"]
    flow.store.record(late)                 # a flag written again, say after a restart
    flow.slack_part.write_batch(late)
    flow.close()
    st = flow.store.status("c00", "all", T0 + WINDOW_S)
    assert (st.state, st.incident_id) == (RELEASED, INCIDENT)
    assert not [f for f in flow.store.list_flags(limit=1000) if f.state == QUARANTINED]

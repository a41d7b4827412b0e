"""Shared machinery of the reliability tests (no tests here).

Runs ``ctrguard run`` as a real process against the session's tansu broker, a private
``redis-server`` and a Slack emulator, and snapshots everything a run left behind (figures,
alerts, dead letters, quarantine flags, Slack calls) so two runs can be compared.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ctrguard.config import Settings
from ctrguard.sinks.quarantine import QuarantineReader
from ctrguard.sinks.redis_client import make_redis
from devtools.services import consume_to_eof, ensure_topics
from devtools.slack_emulator import SlackEmulator
from tests.slack_fixtures import TOKEN as SLACK_TOKEN

REPO = Path(__file__).resolve().parent.parent
# ctrguard with fault injection ($CTRGUARD_CRASH_AT): devtools/ctrguard.py
CTRGUARD = [sys.executable, "-m", "devtools.ctrguard"]
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
W = 300
OUTPUT_KEYS = ("figures", "alerts", "deadletter")


def ev(eid: str, ts_s: float, campaign: str = "c1", **extra: Any) -> bytes:
    return msgspec.json.encode({"event_id": eid, "ts": int(ts_s * 1000), "campaign_id": campaign,
                         **extra})


def config_yaml(bootstrap: str, topics: dict[str, str], redis_url: str, *,
                prefix: str = "ctrguard", slack_base_url: str | None = None,
                batch_size: int = 500, extra: str = "") -> str:
    slack = ""
    if slack_base_url:
        slack = (f'  base_url: "{slack_base_url}"\n  mode: web\n  timeout_s: 2\n'
                 "  retry_backoff_s: 0.05\n  retry_backoff_max_s: 0.5\n  max_attempts: 100\n")
    return f"""\
kafka:
  brokers: ["{bootstrap}"]
  topics:
    impressions: {topics['impressions']}
    clicks: {topics['clicks']}
    figures: {topics['figures']}
    alerts: {topics['alerts']}
    deadletter: {topics['deadletter']}
  tail: false
  batch_size: {batch_size}
redis:
  url: "{redis_url}"
  key_prefix: {prefix}
  retry_backoff_s: 0.1
  retry_backoff_max_s: 0.5
windows:
  length: 5m
  allowed_lateness: 2m
  shards: 4
quarantine:
  retention_days: 3650
slack:
  default_channel: "#ctr-alerts"
{slack}{extra}"""


def output_topics(bootstrap: str, inputs: dict[str, str], partitions: int = 1) -> dict[str, str]:
    """Fresh output topics reading the given input topics."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    outs = {k: f"{prefix}-{k}" for k in OUTPUT_KEYS}
    ensure_topics(bootstrap, list(outs.values()), partitions=partitions)
    return {"impressions": inputs["impressions"], "clicks": inputs["clicks"], **outs}


@dataclass
class Proc:
    """A ``ctrguard run`` process with its log."""

    popen: subprocess.Popen
    log_path: Path

    def wait(self, timeout: float = 180.0) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"ctrguard run did not finish in {timeout}s:\n{self.log()}"
                                 ) from None

    def kill9(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_run(config_path: Path, log_path: Path, *, recovery_dir: Path | None = None,
              crash_at: str | None = None, snapshot_s: float = 0.5,
              env: dict[str, str] | None = None, extra_args: list[str] = (),
              drain: bool = True) -> Proc:
    args = [*CTRGUARD, "run", "--config", str(config_path), *(["--drain"] if drain else []),
            *extra_args]
    if recovery_dir is not None:
        args += ["--recovery-dir", str(recovery_dir), "--snapshot-interval", str(snapshot_s),
                 "--backup-interval", "0"]
    full_env = {k: v for k, v in os.environ.items() if k != "CTRGUARD_CRASH_AT"}
    full_env["SLACK_BOT_TOKEN"] = SLACK_TOKEN
    full_env["PYTHONUNBUFFERED"] = "1"
    if crash_at:
        full_env["CTRGUARD_CRASH_AT"] = crash_at
    full_env.update(env or {})
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(args, cwd=REPO, env=full_env, stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    return Proc(popen, log_path)


def run_to_end(config_path: Path, log_path: Path, **kw: Any) -> str:
    proc = start_run(config_path, log_path, **kw)
    rc = proc.wait()
    assert rc == 0, f"ctrguard run exited {rc}:\n{proc.log()[-5000:]}"
    return proc.log()


def init_recovery(directory: Path, workers: int = 1) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(directory), str(workers)],
                   check=True, cwd=REPO, capture_output=True)


def expire_slack_lease(settings: Settings) -> None:
    """The crashed process held the Slack delivery lease (30 s). It is dead; let the lease
    run out now instead of waiting, exactly what its expiry does."""
    client = make_redis(settings.redis)
    try:
        client.pexpire(f"{settings.redis.key_prefix}:slack:outbox:lease", 1)
    finally:
        client.close()
    time.sleep(0.01)


# --------------------------------------------------------------------------- snapshots


@dataclass
class Outcome:
    """Everything one run (or a crashed run plus its restarts) left behind."""

    figures: dict[tuple, set[bytes]]           # (campaign, segment, window) -> distinct values
    figure_records: int
    alerts: dict[str, set[bytes]]
    dead: Counter                              # (value, headers tuple) -> count
    flags: dict[tuple, str]                    # (campaign, segment, window) -> state
    slack_posts: Counter = field(default_factory=Counter)   # (thread?, text) -> count
    slack_updates: Counter = field(default_factory=Counter)  # (ts, text, blocks) -> n
    slack_final: list[str] = field(default_factory=list)     # final text per message
    outbox_left: int = 0

    def latest_figures(self) -> dict[tuple, bytes]:
        return {k: next(iter(v)) for k, v in self.figures.items() if len(v) == 1}


def _figure_key(value: bytes) -> tuple:
    f = msgspec.json.decode(value)
    return (f["campaign_id"], f["segment"], f["window_start_s"])


def collect(bootstrap: str, topics: dict[str, str], settings: Settings,
            emulator: SlackEmulator | None = None) -> Outcome:
    figures: dict[tuple, set[bytes]] = {}
    msgs = consume_to_eof(bootstrap, topics["figures"])
    for m in msgs:
        figures.setdefault(_figure_key(m.value()), set()).add(m.value())
    alerts: dict[str, set[bytes]] = {}
    for m in consume_to_eof(bootstrap, topics["alerts"]):
        alerts.setdefault(msgspec.json.decode(m.value())["alert_id"], set()).add(m.value())
    dead: Counter = Counter()
    for m in consume_to_eof(bootstrap, topics["deadletter"]):
        dead[(m.value(), tuple(sorted((k, v) for k, v in (m.headers() or []))))] += 1
    client = make_redis(settings.redis)
    try:
        reader = QuarantineReader(client, settings.redis.key_prefix, window_length_s=W)
        flags = {(f.campaign_id, f.segment, f.window_start_s): f.state
                 for f in reader.list_flags(limit=100_000)}
        outbox_left = int(client.xlen(f"{settings.redis.key_prefix}:slack:outbox"))
    finally:
        client.close()
    out = Outcome(figures, len(msgs), alerts, dead, flags, outbox_left=outbox_left)
    if emulator is not None:
        for c in emulator.calls:
            if not c.ok:
                continue
            if c.method == "chat.postMessage":
                out.slack_posts[(bool(c.payload.get("thread_ts")), c.payload.get("text"))] += 1
            elif c.method == "chat.update":
                # Two revisions may share the summary line and differ in the blocks (a
                # figure, a segment): an update is the same only if both are.
                out.slack_updates[(c.payload.get("ts"), c.payload.get("text"),
                                   json.dumps(c.payload.get("blocks"), sort_keys=True,
                                              default=str))] += 1
        out.slack_final = sorted(m.text for m in emulator.messages("#ctr-alerts",
                                                                     top_level=True))
    return out


def assert_same_as_clean(clean: Outcome, run: Outcome, *, slack: bool = True,
                         exact_posts: bool = True) -> None:
    """The comparison every crash test makes (see docs/reliability.md).

    ``exact_posts=False`` compares Slack by outcome only (one message per incident, the
    same final text): how many alerts the first post already shows depends on how alerts
    were batched, which differs between one process and two.
    """
    # Every window's figure equals the clean run's; repeats after a restart are identical.
    assert set(run.figures) == set(clean.figures), (
        f"windows missing: {sorted(set(clean.figures) - set(run.figures))[:5]}, "
        f"extra: {sorted(set(run.figures) - set(clean.figures))[:5]}")
    differing = [k for k in clean.figures if run.figures[k] != clean.figures[k]]
    assert not differing, f"{len(differing)} windows differ, e.g. {differing[:3]}: " \
        f"{[run.figures[k] for k in differing[:1]]} vs {[clean.figures[k] for k in differing[:1]]}"
    assert run.alerts == clean.alerts
    # Every quarantine flag of the clean run exists, in the same state.
    missing = {k: v for k, v in clean.flags.items() if run.flags.get(k) != v}
    assert not missing, f"flags missing or different: {list(missing.items())[:5]}"
    # Dead letters: none lost, none doubled (same bytes and headers, same multiplicity).
    assert run.dead == clean.dead, (
        f"dead letters: lost {sum((clean.dead - run.dead).values())}, "
        f"doubled {sum((run.dead - clean.dead).values())}")
    if slack:
        assert run.outbox_left == 0, f"{run.outbox_left} Slack updates still queued"
        # No message or reply posted twice, none missing; no update applied twice.
        if exact_posts:
            assert run.slack_posts == clean.slack_posts
        else:
            def tops(posts: Counter) -> int:
                return sum(n for (thread, _text), n in posts.items() if not thread)

            assert tops(run.slack_posts) == tops(clean.slack_posts)
        assert all(n == 1 for n in run.slack_posts.values()), run.slack_posts
        twice = [k for k, n in run.slack_updates.items() if n > 1]
        assert not twice, f"chat.update repeated: {twice[:3]}"
        assert run.slack_final == clean.slack_final

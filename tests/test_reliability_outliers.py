"""Outlier event times through ``ctrguard run`` and ``ctrguard replay`` (issue 15, cases 2
and 3), with 2 partitions per input topic, the real broker, redis-server and the Slack
emulator.

* One well-formed impression dated 10 minutes before the wall clock, inserted into a stream
  about a year behind it: it is counted in its own window and harms nothing else (every
  other figure, alert and Slack message as in the run without it; before, its partition's
  frontier jumped to it and the rest of the stream was dead-lettered as late).
* With ``batch_size: 100``, an event 25 years older than its neighbours in the first
  batch: counted in its window (before, it was neither counted nor dead-lettered), and
  the conservation line balances.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from ctrguard.config import load_config_text
from devtools.slack_emulator import SlackEmulator
from tests.live_traffic import T0_MS, Scheduled, traffic
from tests.slack_fixtures import TOKEN as SLACK_TOKEN
from tests.test_reliability_pause import _produce_now, _without_topic
from tests.test_reliability_support import (
    CTRGUARD,
    REPO,
    Outcome,
    collect,
    config_yaml,
    output_topics,
    run_to_end,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

YEAR_MS = 365 * 24 * 3600 * 1000


def _drained(broker, topic_factory, redis_server, tmp: Path, name: str, items, *,
             batch_size: int = 500) -> tuple[Outcome, str]:
    inputs = topic_factory(partitions=2, keys=("impressions", "clicks"))
    topics = output_topics(broker.bootstrap, inputs)
    _produce_now(broker.bootstrap, inputs, items)
    with SlackEmulator(token=SLACK_TOKEN) as emulator:
        text = config_yaml(broker.bootstrap, topics, redis_server.url, prefix=name,
                           slack_base_url=emulator.base_url, batch_size=batch_size)
        path = tmp / f"{name}.yaml"
        path.write_text(text)
        settings = load_config_text(text, source=str(path), env={"SLACK_BOT_TOKEN": SLACK_TOKEN})
        log = run_to_end(path, tmp / f"{name}.log")
        return _without_topic(collect(broker.bootstrap, topics, settings, emulator)), log


def _balanced(log: str, consumed: int) -> None:
    line = re.findall(r"end of input: (conservation .*)", log)[-1]
    assert line.startswith("conservation balanced"), line
    assert sum(int(n) for n in re.findall(r"consumed (\d+)", line)) == consumed, line


def _window_s(ts_ms: int) -> int:
    return ts_ms // 300_000 * 300


def _by_campaign(items: list[Scheduled]) -> list[Scheduled]:
    """Impressions keyed by campaign ("big" to partition 0): a skewed topic whose other
    partition, like the click topic, is read to its end long before partition 0."""
    return [replace(i, partition=0 if b'"big"' in i.value else 1)
            if i.topic == "impressions" else i for i in items]


def test_one_forward_dated_impression_harms_no_other_figure(broker, topic_factory,
                                                            redis_factory, tmp_path):
    items = _by_campaign(traffic(180, outage=(100, 140)))
    now_ms = int(time.time() * 1000)
    assert now_ms - T0_MS > 30 * 24 * 3600 * 1000, "the stream must be far behind the clock"
    far_ms = now_ms - 10 * 60_000
    outlier = Scheduled(T0_MS + 50 * 60_000, "impressions", 0, orjson.dumps(
        {"event_id": "forward", "ts": far_ms, "campaign_id": "big", "device": "mobile"}))
    server = redis_factory()
    clean, _ = _drained(broker, topic_factory, server, tmp_path, "clean", items)
    run, log = _drained(broker, topic_factory, server, tmp_path, "outlier",
                        sorted([*items, outlier]))
    assert len(clean.figures) > 100 and clean.alerts, "nothing to compare"
    assert sum(run.dead.values()) == 0, f"{sum(run.dead.values())} dead letters"
    _balanced(log, len(items) + 1)
    # Its own window: one impression, counted; every other window as without it.
    far = {k: orjson.loads(next(iter(v))) for k, v in run.figures.items()
           if k[2] == _window_s(far_ms)}
    assert far[("big", "all", _window_s(far_ms))]["impressions"] == 1
    assert far[("big", "device=mobile", _window_s(far_ms))]["impressions"] == 1
    assert all(f["impressions"] == 0 for k, f in far.items() if k[1] == "device=desktop")
    others = {k: v for k, v in run.figures.items() if k not in far}
    assert others == clean.figures
    # Alerts and Slack: the clean run's, plus at most what the detectors say of that window.
    extra = {a: v for a, v in run.alerts.items() if a not in clean.alerts}
    assert {a: run.alerts[a] for a in clean.alerts} == clean.alerts
    assert all(orjson.loads(next(iter(v)))["window_start_s"] == _window_s(far_ms)
               for v in extra.values())
    # Every Slack post of the clean run, once; an incident still open at the end may be
    # updated (resolved) by that window's decision, which is the last of its campaign.
    assert all(run.slack_posts[k] == n for k, n in clean.slack_posts.items())
    assert len(run.slack_final) - len(clean.slack_final) <= len(extra)


def test_an_event_25_years_older_early_in_the_stream_is_counted(broker, topic_factory,
                                                               redis_factory, tmp_path):
    items = traffic(60)
    old_ms = T0_MS - 25 * YEAR_MS
    ancient = Scheduled(T0_MS + 5_000, "impressions", 0, orjson.dumps(
        {"event_id": "ancient", "ts": old_ms, "campaign_id": "big", "device": "mobile"}))
    server = redis_factory()
    run, log = _drained(broker, topic_factory, server, tmp_path, "ancient",
                        sorted([*items, ancient]), batch_size=100)
    assert sum(run.dead.values()) == 0
    n_imps = sum(1 for i in items if i.topic == "impressions") + 1
    assert sum(orjson.loads(next(iter(v)))["impressions"]
               for k, v in run.figures.items() if k[1] == "all") == n_imps
    figure = run.figures[("big", "all", _window_s(old_ms))]
    assert orjson.loads(next(iter(figure)))["impressions"] == 1
    _balanced(log, len(items) + 1)
    # Replay of the same events (one file per topic): the same figure, a balanced summary.
    files = {}
    for topic in ("impressions", "clicks"):
        files[topic] = tmp_path / f"{topic}.jsonl"
        files[topic].write_bytes(b"".join(i.value + b"\n" for i in sorted([*items, ancient])
                                          if i.topic == topic))
    cfg = tmp_path / "replay.yaml"
    cfg.write_text("windows:\n  length: 5m\n  allowed_lateness: 2m\n")
    done = subprocess.run([*CTRGUARD, "replay", "--impressions", str(files["impressions"]),
                           "--clicks", str(files["clicks"]), "--config", str(cfg),
                           "--out", str(tmp_path / "replay"), "--no-baselines"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "conservation balanced" in done.stderr + done.stdout
    summary = orjson.loads((tmp_path / "replay" / "summary.json").read_bytes())
    assert summary["conservation"]["impressions:0"]["consumed"] == n_imps
    assert summary["conservation"]["impressions:0"]["counted"] == n_imps
    figures = [orjson.loads(line) for line in
               (tmp_path / "replay" / "figures.jsonl").read_bytes().splitlines()]
    assert any(f["window_start_s"] == _window_s(old_ms) and f["segment"] == "all"
               and f["impressions"] == 1 for f in figures)


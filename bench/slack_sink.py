"""CPU cost of the Slack sink's ``write_batch`` per ``WindowDecision``: baseline vs current.

A private ``redis-server`` on a free port (as the tests start it), a ``SlackSinkPartition``
in console mode with ``autostart=False`` (no delivery thread, no network: the outbox just
fills), and a synthetic stream: ``--campaigns`` campaigns, ``--windows`` closed windows,
one batch of ``WindowDecision`` records per window (one record per campaign), and a few
incidents sprinkled in (two alerts a window for a few windows, then quiet windows that
resolve them; plus single-window incidents).

Two implementations run side by side in the same process, alternating round by round on a
flushed Redis: the *baseline* (``sinks/slack.py`` as of ``--baseline``, a git revision,
loaded from ``git show`` into a temporary module) and the *current* ``sinks/slack.py``.
Both must leave the same outbox (every queued update, in order), the same incident states
and the same open set in Redis: the script checks that and fails if they differ.

Reported: CPU time of this process in ``write_batch`` (``time.process_time``) and CPU of the
redis-server (``INFO cpu``) per ``WindowDecision``, median over the rounds.

    .venv/bin/python -m bench.slack_sink [--rounds 5] [--campaigns 2000] [--windows 100]
        [--batch-size 0]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ctrguard.config import Settings  # noqa: E402
from ctrguard.records import Alert, WindowDecision, make_alert_id  # noqa: E402
from sinks.incidents import iso  # noqa: E402

WINDOW_S = 300
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
#: The last commit before the Slack sink's per-campaign filter.
BASELINE = "17fd6e1"


def load_baseline(rev: str) -> Any:
    src = subprocess.run(["git", "show", f"{rev}:sinks/slack.py"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory(prefix="slack-baseline-") as tmp:
        path = Path(tmp) / "_slack_baseline.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location("_slack_baseline", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["_slack_baseline"] = mod
        spec.loader.exec_module(mod)
    return mod


def alert(cid: str, window: int, segment: str, *, severity: str = "warning",
          clicks: int = 2, expected: float = 20.0) -> Alert:
    ws = T0 + window * WINDOW_S
    return Alert(alert_id=make_alert_id(cid, segment, ws, "binomial_cusum", "ctr_drop"),
                 campaign_id=cid, segment=segment, window_start=iso(ws),
                 window_end=iso(ws + WINDOW_S), window_start_s=ws, impressions=1000,
                 clicks=clicks, ctr=clicks / 1000, kind="ctr_drop", severity=severity,
                 detector="binomial_cusum", baseline_ctr=0.02, score=6.0, confidence=0.99,
                 ctr_low=0.015, ctr_high=0.025, expected_clicks=expected,
                 expected_impressions=1000.0, suspected_cause="click_tracking",
                 quarantine=True)


def scenario(campaigns: int, windows: int, seed: int,
             batch_size: int = 0) -> list[list[WindowDecision]]:
    """One record per campaign and window, in batches of ``batch_size`` records (0: one
    batch per window); ~0.5 % of campaigns get incidents."""
    rng = random.Random(seed)
    ids = [f"camp-{i:05d}" for i in range(campaigns)]
    alerts: dict[tuple[str, int], list[Alert]] = {}
    for cid in rng.sample(ids, max(1, campaigns // 200)):
        start = rng.randrange(0, max(1, windows - 8))
        length = rng.choice([1, 1, 2, 4, 6])
        for w in range(start, min(windows, start + length)):
            sev = "critical" if w == start + 2 else "warning"
            alerts.setdefault((cid, w), []).extend(
                [alert(cid, w, "all", severity=sev), alert(cid, w, "device=mobile")])
    batches = []
    for w in range(windows):
        ws = T0 + w * WINDOW_S
        batch = [WindowDecision(cid, ws, ws + WINDOW_S, (), tuple(alerts.get((cid, w), ())))
                 for cid in ids]
        rng.shuffle(batch)
        step = batch_size or len(batch)
        batches.extend(batch[i:i + step] for i in range(0, len(batch), step))
    return batches


def redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def run_once(module: Any, settings: Settings, client: Any,
             batches: list[list[WindowDecision]]) -> tuple[float, float, dict[str, Any]]:
    from sinks.redis_client import make_redis

    client.flushall()
    sink_client = make_redis(settings.redis)   # the sink's own client, as in the flow
    part = module.SlackSinkPartition(settings, redis_client=sink_client,
                                     stream=io.StringIO(), autostart=False)
    cpu = 0.0
    rcpu0 = redis_cpu(client)
    for batch in batches:
        t = time.process_time()
        part.write_batch(batch)
        cpu += time.process_time() - t
    rcpu = redis_cpu(client) - rcpu0
    prefix = part.prefix
    outbox = [fields for _, fields in client.xrange(f"{prefix}:outbox")]
    states = {}
    for key in client.scan_iter(f"{prefix}:state:*", count=1000):
        states[key] = json.loads(client.get(key))
    result = {"outbox": outbox, "states": states,
              "open": client.zrange(f"{prefix}:open", 0, -1, withscores=True),
              "clock": client.zscore(f"{prefix}:clock", "clock")}
    part.notifier.stop()
    sink_client.close()
    return cpu, rcpu, result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--campaigns", type=int, default=2000)
    p.add_argument("--windows", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=0,
                   help="records per write_batch (0: all campaigns of a window)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--baseline", default=BASELINE, help="git revision of the baseline")
    args = p.parse_args(argv)

    import sinks.slack as current
    from ctrguard.services import start_redis

    baseline = load_baseline(args.baseline)
    batches = scenario(args.campaigns, args.windows, args.seed, args.batch_size)
    decisions = sum(len(b) for b in batches)
    n_alerts = sum(len(d.alerts) for b in batches for d in b)
    impls = {"baseline": baseline, "current": current}
    cpu: dict[str, list[float]] = {k: [] for k in impls}
    rcpu: dict[str, list[float]] = {k: [] for k in impls}
    with start_redis() as server:
        client = server.client(decode_responses=True)
        settings = Settings.model_validate(
            {"redis": {"url": server.url}, "slack": {"mode": "console"}})
        reference = None
        for rnd in range(args.rounds):
            order = list(impls) if rnd % 2 == 0 else list(reversed(impls))
            for name in order:
                c, rc, result = run_once(impls[name], settings, client, batches)
                cpu[name].append(c)
                rcpu[name].append(rc)
                if reference is None:
                    reference = result
                elif result != reference:
                    print(f"MISMATCH: {name} left different Redis contents", file=sys.stderr)
                    return 1
            print(f"round {rnd + 1}: " + ", ".join(
                f"{k} {cpu[k][-1] / decisions * 1e6:.2f} µs" for k in impls), file=sys.stderr)
        client.close()
    assert reference is not None
    out = {"campaigns": args.campaigns, "windows": args.windows, "decisions": decisions,
           "batches": len(batches),
           "alerts": n_alerts, "updates_queued": len(reference["outbox"]),
           "rounds": args.rounds, "baseline": args.baseline}
    for k in impls:
        out[f"{k}_cpu_us_per_decision"] = round(statistics.median(cpu[k]) / decisions * 1e6, 3)
        out[f"{k}_redis_cpu_us_per_decision"] = round(
            statistics.median(rcpu[k]) / decisions * 1e6, 3)
    out["speedup_cpu"] = round(out["baseline_cpu_us_per_decision"]
                               / out["current_cpu_us_per_decision"], 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

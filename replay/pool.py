"""Pool the ``evaluation.json`` of several replays into one table of the detection targets.

Usage::

    python -m ctrguard.replay.pool /tmp/eval201 /tmp/eval202 /tmp/eval203

Each argument is a replay output directory (or an ``evaluation.json``). Counts are summed
over the runs and the ratios taken from the sums; medians are taken over the pooled
incidents. Exit codes: 0 ok, 2 a missing or malformed file.

>>> one = {"ctrguard": {"incident_details": [
...     {"kind": "click_outage", "detected": True, "delay_windows": 3.0,
...      "oracle_delay_windows": 2, "suspected_cause": "click_tracking"},
...     {"kind": "ctr_surge", "detected": True, "delay_windows": 1.0,
...      "oracle_delay_windows": None, "suspected_cause": "bot_clicks"}],
...     "true_episodes": 2, "false_episodes": 1, "campaign_days": 40.0}}
>>> t = pool([one, one])
>>> t["recall_clairvoyant_decidable"], t["median_excess_delay_windows"], t["cause_accuracy"]
(1.0, 1.0, 0.5)
>>> t["episode_precision"], round(t["false_alarms_per_100_campaign_days"], 2)
(0.6666666666666666, 2.5)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from ctrguard.records import encode_pretty
from ctrguard.replay.evaluate import fmt_figure as _f
from ctrguard.replay.generator import CAUSE_OF_KIND

__all__ = ["pool", "format_pooled", "main"]


def pool(evaluations: Sequence[dict[str, Any]], system: str = "ctrguard") -> dict[str, Any]:
    """The target measures pooled over ``evaluations`` (the parsed ``evaluation.json``)."""
    n_oracle = n_oracle_hit = n_true = n_false = n_judged = n_right = 0
    n_incidents = n_detected = 0
    days = 0.0
    excess: list[float] = []
    per_kind: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for ev in evaluations:
        r = ev[system]
        n_true += r["true_episodes"]
        n_false += r["false_episodes"]
        days += r["campaign_days"]
        for row in r["incident_details"]:
            k = per_kind[row["kind"]]
            k["incidents"] += 1
            n_incidents += 1
            detected = bool(row["detected"])
            k["detected"] += detected
            n_detected += detected
            oracle = row.get("oracle_delay_windows")
            if oracle is not None:
                n_oracle += 1
                k["clairvoyant"] += 1
                if detected:
                    n_oracle_hit += 1
                    k["clairvoyant_detected"] += 1
                    excess.append(row["delay_windows"] - oracle)
            if detected and row["kind"] in CAUSE_OF_KIND:
                n_judged += 1
                right = row.get("suspected_cause") in CAUSE_OF_KIND[row["kind"]]
                n_right += right
                k["cause_right"] += right
    episodes = n_true + n_false
    return {
        "runs": len(evaluations),
        "incidents": n_incidents,
        "detected": n_detected,
        "clairvoyant_decidable": n_oracle,
        "detected_clairvoyant_decidable": n_oracle_hit,
        "recall_clairvoyant_decidable": n_oracle_hit / n_oracle if n_oracle else None,
        "median_excess_delay_windows": float(statistics.median(excess)) if excess else None,
        "episodes": episodes,
        "episode_precision": n_true / episodes if episodes else None,
        "false_episodes": n_false,
        "campaign_days": days,
        "false_alarms_per_100_campaign_days": 100 * n_false / days if days else None,
        "cause_judged": n_judged,
        "cause_right": n_right,
        "cause_accuracy": n_right / n_judged if n_judged else None,
        "per_kind": {kind: dict(v) for kind, v in sorted(per_kind.items())},
    }


def format_pooled(t: dict[str, Any]) -> str:
    """The pooled table in the issue's terms, then per incident kind."""
    lines = [
        f"pooled over {t['runs']} runs, {t['campaign_days']:.1f} campaign-days, "
        f"{t['incidents']} incidents ({t['detected']} detected)",
        f"recall, clairvoyant-decidable incidents   "
        f"{_f(t['recall_clairvoyant_decidable'], '.2f')} "
        f"({t['detected_clairvoyant_decidable']}/{t['clairvoyant_decidable']})",
        f"median delay beyond the clairvoyant test  "
        f"{_f(t['median_excess_delay_windows'], '.1f')} windows",
        f"episode precision                         {_f(t['episode_precision'], '.2f')} "
        f"({t['episodes'] - t['false_episodes']}/{t['episodes']})",
        f"false episodes per 100 campaign-days      "
        f"{_f(t['false_alarms_per_100_campaign_days'], '.1f')} ({t['false_episodes']})",
        f"suspected cause right                     {_f(t['cause_accuracy'], '.2f')} "
        f"({t['cause_right']}/{t['cause_judged']})",
        "kind                     detected  clairvoyant  cause right",
    ]
    for kind, k in t["per_kind"].items():
        lines.append(f"{kind:<24} {k.get('detected', 0):>3}/{k.get('incidents', 0):<4} "
                     f"{k.get('clairvoyant_detected', 0):>5}/{k.get('clairvoyant', 0):<5} "
                     f"{k.get('cause_right', 0):>5}/{k.get('detected', 0)}")
    return "\n".join(lines)


def _load(arg: str) -> dict[str, Any]:
    path = Path(arg)
    if path.is_dir():
        path = path / "evaluation.json"
    try:
        return msgspec.json.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ctrguard.replay.pool",
        description="Pool the evaluation.json of several replays (ctrguard replay --labels) "
        "into the detection targets: recall on clairvoyant-decidable incidents, median delay "
        "beyond the clairvoyant test, episode precision, false episodes per 100 "
        "campaign-days and the share of detected incidents with the right suspected cause.",
        epilog="Exit codes: 0 ok, 2 a missing or malformed evaluation.json.")
    p.add_argument("runs", nargs="+", metavar="DIR", help="replay output directories")
    p.add_argument("--system", default="ctrguard", help="alert set to pool (default ctrguard)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = p.parse_args(argv)
    try:
        evaluations = [_load(a) for a in args.runs]
        table = pool(evaluations, args.system)
    except (ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(encode_pretty(table).decode())
    else:
        print(format_pooled(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())

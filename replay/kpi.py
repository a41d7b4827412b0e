"""Labelled hourly KPI series, and how well ``ctrguard score-series`` ranks their anomalies.

The generator makes series like an ad exchange's cost per click or per mille: positive,
about ``hours`` hourly points, a daily cycle and a weekly one (weekends lower, each weekday
its own level), a slow trend, heavy-tailed noise (Student-t with 3 degrees of freedom in log
space, so single points 3-5 times off happen without anything being wrong), and labelled
anomalies: spikes and dips of a few hours, and level shifts (the first hours after the
shift are labelled).

:func:`evaluate` scores every series through the command a user runs (``ctrguard
score-series``, in this process or in another source tree) and reads the scores back as
written, so a score that saturates in the CSV counts as saturated. It reports pointwise ROC
AUC and best F1 (pooled over series, warm-up excluded), how many points share the top
score, and how the scores of normal points are spread (for a calibrated score, uniform).

>>> s = generate_series(seed=3, hours=24 * 14)
>>> len(s.values), int(s.labels.sum()) > 0, bool((s.values > 0).all())
(336, True, True)
>>> round(auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]), 2)
0.75
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["KpiSeries", "auc", "best_f1", "evaluate", "generate_series", "main"]

T0 = 1_767_225_600   # 2026-01-01T00:00:00Z, a Thursday
#: Points at the start of each series not evaluated (the scorer's warm-up).
WARMUP = 7 * 24


@dataclass(frozen=True)
class KpiSeries:
    timestamps: np.ndarray    # epoch seconds
    values: np.ndarray
    labels: np.ndarray        # 1 where a labelled anomaly is
    kinds: list[tuple[str, int, int]]   # (kind, start index, end index exclusive)


def generate_series(seed: int, hours: int = 1500, anomalies: int = 6) -> KpiSeries:
    """One hourly KPI series with labelled anomalies (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    t = np.arange(hours)
    hour = (T0 // 3600 + t) % 24
    dow = ((T0 // 86400) + (T0 // 3600 % 24 + t) // 24 + 3) % 7   # 0 = Monday
    level = math.log(rng.uniform(0.2, 20.0))
    daily_amp = rng.uniform(0.15, 0.6)
    phase = rng.uniform(0, 2 * np.pi)
    daily = daily_amp * np.sin(2 * np.pi * hour / 24 + phase) \
        + 0.3 * daily_amp * np.sin(4 * np.pi * hour / 24 + 2 * phase)
    week_levels = rng.normal(0.0, 0.08, 7)
    week_levels[5:] -= rng.uniform(0.1, 0.5)               # weekends lower
    weekly = week_levels[dow]
    trend = np.cumsum(rng.normal(0.0, 0.004, hours))        # a slow random walk
    noise_sd = rng.uniform(0.04, 0.15)
    noise = noise_sd * rng.standard_t(3, hours)
    log_v = level + daily + weekly + trend + noise
    labels = np.zeros(hours, dtype=np.int8)
    kinds: list[tuple[str, int, int]] = []
    taken = np.zeros(hours, dtype=bool)
    taken[:WARMUP + 24] = True
    for _ in range(anomalies):
        kind = rng.choice(["spike", "dip", "level_shift"], p=[0.45, 0.35, 0.2])
        length = int(rng.integers(1, 4)) if kind == "spike" else int(rng.integers(1, 7))
        for _try in range(50):
            start = int(rng.integers(WARMUP + 24, hours - 80))
            if not taken[start - 24:start + max(length, 48) + 24].any():
                break
        else:
            continue
        if kind == "spike":
            log_v[start:start + length] += math.log(rng.uniform(1.6, 6.0))
        elif kind == "dip":
            log_v[start:start + length] -= math.log(rng.uniform(1.6, 5.0))
        else:
            shift = math.log(rng.uniform(1.5, 3.0)) * rng.choice([-1.0, 1.0])
            log_v[start:] += shift
            length = 6                                          # the change is the anomaly
        labels[start:start + length] = 1
        taken[start - 24:start + max(length, 48) + 24] = True
        kinds.append((str(kind), start, start + length))
    return KpiSeries(T0 + 3600 * t, np.exp(log_v), labels, sorted(kinds, key=lambda k: k[1]))


def write_csv(series: KpiSeries, path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["timestamp", "value"])
        for ts, v in zip(series.timestamps, series.values, strict=True):
            w.writerow([int(ts), f"{v:.6g}"])


def auc(scores, labels) -> float:
    """ROC AUC (ties count half), from ranks."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def best_f1(scores, labels) -> tuple[float, float]:
    """Best pointwise F1 over every threshold, and the threshold (score >= it alerts)."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    k = np.arange(1, len(s) + 1)
    # Only cut between distinct scores: tied points alert together.
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    precision, recall = tp[last] / k[last], tp[last] / max(int(y.sum()), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0)
    i = int(np.argmax(f1))
    return float(f1[i]), float(s_sorted[last][i])


def _score_files(paths: list[Path], out_dir: Path, tree: Path | None,
                 python: str) -> None:
    """Run ``ctrguard score-series`` on each file: here, or in another source tree."""
    if tree is None:
        from ctrguard.cli import main as cli_main

        for p in paths:
            code = cli_main(["score-series", "--csv", str(p), "--out",
                             str(out_dir / p.name), "--quiet"])
            if code != 0:
                raise RuntimeError(f"score-series failed on {p} (exit {code})")
        return
    env = dict(os.environ, PYTHONPATH=str(tree))
    for p in paths:
        subprocess.run([python, "-m", "ctrguard", "score-series", "--csv", str(p), "--out",
                        str(out_dir / p.name), "--quiet"], cwd=tree, env=env, check=True)


def evaluate(seeds: list[int], hours: int = 1500, tree: Path | None = None,
             python: str = sys.executable, progress: bool = True) -> dict[str, float]:
    """Generate one series per seed, score each through ``score-series``, pool the metrics."""
    all_scores, all_labels, normal = [], [], []
    top_ties = 0
    per_series_auc = []
    with tempfile.TemporaryDirectory(prefix="ctrguard-kpi-") as tmp:
        src, out = Path(tmp, "in"), Path(tmp, "out")
        src.mkdir()
        out.mkdir()
        series = {}
        for seed in seeds:
            s = series[seed] = generate_series(seed, hours)
            write_csv(s, src / f"kpi-{seed}.csv")
        started = time.monotonic()
        _score_files(sorted(src.iterdir()), out, tree, python)
        if progress:
            print(f"scored {len(seeds)} series in {time.monotonic() - started:.1f}s",
                  file=sys.stderr)
        for seed, s in series.items():
            with open(out / f"kpi-{seed}.csv", newline="") as fh:
                rows = list(csv.DictReader(fh))
            scores = np.array([float(r["anomaly_score"] or 0.0) for r in rows])[WARMUP:]
            labels = s.labels[WARMUP:]
            all_scores.append(scores)
            all_labels.append(labels)
            normal.append(scores[labels == 0])
            top_ties += int((scores == scores.max()).sum())
            per_series_auc.append(auc(scores, labels))
    scores, labels = np.concatenate(all_scores), np.concatenate(all_labels)
    f1, threshold = best_f1(scores, labels)
    norm = np.sort(np.concatenate(normal))
    grid = np.arange(1, len(norm) + 1) / len(norm)
    return {
        "series": len(seeds), "points": int(len(scores)), "anomalous_points": int(labels.sum()),
        "roc_auc_pooled": round(auc(scores, labels), 4),
        "roc_auc_mean_per_series": round(float(np.nanmean(per_series_auc)), 4),
        "best_f1_pooled": round(f1, 4), "best_f1_threshold": threshold,
        "points_at_1": int((scores >= 1.0).sum()),
        "top_score_ties_per_series": round(top_ties / len(seeds), 2),
        "normal_mean": round(float(norm.mean()), 4),
        "normal_ks_uniform": round(float(np.max(np.abs(norm - grid))), 4),
        "normal_share_ge_0.99": round(float((norm >= 0.99).mean()), 4),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ctrguard.replay.kpi",
        description="Generate labelled hourly KPI series (daily and weekly cycles, heavy-tailed "
        "noise, spikes, dips, level shifts), score them with 'ctrguard score-series' and "
        "print pointwise ROC AUC, best F1, saturation and the spread of normal points' scores.")
    p.add_argument("--seeds", default="1-40", help="seeds, e.g. 1-40 or 3,5,9 (default 1-40)")
    p.add_argument("--hours", type=int, default=1500, help="points per series (default 1500)")
    p.add_argument("--tree", type=Path, default=None,
                   help="score with the ctrguard of this source tree (e.g. an export of "
                        "another revision), in a subprocess")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    try:
        seeds = _parse_seeds(args.seeds)
    except ValueError as exc:
        print(f"error: --seeds: {exc}", file=sys.stderr)
        return 2
    result = evaluate(seeds, args.hours, args.tree)
    for k, v in result.items():
        print(f"{k:28} {v}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        a, _, b = part.strip().partition("-")
        seeds += list(range(int(a), int(b) + 1)) if b else [int(a)]
    if not seeds:
        raise ValueError("no seeds")
    return seeds


if __name__ == "__main__":
    sys.exit(main())

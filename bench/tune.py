"""Step 10 of ``bench.run``: ``ctrguard tune``, 20 settings over a labelled day of 40 campaigns.

The target (issue 17): 20 settings over a 24-hour, 40-campaign labelled stream in under 2
minutes on 2 cores. A generated scenario (``ctrguard generate``, not timed) is swept by
``ctrguard tune`` in a child process, as a user runs it: wall time from start to exit,
recording included; the settings are 5 false-alarm budgets x 2 warm-ups x 2 cool-downs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, child_env, log

#: The sweep: 5 x 2 x 2 = 20 settings.
SETS = ("detectors.false_alarms_per_campaign_day=0.005,0.01,0.02,0.05,0.1",
        "detectors.warmup_windows=4,8", "detectors.cooldown_windows=3,6")
TARGET_S = 120.0


def _ctrguard(args: list[str], timeout: float) -> None:
    proc = subprocess.run([sys.executable, "-m", "ctrguard", *args], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ctrguard {args[0]} exited {proc.returncode}: {proc.stderr[-2000:]}")


def measure_tune(campaigns: int = 40, hours: float = 24.0, seed: int = 101,
                 timeout: float = 1800) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ctrguard-bench-tune-") as tmp:
        scen, out = Path(tmp) / "scen", Path(tmp) / "tune"
        log(f"10. tune: generating {campaigns} campaigns x {hours:g} h (seed {seed}) ...")
        _ctrguard(["generate", "--out", str(scen), "--seed", str(seed), "--campaigns",
                   str(campaigns), "--hours", str(hours), "--quiet"], timeout)
        meta = json.loads((scen / "scenario.json").read_text())
        args = ["tune", "--scenario", str(scen), "--out", str(out), "--quiet"]
        for spec in SETS:
            args += ["--set", spec]
        t0 = time.perf_counter()
        _ctrguard(args, timeout)
        wall = time.perf_counter() - t0
        result = json.loads((out / "tune.json").read_text())
    events = meta.get("impressions", 0) + meta.get("clicks", 0)
    out_d = {"wall_s": round(wall, 2), "settings": len(result["rows"]),
             "campaigns": campaigns, "hours": hours, "events": events,
             "processes": result["processes"],
             "detect_cpu_s_per_setting": round(sum(r["cpu_s"] for r in result["rows"])
                                               / len(result["rows"]), 3),
             "target_s": TARGET_S}
    log(f"10. tune: {out_d['settings']} settings in {wall:.1f}s ({out_d})")
    return out_d


def tune_rows(d: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    """The step's row of the report (absent in old results)."""
    if not d:
        return []
    ok = "met" if d["wall_s"] < d["target_s"] else "NOT met"
    return [(f"10. ctrguard tune: {d['settings']} settings, {d['campaigns']} campaigns x "
             f"{d['hours']:g} h", f"{d['wall_s']:.1f} s",
             f"target < {d['target_s']:.0f} s: {ok}; {d['processes']} processes, detectors "
             f"{d['detect_cpu_s_per_setting']:.2f} CPU s per setting, the rest decoding and "
             f"windowing once ({d['events']:,} events)")]

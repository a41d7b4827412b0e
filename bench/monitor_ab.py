"""A/B of ``CampaignMonitor.update``: CPU per campaign-window and identical outputs.

Two implementations of the detector core run the same recorded windows: the working
tree's and that of a git revision (``--base``, default ``HEAD``: the uncommitted change).
The revision's ``detectors/``, ``ctrguard/``, ``setup.py`` and ``pyproject.toml`` are
extracted (``git archive``) into ``/tmp/monab-<commit>`` and compiled there by its own
``python -m detectors build``. Each side runs in a subprocess of its own (both import
``detectors.monitor``, so pickles name the same functions), fed the same streams:

* ``scenario``: every ``(window, counts)`` that :mod:`bench.engine`'s scenario
  (``bench.common.build_scenario``, fed to ``flows.engine.EventPreparer`` and
  ``ShardState``) hands each campaign's monitor, in call order (recorded once, cached in
  ``/tmp``);
* synthetic campaigns with every kind of incident (click outage, bot clicks, impression
  logging doubled and halved, silence and gaps, drift and recovery, volume changes,
  behaviour change), odd counts (clicks without impressions), repeated and skipped
  windows, campaigns without ``all``, many segments, and other detector settings.

Outputs must be identical, or the exit status is 1: the ``repr`` of every verdict of
every call; the called monitor's state after every call, as ``pickle.dumps`` bytes and as
its content (:func:`canonical`: what the pickle holds, floats by their bits); the
verdicts and states of a run resumed from the other side's snapshot taken halfway; and, unless ``--no-pure``, the working tree's Python source
(``CTRGUARD_PURE_PYTHON=1``) against its compiled core. Then ``--rounds`` timed
replays of each stream, the two sides alternating (which goes first alternates too),
CPU time (``time.process_time``) of the whole replay loop divided by its calls.

``python -m bench.monitor_ab --base 1d108f1 --rounds 6``
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import pickle
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: What a base revision's build needs: the detectors and every C extension's sources.
_BASE_PATHS = ("detectors", "ctrguard", "flows", "setup.py", "pyproject.toml")
W = 300
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z

# A stream: {"name", "settings": DetectorSettings kwargs, "campaigns": int,
#            "calls": [(campaign, start, end, ((series, impressions, clicks), ...)), ...]}


# --------------------------------------------------------------------------- recording


def record_scenario(events: int, campaigns: int, seed: int) -> dict[str, Any]:
    """Every ``update`` call of :mod:`bench.engine`'s scenario run, in order."""
    from bench.common import DIMENSIONS, build_scenario
    from bench.engine import _batches
    from ctrguard.config import load_config_text
    from ctrguard.events import decode_batch
    from detectors.monitor import build_monitor
    from flows.engine import EventPreparer, ShardState

    sc = build_scenario(events, campaigns, seed)
    settings = load_config_text(f"segments:\n  dimensions: [{', '.join(DIMENSIONS)}]\n",
                                source="bench", env={})
    calls: list[tuple] = []
    n_monitors = [0]

    class Recorder:
        def __init__(self) -> None:
            self.id = n_monitors[0]
            n_monitors[0] += 1
            self.inner = build_monitor(settings.detectors)

        def update(self, window, counts):
            calls.append((self.id, window.start, window.end,
                          tuple((s, c.impressions, c.clicks) for s, c in counts.items())))
            return self.inner.update(window, counts)

    def frontier(values: list[bytes]) -> int | None:
        ts = decode_batch(values[-50:]).ts_ms
        return int(ts.max()) if ts.size else None

    batches = _batches(sc.impressions, sc.clicks, frontier)
    now_ms = int(time.time() * 1000)
    prep = EventPreparer(settings)
    states = [ShardState(settings, ["impressions:0", "clicks:0"], Recorder)
              for _ in range(settings.windows.shards)]
    for batch in batches:
        for shard, chunk in prep.chunks(prep.prepare(batch, now_ms=now_ms)):
            states[shard].ingest(chunk)
    for state in states:
        state.flush()
    defaults = settings.detectors.model_dump()
    return {"name": "scenario", "settings": defaults, "campaigns": n_monitors[0],
            "calls": calls}


def _campaign(rng, n_windows: int, volume: float, segments, fault: str | None,
              start: int, duration: int, cycle: bool = True):
    """Windows of one campaign: ``[(t, ((series, n, k), ...)), ...]`` with one fault."""
    import numpy as np

    out = []
    for t in range(n_windows):
        on = fault is not None and start <= t < start + duration
        after = fault is not None and t >= start
        daily = 1.0 + 0.5 * np.sin(2 * np.pi * t / 288) if cycle else 1.0
        counts = []
        for j, (seg, share, ctr) in enumerate(segments):
            lam = volume * share * daily
            p = ctr
            if fault == "volume_up" and after:
                lam *= 2.5
            if fault == "volume_down" and after:
                lam *= 0.35
            if fault == "drift" and after:  # creative fatigue, then a fresh creative
                p *= max(0.4, 1.0 - 0.004 * (t - start)) if on else 1.0
            if fault == "behaviour_change" and on:
                p *= 0.6 if j % 2 == 0 else 1.6
            if fault == "click_tracking" and on:
                p = 0.0
            n = int(rng.poisson(lam))
            k = int(rng.binomial(n, min(p, 1.0)))
            if fault == "impression_logging" and on:
                n *= 2
            if fault == "impression_halving" and on:
                n //= 2
            if fault == "bot_clicks" and on and j == len(segments) - 1:
                k += int(rng.poisson(3 * lam * ctr + 0.5))
            if fault == "silence" and on and j == 0:
                n = k = 0
            if fault == "odd" and on and t % 3 == 0:
                k, n = k + n + 2, (0 if t % 2 else n)  # clicks without impressions
            counts.append((seg, n, k))
        if fault == "silence_all" and on:
            counts = [(seg, 0, 0) for seg, _, _ in counts]
        total = ("all", sum(c[1] for c in counts), sum(c[2] for c in counts))
        out.append((t, (total, *counts)))
    return out


_FAULTS = (None, "click_tracking", "impression_logging", "impression_halving", "bot_clicks",
           "behaviour_change", "silence", "silence_all", "drift", "volume_up", "volume_down",
           "odd")
_SEGMENTS = (("device=mobile", 0.55, 0.02), ("device=desktop", 0.35, 0.035),
             ("device=tablet", 0.1, 0.025))


def _interleave(name: str, settings: dict, campaigns: list[list[tuple]]) -> dict[str, Any]:
    """Calls in window order, campaigns in turn (as the flow closes windows)."""
    calls = []
    longest = max(len(c) for c in campaigns)
    for i in range(longest):
        for ci, windows in enumerate(campaigns):
            if i < len(windows):
                t, counts = windows[i]
                calls.append((ci, T0 + t * W, T0 + (t + 1) * W, counts))
    return {"name": name, "settings": settings, "campaigns": len(campaigns), "calls": calls}


def synthetic_streams(seed: int = 7) -> list[dict[str, Any]]:
    """Campaigns with every kind of incident, odd windows and non-default settings."""
    import numpy as np

    rng = np.random.default_rng(seed)
    streams = []
    camps = []
    for volume in (6.0, 60.0, 600.0, 6000.0):
        for fault in _FAULTS:
            duration = 150 if fault == "drift" else 14
            camps.append(_campaign(rng, 360, volume, _SEGMENTS, fault, 200, duration))
    streams.append(_interleave("incidents", {}, camps))

    # Gaps (short, long, beyond the replay limit), repeated and earlier windows, campaigns
    # without ``all``, segments that come and go, many segments, names sorting before "all".
    camps = []
    many = tuple((f"geo={c}", w, ctr) for c, w, ctr in (
        ("AT", 0.05, 0.01), ("BE", 0.1, 0.02), ("DE", 0.3, 0.03), ("FR", 0.2, 0.02),
        ("IT", 0.15, 0.04), ("NL", 0.1, 0.015), ("PL", 0.05, 0.05), ("ES", 0.05, 0.03)))
    for volume in (30.0, 900.0):
        base = _campaign(rng, 300, volume, _SEGMENTS, "bot_clicks", 120, 10)
        gappy = [w for w in base if not (50 <= w[0] < 53 or 150 <= w[0] < 170)]
        gappy = gappy[:200] + [gappy[150], gappy[199]] + gappy[200:]  # repeated windows
        gappy += [(t + 400, c) for t, c in base[:60]]                 # beyond 288 windows
        camps.append(gappy)
        camps.append([(t, c[1:]) for t, c in base])                   # no "all"
        camps.append([(t, tuple(x for x in c if t % 5 or x[0] != "device=tablet"))
                      for t, c in base])                              # a segment comes, goes
        camps.append(_campaign(rng, 300, volume, many, "click_tracking", 150, 20))
        camps.append(_campaign(rng, 300, volume, (("a", 0.5, 0.03), ("Z", 0.3, 0.02),
                                                  ("zz", 0.2, 0.01)), "silence", 100, 30))
    streams.append(_interleave("gaps_segments", {}, camps))

    # The module docstring's and tests/test_native.py's kinds of campaign, one series only.
    camps = []
    for volume, fault in ((2000.0, "click_tracking"), (500.0, "impression_logging"),
                          (500.0, "volume_up"), (3.0, "click_tracking"), (20000.0, "drift")):
        camps.append(_campaign(rng, 300, volume, (), fault, 100, 60 if fault == "drift" else 20,
                               cycle=False))
        camps[-1] = [(t, (("all", *_all_only(rng, volume, t, fault)),)) for t, _ in camps[-1]]
    streams.append(_interleave("single_series", {}, camps))

    variants = ({"drift_detector": "adwin", "drift_threshold": 0.002},
                {"drift_detector": "none"},
                {"cusum_threshold": 4.0, "max_incident_windows": 8, "cooldown_windows": 0,
                 "warmup_windows": 1, "group_windows": 0},
                {"season_alpha": 0.0, "baseline_resolution": 0.0, "shrinkage_min": 30.0,
                 "ctr_ratios": (0.2, 0.8, 1.25, 4.0), "volume_ratios": (0.5,),
                 "drift_ratios": (0.8,)})
    for i, settings in enumerate(variants):
        camps = [_campaign(rng, 300, volume, _SEGMENTS, fault, 150, 40 if fault == "drift" else 12)
                 for volume in (20.0, 2000.0)
                 for fault in ("click_tracking", "impression_logging", "bot_clicks", "drift",
                               "volume_up", "silence_all")]
        streams.append(_interleave(f"settings_{i}", settings, camps))
    return streams


def _all_only(rng, volume: float, t: int, fault: str) -> tuple[int, int]:
    on = t >= 100
    n = int(rng.poisson(volume))
    p = 0.03
    if fault == "click_tracking" and on and t < 120:
        p = 0.0
    if fault == "drift" and on:
        p = 0.03 * max(0.45, 1.0 - 0.005 * (t - 100)) if t < 250 else 0.03
    k = int(rng.binomial(n, p))
    if fault == "impression_logging" and on:
        n *= 2
    if fault == "volume_up" and on:
        extra = int(rng.poisson(volume))
        n, k = n + extra, k + int(rng.binomial(extra, 0.03))
    return n, k


# --------------------------------------------------------------------------- worker


def canonical(obj: Any, out: list[str], depth: int = 0) -> None:
    """``obj``'s content as text: what a pickle holds, without the pickle's memo (which
    object is shared with which: after a restore, a fresh incident's kind is a literal
    where an old one's is a string the snapshot shared) or a set's order."""
    t = type(obj)
    if depth > 50:
        raise RecursionError("state too deep")
    if t is float:
        out.append(f"f{obj.hex()}")
    elif obj is None or t in (int, bool, str, bytes):
        out.append(f"{t.__name__}:{obj!r}")
    elif t in (list, tuple):
        out.append(f"{t.__name__}{len(obj)}(")
        for x in obj:
            canonical(x, out, depth + 1)
        out.append(")")
    elif t is dict:
        out.append(f"dict{len(obj)}(")
        for k, v in obj.items():
            canonical(k, out, depth + 1)
            canonical(v, out, depth + 1)
        out.append(")")
    elif t in (set, frozenset):
        out.append(f"{t.__name__}{sorted(map(repr, obj))}")
    elif isinstance(obj, type) or callable(obj):  # pickled by name
        out.append(f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', obj)}")
    else:
        reduced = obj.__reduce_ex__(4)
        func, args = reduced[0], reduced[1]
        out.append(f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', func)}(")
        canonical(args, out, depth + 1)
        for extra in reduced[2:3]:
            canonical(extra, out, depth + 1)
        out.append(")")


def state_digest(obj: Any) -> bytes:
    out: list[str] = []
    canonical(obj, out)
    return "\x1f".join(out).encode()



def _worker(root: str) -> int:
    """Serve commands on stdin (one JSON line each) with ``root``'s detector core."""
    sys.path.insert(0, root)
    import detectors  # noqa: F401  (selects compiled or Python source)
    from detectors import native
    from detectors.base import Counts, Window
    from detectors.monitor import build_monitor
    from detectors.settings import DetectorSettings

    gc.set_threshold(50_000, 20, 100)  # as the flow (flows.engine.tune_gc)
    streams: list[dict[str, Any]] = []

    def load(path: str) -> None:
        with open(path, "rb") as fh:
            raw = pickle.load(fh)
        for s in raw:
            counts_cache: dict[tuple, dict] = {}
            calls = []
            for ci, start, end, items in s["calls"]:
                counts = counts_cache.get(items)
                if counts is None:
                    counts = counts_cache[items] = {
                        name: Counts(n, k) for name, n, k in items}
                calls.append((ci, Window(start, end), counts))
            streams.append({"name": s["name"], "settings": DetectorSettings(**s["settings"]),
                            "campaigns": s["campaigns"], "calls": calls})

    def monitors(s: dict[str, Any]) -> list:
        return [build_monitor(s["settings"]) for _ in range(s["campaigns"])]

    def check(i: int, snapshot_out: str | None, resume_from: str | None) -> dict[str, Any]:
        s = streams[i]
        calls = s["calls"]
        cut = len(calls) // 2
        if resume_from:
            with open(resume_from, "rb") as fh:
                mons = pickle.load(fh)
            first = cut
        else:
            mons = monitors(s)
            first = 0
        digests = {part: (hashlib.sha256(), hashlib.sha256(), hashlib.sha256())
                   for part in ("head", "tail")}
        verdicts = {"head": 0, "tail": 0}
        for j in range(first, len(calls)):
            if j == cut and snapshot_out:
                with open(snapshot_out, "wb") as fh:
                    pickle.dump(mons, fh)
            ci, window, counts = calls[j]
            out = mons[ci].update(window, counts)
            part = "head" if j < cut else "tail"
            verdicts[part] += len(out)
            digests[part][0].update(repr(out).encode())
            digests[part][1].update(state_digest(mons[ci]))
            digests[part][2].update(pickle.dumps(mons[ci]))
        return {"calls": len(calls) - first, "verdicts": verdicts,
                "end_state": hashlib.sha256(state_digest(mons)).hexdigest()[:16],
                "end_pickle": hashlib.sha256(pickle.dumps(mons)).hexdigest()[:16],
                **{f"{part}_{what}": d[k].hexdigest()[:16]
                   for part, d in digests.items()
                   for k, what in ((0, "verdicts"), (1, "states"), (2, "pickles"))}}

    def timed(i: int) -> dict[str, Any]:
        s = streams[i]
        mons = monitors(s)
        calls = s["calls"]
        outs = []
        append = outs.append
        gc.collect()
        t0 = time.process_time()
        for ci, window, counts in calls:
            append(mons[ci].update(window, counts))
        cpu = time.process_time() - t0
        digest = hashlib.sha256(repr(outs).encode()).hexdigest()[:16]
        return {"cpu_s": cpu, "calls": len(calls), "verdicts": digest}

    print(json.dumps({"ready": True, "status": native.status()}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "load":
            load(cmd["path"])
            res: dict[str, Any] = {"streams": len(streams), "in_use": native.in_use()}
        elif op == "check":
            res = check(cmd["stream"], cmd.get("snapshot_out"), cmd.get("resume_from"))
        elif op == "time":
            res = timed(cmd["stream"])
        else:
            return 0
        print(json.dumps(res), flush=True)
    return 0


class Side:
    """One implementation, served by a worker subprocess."""

    def __init__(self, label: str, root: Path, pure: bool = False):
        self.label = label
        env = {k: v for k, v in os.environ.items() if k != "CTRGUARD_PURE_PYTHON"}
        if pure:
            env["CTRGUARD_PURE_PYTHON"] = "1"
        # The settings' pickle holds a set of field names: same string hashes, same bytes.
        env["PYTHONHASHSEED"] = "0"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.monitor_ab", "--worker", str(root)], cwd=REPO,
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.status = self._read()["status"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.label}: worker died")
        return json.loads(line)

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


# --------------------------------------------------------------------------- driver


def base_tree(rev: str) -> Path:
    """``rev``'s detector core, extracted and compiled in ``/tmp/monab-<commit>``."""
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=REPO,
                         check=True, capture_output=True, text=True).stdout.strip()
    root = Path(f"/tmp/monab-{sha[:12]}")
    status = subprocess.run([sys.executable, "-m", "detectors", "status"], cwd=root,
                            capture_output=True, text=True).stdout.strip() \
        if root.exists() else ""
    if status != "compiled":
        root.mkdir(exist_ok=True)
        archive = subprocess.run(["git", "archive", sha, *_BASE_PATHS], cwd=REPO, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
        print(f"building {rev} ({sha[:12]}) in {root} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "detectors", "build", "--quiet"], cwd=root,
                       check=True, stdout=subprocess.DEVNULL)
    return root


def _streams_file(args) -> Path:
    path = Path(f"/tmp/monab-streams-{args.events}-{args.campaigns}-{args.seed}.pkl")
    if not path.exists() or args.record:
        print(f"recording the scenario ({args.events} events) ...", file=sys.stderr,
              flush=True)
        streams = [record_scenario(args.events, args.campaigns, args.seed),
                   *synthetic_streams()]
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(streams, fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.monitor_ab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="HEAD", help="git revision to compare with (HEAD)")
    p.add_argument("--rounds", type=int, default=10, help="timed replays per side (10)")
    p.add_argument("--events", type=int, default=300_000, help="scenario size (300000)")
    p.add_argument("--campaigns", type=int, default=2000)
    p.add_argument("--seed", type=int, default=20261123)
    p.add_argument("--record", action="store_true", help="record the streams again")
    p.add_argument("--no-pure", action="store_true",
                   help="skip the Python source vs compiled comparison")
    p.add_argument("--no-check", action="store_true", help="time only")
    p.add_argument("--worker", metavar="ROOT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args.worker)

    path = _streams_file(args)
    sides = [Side("base", base_tree(args.base)), Side("new", REPO)]
    if not args.no_pure and not args.no_check:
        sides.append(Side("new_pure", REPO, pure=True))
    try:
        return _compare(args, path, sides)
    finally:
        for side in sides:
            side.close()


def _compare(args, path: Path, sides: list[Side]) -> int:
    names = []
    for side in sides:
        info = side.ask(op="load", path=str(path))
        names = info["streams"]
        print(f"{side.label:9s} {side.status:9s} (in use: {info['in_use']})")
        if side.label in ("base", "new") and info["in_use"] != "compiled":
            print(f"  warning: {side.label} is not running compiled code (make native)")
    with open(path, "rb") as fh:
        meta = [(s["name"], len(s["calls"]), sum(len(c[3]) for c in s["calls"]))
                for s in pickle.load(fh)]
    assert len(meta) == names
    ok = True
    if not args.no_check:
        ok = _check(sides, meta)
    base, new = sides[0], sides[1]
    rows: dict[str, dict[str, list[float]]] = {}
    for r in range(args.rounds):
        for i, (name, calls, _) in enumerate(meta):
            order = (base, new) if (r + i) % 2 == 0 else (new, base)
            for side in order:
                res = side.ask(op="time", stream=i)
                rows.setdefault(name, {}).setdefault(side.label, []).append(
                    res["cpu_s"] / calls * 1e6)
                rows[name].setdefault(side.label + "_digest", []).append(res["verdicts"])
    # The machine is shared: a round's two sides run back to back, so their ratio is
    # steadier than either figure; "x pair" is the median of those ratios.
    print("\nCPU per campaign-window (us): median and least of the rounds, sides alternating;"
          " x = base / new")
    print(f"{'stream':15s} {'calls':>6s} {'series':>6s} {'base med':>8s} {'min':>6s} "
          f"{'new med':>8s} {'min':>6s} {'x pair':>6s} {'x min':>5s}  per round (base/new)")
    for name, calls, series in meta:
        b, n = rows[name]["base"], rows[name]["new"]
        if len(set(rows[name]["base_digest"] + rows[name]["new_digest"])) != 1:
            print(f"{name}: timed runs gave different verdicts")
            ok = False
        pairs = list(zip(b, n, strict=True))
        per = " ".join(f"{x:.1f}/{y:.1f}" for x, y in pairs)
        print(f"{name:15s} {calls:6d} {series:6d} {statistics.median(b):8.2f} {min(b):6.2f} "
              f"{statistics.median(n):8.2f} {min(n):6.2f} "
              f"{statistics.median([x / y for x, y in pairs]):6.2f} {min(b) / min(n):5.2f}"
              f"  {per}")
    print("outputs identical" if ok else "OUTPUTS DIFFER")
    return 0 if ok else 1


def _check(sides: list[Side], meta: list[tuple[str, int, int]]) -> bool:
    """Same verdicts and states on every side; snapshots cross-restore."""
    base, new = sides[0], sides[1]
    ok = True
    total_calls = total_verdicts = 0
    print("\nchecks (verdict reprs and pickled states after every call, halves split at a "
          "snapshot)")
    for i, (name, calls, _) in enumerate(meta):
        snaps = {s.label: f"/tmp/monab-snap-{os.getpid()}-{s.label}.pkl" for s in (base, new)}
        full = {s.label: s.ask(op="check", stream=i, snapshot_out=snaps.get(s.label))
                for s in sides}
        resumed = {"new<-base": new.ask(op="check", stream=i, resume_from=snaps["base"]),
                   "base<-new": base.ask(op="check", stream=i, resume_from=snaps["new"])}
        for snap in snaps.values():
            Path(snap).unlink(missing_ok=True)
        ref = full["base"]
        problems = []
        # Runs from the start: the same verdicts, state contents and pickle bytes after every
        # call. Runs resumed from a snapshot: the same verdicts and state contents (their
        # pickles share other strings: a restored string is not a literal).
        for label, res in full.items():
            problems += [f"{label}.{k}" for k in ("head_verdicts", "tail_verdicts",
                                                  "head_states", "tail_states", "end_state",
                                                  "head_pickles", "tail_pickles", "end_pickle")
                         if res[k] != ref[k]]
        for label, res in resumed.items():
            problems += [f"{label}.{k}" for k in ("tail_verdicts", "tail_states", "end_state")
                         if res[k] != ref[k]]
        n_verdicts = ref["verdicts"]["head"] + ref["verdicts"]["tail"]
        total_calls += calls
        total_verdicts += n_verdicts
        print(f"  {name:15s} {calls:7d} calls {n_verdicts:6d} verdicts: "
              + ("identical" if not problems else "DIFFER " + ", ".join(problems)))
        ok = ok and not problems
    print(f"  total {total_calls} calls, {total_verdicts} verdicts, sides: "
          + ", ".join(s.label for s in sides))
    return ok


if __name__ == "__main__":
    sys.exit(main())

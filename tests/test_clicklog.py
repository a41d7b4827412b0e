"""The click log's window evidence is matched when first asked: the same answer as at the
close, whatever the shard did since (more clicks logged, the impressions' runs merged)."""

import numpy as np

from ctrguard.flows.clicklog import ClickLog
from ctrguard.flows.engine import dedup_keys, ref_keys

SEGMENTS = {"m": ("all", "device=m"), "d": ("all", "device=d")}


def _log(wid: int, n: int, seed: int) -> ClickLog:
    rng = np.random.default_rng(seed)
    log = ClickLog()
    cids = [f"c{i % 3}" for i in range(n)]
    users = [f"u{rng.integers(0, n // 2)}" for _ in range(n)]
    refs = [None if rng.random() < 0.2 else f"i{rng.integers(0, n)}" for _ in range(n)]
    log.add(np.full(n, wid), cids, ["m" if i % 4 else "d" for i in range(n)],
            dedup_keys(cids, [f"k{i}" for i in range(n)]), ref_keys(cids, users),
            ref_keys(cids, refs), next_close=None)
    return log


def _shown(n: int) -> list[np.ndarray]:
    """Every other impression of the clicks' ids shown (the others are made up)."""
    idx = range(0, n, 2)
    return [np.sort(dedup_keys([f"c{i % 3}" for i in idx], [f"i{i}" for i in idx]))]


def test_evidence_asked_late_is_the_evidence_at_the_close():
    eager_log, lazy_log = _log(7, 200, 1), _log(7, 200, 1)
    runs, late_runs = _shown(200), _shown(200)
    eager = eager_log.close(7, runs)
    answers = {cid: eager.evidence(cid, SEGMENTS.__getitem__) for cid in ("c0", "c1", "c2")}
    assert any(s > 0 for ev in answers.values() for s, _ in ev.values())  # not trivial
    lazy = lazy_log.close(7, late_runs)
    # What a shard does after a close: logs the next window's clicks, replaces its runs.
    lazy_log.add(np.full(3, 8), ["c0", "c1", "c2"], ["m", "m", "d"],
                 dedup_keys(["c0", "c1", "c2"], ["x", "y", "z"]),
                 ref_keys(["c0", "c1", "c2"], ["u1", "u2", "u3"]),
                 ref_keys(["c0", "c1", "c2"], ["i1", "i2", "i3"]), next_close=8)
    late_runs[0] = np.zeros(0, dtype=np.uint64)
    late_runs.append(np.arange(5, dtype=np.uint64))
    assert {cid: lazy.evidence(cid, SEGMENTS.__getitem__)
            for cid in ("c0", "c1", "c2")} == answers
    assert sorted(set(lazy.cids.tolist())) == ["c0", "c1", "c2"]


def test_a_window_without_clicks_has_no_evidence():
    log = _log(7, 10, 2)
    assert log.close(6, _shown(10)) is None
    assert len(log) == 10

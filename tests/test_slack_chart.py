"""The chart history (``SeriesHistory``) against a plain reference: every series' points
are the last ``windows`` windows it had events in, whatever the campaign's other series do
(appear late, skip windows, overflow 32 bits), and idle campaigns are forgotten."""

import random

from ctrguard.records import Figure, WindowDecision
from ctrguard.sinks.slack_chart import _MAX_U32, SeriesHistory

WINDOW_S = 300


def _decision(cid: str, wid: int, counts: dict[str, tuple[int, int]]) -> WindowDecision:
    figs = tuple(Figure(cid, seg, "", "", wid * WINDOW_S, imps, clicks, 0.0, "ok")
                 for seg, (imps, clicks) in counts.items())
    return WindowDecision(cid, wid * WINDOW_S, (wid + 1) * WINDOW_S, figs, ())


def _reference(seen: dict, cid: str, seg: str, last_wid: int, k: int) -> list[list[int]]:
    return [[w * WINDOW_S, *seen[(cid, seg, w)]] for w in range(last_wid - k + 1, last_wid + 1)
            if (cid, seg, w) in seen and any(seen[(cid, seg, w)])]


def test_points_are_each_series_own_last_windows():
    rng = random.Random(5)
    k = 6
    h = SeriesHistory(k, WINDOW_S)
    seen: dict[tuple[str, str, int], tuple[int, int]] = {}
    last: dict[str, int] = {}
    segments = ["all", "device=mobile", "device=desktop", "geo=FR", "geo=US"]
    for wid in range(40):
        batch = []
        for cid in ("c1", "c2", "c3"):
            if cid == "c3" and wid > 25:
                continue  # goes idle: forgotten after k windows
            # A segment appears late, another only some windows; sometimes huge counts.
            segs = [s for s in segments if rng.random() < 0.7 and not (s == "geo=US" and wid < 10)]
            counts = {s: (rng.choice([0, rng.randint(1, 900), 5_000_000_000]),
                          rng.randint(0, 30)) for s in ["all", *segs[1:]]}
            batch.append(_decision(cid, wid, counts))
            last[cid] = wid
            for s, (imps, clicks) in counts.items():
                seen[(cid, s, wid)] = (min(imps, _MAX_U32), clicks)
        h.observe(batch)
        for cid in ("c1", "c2"):
            for seg in segments:
                assert h.points(cid, seg) == _reference(seen, cid, seg, last[cid], k), \
                    (wid, cid, seg)
    assert h.points("c1", "geo=US")        # the late segment is there
    assert h.points("c3", "all") == []     # idle for more than k windows: forgotten
    assert h.points("c1", "no-such-segment") == [] and h.points("zz", "all") == []

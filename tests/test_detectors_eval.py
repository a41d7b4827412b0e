"""End-to-end quality of the detectors on a generated, labelled stream (no services).

The stream is the replay generator's (40 campaigns, 24 h, incidents and traps), counted per
campaign, window and segment the way the engine does (internal traffic, crawler user
agents and re-delivered event ids excluded). Regression floors, not the issue's targets:
see the detectors report for where they stand.
"""

from __future__ import annotations

import numpy as np
import pytest

from ctrguard.detectors.base import ALL, Counts, Window
from ctrguard.detectors.baselines import RawRiverBaseline, ZTestBaseline
from ctrguard.detectors.monitor import build_monitor
from ctrguard.detectors.settings import DetectorSettings

generator = pytest.importorskip("ctrguard.replay.generator")
evaluate_mod = pytest.importorskip("ctrguard.replay.evaluate")

W = 300
pytestmark = pytest.mark.slow


def _counts(t, n_camp: int, w0: int, n_win: int) -> np.ndarray:
    crawler = ((t.ua >= generator._UA_CRAWLER_START)
               & (t.ua < generator._UA_CRAWLER_START + len(generator.CRAWLER_USER_AGENTS)))
    keep = ~t.internal & ~crawler
    _, first = np.unique(t.eid, return_index=True)
    once = np.zeros(t.size, bool)
    once[first] = True
    ws = (t.ts_ms // 1000 - w0) // W
    keep &= once & (ws >= 0) & (ws < n_win)
    out = np.zeros((n_camp, n_win, generator.N_CELLS), np.int64)
    np.add.at(out, (t.camp[keep], ws[keep], t.cell[keep]), 1)
    return out


def _series(cells: np.ndarray) -> dict[str, np.ndarray]:
    c = cells.reshape(-1, len(generator.DEVICES), len(generator.CHANNELS))
    out = {ALL: c.sum(axis=(1, 2))}
    for i, d in enumerate(generator.DEVICES):
        out[f"device={d}"] = c[:, i, :].sum(axis=1)
    for j, ch in enumerate(generator.CHANNELS):
        out[f"channel={ch}"] = c[:, :, j].sum(axis=1)
    return out


@pytest.fixture(scope="module")
def scenario():
    # (No ingestion stall: a stall of the pipeline is judged by the engine over all of a
    # shard's campaigns, flows/stall.py, not by one campaign's monitor.)
    sim = generator.simulate(seed=0, campaigns=40, hours=24, incident_kinds=tuple(
        k for k in generator.INCIDENT_KINDS if k not in generator.PIPELINE_KINDS))
    w0 = sim.start_s // W * W
    n_win = (sim.end_s - w0) // W
    n_camp = len(sim.campaign_ids)
    return (sim, w0, n_win, _counts(sim.impressions, n_camp, w0, n_win),
            _counts(sim.clicks, n_camp, w0, n_win))


def _run(scenario, factory):
    sim, w0, n_win, imps, clicks = scenario
    alerts, figures = [], []
    for ci, cid in enumerate(sim.campaign_ids):
        monitor = factory()
        si, sc = _series(imps[ci]), _series(clicks[ci])
        seen: set[str] = set()
        for w in range(n_win):
            if si[ALL][w] == 0 and sc[ALL][w] == 0:
                continue  # the flow skips windows of a campaign without traffic
            seen.update(name for name in si if si[name][w] or sc[name][w])
            counts = {name: Counts(int(si[name][w]), int(sc[name][w])) for name in seen}
            start = w0 + w * W
            for name, c in counts.items():
                figures.append({"campaign_id": cid, "segment": name, "window_start_s": start,
                                "impressions": c.impressions, "clicks": c.clicks})
            for v in monitor.update(Window(start, start + W), counts):
                alerts.append({"campaign_id": cid, "segment": v.segment,
                               "window_start_s": start, "severity": v.severity})
    return evaluate_mod.evaluate(alerts, sim.incidents, figures, traps=sim.traps)


def test_monitor_beats_both_baselines(scenario):
    s = DetectorSettings()
    ours = _run(scenario, lambda: build_monitor(s))
    raw = _run(scenario, lambda: RawRiverBaseline(s))
    ztest = _run(scenario, lambda: ZTestBaseline(s))
    # Floors measured at the commit that added this test (0.83 / 2.5 / 0.91 on this seed);
    # the generator of issue 16 (milder segment breaks, sparse campaigns, disguised bots)
    # makes another stream of this seed: 0.73 (8/11) / 2.5 / 0.89, the same with the
    # monitor before and after issue 16's changes.
    assert ours["recall_decidable"] >= 0.7
    assert ours["false_alarms_per_100_campaign_days"] <= 10
    assert ours["episode_precision"] >= 0.75
    # The baselines drown in false alarms on the same stream.
    assert raw["false_alarms_per_100_campaign_days"] > 100 * max(
        1.0, ours["false_alarms_per_100_campaign_days"])
    assert ztest["false_alarms_per_100_campaign_days"] > 100

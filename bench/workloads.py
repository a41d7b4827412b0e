"""The inputs of ``python -m bench.ab`` (and of the tests that use the same streams): made
here, in the harness, once per A/B run, and handed to both sides as files, so both measure
the same work.

* :class:`ReleaseScenario`: the release sink's ``write_batch`` calls, shaped like the live
  flow's output (one decision per campaign and window, one item per shard and call, a
  window delivered twice, two windows in one call, campaign ids that are not ASCII);
* :func:`slack_batches`: the Slack sink's batches, with incidents sprinkled in;
* :func:`chart_batches`: decisions with figures, for the chart history;
* :func:`monitor_streams`: every ``CampaignMonitor.update`` call of the benchmark scenario,
  and synthetic campaigns with every kind of incident, odd windows and other settings;
* :func:`engine_batches`: the scenario's messages in the batches replay reads.
"""

from __future__ import annotations

import random
import time
import zlib
from typing import Any

from bench.common import VOLUME_SCALE
from ctrguard.records import (
    STATUS_OK,
    STATUS_QUARANTINED,
    Alert,
    Figure,
    WindowDecision,
    make_alert_id,
)
from ctrguard.sinks.quarantine import iso_utc

WINDOW_S = 300
W = WINDOW_S
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
DEVICES = ("device=mobile", "device=desktop", "device=tablet")
DETECTORS = ("binomial_cusum", "adwin", "page_hinkley")


# --------------------------------------------------------------------------- release sink


def _alert(cid: str, segment: str, ws: int, iso: tuple[str, str], detector: str,
           rng: random.Random) -> Alert:
    imps = rng.randint(200, 5000)
    clicks = rng.randint(0, imps // 100)
    return Alert(
        alert_id=make_alert_id(cid, segment, ws, detector, "ctr_drop"), campaign_id=cid,
        segment=segment, window_start=iso[0], window_end=iso[1], window_start_s=ws,
        impressions=imps, clicks=clicks, ctr=clicks / imps, kind="ctr_drop",
        severity=rng.choice(("info", "warning", "critical")), detector=detector,
        baseline_ctr=0.02, score=round(rng.uniform(5, 12), 3), confidence=0.99,
        ctr_low=0.015, ctr_high=0.025, expected_clicks=imps * 0.02,
        expected_impressions=float(imps),
        suspected_cause=rng.choice(("", "click_tracking", "bot traffic")),
        quarantine=rng.random() < 0.8, incident=rng.choice(("", f"inc-{cid}")))


def decision(cid: str, ws: int, iso: tuple[str, str], rng: random.Random,
             alert_rate: float) -> WindowDecision:
    """One campaign's closed window: the campaign total and 0-3 devices, as the engine
    makes them (ok figures unless an alert on the series quarantines it; the window's
    texts shared by all its figures)."""
    segments = ("all", *rng.sample(DEVICES, rng.choice((0, 1, 2, 2, 3, 3))))
    alerts: tuple[Alert, ...] = ()
    if rng.random() < alert_rate:
        segment = rng.choice(segments)
        alerts = tuple(_alert(cid, segment, ws, iso, det, rng)
                       for det in rng.sample(DETECTORS, rng.choice((1, 1, 2))))
    figures = []
    for seg in segments:
        imps = rng.choice((0, rng.randint(1, 50), rng.randint(50, 20_000)))
        clicks = rng.randint(0, imps // 25) if imps else 0
        on_seg = [a for a in alerts if a.segment == seg]
        quarantined = any(a.quarantine for a in on_seg)
        figures.append(Figure(
            campaign_id=cid, segment=seg, window_start=iso[0], window_end=iso[1],
            window_start_s=ws, impressions=imps, clicks=clicks,
            ctr=clicks / imps if imps else 0.0,
            status=STATUS_QUARANTINED if quarantined else STATUS_OK,
            alert_ids=tuple(a.alert_id for a in on_seg)))
    return WindowDecision(cid, ws, ws + WINDOW_S, tuple(figures), alerts)


def campaign_ids(campaigns: int) -> list[str]:
    ids = [f"c{i:04d}" for i in range(campaigns)]
    # Not every id is ASCII (ids come from event JSON): escapes must survive every path.
    for i, text in zip(range(3, campaigns, max(1, campaigns // 4)),
                       ("café-ü", "キャンペーン", "promo 🎉 25%:x"), strict=False):
        ids[i] = f"{text}-{i}"
    return ids


class ReleaseScenario:
    """The ``write_batch`` calls of a run, each built afresh just before it is made (as the
    live flow's decisions are, so both implementations find them equally warm in the CPU
    caches) and identical for every run: each call draws from its own seeded generator.

    A call is a list of per-shard tuples of decisions, one decision per campaign and window.
    One call holds two windows (a shard that lagged behind: the watermark is the later end),
    and the last call repeats an earlier one (re-delivery after a restart).
    """

    def __init__(self, campaigns: int, windows: int, shards: int, seed: int,
                 alert_rate: float = 0.005):
        self.ids = campaign_ids(campaigns)
        self.shards = shards
        self.seed = seed
        self.alert_rate = alert_rate
        lag = windows // 2 if windows > 2 else windows   # windows lag and lag + 1 together
        self.plan = [[w, w + 1] if w == lag else [w] for w in range(windows) if w != lag + 1]
        if len(self.plan) > 2:
            self.plan.append(self.plan[len(self.plan) // 3])

    def __len__(self) -> int:
        return len(self.plan)

    def call(self, i: int) -> list[tuple[WindowDecision, ...]]:
        windows = self.plan[i]
        rng = random.Random(self.seed * 1_000_003 + windows[0])
        decisions = []
        for w in windows:
            ws = T0 + w * WINDOW_S
            iso = (iso_utc(ws), iso_utc(ws + WINDOW_S))
            decisions += [decision(cid, ws, iso, rng, self.alert_rate) for cid in self.ids]
        if len(windows) > 1:
            rng.shuffle(decisions)
        by_shard: list[list[WindowDecision]] = [[] for _ in range(self.shards)]
        for d in decisions:
            by_shard[zlib.crc32(d.campaign_id.encode()) % self.shards].append(d)
        return [tuple(s) for s in by_shard if s]


# --------------------------------------------------------------------------- Slack sink


def _slack_alert(cid: str, window: int, segment: str, *, severity: str = "warning",
          clicks: int = 2, expected: float = 20.0) -> Alert:
    ws = T0 + window * WINDOW_S
    return Alert(alert_id=make_alert_id(cid, segment, ws, "binomial_cusum", "ctr_drop"),
                 campaign_id=cid, segment=segment, window_start=iso_utc(ws),
                 window_end=iso_utc(ws + WINDOW_S), window_start_s=ws, impressions=1000,
                 clicks=clicks, ctr=clicks / 1000, kind="ctr_drop", severity=severity,
                 detector="binomial_cusum", baseline_ctr=0.02, score=6.0, confidence=0.99,
                 ctr_low=0.015, ctr_high=0.025, expected_clicks=expected,
                 expected_impressions=1000.0, suspected_cause="click_tracking",
                 quarantine=True)


def slack_batches(campaigns: int, windows: int, seed: int,
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
                [_slack_alert(cid, w, "all", severity=sev), _slack_alert(cid, w, "device=mobile")])
    batches = []
    for w in range(windows):
        ws = T0 + w * WINDOW_S
        batch = [WindowDecision(cid, ws, ws + WINDOW_S, (), tuple(alerts.get((cid, w), ())))
                 for cid in ids]
        rng.shuffle(batch)
        step = batch_size or len(batch)
        batches.extend(batch[i:i + step] for i in range(0, len(batch), step))
    return batches


# --------------------------------------------------------------------------- chart history


def chart_batches(campaigns: int, series: int, windows: int,
                  seed: int) -> list[list[WindowDecision]]:
    """Decisions with figures as the engine builds them (the chart history's input)."""
    rng = random.Random(seed)
    segs = ["all"] + [f"device=d{i}" for i in range(series - 1)]
    ids = [f"camp-{i:05d}" for i in range(campaigns)]
    batches = []
    for w in range(windows):
        ws = T0 + w * WINDOW_S
        start, end = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
        batch = []
        for cid in ids:
            figs = []
            for s in segs:
                n = rng.randint(50, 2000)
                k = rng.randint(0, n // 20)
                figs.append(Figure(cid, s, start, end, ws, n, k, k / n, "ok"))
            batch.append(WindowDecision(cid, ws, ws + WINDOW_S, tuple(figs), ()))
        batches.append(batch)
    return batches


# --------------------------------------------------------------------------- monitor


def record_scenario(events: int, campaigns: int, seed: int) -> dict[str, Any]:
    """Every ``update`` call of :mod:`bench.engine`'s scenario run, in order."""
    from bench.common import DIMENSIONS, build_scenario
    from bench.engine import _batches
    from ctrguard.config import load_config_text
    from ctrguard.detectors.monitor import build_monitor
    from ctrguard.events import decode_batch
    from ctrguard.flows.engine import EventPreparer, ShardState

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


def monitor_streams(events: int, campaigns: int, seed: int) -> list[dict[str, Any]]:
    """The scenario's monitor calls and the synthetic streams, for ``bench.ab --step monitor``."""
    return [record_scenario(events, campaigns, seed), *synthetic_streams()]


# --------------------------------------------------------------------------- engine


def engine_batches(events: int, campaigns: int, seed: int,
                   volume_scale: float = VOLUME_SCALE) -> tuple[str, list[tuple], int]:
    """The scenario's messages in the batches replay reads (``bench.engine``): the
    configuration text, the batches as tuples (``RawBatch`` fields) and the events."""
    from bench.common import DIMENSIONS, build_scenario
    from bench.engine import _batches
    from ctrguard.events import decode_batch

    config = f"segments:\n  dimensions: [{', '.join(DIMENSIONS)}]\n"
    sc = build_scenario(events, campaigns, seed, volume_scale)

    def frontier(values: list[bytes]) -> int | None:
        ts = decode_batch(values[-50:]).ts_ms
        return int(ts.max()) if ts.size else None

    batches = [tuple(b) for b in _batches(sc.impressions, sc.clicks, frontier)]
    return config, batches, sum(len(b[3]) for b in batches)

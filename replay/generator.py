"""Seeded generator of realistic impression and click streams with labelled incidents and traps.

The stream is simulated per campaign, minute and segment cell (device x channel) with numpy,
then expanded into individual events and written as JSONL in arrival order, so a 24 h stream
of 40 campaigns takes seconds, not minutes.

Model
-----
* Campaigns: base CTR ~ Beta(2, 98) (median ~1.7%); impression volume per minute log-normal
  (median ``20 * volume_scale``, from a few to thousands a minute); daily seasonality of volume
  (amplitude 35-70%, evening peak) and a milder one of CTR (5-15%); a little extra-binomial
  CTR noise per 5 minutes (``ctr_noise``, log-normal sigma), as real CTR is over-dispersed.
* Segments: devices ``mobile/desktop/tablet`` and channels ``search/social/email/display``
  with campaign-specific shares (Dirichlet) and CTR multipliers (search and email click far
  more than display). Every impression also has a creative, geo, user and user agent.
* Clicks are drawn per impression (Bernoulli) and follow it by a log-normal delay (median
  6 s); they carry ``impression_id``.
* Arrival order: each file is sorted by arrival time = event time + delivery jitter
  (sub-second mostly; ``late_fraction`` of events 5-90 s late, i.e. within the default 120 s
  allowed lateness; ``very_late_fraction`` 8-20 minutes late, beyond it).

Labelled incidents (``incidents.csv``; what a detector should find)
    ``click_outage``           clicks of the campaign vanish, impressions normal.
    ``bot_clicks``             extra clicks on one segment (``device=...`` or ``channel=...``)
                               from 3-15 users clicking many times each, mostly with ordinary
                               user agents (a fifth bot-ish ones that the default exclusion
                               regexes do *not* match); most carry no or a made-up
                               ``impression_id``, some that of a real impression just shown.
    ``duplicate_impressions``  every impression logged twice with *different* event ids:
                               a logging bug, the measured CTR halves.
    ``segment_break``          the CTR of one segment falls 50-70 %; the others hold.
    ``creative_fatigue``       CTR decays linearly to 35-55% over hours, then recovers (a new
                               creative goes live at the end of the incident).
    ``ctr_surge``              a real behaviour change (a creative that works): CTR x1.8-3,
                               clicks from as many users as ever, on real impressions.
    ``ingestion_stall``        every source stalls for 15-45 minutes and what happened
                               meanwhile is lost (campaign ``*``; one a day, none in a
                               scenario shorter than 6 hours).

Traps (``traps.csv``; must not alert)
    ``volume_surge``           impressions x3-6 at unchanged CTR.
    ``redelivery``             a block of events delivered again (same ``event_id``) 5-90 s
                               after the first delivery (a consumer rewinding).
    ``internal_traffic``       QA traffic with ``is_internal: true`` clicking 25-40% of ads.
    ``crawler_clicks``         clicks with user agents the default exclusion regexes match.
    ``late_events``            a campaign's events delayed 60-100 s (within allowed lateness).
    ``very_late_events``       the scattered events beyond allowed lateness (campaign ``*``).
    ``stray_clicks``           clicks stamped after the last impression of the scenario (they
                               follow their impression by seconds; campaign ``*``).
    ``sparse_campaign``        a sparse campaign of low CTR (0.5-0.9 %, tens of impressions a
                               window): hours without a click happen by chance.

Segments in labels are ``*`` (the whole campaign) or a series key such as ``device=mobile``.

>>> sim = simulate(seed=7, campaigns=3, hours=2, volume_scale=0.5)
>>> len(sim.campaign_ids), sim.impressions.size > 1000, sim.clicks.size > 0
(3, True, True)
>>> first = render_lines(sim, "impressions")[0]
>>> first.startswith(b'{"event_id":"imp-7-'), b'"campaign_id":"c00' in first
(True, True)
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "INCIDENT_KINDS", "TRAP_KINDS", "ABRUPT_FAULT_KINDS", "GRADUAL_KINDS", "PIPELINE_KINDS",
    "CAUSE_OF_KIND", "Label", "Table", "Simulation",
    "GeneratedScenario", "simulate", "render_lines", "generate", "write_labels", "read_labels",
    "count_figures", "DEFAULT_START",
]

INCIDENT_KINDS = (
    "click_outage", "bot_clicks", "duplicate_impressions", "segment_break",
    "creative_fatigue", "ctr_surge", "ingestion_stall",
)
TRAP_KINDS = (
    "volume_surge", "redelivery", "internal_traffic", "crawler_clicks", "late_events",
    "very_late_events", "stray_clicks", "sparse_campaign",
)
#: Faults that start abruptly (as opposed to gradual drift or a real behaviour change).
ABRUPT_FAULT_KINDS = ("click_outage", "bot_clicks", "duplicate_impressions", "segment_break")
#: Incidents that build up gradually: a clairvoyant test knows their shape (a linear change
#: from the level before them), and their reference is taken before them only.
GRADUAL_KINDS = ("creative_fatigue",)
#: Incidents of the whole pipeline, not of one campaign (labelled on campaign ``*``).
PIPELINE_KINDS = ("ingestion_stall",)
#: Traps that are not scheduled per campaign like the others.
_UNSCHEDULED_TRAPS = ("very_late_events", "stray_clicks", "sparse_campaign")

DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC)

DEVICES = ("mobile", "desktop", "tablet")
DEVICE_SHARE = np.array([0.60, 0.32, 0.08])
DEVICE_CTR = np.array([1.10, 0.85, 1.00])
CHANNELS = ("search", "social", "email", "display")
CHANNEL_SHARE = np.array([0.35, 0.30, 0.10, 0.25])
CHANNEL_CTR = np.array([1.60, 0.80, 1.40, 0.45])
N_CELLS = len(DEVICES) * len(CHANNELS)   # cell = device * len(CHANNELS) + channel
GEOS = ("US", "GB", "DE", "FR", "IN", "BR", "JP", "CA")
GEO_SHARE = np.array([0.38, 0.12, 0.10, 0.08, 0.12, 0.08, 0.07, 0.05])
MAX_CREATIVES = 4

USER_AGENTS_BY_DEVICE = (
    (  # mobile
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Mobile Safari/537.36",
        "Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/123.0.0.0 Mobile Safari/537.36",
    ),
    (  # desktop
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.4 Safari/605.1.15",
        "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    ),
    (  # tablet
        "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.4 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/123.0.0.0 Safari/537.36",
    ),
)
#: The suspected cause a detector should name for each incident kind (a set: any of them is
#: right). Creative fatigue is real behaviour, reported as drift or as a behaviour change.
CAUSE_OF_KIND: dict[str, frozenset[str]] = {
    "click_outage": frozenset({"click_tracking"}),
    "bot_clicks": frozenset({"bot_clicks"}),
    "duplicate_impressions": frozenset({"impression_logging"}),
    "segment_break": frozenset({"segment_break"}),
    "creative_fatigue": frozenset({"drift", "behaviour_change"}),
    "ctr_surge": frozenset({"behaviour_change"}),
    "ingestion_stall": frozenset({"ingestion_stall"}),
}

#: Click-fraud user agents that look scripted but match none of the default exclusion regexes.
BOTISH_USER_AGENTS = (
    "okhttp/4.9.3",
    "Go-http-client/1.1",
    "Java/1.8.0_292",
    "Mozilla/5.0 (compatible; MSIE 9.0; Windows NT 6.1; Trident/5.0)",
    "Dalvik/2.1.0 (Linux; U; Android 9; SM-G960F Build/PPR1.180610.011)",
)
#: Crawlers: every one matches a default ``exclusions.bot_user_agents`` pattern.
CRAWLER_USER_AGENTS = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "python-requests/2.31.0",
    "curl/8.5.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/124.0.0.0 Safari/537.36",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
)
_UA_TABLE: tuple[str, ...] = (
    tuple(ua for group in USER_AGENTS_BY_DEVICE for ua in group)
    + BOTISH_USER_AGENTS + CRAWLER_USER_AGENTS
)
_UA_DEVICE_START = np.cumsum([0] + [len(g) for g in USER_AGENTS_BY_DEVICE])[:-1]
_UA_DEVICE_COUNT = np.array([len(g) for g in USER_AGENTS_BY_DEVICE])
_UA_BOTISH_START = sum(len(g) for g in USER_AGENTS_BY_DEVICE)
_UA_CRAWLER_START = _UA_BOTISH_START + len(BOTISH_USER_AGENTS)

#: User id spaces: ordinary users, a small pool of click-fraud "users", QA testers.
USER_PREFIXES = ("u", "u", "qa-")
_USER_NORMAL, _USER_BOT, _USER_QA = 0, 1, 2
_N_USERS = 5_000_000

#: Delivery delays (ms). Within-lateness delays stay below the default 120 s allowed lateness;
#: "very late" ones exceed lateness plus a whole window, so they are late wherever they fall.
_LATE_MS = (5_000, 90_000)
_VERY_LATE_MS = (480_000, 1_200_000)
_LATE_TRAP_MS = (60_000, 100_000)


# --------------------------------------------------------------------------- labels


@dataclass(frozen=True, slots=True)
class Label:
    """A labelled interval ``[start_s, end_s)`` (epoch seconds) on a campaign's series.

    >>> lab = Label("c001", "*", "click_outage", 1767571200, 1767574800)
    >>> lab.row()
    ['c001', '*', 'click_outage', '2026-01-05T00:00:00Z', '2026-01-05T01:00:00Z']
    """

    campaign_id: str
    segment: str
    kind: str
    start_s: int
    end_s: int

    def row(self) -> list[str]:
        return [self.campaign_id, self.segment, self.kind, _iso(self.start_s), _iso(self.end_s)]


LABEL_HEADER = ["campaign_id", "segment", "kind", "start", "end"]


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(int(epoch_s), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_labels(path: str | Path, labels: Sequence[Label]) -> None:
    """Write labels as CSV (``campaign_id,segment,kind,start,end``), sorted by start."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(LABEL_HEADER)
        for lab in sorted(labels, key=lambda x: (x.start_s, x.campaign_id, x.kind, x.segment)):
            w.writerow(lab.row())


def read_labels(path: str | Path) -> list[Label]:
    """Read a labels CSV; see :func:`ctrguard.replay.evaluate.load_labels` for validation errors."""
    from ctrguard.replay.evaluate import load_labels

    return load_labels(path)


# --------------------------------------------------------------------------- tables


@dataclass
class Table:
    """Columnar events of one stream. Rows are in arrival order once :meth:`finish`\\ ed."""

    ts_ms: np.ndarray          # int64 event time
    arrival_ms: np.ndarray     # int64 arrival time (file order)
    camp: np.ndarray           # int32 campaign index
    cell: np.ndarray           # int16 device * 4 + channel
    geo: np.ndarray            # int8
    creative: np.ndarray       # int8
    user_kind: np.ndarray      # int8 index into USER_PREFIXES
    user: np.ndarray           # int64
    ua: np.ndarray             # int16 index into the user-agent table
    internal: np.ndarray       # bool
    eid: np.ndarray            # int64 event ordinal (shared by re-delivered copies)
    imp_ref: np.ndarray        # int64 impression ordinal a click refers to, -1 for none

    @property
    def size(self) -> int:
        return int(self.ts_ms.size)

    @classmethod
    def concat(cls, parts: Sequence[Table]) -> Table:
        names = list(cls.__dataclass_fields__)
        return cls(**{n: np.concatenate([getattr(p, n) for p in parts]) for n in names})

    def take(self, idx: np.ndarray) -> Table:
        return Table(**{n: getattr(self, n)[idx] for n in self.__dataclass_fields__})

    @property
    def device(self) -> np.ndarray:
        return self.cell // len(CHANNELS)

    @property
    def channel(self) -> np.ndarray:
        return self.cell % len(CHANNELS)


@dataclass
class Simulation:
    """An in-memory scenario: both streams in arrival order plus the labels."""

    seed: int
    start_s: int
    end_s: int
    campaign_ids: tuple[str, ...]
    base_ctr: np.ndarray
    impressions: Table
    clicks: Table
    incidents: list[Label]
    traps: list[Label]
    epoch_ms_fraction: float
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GeneratedScenario:
    """Paths and labels of a scenario written by :func:`generate`."""

    out_dir: Path
    impressions_path: Path
    clicks_path: Path
    incidents_path: Path
    traps_path: Path
    incidents: tuple[Label, ...]
    traps: tuple[Label, ...]
    n_impressions: int
    n_clicks: int
    start_s: int
    end_s: int
    campaign_ids: tuple[str, ...]
    seed: int

    @property
    def campaign_days(self) -> float:
        return len(self.campaign_ids) * (self.end_s - self.start_s) / 86400


# --------------------------------------------------------------------------- scheduling

#: Duration ranges in minutes.
_DURATIONS = {
    "click_outage": (30, 120),
    "bot_clicks": (30, 120),
    "duplicate_impressions": (30, 180),
    "segment_break": (60, 240),
    "creative_fatigue": (180, 480),
    "ctr_surge": (60, 180),
    "volume_surge": (30, 120),
    "redelivery": (5, 15),
    "internal_traffic": (30, 90),
    "crawler_clicks": (30, 90),
    "late_events": (10, 30),
}
_GAP_MIN = 60  # minutes kept clean between two scheduled items of one campaign


@dataclass
class _Item:
    camp: int
    kind: str
    start_min: int
    end_min: int
    segment: str = "*"
    factor: float = 1.0


def _schedule(rng: np.random.Generator, n_camp: int, minutes: int, incident_rate: float,
              trap_rate: float, kinds: Sequence[str], trap_kinds: Sequence[str],
              blocked: Sequence[tuple[int, int]] = ()) -> list[_Item]:
    """Incidents and traps per campaign, apart from each other and from ``blocked``
    intervals (minutes; a pipeline-wide incident) by :data:`_GAP_MIN`."""
    warmup = min(120, minutes // 5)
    usable = minutes - warmup
    kinds = [k for k in kinds if k not in PIPELINE_KINDS]
    busy: list[list[tuple[int, int]]] = [list(blocked) for _ in range(n_camp)]
    items: list[_Item] = []
    want: list[tuple[int, str]] = []
    n_inc = min(n_camp, round(n_camp * incident_rate)) if kinds else 0
    if kinds and incident_rate > 0:
        n_inc = max(n_inc, min(n_camp, len(kinds)))
    order = rng.permutation(len(kinds)) if kinds else []
    for i, camp in enumerate(rng.permutation(n_camp)[:n_inc]):
        want.append((int(camp), kinds[int(order[i % len(kinds)])]))
    n_trap = max(1, round(n_camp * trap_rate)) if trap_rate > 0 else 0
    for kind in trap_kinds:
        if kind in _UNSCHEDULED_TRAPS:
            continue
        for camp in rng.permutation(n_camp)[:min(n_trap, n_camp)]:
            want.append((int(camp), kind))
    for camp, kind in want:
        lo, hi = _DURATIONS[kind]
        dur = int(rng.integers(lo, hi + 1))
        # At least 5 minutes, but never longer than the scenario after its warm-up (a
        # scenario of a few minutes has shorter incidents, not ones that overrun its end).
        dur = min(max(5, min(dur, usable // 3)), usable)
        if dur < 1:
            continue
        for _ in range(60):
            start = warmup + int(rng.integers(0, max(1, usable - dur)))
            end = start + dur
            if all(end + _GAP_MIN <= s or start >= e + _GAP_MIN for s, e in busy[camp]):
                busy[camp].append((start, end))
                items.append(_Item(camp, kind, start, end))
                break
    return items


# --------------------------------------------------------------------------- simulation


#: Length of an ingestion stall (minutes) and how many a day.
_STALL_MINUTES = (15, 45)
_STALLS_PER_DAY = 1.0


def _schedule_stalls(rng: np.random.Generator, minutes: int) -> list[tuple[int, int]]:
    """Intervals (minutes) in which every source stalls and the events are lost: one a day,
    none in a scenario shorter than 6 hours (too short for a baseline to notice)."""
    n = int(math.floor(minutes / 1440 * _STALLS_PER_DAY + 0.5)) if minutes >= 360 else 0
    warmup = min(180, minutes // 4)
    out: list[tuple[int, int]] = []
    for _ in range(n):
        dur = int(rng.integers(_STALL_MINUTES[0], _STALL_MINUTES[1] + 1))
        for _ in range(60):
            start = warmup + int(rng.integers(0, max(1, minutes - warmup - dur - 60)))
            if all(start + dur + _GAP_MIN <= a or start >= b + _GAP_MIN for a, b in out):
                out.append((start, start + dur))
                break
    return sorted(out)


def _segment_name(dim: str, value: int) -> str:
    return f"device={DEVICES[value]}" if dim == "device" else f"channel={CHANNELS[value]}"


def _cell_mask(segment: str) -> np.ndarray:
    """Boolean mask over the 12 cells for a segment key (``*`` = every cell)."""
    cells = np.arange(N_CELLS)
    if segment == "*":
        return np.ones(N_CELLS, bool)
    dim, _, value = segment.partition("=")
    if dim == "device":
        return cells // len(CHANNELS) == DEVICES.index(value)
    return cells % len(CHANNELS) == CHANNELS.index(value)


def _lognormal_delay(rng: np.random.Generator, n: int, median_ms: float, sigma: float,
                     cap_ms: int) -> np.ndarray:
    return np.minimum(rng.lognormal(math.log(median_ms), sigma, n), cap_ms).astype(np.int64)


def _users(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, _N_USERS, n, dtype=np.int64)


def _normal_ua(rng: np.random.Generator, device: np.ndarray) -> np.ndarray:
    r = rng.random(device.size)
    return (_UA_DEVICE_START[device] + (r * _UA_DEVICE_COUNT[device]).astype(np.int64)).astype(
        np.int16)


def _expand_counts(rng: np.random.Generator, counts: np.ndarray, start_ms: int, minutes: int,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Events from per (campaign, minute, cell) counts: flat cell index, camp, minute, cell, ts."""
    flat = np.repeat(np.arange(counts.size, dtype=np.int64), counts.ravel())
    camp = (flat // (minutes * N_CELLS)).astype(np.int32)
    minute = (flat // N_CELLS) % minutes
    cell = (flat % N_CELLS).astype(np.int16)
    ts = start_ms + minute * 60_000 + rng.integers(0, 60_000, flat.size, dtype=np.int64)
    return flat, camp, cell, ts


def _make_table(rng: np.random.Generator, camp: np.ndarray, cell: np.ndarray, ts: np.ndarray,
                n_creatives: np.ndarray, *, user_kind: int = _USER_NORMAL,
                internal: bool = False) -> Table:
    n = ts.size
    device = cell // len(CHANNELS)
    return Table(
        ts_ms=ts.astype(np.int64),
        arrival_ms=np.zeros(n, np.int64),
        camp=camp.astype(np.int32),
        cell=cell.astype(np.int16),
        geo=rng.choice(len(GEOS), n, p=GEO_SHARE).astype(np.int8),
        creative=(rng.random(n) * n_creatives[camp]).astype(np.int8),
        user_kind=np.full(n, user_kind, np.int8),
        user=_users(rng, n),
        ua=_normal_ua(rng, device),
        internal=np.full(n, internal, bool),
        eid=np.full(n, -1, np.int64),
        imp_ref=np.full(n, -1, np.int64),
    )


def simulate(
    *,
    seed: int = 0,
    campaigns: int = 40,
    hours: float = 24,
    start: datetime | str | int | None = None,
    volume_scale: float = 1.0,
    min_volume: float = 2.0,
    incident_rate: float = 0.5,
    trap_rate: float = 0.15,
    incident_kinds: Sequence[str] = INCIDENT_KINDS,
    trap_kinds: Sequence[str] = TRAP_KINDS,
    ctr_noise: float = 0.05,
    late_fraction: float = 0.01,
    very_late_fraction: float = 0.0002,
    epoch_ms_fraction: float = 0.1,
    sparse_fraction: float = 0.1,
    stray_clicks: bool = True,
) -> Simulation:
    """Simulate a scenario in memory (columnar, numpy). See the module docstring for the model.

    Parameters
    ----------
    seed
        Seed of the numpy ``Generator``: same arguments and seed, identical output.
    campaigns, hours
        Scale of the scenario. ``hours`` is rounded to whole minutes.
    start
        First event time: an aware ``datetime``, an ISO-8601 string or epoch seconds.
        Defaults to :data:`DEFAULT_START` (a Monday, 00:00 UTC).
    volume_scale
        Multiplies every campaign's impression volume (median 20 a minute at 1.0).
    min_volume
        Floor of a campaign's mean impressions a minute before ``volume_scale`` (default 2).
    incident_rate
        Fraction of campaigns that get a labelled incident (every kind appears at least once
        when there are enough campaigns). 0 disables incidents.
    trap_rate
        Fraction of campaigns that get each kind of trap. 0 disables traps (very late events
        are governed by ``very_late_fraction`` alone).
    incident_kinds, trap_kinds
        Restrict which kinds are scheduled.
    ctr_noise
        Log-normal sigma of the extra-binomial CTR noise per 5 minutes.
    late_fraction, very_late_fraction
        Fractions of events delivered 5-90 s late and 8-20 minutes late.
    epoch_ms_fraction
        Fraction of events whose ``ts`` is written as epoch milliseconds instead of ISO-8601.
    sparse_fraction
        Fraction of campaigns (at least one, when positive, ``trap_rate`` is positive and
        ``sparse_campaign`` is among the trap kinds) that are sparse and of low CTR: 0.5-0.9 %, 4-9 impressions a minute
        (times ``volume_scale``), so that an hour or two without a click happens by chance.
        Labelled as the trap ``sparse_campaign`` over the whole scenario.
    stray_clicks
        Clicks follow their impression (by seconds), so a few are stamped after the last
        impression of the scenario, as in any recorded day. Labelled as the trap
        ``stray_clicks`` (campaign ``*``) from the end of the scenario. False: clicks past
        the end are dropped.
    """
    unknown = set(incident_kinds) - set(INCIDENT_KINDS) | set(trap_kinds) - set(TRAP_KINDS)
    if unknown:
        raise ValueError(f"unknown incident or trap kinds: {sorted(unknown)}")
    if campaigns < 1 or hours <= 0 or volume_scale <= 0 or min_volume <= 0:
        raise ValueError("campaigns, hours, volume_scale and min_volume must be positive")
    rng = np.random.default_rng(seed)
    start_s = _to_epoch_s(start)
    minutes = max(1, int(round(hours * 60)))
    start_ms = start_s * 1000
    end_s = start_s + minutes * 60
    n_camp = campaigns
    camp_ids = tuple(f"c{i:03d}" for i in range(n_camp))

    # -- campaign parameters
    base_ctr = np.clip(rng.beta(2, 98, n_camp), 0.002, 0.2)
    volume = np.clip(rng.lognormal(math.log(20), 1.3, n_camp), min_volume,
                     max(5000.0, min_volume)) * volume_scale
    vol_amp = rng.uniform(0.35, 0.7, n_camp)
    vol_peak = rng.normal(20, 2, n_camp)
    ctr_amp = rng.uniform(0.05, 0.15, n_camp)
    ctr_peak = rng.normal(21, 3, n_camp)
    dev_share = np.stack([rng.dirichlet(40 * DEVICE_SHARE) for _ in range(n_camp)])
    chan_share = np.stack([rng.dirichlet(40 * CHANNEL_SHARE) for _ in range(n_camp)])
    dev_ctr = DEVICE_CTR * np.exp(rng.normal(0, 0.1, (n_camp, len(DEVICES))))
    chan_ctr = CHANNEL_CTR * np.exp(rng.normal(0, 0.15, (n_camp, len(CHANNELS))))
    cell_share = (dev_share[:, :, None] * chan_share[:, None, :]).reshape(n_camp, N_CELLS)
    cell_ctr = (dev_ctr[:, :, None] * chan_ctr[:, None, :]).reshape(n_camp, N_CELLS)
    cell_ctr /= (cell_share * cell_ctr).sum(axis=1, keepdims=True)  # mean multiplier 1
    n_creatives = rng.integers(1, MAX_CREATIVES + 1, n_camp)
    sparse: list[int] = []
    if sparse_fraction > 0 and trap_rate > 0 and "sparse_campaign" in trap_kinds:
        # Their own stream of randomness: the other campaigns' draws do not move.
        srng = np.random.default_rng([seed, 3])
        n_sparse = min(n_camp, max(1, round(n_camp * sparse_fraction)))
        sparse = sorted(srng.permutation(n_camp)[:n_sparse].tolist())
        base_ctr[sparse] = srng.uniform(0.005, 0.009, len(sparse))
        volume[sparse] = srng.uniform(4.0, 9.0, len(sparse)) * volume_scale

    hour = ((start_s + np.arange(minutes) * 60 + 30) / 3600.0) % 24
    vol_rate = volume[:, None] * (1 + vol_amp[:, None] * np.cos(
        2 * np.pi * (hour[None, :] - vol_peak[:, None]) / 24))
    ctr_t = base_ctr[:, None] * (1 + ctr_amp[:, None] * np.cos(
        2 * np.pi * (hour[None, :] - ctr_peak[:, None]) / 24))
    if ctr_noise > 0:
        blocks = (minutes + 4) // 5
        noise = rng.lognormal(-ctr_noise**2 / 2, ctr_noise, (n_camp, blocks))
        ctr_t = ctr_t * np.repeat(noise, 5, axis=1)[:, :minutes]
    ctr_mult = np.ones((n_camp, minutes, N_CELLS))

    # -- schedule incidents and traps
    stalls: list[tuple[int, int]] = []
    if incident_rate > 0 and "ingestion_stall" in incident_kinds:
        stalls = _schedule_stalls(np.random.default_rng([seed, 4]), minutes)
    items = _schedule(rng, n_camp, minutes, incident_rate, trap_rate, incident_kinds, trap_kinds,
                      blocked=stalls)
    for it in items:
        c, a, b = it.camp, it.start_min, it.end_min
        if it.kind == "segment_break":
            seg = _pick_segment(rng, dev_share[c], chan_share[c])
            it.segment, it.factor = seg, float(rng.uniform(0.3, 0.5))
            ctr_mult[c, a:b, _cell_mask(seg)] *= it.factor
        elif it.kind == "creative_fatigue":
            it.factor = float(rng.uniform(0.35, 0.55))
            ctr_mult[c, a:b, :] *= np.linspace(1.0, it.factor, b - a)[:, None]
        elif it.kind == "ctr_surge":
            it.factor = float(rng.uniform(1.8, 3.0))
            ctr_mult[c, a:b, :] *= it.factor
        elif it.kind == "volume_surge":
            it.factor = float(rng.uniform(3.0, 6.0))
            vol_rate[c, a:b] *= it.factor
        elif it.kind == "bot_clicks":
            it.segment = _pick_segment(rng, dev_share[c], chan_share[c])
            it.factor = float(rng.uniform(1.5, 4.0))
        elif it.kind == "duplicate_impressions":
            it.factor = 2.0
        elif it.kind == "crawler_clicks":
            it.factor = float(rng.uniform(2.0, 6.0))
        elif it.kind == "internal_traffic":
            it.factor = float(rng.uniform(0.3, 1.0))

    # -- ordinary impressions and their clicks
    lam = vol_rate[:, :, None] * cell_share[:, None, :]
    imp_counts = rng.poisson(lam)
    p_cell = np.clip(ctr_t[:, :, None] * cell_ctr[:, None, :] * ctr_mult, 0, 0.95)
    flat, camp, cell, ts = _expand_counts(rng, imp_counts, start_ms, minutes)
    imps = _make_table(rng, camp, cell, ts, n_creatives)
    clicked = rng.random(flat.size) < p_cell.ravel()[flat]
    del flat
    parts_imp = [imps]
    parts_click: list[Table] = []

    dup_mask = np.zeros(imps.size, bool)
    for it in items:
        if it.kind == "duplicate_impressions":
            dup_mask |= _in_interval(imps, it, start_ms)
    # Ordinals: every logged impression gets its own event id, duplicates included.
    imps.eid = np.arange(imps.size, dtype=np.int64)
    next_imp = imps.size
    if dup_mask.any():
        dups = imps.take(np.flatnonzero(dup_mask))
        dups.ts_ms = dups.ts_ms + rng.integers(0, 2000, dups.size)
        dups.eid = np.arange(next_imp, next_imp + dups.size, dtype=np.int64)
        next_imp += dups.size
        parts_imp.append(dups)

    clk = imps.take(np.flatnonzero(clicked))
    clk.imp_ref = clk.eid.copy()
    clk.ts_ms = clk.ts_ms + _lognormal_delay(rng, clk.size, 6000, 1.0, 90_000)
    parts_click.append(clk)

    for it in items:
        c = it.camp
        if it.kind == "bot_clicks":
            parts_click.append(_bot_clicks(rng, it, vol_rate, cell_share, ctr_t, cell_ctr,
                                           start_ms, n_creatives, imps))
        elif it.kind == "crawler_clicks":
            t = _extra_events(rng, it, vol_rate[c] * (cell_share[c] * cell_ctr[c]).sum()
                              * ctr_t[c] * it.factor + 0.5, cell_share[c], start_ms, n_creatives)
            t.ua = (_UA_CRAWLER_START + rng.integers(0, len(CRAWLER_USER_AGENTS), t.size)).astype(
                np.int16)
            parts_click.append(t)
        elif it.kind == "internal_traffic":
            rate = np.maximum(vol_rate[c] * it.factor, 2.0)
            share = np.zeros(N_CELLS)
            share[_cell_mask("device=desktop")] = 1 / len(CHANNELS)
            t = _extra_events(rng, it, rate, share, start_ms, n_creatives,
                              user_kind=_USER_QA, internal=True)
            t.user = rng.integers(1, 6, t.size)
            t.eid = np.arange(next_imp, next_imp + t.size, dtype=np.int64)
            next_imp += t.size
            parts_imp.append(t)
            qa_clicks = t.take(np.flatnonzero(rng.random(t.size) < rng.uniform(0.25, 0.4)))
            qa_clicks.imp_ref = qa_clicks.eid.copy()
            qa_clicks.ts_ms = qa_clicks.ts_ms + _lognormal_delay(rng, qa_clicks.size, 3000, 0.7,
                                                                 60_000)
            parts_click.append(qa_clicks)

    imps = Table.concat(parts_imp)
    clicks = Table.concat(parts_click)
    # Click outage: whatever the click would have been, it is never logged.
    for it in items:
        if it.kind == "click_outage":
            clicks = clicks.take(np.flatnonzero(~_in_interval(clicks, it, start_ms)))
    # Every source stalls: whatever happened meanwhile is lost, on both streams.
    for a, b in stalls:
        lo, hi = start_ms + a * 60_000, start_ms + b * 60_000
        imps = imps.take(np.flatnonzero((imps.ts_ms < lo) | (imps.ts_ms >= hi)))
        clicks = clicks.take(np.flatnonzero((clicks.ts_ms < lo) | (clicks.ts_ms >= hi)))
    if not stray_clicks:
        # Clicks past the end of the scenario would not have happened yet.
        clicks = clicks.take(np.flatnonzero(clicks.ts_ms < end_s * 1000))
    else:
        # A click follows its impression: those of the last impressions come after the end
        # (by seconds). Clicks made up past the end (bots, QA) are still left out.
        clicks = clicks.take(np.flatnonzero((clicks.ts_ms < end_s * 1000)
                                            | (clicks.imp_ref >= 0)))
    clicks.eid = np.arange(clicks.size, dtype=np.int64)

    imps = _deliver(rng, imps, items, start_ms, late_fraction, very_late_fraction)
    clicks = _deliver(rng, clicks, items, start_ms, late_fraction, very_late_fraction)

    incidents = [Label(camp_ids[it.camp], it.segment, it.kind, start_s + it.start_min * 60,
                       start_s + it.end_min * 60) for it in items if it.kind in INCIDENT_KINDS]
    incidents += [Label("*", "*", "ingestion_stall", start_s + a * 60, start_s + b * 60)
                  for a, b in stalls]
    traps = [Label(camp_ids[it.camp], it.segment, it.kind, start_s + it.start_min * 60,
                   start_s + it.end_min * 60) for it in items if it.kind in TRAP_KINDS]
    traps += [Label(camp_ids[c], "*", "sparse_campaign", start_s, end_s) for c in sparse]
    if stray_clicks and "stray_clicks" in trap_kinds and clicks.size \
            and int(clicks.ts_ms.max()) >= end_s * 1000:
        traps.append(Label("*", "*", "stray_clicks", end_s,
                           int(clicks.ts_ms.max()) // 1000 + 1))
    if very_late_fraction > 0 and "very_late_events" in trap_kinds:
        traps.append(Label("*", "*", "very_late_events", start_s, end_s))
    key = lambda x: (x.start_s, x.campaign_id, x.kind)  # noqa: E731
    params = {
        "campaigns": campaigns, "hours": minutes / 60, "volume_scale": volume_scale,
        "incident_rate": incident_rate, "trap_rate": trap_rate, "ctr_noise": ctr_noise,
        "late_fraction": late_fraction, "very_late_fraction": very_late_fraction,
        "epoch_ms_fraction": epoch_ms_fraction, "sparse_fraction": sparse_fraction,
        "stray_clicks": stray_clicks,
        "sparse_campaigns": [camp_ids[c] for c in sparse],
        "stalls": [{"start": _iso(start_s + a * 60), "end": _iso(start_s + b * 60)}
                   for a, b in stalls],
        "factors": [{"campaign_id": camp_ids[it.camp], "kind": it.kind, "segment": it.segment,
                     "factor": round(it.factor, 4)} for it in items],
    }
    return Simulation(seed, start_s, end_s, camp_ids, base_ctr, imps, clicks,
                      sorted(incidents, key=key), sorted(traps, key=key), epoch_ms_fraction,
                      params)


def _to_epoch_s(start: datetime | str | int | None) -> int:
    if start is None:
        start = DEFAULT_START
    if isinstance(start, str):
        start = datetime.fromisoformat(start.replace("Z", "+00:00"))
        if start.tzinfo is None:
            raise ValueError("start must carry a timezone offset (e.g. 2026-01-05T00:00:00Z)")
    if isinstance(start, datetime):
        if start.tzinfo is None:
            raise ValueError("start must be a timezone-aware datetime")
        return int(start.timestamp())
    return int(start)


def _pick_segment(rng: np.random.Generator, dev_share: np.ndarray, chan_share: np.ndarray) -> str:
    """A segment big enough to matter: the device or channel value drawn by its share."""
    if rng.random() < 0.5:
        return _segment_name("device", int(rng.choice(2, p=dev_share[:2] / dev_share[:2].sum())))
    return _segment_name("channel", int(rng.choice(len(CHANNELS), p=chan_share)))


def _in_interval(t: Table, it: _Item, start_ms: int) -> np.ndarray:
    a = start_ms + it.start_min * 60_000
    b = start_ms + it.end_min * 60_000
    return (t.camp == it.camp) & (t.ts_ms >= a) & (t.ts_ms < b)


def _extra_events(rng: np.random.Generator, it: _Item, rate_per_min: np.ndarray,
                  share: np.ndarray, start_ms: int, n_creatives: np.ndarray, **kw: Any) -> Table:
    """Poisson events of one campaign over the item's minutes, spread over cells by ``share``.

    ``rate_per_min`` holds the campaign's rate for every minute of the scenario.
    """
    rate = np.asarray(rate_per_min, dtype=float)[it.start_min:it.end_min]
    counts = rng.poisson(rate[:, None] * (share / share.sum())[None, :])
    n_min = it.end_min - it.start_min
    flat, _, cell, ts = _expand_counts(rng, counts[None], start_ms + it.start_min * 60_000, n_min)
    camp = np.full(flat.size, it.camp, np.int32)
    return _make_table(rng, camp, cell, ts, n_creatives, **kw)


#: Made-up impression ids of bot clicks start here (real ones are ordinals far below).
_FAKE_IMP_BASE = 1 << 40


def _bot_clicks(rng: np.random.Generator, it: _Item, vol_rate: np.ndarray,
                cell_share: np.ndarray, ctr_t: np.ndarray, cell_ctr: np.ndarray,
                start_ms: int, n_creatives: np.ndarray, imps: Table) -> Table:
    """Click fraud on one segment, disguised: mostly ordinary user agents (a fifth scripted
    ones the exclusions do not know), from a handful of users (3-15) that click many times
    each; of their clicks 40 % carry no ``impression_id``, 30 % a made-up one, and 30 % the
    id of a real impression of the segment shown just before (click injection)."""
    c = it.camp
    mask = _cell_mask(it.segment)
    share = np.where(mask, cell_share[c], 0.0)
    seg_clicks = vol_rate[c] * ctr_t[c] * (share * cell_ctr[c]).sum()
    t = _extra_events(rng, it, seg_clicks * it.factor + 0.3, share, start_ms, n_creatives,
                      user_kind=_USER_BOT)
    n_users = int(rng.integers(3, 16))
    t.user = rng.integers(0, n_users, t.size) + 9_000_000 + 100 * c
    botish = rng.random(t.size) < 0.2
    t.ua = np.where(botish, _UA_BOTISH_START + rng.integers(0, len(BOTISH_USER_AGENTS), t.size),
                    t.ua).astype(np.int16)
    u = rng.random(t.size)
    fake = (u >= 0.4) & (u < 0.7)
    t.imp_ref[fake] = _FAKE_IMP_BASE + rng.integers(0, 1 << 31, int(fake.sum()))
    hijack = np.flatnonzero(u >= 0.7)
    cand = np.flatnonzero((imps.camp == c) & mask[imps.cell]
                          & (imps.ts_ms >= start_ms + it.start_min * 60_000 - 60_000)
                          & (imps.ts_ms < start_ms + it.end_min * 60_000))
    if hijack.size and cand.size:
        cand = cand[np.argsort(imps.ts_ms[cand], kind="stable")]
        at = np.searchsorted(imps.ts_ms[cand], t.ts_ms[hijack]) - 1 \
            - rng.integers(0, 3, hijack.size)
        ok = at >= 0
        t.imp_ref[hijack[ok]] = imps.eid[cand[at[ok]]]
    return t


def _deliver(rng: np.random.Generator, t: Table, items: list[_Item], start_ms: int,
             late_fraction: float, very_late_fraction: float) -> Table:
    """Arrival times (jitter, late and very late events, re-deliveries); sort by arrival."""
    n = t.size
    delay = rng.exponential(400.0, n).astype(np.int64)
    u = rng.random(n)
    late = u < late_fraction
    delay[late] = rng.integers(*_LATE_MS, int(late.sum()))
    very = (u >= late_fraction) & (u < late_fraction + very_late_fraction)
    delay[very] = rng.integers(*_VERY_LATE_MS, int(very.sum()))
    parts = [t]
    for it in items:
        if it.kind == "late_events":
            m = _in_interval(t, it, start_ms)
            delay[m] = rng.integers(*_LATE_TRAP_MS, int(m.sum()))
    t.arrival_ms = t.ts_ms + delay
    for it in items:
        if it.kind == "redelivery":
            again = t.take(np.flatnonzero(_in_interval(t, it, start_ms)))
            again.arrival_ms = again.arrival_ms + rng.integers(5_000, 90_000, again.size)
            parts.append(again)
    out = Table.concat(parts)
    return out.take(np.argsort(out.arrival_ms, kind="stable"))


# --------------------------------------------------------------------------- true counts


def count_figures(sim: Simulation, window_s: int = 300) -> list[dict[str, Any]]:
    """The figures an ideal pipeline would report: per campaign, series and window.

    Counts every delivered event once by event id, leaves out internal traffic and crawler
    user agents, keeps very late events (a real pipeline drops those) and uses the segments
    ``all``, ``device=...`` and ``channel=...``. Useful to check a scenario's decidability
    without a replay.

    >>> sim = simulate(seed=1, campaigns=2, hours=1, volume_scale=0.2)
    >>> figs = count_figures(sim)
    >>> sorted({f["segment"] for f in figs})[:3]
    ['all', 'channel=display', 'channel=email']
    """
    n_cells = N_CELLS
    counts = []
    for t in (sim.impressions, sim.clicks):
        _, first = np.unique(t.eid, return_index=True)
        keep = np.zeros(t.size, bool)
        keep[first] = True
        keep &= ~t.internal & (t.ua < _UA_CRAWLER_START)
        wid = t.ts_ms[keep] // (window_s * 1000)
        w0 = sim.start_s // window_s
        n_w = (sim.end_s + window_s - 1) // window_s - w0 + 1
        key = (t.camp[keep].astype(np.int64) * n_w + (wid - w0)) * n_cells + t.cell[keep]
        counts.append(np.bincount(key, minlength=len(sim.campaign_ids) * n_w * n_cells)
                      .reshape(len(sim.campaign_ids), n_w, n_cells))
    imps, clicks = counts
    out = []
    series = [("all", np.ones(n_cells, bool))]
    series += [(f"device={d}", _cell_mask(f"device={d}")) for d in DEVICES]
    series += [(f"channel={c}", _cell_mask(f"channel={c}")) for c in CHANNELS]
    for name, mask in series:
        si, sc = imps[:, :, mask].sum(axis=2), clicks[:, :, mask].sum(axis=2)
        for c, w in zip(*np.nonzero((si > 0) | (sc > 0)), strict=True):
            ws = int((w0 + w) * window_s)
            out.append({"campaign_id": sim.campaign_ids[c], "segment": name,
                        "window_start_s": ws, "impressions": int(si[c, w]),
                        "clicks": int(sc[c, w])})
    return out


# --------------------------------------------------------------------------- rendering

_CHUNK = 200_000


def _iso_seconds(lo_s: int, hi_s: int) -> list[str]:
    secs = np.arange(lo_s, hi_s + 1, dtype="int64").astype("datetime64[s]")
    return np.datetime_as_string(secs, unit="s").tolist()


def _render_chunk(sim: Simulation, t: Table, stream: str, lo: int, hi: int,
                  iso_table: list[str], iso_base: int, epoch_flags: np.ndarray) -> bytes:
    prefix = "imp" if stream == "impressions" else "clk"
    id_head = f"{prefix}-{sim.seed}-"
    ref_head = f"imp-{sim.seed}-"
    camps = sim.campaign_ids
    devices = [DEVICES[i // len(CHANNELS)] for i in range(N_CELLS)]
    channels = [CHANNELS[i % len(CHANNELS)] for i in range(N_CELLS)]
    creative_names = [[f"{cid}-cr{j}" for j in range(MAX_CREATIVES)] for cid in camps]
    uas = _UA_TABLE
    ts = t.ts_ms[lo:hi]
    sec = (ts // 1000).tolist()
    ms = (ts % 1000).tolist()
    rows = zip(
        t.eid[lo:hi].tolist(), ts.tolist(), sec, ms, epoch_flags[lo:hi].tolist(),
        t.camp[lo:hi].tolist(), t.cell[lo:hi].tolist(), t.geo[lo:hi].tolist(),
        t.creative[lo:hi].tolist(), t.user_kind[lo:hi].tolist(), t.user[lo:hi].tolist(),
        t.ua[lo:hi].tolist(), t.internal[lo:hi].tolist(), t.imp_ref[lo:hi].tolist(),
        strict=True,
    )
    out = []
    append = out.append
    for eid, tms, s, m, as_epoch, c, cell, geo, cr, uk, user, ua, internal, ref in rows:
        ts_text = str(tms) if as_epoch else f'"{iso_table[s - iso_base]}.{m:03d}Z"'
        extra = ""
        if internal:
            extra += ',"is_internal":true'
        if ref >= 0:
            extra += f',"impression_id":"{ref_head}{ref:08x}"'
        append(
            f'{{"event_id":"{id_head}{eid:08x}","ts":{ts_text},"campaign_id":"{camps[c]}",'
            f'"creative_id":"{creative_names[c][cr]}","channel":"{channels[cell]}",'
            f'"device":"{devices[cell]}","geo":"{GEOS[geo]}",'
            f'"user_id":"{USER_PREFIXES[uk]}{user}","user_agent":"{uas[ua]}"{extra}}}\n'
        )
    return "".join(out).encode()


def _epoch_flags(sim: Simulation, stream: str, n: int) -> np.ndarray:
    # Its own stream of randomness, so rendering never shifts the simulation's draws.
    rng = np.random.default_rng([sim.seed, 1 if stream == "impressions" else 2])
    return rng.random(n) < sim.epoch_ms_fraction


def _iter_rendered(sim: Simulation, stream: str):
    t = sim.impressions if stream == "impressions" else sim.clicks
    if t.size == 0:
        return
    lo_s = int(t.ts_ms.min() // 1000)
    hi_s = int(t.ts_ms.max() // 1000)
    iso_table = _iso_seconds(lo_s, hi_s)
    flags = _epoch_flags(sim, stream, t.size)
    for lo in range(0, t.size, _CHUNK):
        yield _render_chunk(sim, t, stream, lo, min(lo + _CHUNK, t.size), iso_table, lo_s, flags)


def render_lines(sim: Simulation, stream: str) -> list[bytes]:
    """The JSON lines (without newline) of ``"impressions"`` or ``"clicks"``, in arrival order."""
    if stream not in ("impressions", "clicks"):
        raise ValueError("stream must be 'impressions' or 'clicks'")
    return [line for chunk in _iter_rendered(sim, stream) for line in chunk.splitlines()]


def _write_stream(sim: Simulation, stream: str, path: Path, compresslevel: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw:
        if path.suffix == ".gz":
            # mtime=0 and no file name in the header: the same scenario gives identical bytes.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                               compresslevel=compresslevel) as gz:
                for chunk in _iter_rendered(sim, stream):
                    gz.write(chunk)
        else:
            buf = io.BufferedWriter(raw, buffer_size=1 << 20)
            for chunk in _iter_rendered(sim, stream):
                buf.write(chunk)
            buf.flush()
    os.replace(tmp, path)


def generate(
    out_dir: str | Path,
    *,
    seed: int = 0,
    campaigns: int = 40,
    hours: float = 24,
    start: datetime | str | int | None = None,
    volume_scale: float = 1.0,
    compress: bool = True,
    compresslevel: int = 3,
    progress: Any = None,
    **sim_options: Any,
) -> GeneratedScenario:
    """Simulate a scenario and write it to ``out_dir``.

    Writes ``impressions.jsonl.gz``, ``clicks.jsonl.gz`` (``.jsonl`` when ``compress`` is
    false), ``incidents.csv`` and ``traps.csv`` (``campaign_id,segment,kind,start,end``) and
    ``scenario.json`` (the parameters and the factor drawn for every incident and trap).
    ``progress`` is an optional callable taking a message. Other keyword arguments go to
    :func:`simulate`.
    """
    from ctrguard.records import encode_pretty

    say = progress or (lambda _msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say(f"simulating {campaigns} campaigns over {hours:g} h (seed {seed})")
    sim = simulate(seed=seed, campaigns=campaigns, hours=hours, start=start,
                   volume_scale=volume_scale, **sim_options)
    ext = ".jsonl.gz" if compress else ".jsonl"
    imp_path, clk_path = out / f"impressions{ext}", out / f"clicks{ext}"
    say(f"writing {sim.impressions.size:,} impressions to {imp_path}")
    _write_stream(sim, "impressions", imp_path, compresslevel)
    say(f"writing {sim.clicks.size:,} clicks to {clk_path}")
    _write_stream(sim, "clicks", clk_path, compresslevel)
    write_labels(out / "incidents.csv", sim.incidents)
    write_labels(out / "traps.csv", sim.traps)
    meta = {"seed": seed, "start": _iso(sim.start_s), "end": _iso(sim.end_s),
            "campaign_ids": list(sim.campaign_ids), "impressions": sim.impressions.size,
            "clicks": sim.clicks.size, **sim.params}
    (out / "scenario.json").write_bytes(encode_pretty(meta))
    return GeneratedScenario(out, imp_path, clk_path, out / "incidents.csv", out / "traps.csv",
                             tuple(sim.incidents), tuple(sim.traps), sim.impressions.size,
                             sim.clicks.size, sim.start_s, sim.end_s, sim.campaign_ids, seed)

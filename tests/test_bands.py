"""bands.jsonl: replay's expected CTR and band per series-window, as the alerts report them."""

from __future__ import annotations

import msgspec
import pytest

from ctrguard.cli import EXIT_OK, main
from ctrguard.replay.bands import load_bands


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenario")
    assert main(["generate", "--out", str(out), "--seed", "4", "--campaigns", "6",
                 "--hours", "8", "--volume-scale", "2", "--quiet"]) == EXIT_OK
    return out


@pytest.fixture(scope="module")
def runs(scenario, tmp_path_factory):
    """The same replay with and without --bands, through the command."""
    out = {}
    for name, extra in (("plain", []), ("bands", ["--bands"])):
        d = tmp_path_factory.mktemp(name)
        assert main(["replay", "--impressions", str(scenario / "impressions.jsonl.gz"),
                     "--clicks", str(scenario / "clicks.jsonl.gz"), "--out", str(d),
                     "--no-baselines", "--quiet", *extra]) == EXIT_OK
        out[name] = d
    return out


def _lines(path):
    return [msgspec.json.decode(x) for x in path.read_bytes().splitlines() if x.strip()]


def test_bands_are_opt_in_and_change_no_output(runs):
    assert not (runs["plain"] / "bands.jsonl").exists()
    assert (runs["bands"] / "bands.jsonl").stat().st_size > 0
    for name in ("alerts.jsonl", "figures.jsonl", "deadletter.jsonl"):
        assert (runs["plain"] / name).read_bytes() == (runs["bands"] / name).read_bytes()


def test_every_figure_window_after_the_first_has_a_band(runs):
    bands = {(c, ws): s for c, ws, s in load_bands(runs["bands"] / "bands.jsonl")}
    first: dict[tuple[str, str], int] = {}
    missing = 0
    figures = _lines(runs["bands"] / "figures.jsonl")
    for f in figures:
        key = (f["campaign_id"], f["segment"])
        first.setdefault(key, f["window_start_s"])
        if f["window_start_s"] > first[key]:
            missing += f["segment"] not in bands.get((f["campaign_id"], f["window_start_s"]), {})
    assert len(figures) > 1000
    assert missing == 0


def test_bands_equal_what_the_alerts_report(runs):
    """The band is the alert's own expectation: baseline_ctr, ctr_low, ctr_high (and, on
    ``all``, expected_impressions). A segment that inherited a campaign-wide verdict reports
    the campaign's, so it is compared only where it alarmed on its own."""
    bands = {(c, ws): s for c, ws, s in load_bands(runs["bands"] / "bands.jsonl")}
    alerts = _lines(runs["bands"] / "alerts.jsonl")
    all_baseline = {(a["campaign_id"], a["window_start_s"]): a["baseline_ctr"]
                    for a in alerts if a["segment"] == "all"}
    compared = 0
    for a in alerts:
        key = (a["campaign_id"], a["window_start_s"])
        if a["segment"] != "all" and all_baseline.get(key) == a["baseline_ctr"]:
            continue  # inherited from ``all``
        band = bands[key][a["segment"]]
        assert band[:3] == pytest.approx([a["baseline_ctr"], a["ctr_low"], a["ctr_high"]],
                                         rel=1e-12, abs=1e-15), a
        if a["segment"] == "all":
            assert band[3] == pytest.approx(a["expected_impressions"], rel=1e-12)
        compared += 1
    assert compared >= 20


def test_load_bands_filters_campaigns_with_awkward_ids(tmp_path):
    path = tmp_path / "bands.jsonl"
    recs = [{"campaign_id": cid, "window_start_s": 300, "series": {"all": [0.1, 0, 0.2, 5.0]}}
            for cid in ("a,b", 'q"x', "c")]
    path.write_bytes(b"\n".join(msgspec.json.encode(r) for r in recs) + b"\n")
    assert [c for c, _, _ in load_bands(path, {"a,b", 'q"x'})] == ["a,b", 'q"x']
    assert [c for c, _, _ in load_bands(path)] == ["a,b", 'q"x', "c"]

"""``ctrguard report`` opened in headless Chromium (Debian's ``chromium``; ``make test``
installs it): no console output at all (errors included), the overview and an incident
chart rendered in the DOM, a campaign drawn on demand from a link, and a screenshot kept as
a test artifact (``build/test-artifacts/report.png``, or ``$CTRGUARD_TEST_ARTIFACTS``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ctrguard.cli import EXIT_OK, main

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("CTRGUARD_TEST_ARTIFACTS", REPO / "build" / "test-artifacts"))

pytestmark = pytest.mark.slow


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian's chromium is not installed (make test installs it: "
                    "apt-get install chromium)")
    return path


def run_chromium(tmp_path: Path, url: str, *extra: str, budget_ms: int = 15000
                 ) -> tuple[str, list[str]]:
    """``(dumped DOM or "", console messages)`` of ``url`` in a fresh headless profile."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           f"--virtual-time-budget={budget_ms}", *extra, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, Path]:
    scen = tmp_path_factory.mktemp("scenario")
    assert main(["generate", "--out", str(scen), "--seed", "7", "--campaigns", "8",
                 "--hours", "10", "--volume-scale", "2", "--quiet"]) == EXIT_OK
    run = tmp_path_factory.mktemp("run")
    assert main(["replay", "--impressions", str(scen / "impressions.jsonl.gz"),
                 "--clicks", str(scen / "clicks.jsonl.gz"), "--labels",
                 str(scen / "incidents.csv"), "--out", str(run), "--no-baselines", "--bands",
                 "--quiet"]) == EXIT_OK
    out = run / "report.html"
    assert main(["report", str(run), "--labels", str(scen / "incidents.csv"),
                 "--out", str(out), "--quiet"]) == EXIT_OK
    return out, scen


def _card(dom: str, card_id: str) -> str:
    start = dom.index(f'id="{card_id}"')
    end = dom.find('class="chart-card"', start + 10)
    return dom[start:end if end > 0 else len(dom)]


def test_report_renders_in_chromium_without_console_errors(report, tmp_path):
    page, _ = report
    html_text = page.read_text(encoding="utf-8")
    assert "http://" not in html_text.split('<script type="application/json"')[0]
    dom, console = run_chromium(tmp_path, page.as_uri(), "--dump-dom")
    assert console == []
    assert 'data-ready="1"' in dom                       # the page's script ran to its end
    assert re.search(r'<div id="report-errors" hidden', dom)
    overview = dom[dom.index('id="overview"'):dom.index('id="evaluation"')]
    assert "Incidents" in overview and '<a href="#inc-1">1</a>' in overview
    card = _card(dom, "inc-1")
    assert 'data-rendered="1"' in card                    # Plotly finished drawing it
    assert "js-plotly-plot" in card
    # A CTR line and the band's fill are drawn as SVG paths inside the chart.
    assert len(re.findall(r'class="js-line"', card)) >= 3
    assert 'class="js-fill"' in card
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    _, console = run_chromium(tmp_path, page.as_uri(), f"--screenshot={shot}",
                              "--window-size=1400,2600")
    assert console == []
    assert shot.stat().st_size > 50_000


def test_a_link_draws_any_campaign_on_demand(report, tmp_path):
    page, scen = report
    # A campaign without incidents: its chart exists only when asked for.
    text = page.read_text(encoding="utf-8")
    quiet = [c for c in sorted(set(re.findall(r'data-cid="(c\d+)"', text)))
             if f'data-cid="{c}" data-segment' not in text]
    assert quiet
    dom, console = run_chromium(tmp_path, page.as_uri() + f"#explore?c={quiet[0]}&s=all",
                                "--dump-dom")
    assert console == []
    explorer = dom[dom.index('id="explore-chart"'):]
    assert 'data-rendered="1"' in explorer[:2000]
    assert f'data-cid="{quiet[0]}"' in explorer[:2000]


def test_the_diff_report_renders_in_chromium(report, tmp_path):
    _, scen = report
    b = tmp_path / "b.yaml"
    b.write_text("detectors:\n  false_alarms_per_campaign_day: 1.0\n")
    out = tmp_path / "diff"
    assert main(["diff", "--config", str(REPO / "config" / "default.yaml"), "--config", str(b),
                 "--scenario", str(scen), "--out", str(out), "--quiet"]) == EXIT_OK
    dom, console = run_chromium(tmp_path, (out / "report.html").as_uri(), "--dump-dom")
    assert console == []
    assert 'data-ready="1"' in dom
    diff = dom[dom.index('id="diff"'):dom.index('id="overview"')]
    assert '<tr class="added">' in diff or '<tr class="changed">' in diff
    assert 'data-rendered="1"' in _card(dom, "inc-1")


def test_every_chart_card_draws_when_scrolled_into_view(report, tmp_path):
    """The most quarantined campaigns' cards (below the incidents) carry no time range:
    each of them failed with "RangeError: Invalid time value" once it came into view, and
    the page showed "Chart errors" instead of the chart. A window tall enough to show every
    card draws them all."""
    page, _ = report
    dom, console = run_chromium(tmp_path, page.as_uri(), "--dump-dom",
                                "--window-size=1400,30000", budget_ms=30000)
    assert console == []
    assert re.search(r'<div id="report-errors" hidden', dom), \
        re.findall(r'<div id="report-errors"[^<]*', dom)
    cards = re.findall(r'<div class="chart-card"[^>]*>', dom)
    worst = [c for c in cards if 'id="inc-' not in c]
    assert worst and all('data-drawn="1"' in c for c in cards)
    assert dom.count('data-rendered="1"') >= len(cards)

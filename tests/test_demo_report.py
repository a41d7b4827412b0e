"""``ctrguard demo`` ends by writing the HTML report of its run and printing its path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from devtools.demo import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_ends_with_the_report_of_its_run(tmp_path, capsys, monkeypatch):
    for var in ("CTRGUARD_KAFKA_BROKERS", "CTRGUARD_REDIS_URL", "SLACK_BOT_TOKEN",
                "SLACK_WEBHOOK_URL"):
        # (set first, so that the demo's own os.environ.update is undone after the test)
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    assert main(["--campaigns", "3", "--hours", "6", "--report-dir",
                 str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    match = re.search(r"^report: (.+)$", out, re.M)
    assert match, out[-2000:]
    report = Path(match.group(1))
    assert report == (tmp_path / "demo" / "report.html").resolve() and report.is_file()
    assert "gives the same alerts as the live flow" in out
    page = report.read_text()
    assert "ctrguard demo" in page and 'id="evaluation"' in page
    assert (tmp_path / "demo" / "run" / "bands.jsonl").stat().st_size > 0
    # The report's last lines of output: nothing but the wrap-up follows the path.
    tail = out[match.end():].strip().splitlines()
    assert len(tail) == 1 and tail[0].startswith("demo finished")

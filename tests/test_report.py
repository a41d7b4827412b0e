"""``ctrguard report`` without a browser: what the page holds, escaping, errors, big days."""

from __future__ import annotations

import re

import msgspec
import pytest

from ctrguard.cli import EXIT_OK, EXIT_USAGE, main
from ctrguard.records import Alert, Figure, encode_figures
from ctrguard.replay.report import load_run, page_data


def _iso(s: int) -> str:
    from ctrguard.events import ms_to_iso

    return ms_to_iso(s * 1000)


def _write_run(d, campaigns, hostile="<img src=x onerror=alert(1)>", bands=True):
    """A small run directory in replay's formats: ``campaigns`` campaigns of 24 windows,
    the hostile one with a click outage on ``all`` in windows 10-13."""
    d.mkdir(parents=True, exist_ok=True)
    figures, alerts, band_lines = [], [], []
    ids = [hostile] + [f"c{i:04d}" for i in range(campaigns - 1)]
    for cid in ids:
        for w in range(24):
            ws = 1767571200 + w * 300
            outage = cid == hostile and 10 <= w < 14
            k = 0 if outage else 20
            aid = f"a{w}" if outage else None
            status = "quarantined" if outage else "ok"
            for seg, n in (("all", 1000), ("device=mobile", 600)):
                figures.append(Figure(cid, seg, _iso(ws), _iso(ws + 300), ws, n,
                                      k * n // 1000, k / 1000, status,
                                      (aid,) if aid and seg == "all" else ()))
            if outage:
                alerts.append(Alert(aid, cid, "all", _iso(ws), _iso(ws + 300), ws, 1000, 0, 0.0,
                                    "click_outage", "critical", "binomial_cusum", 0.02, 30.0,
                                    0.99, 0.01, 0.03, 20.0, 1000.0, "click_tracking", True,
                                    f"{ws}:click_tracking"))
            if w and bands:
                band_lines.append(msgspec.json.encode({"campaign_id": cid, "window_start_s": ws,
                                                "series": {"all": [0.02, 0.015, 0.025, 990.0],
                                                           "device=mobile": [0.02, 0.01, 0.03,
                                                                             590.0]}}))
    (d / "figures.jsonl").write_bytes(b"\n".join(encode_figures(figures)) + b"\n")
    (d / "alerts.jsonl").write_bytes(b"\n".join(msgspec.json.encode(a) for a in alerts) + b"\n")
    if bands:
        (d / "bands.jsonl").write_bytes(b"\n".join(band_lines) + b"\n")
    (d / "deadletter.jsonl").write_bytes(
        b'{"stage":"parse","reason":"invalid JSON at byte 3","source":"clicks","line":7,'
        b'"raw":"{x"}\n')
    (d / "summary.json").write_bytes(msgspec.json.encode({
        "events_read": 1, "events_counted": 1, "excluded": {"internal": 3},
        "excluded_total": 3, "duplicates": 0, "dead_lettered": 1, "windows": len(figures),
        "quarantined_windows": 4, "alerts": len(alerts), "campaigns": campaigns}))
    return d, hostile


def test_the_page_holds_the_incident_escaped(tmp_path, capsys):
    run, hostile = _write_run(tmp_path / "run", 3)
    assert main(["report", str(run), "--quiet"]) == EXIT_OK
    page_path = run / "report.html"
    assert capsys.readouterr().out.strip() == str(page_path)
    page = page_path.read_text()
    # Untrusted ids: escaped in HTML, \u003c in the embedded JSON; never raw.
    assert hostile not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    data = page.split('id="ctrguard-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data
    assert hostile in msgspec.json.decode(data)["campaigns"]
    # The overview: one incident of 4 windows, the dead letter's reason folded, exclusions.
    incidents = page.split("<h3>Incidents</h3>", 1)[1].split("</table>", 1)[0]
    assert incidents.count('<a href="#inc-') == 1 and ">click_outage<" in incidents
    assert "invalid JSON at byte …" in page and ">internal<" in page
    assert 'id="inc-1"' in page and "no bands.jsonl" not in page


def test_without_bands_the_page_says_so(tmp_path):
    run, _ = _write_run(tmp_path / "run", 2, bands=False)
    assert main(["report", str(run), "--quiet"]) == EXIT_OK
    page = (run / "report.html").read_text()
    assert "no bands.jsonl" in page
    data = msgspec.json.decode(page.split('id="ctrguard-data">', 1)[1].split("</script>", 1)[0])
    assert all("e" not in s for c in data["campaigns"].values() for s in c["series"].values())


def test_many_campaigns_embed_segments_only_where_needed(tmp_path):
    run, hostile = _write_run(tmp_path / "run", 40)
    report = load_run(run, worst=2, detail_limit=300)
    assert report.detailed == {hostile}   # the only campaign with alerts
    data = page_data(report, 4)
    assert len(data["campaigns"]) == 40
    assert set(data["campaigns"][hostile]["series"]) == {"all", "device=mobile"}
    assert set(data["campaigns"]["c0001"]["series"]) == {"all"}
    assert report.per_campaign["c0001"]["series_count"] == 2   # counted, not embedded
    s = data["campaigns"][hostile]["series"]["all"]
    assert s["q"] == [10, 11, 12, 13] and [a[0] for a in s["a"]] == [10, 11, 12, 13]


def test_report_usage_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == EXIT_USAGE
    assert "no such directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == EXIT_USAGE
    assert "no summary.json" in capsys.readouterr().err
    run, _ = _write_run(tmp_path / "run", 2)
    (run / "figures.jsonl").write_bytes(b'{"campaign_id":"c","segment":"all",'
                                        b'"window_start":"x","window_start_s":"oops"}\n')
    assert main(["report", str(run), "--quiet"]) == EXIT_USAGE
    assert re.search(r"figures.jsonl:1: bad figure", capsys.readouterr().err)


@pytest.mark.parametrize("flag", ["--labels", "--config"])
def test_report_refuses_missing_files(tmp_path, capsys, flag):
    run, _ = _write_run(tmp_path / "run", 2)
    assert main(["report", str(run), flag, str(tmp_path / "nope")]) == EXIT_USAGE
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("command,flags", [
    ("report", ["RUN_DIR", "--labels", "--out", "--worst", "Exit codes"]),
    ("tune", ["--scenario", "--set", "--grid", "--max-false-alarms", "--processes"]),
    ("diff", ["--config", "--scenario", "--labels", "--out"]),
])
def test_help(command, flags, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in flags:
        assert flag in text


def test_an_ingestion_stall_is_one_incident_as_in_slack(tmp_path, capsys):
    """A stall's alerts (one per campaign-window, incident ``stall:<source>:<start>``) are
    one pipeline incident in Slack; the report groups them the same way, not as one
    incident per campaign, and charts one of its campaigns."""
    run, hostile = _write_run(tmp_path / "run", 8)
    stall_id = "stall:impressions:1767576000"              # windows 16-18 of the run
    extra = []
    for i in range(6):
        cid = f"c{i:04d}"
        for w in range(16, 19 if i else 20):                # c0000 stalled one more window
            ws = 1767571200 + w * 300
            extra.append(Alert(f"s{i}-{w}", cid, "all", _iso(ws), _iso(ws + 300), ws, 0, 0,
                               0.0, "ingestion_stall", "critical", "ingestion_stall", 0.02,
                               30.0, 1.0, 0.0, 1.0, 20.0, 1000.0, "ingestion_stall", True,
                               stall_id))
    with (run / "alerts.jsonl").open("ab") as fh:
        fh.write(b"\n".join(msgspec.json.encode(a) for a in extra) + b"\n")
    assert main(["report", str(run), "--quiet"]) == EXIT_OK
    page = (run / "report.html").read_text()
    incidents = page.split("<h3>Incidents</h3>", 1)[1].split("</table>", 1)[0]
    assert incidents.count('<a href="#inc-') == 2          # the outage and the stall
    assert incidents.count(">ingestion_stall<") == 2       # its kind and cause, one row
    assert f">{stall_id}<" in incidents
    row = incidents.split(f">{stall_id}<", 1)[1].split("</tr>", 1)[0]
    assert re.findall(r'class="num">(\d+)<', row)[:2] == ["19", "19"]  # windows held, alerts
    campaigns = page.split("<h3>Alerts and quarantined windows per campaign</h3>", 1)[1] \
        .split("</table>", 1)[0]
    assert "stall:" not in campaigns
    card = page.split('id="inc-2"', 1)[1].split('class="chart-card"', 1)[0]
    assert 'data-cid="c0000"' in card and "(6 campaigns; chart of c0000)" in card
    report = load_run(run)
    assert {c: report.per_campaign[c]["incidents"] for c in ("c0000", "c0005", "c0006")} \
        == {"c0000": 1, "c0005": 1, "c0006": 0}

"""Readers of the quarantine keys outside ctrguard's writer: other encodings fail closed,
the documented redis-cli sequences give the Python reader's answer, the batch reader is
pipelined, and layout 1 data still reads (real redis-server; redis-cli; node if present).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from ctrguard.errors import QuarantineError
from ctrguard.records import Figure
from ctrguard.sinks.quarantine import (
    CLEAN,
    EXPIRED,
    PENDING,
    QUARANTINED,
    RELEASED,
    QuarantineReader,
    encode_key_part,
)
from tests.test_quarantine import LENGTH, T0, decision, make_alert, make_store

DOCS = Path(__file__).resolve().parent.parent / "docs" / "redis-keys.md"
HOSTILE = ["acme:spring 25%", "x|device=mobile", "a=b,c+d@e!", "caf\u00e9 (1)*", "50%=off", "日本"]


def lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), encode_key_part(text))


def encode_uri_component(text: str) -> str:
    """JavaScript's encodeURIComponent."""
    return quote(text, safe="-_.!~*'()")


def foreign_status(client: redis.Redis, prefix: str, encode, campaign: str, segment: str,
                   start: int) -> str:
    """The documented decision, by a reader that encodes ids with ``encode``."""
    ec, es = encode(campaign), encode(segment)
    pipe = client.pipeline(transaction=True)
    pipe.hmget(f"{prefix}:meta", "key_version", "window_length_s", "retention_s", "min_lag_s")
    pipe.hget(f"{prefix}:flag:{ec}:{es}:{start}", "state")
    pipe.zscore(f"{prefix}:checked:v2", ec)
    (version, length, retention, lag), state, checked = pipe.execute()
    assert version == "2"
    if state is not None:
        return state
    end = start + int(length)
    if end + int(lag) + int(retention) < time.time():
        return EXPIRED
    return CLEAN if checked is not None and checked >= end else PENDING


@pytest.mark.parametrize("encode", [lower_hex, encode_uri_component, str],
                         ids=["lower-hex", "encodeURIComponent", "not-encoded"])
def test_a_reader_that_encodes_differently_never_reads_clean(redis_url, encode):
    store = make_store(redis_url)
    store.record([decision(c, T0, make_alert(c, "all", T0)) for c in HOSTILE])
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    wrong = [c for c in HOSTILE if encode(c) != encode_key_part(c)]
    assert len(wrong) >= 3
    for campaign in wrong:
        # The writer's encoding: the flagged series is quarantined, another is clean.
        assert foreign_status(client, "t", encode_key_part, campaign, "all", T0) == QUARANTINED
        assert foreign_status(client, "t", encode_key_part, campaign, "geo=fr", T0) == CLEAN
        # Another encoding: no flag found, and no watermark either: pending, not clean.
        for segment in ("all", "geo=fr"):
            assert foreign_status(client, "t", encode, campaign, segment, T0) == PENDING
    client.close()


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_the_documented_javascript_encoding_is_the_writers():
    text = DOCS.read_text(encoding="utf-8")
    recipe = re.search(r"`(encodeURIComponent\(s\)\.replace.*?)`\. Hex", text, re.S).group(1)
    recipe = " ".join(recipe.split())
    ids = [*HOSTILE, "日本", "a*b?[c]\\d", "tab\there", "~._-", "'()"]
    script = (f"const ids = JSON.parse(process.argv[1]);"
              f"console.log(JSON.stringify(ids.map((s) => {recipe})));")
    import json

    out = subprocess.run(["node", "-e", script, json.dumps(ids)], capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out) == [encode_key_part(i) for i in ids]


# --------------------------------------------------------------------------- redis-cli


def shell_blocks() -> list[str]:
    """The two ``sh`` blocks of the "another language" section of docs/redis-keys.md."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("### The same answer from another language")[1].split("\n## ")[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def run_documented(block: str, url: str, campaign: str, segment: str, start: int,
                   prefix: str = "t") -> str:
    host, port = re.match(r"redis://([^:/]+):(\d+)", url).groups()
    setup, *_ = shell_blocks()
    # The documented sequence with this test's series, prefix and server.
    if block != setup:   # the variables of the first block, then this one
        setup = "\n".join(line for line in setup.splitlines() if not line.startswith("$R"))
    lines = []
    for line in (setup if block == setup else setup + "\n" + block).splitlines():
        if line.startswith("P="):
            line = f"P={prefix} C={shq(campaign)} S={shq(segment)} W={start}"
        elif line.startswith("R="):
            line = f'R="redis-cli -h {host} -p {port}"'
        lines.append(line)
    result = subprocess.run(["bash", "-c", "\n".join(lines)], capture_output=True, text=True,
                            env={**os.environ, "LC_ALL": "C.UTF-8"}, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def shq(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli not installed")
def test_the_documented_redis_cli_decision_gives_the_readers_answer(redis_url):
    store = make_store(redis_url)
    campaign, old = "acme:spring 25%", T0 - 40 * 86400
    store.record([decision(campaign, old), decision(campaign, T0, make_alert(campaign, "all", T0),
                                                    make_alert(campaign, "x|y", T0))])
    store.release(campaign, "x|y", T0, by="ana", reason="ok")
    reader = QuarantineReader(redis_url, "t")
    _, decide = shell_blocks()
    cases = [("all", T0, QUARANTINED), ("x|y", T0, RELEASED), ("device=tv", T0, CLEAN),
             ("all", T0 + 10 * LENGTH, PENDING), ("all", old, EXPIRED)]
    for segment, start, state in cases:
        assert reader.status(campaign, segment, start).state == state
        assert run_documented(decide, redis_url, campaign, segment, start).strip() == state
    # A campaign never seen, and a layout this sequence does not know.
    assert run_documented(decide, redis_url, "nope", "all", T0).strip() == PENDING
    store.client.hset(store.meta_key, "key_version", "3")
    assert "publish nothing" in run_documented(decide, redis_url, campaign, "device=tv", T0)
    with pytest.raises(QuarantineError, match="version 3"):
        reader.status(campaign, "device=tv", T0)


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli not installed")
def test_the_documented_short_sequence(redis_url):
    store = make_store(redis_url)
    campaign = "acme:spring 25%"
    store.record([decision(campaign, T0, make_alert(campaign, "device=mobile", T0))])
    setup, _ = shell_blocks()
    out = run_documented(setup, redis_url, campaign, "device=mobile", T0).splitlines()
    assert out == ["2", QUARANTINED, str(T0 + LENGTH)]


# --------------------------------------------------------------------------- check_many


def exec_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_exec", {}).get("calls", 0))


def test_check_many_answers_as_status_does_in_one_round_trip_per_thousand(redis_url):
    store = make_store(redis_url)
    campaigns = [f"c{i}" for i in range(40)] + HOSTILE
    store.record([decision(c, T0 + w * LENGTH, *([make_alert(c, "all", T0 + w * LENGTH)]
                                                 if (i + w) % 7 == 0 else []))
                  for i, c in enumerate(campaigns) for w in range(3)])
    store.release(campaigns[0], "all", T0, by="ana", reason="ok")
    figures = [(c, s, T0 + w * LENGTH) for c in campaigns for s in ("all", "device=tv")
               for w in range(25)]                         # (windows 3+ are pending)
    assert len(figures) == 2300
    reader = QuarantineReader(redis_url, "t")
    before = exec_calls(store.client)
    got = reader.check_many(figures)
    assert exec_calls(store.client) - before == 3          # 1,000 figures a round trip
    assert got == [reader.status(*f) for f in figures]
    assert {s.state for s in got} == {QUARANTINED, RELEASED, CLEAN, PENDING}
    # Mappings and Figure records work as tuples do; an explicit end is honoured.
    fig = Figure(campaigns[0], "all", "", "", T0, 1, 1, 1.0, "ok")
    mapping = {"campaign_id": campaigns[1], "segment": "all", "window_start_s": T0}
    assert reader.check_many([fig, mapping, (campaigns[1], "all", T0, T0 + LENGTH)]) == [
        reader.status(campaigns[0], "all", T0), reader.status(campaigns[1], "all", T0),
        reader.status(campaigns[1], "all", T0)]
    assert reader.check_many([]) == []
    with pytest.raises(ValueError, match="aligned"):
        reader.check_many([("c1", "all", T0 + 1)])


# --------------------------------------------------------------------------- layout 1


def test_data_of_a_layout_1_writer_still_reads(redis_url):
    # What a writer of layout 1 left: raw ids in P:checked, no key_version.
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.hset("t:meta", mapping={"retention_s": 30 * 86400, "window_length_s": LENGTH,
                                   "min_lag_s": 60})
    client.zadd("t:checked", {"acme:spring 25%": T0 + LENGTH})
    reader = QuarantineReader(client, "t")
    assert reader.status("acme:spring 25%", "all", T0).state == CLEAN
    assert reader.checked_through("acme:spring 25%") == T0 + LENGTH
    # Once a writer of layout 2 writes, only P:checked:v2 counts.
    make_store(redis_url).record([decision("other", T0)])
    assert client.hget("t:meta", "key_version") == "2"
    assert reader.status("acme:spring 25%", "all", T0).state == PENDING
    assert reader.status("other", "all", T0).state == CLEAN
    assert client.zrange("t:checked:v2", 0, -1) == ["other"]
    client.close()

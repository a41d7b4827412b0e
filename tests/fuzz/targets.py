"""Fuzz targets: each takes the fuzzer's bytes, runs the C code on what it makes of them and
checks the answer against the Python reference. A difference raises ``AssertionError``; a
memory error or undefined behaviour in the C code stops the process (the sanitizers).

Oracles:

``scan``     ``scan_batch`` (C) against ``decode_batch`` (msgspec): where the scanner
             answers, every message must be valid and give the same columns and
             de-duplication keys; the same batch read in place from a buffer of lines
             (``line_bounds`` + ``LineBlock``) must give the same answer as the list.
``lines``    ``line_bounds`` (C) against ``_line_bounds_py``, from any position and limit.
``records``  the figure records (JSON text and key) and window-decision records written in
             C against the same functions without the extension (orjson).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ctrguard import events, records
from ctrguard.events import LineBlock, decode_batch, scan_batch
from ctrguard.records import Figure, WindowDecision
from flows.engine import dedup_keys

#: Dimension sets the scanner is asked for (it reads only the ones asked).
DIM_SETS = ((), ("device",), ("device", "channel"), ("geo", "creative_id", "device"))


def load(module: str, path: Path) -> ModuleType:
    """Import a built extension from ``path`` under its module name."""
    spec = importlib.util.spec_from_file_location(module, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def use(scan: ModuleType | None = None, recs: ModuleType | None = None) -> None:
    """Make ``ctrguard.events`` and ``ctrguard.records`` call these builds."""
    if scan is not None:
        events._SCANNER = events._LINES = scan
    if recs is not None:
        records._RECORDS = recs


# ------------------------------------------------------------------------- scanner

def _reference(values: list[bytes], dims: tuple[str, ...], agents: bool):
    decoded = decode_batch(values)
    if decoded.errors:
        return None
    evs = decoded.events
    return ([e.campaign_id for e in evs], [e.event_id for e in evs], decoded.ts_ms.tolist(),
            tuple([getattr(e, d) for e in evs] for d in dims),
            [e.user_agent for e in evs] if agents else None,
            [i for i, e in enumerate(evs) if e.is_internal])


def _columns(got: Any, agents: bool):
    return (got.campaign_ids, got.event_ids, got.ts_ms.tolist(), got.dims,
            got.user_agents if agents else None, got.internal)


def scan(data: bytes) -> None:
    if not data:
        return
    dims = DIM_SETS[data[0] % len(DIM_SETS)]
    agents = bool(data[0] & 0x10)
    body = data[1:]
    values = body.split(b"\n")[:64]
    got = scan_batch(values, dims, user_agents=agents)
    if got is not None:
        want = _reference(values, dims, agents)
        assert want is not None, f"scanner accepted a batch msgspec rejects: {values!r}"
        assert _columns(got, agents) == want, values
        assert got.keys.tolist() == dedup_keys(got.campaign_ids, got.event_ids).tolist()
    # The same lines read in place (replay's path): same answer.
    buffer = body + b"\n"
    bounds, numbers, _, seen = events.line_bounds(buffer, 0, 64)
    block = LineBlock(buffer, bounds)
    kept = [v for v in values[:seen] if v.strip(b" \t\n\r\x0b\x0c")]
    stripped = [v.rstrip(b"\r") for v in kept]
    assert list(block) == stripped
    in_place = scan_batch(block, dims, user_agents=agents)
    as_list = scan_batch(stripped, dims, user_agents=agents)
    assert (in_place is None) == (as_list is None), buffer
    if in_place is not None:
        assert _columns(in_place, agents) == _columns(as_list, agents)
        assert in_place.keys.tolist() == as_list.keys.tolist()


# ------------------------------------------------------------------------- lines

def lines(data: bytes) -> None:
    if len(data) < 2:
        return
    buffer = data[2:]
    pos = data[0] % (len(buffer) + 1)
    limit = data[1] % 40
    assert events._LINES is not None
    got = events._LINES.line_bounds(buffer, pos, limit)
    want = events._line_bounds_py(buffer, pos, limit)
    assert got == want, (buffer, pos, limit)


# ------------------------------------------------------------------------- records

def _figures(fdp: Any) -> list[Figure]:
    figures = []
    for _ in range(fdp.ConsumeIntInRange(1, 6)):
        text: Callable[[], str] = lambda: fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 24))
        ctr = fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else fdp.ConsumeProbability()
        if fdp.ConsumeIntInRange(0, 15) == 0:
            ctr = fdp.PickValueInList([math.nan, math.inf, -0.0, 5e-324, 1e16, 1e-7])
        figures.append(Figure(
            campaign_id=text(), segment=text(), window_start=text(), window_end=text(),
            window_start_s=fdp.ConsumeIntInRange(-2**63, 2**63 - 1),
            impressions=fdp.ConsumeIntInRange(0, 2**62), clicks=fdp.ConsumeIntInRange(0, 2**62),
            ctr=ctr, status=fdp.PickValueInList(["ok", "quarantined", text()]),
            alert_ids=tuple(text() for _ in range(fdp.ConsumeIntInRange(0, 3)))))
    return figures


def _both(fn: Callable[[], Any]) -> tuple[Any, Any]:
    """``fn()`` through the C encoder and through the reference (no extension)."""
    compiled = records._RECORDS
    try:
        got = _outcome(fn)
        records._RECORDS = None
        want = _outcome(fn)
    finally:
        records._RECORDS = compiled
    return got, want


def _outcome(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (TypeError, ValueError, OverflowError) as exc:  # orjson's refusals
        return type(exc).__name__


def records_target(data: bytes) -> None:
    import atheris

    fdp = atheris.FuzzedDataProvider(data)
    figures = _figures(fdp)
    got, want = _both(lambda: records.figure_records(figures))
    assert got == want, figures
    got, want = _both(lambda: records.encode_figures(figures))
    assert got == want, figures
    decisions = [WindowDecision(campaign_id=f.campaign_id, window_start_s=f.window_start_s,
                                window_end_s=f.window_start_s, figures=(f,), alerts=())
                 for f in figures]
    got, want = _both(lambda: records.decision_records(decisions))
    assert got == want, decisions


TARGETS: dict[str, Callable[[bytes], None]] = {"scan": scan, "lines": lines,
                                               "records": records_target}
__all__ = ["TARGETS", "load", "use", "np"]

"""Fuzz targets: each takes the fuzzer's bytes, runs the C code on what it makes of them and
checks the answer against the Python reference. A difference raises ``AssertionError``; a
memory error or undefined behaviour in the C code stops the process (the sanitizers).

Oracles:

``scan``     ``scan_batch`` (C) against ``decode_batch`` (msgspec): where the scanner
             answers, every message must be valid and give the same columns and
             de-duplication keys; the same batch read in place from a buffer of lines
             (``line_bounds`` + ``LineBlock``) must give the same answer as the list.
``lines``    ``line_bounds`` (C) against ``_line_bounds_py``, from any position and limit.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ctrguard import events
from ctrguard.events import LineBlock, decode_batch, scan_batch
from ctrguard.flows.engine import dedup_keys

#: Dimension sets the scanner is asked for (it reads only the ones asked).
DIM_SETS = ((), ("device",), ("device", "channel"), ("geo", "creative_id", "device"))


def load(module: str, path: Path) -> ModuleType:
    """Import a built extension from ``path`` under its module name."""
    spec = importlib.util.spec_from_file_location(module, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def use(scan: ModuleType | None = None) -> None:
    """Make ``ctrguard.events`` call this build."""
    if scan is not None:
        events._SCANNER = events._LINES = scan


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


TARGETS: dict[str, Callable[[bytes], None]] = {"scan": scan, "lines": lines}
__all__ = ["TARGETS", "load", "use", "np"]

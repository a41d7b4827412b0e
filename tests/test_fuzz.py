"""Fuzzing the C that reads untrusted bytes (tests/fuzz/): a short coverage-guided run of
each target against the AddressSanitizer/UBSan builds (the long run is ``make fuzz``), the
oracles shown to catch a wrong answer, and every input a fuzzer once failed on replayed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ctrguard import events, records
from tests.fuzz import build, run, targets

ROOT = Path(__file__).resolve().parent.parent
REGRESSIONS = Path(__file__).resolve().parent / "fuzz" / "regressions"
#: Seconds of fuzzing per target in the test suite (about a minute for the three).
SECONDS = int(os.environ.get("CTRGUARD_FUZZ_SECONDS", "18"))

needs_c = pytest.mark.skipif(events._SCANNER is None or records._RECORDS is None,
                             reason="the C extensions are not built (make native)")


@pytest.fixture(scope="module")
def sanitized() -> dict[str, str]:
    build.build()
    cc, coverage = build.compiler()
    return {"LD_PRELOAD": build.runtime(cc), "coverage": str(coverage)}


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_a_short_fuzz_run_finds_nothing(target, sanitized):
    env = {**os.environ, "LD_PRELOAD": sanitized["LD_PRELOAD"],
           "ASAN_OPTIONS": "detect_leaks=0:allocator_may_return_null=1"}
    proc = subprocess.run([sys.executable, "-m", "tests.fuzz.run", target, "--",
                           f"-max_total_time={SECONDS}", "-print_final_stats=1"],
                          capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=SECONDS + 120)
    tail = "\n".join(line for line in proc.stderr.splitlines()[-40:] if "# Uses:" not in line)
    assert proc.returncode == 0, f"{target}: exit {proc.returncode}\n{proc.stdout}\n{tail}"
    assert "_scan" in proc.stdout and "build/fuzz" in proc.stdout  # the sanitizer builds
    runs = int(re.search(r"stat::number_of_executed_units:\s*(\d+)", proc.stderr).group(1))
    assert runs > 1000, tail
    if sanitized["coverage"] == "True":  # guided by the C code's edges, not only Python's
        cov = int(re.findall(r"cov: (\d+)", proc.stderr)[-1])
        assert cov > 30, tail


def test_make_fuzz_refuses_to_run_without_the_sanitizer_runtime():
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    proc = subprocess.run([sys.executable, "-m", "tests.fuzz.run", "scan", "--", "-runs=1"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 2 and "make fuzz" in proc.stderr


# ----------------------------------------------------- the oracles catch a wrong answer

class _Wrong:
    """A build that answers like the real one, except for one planted mistake."""

    def __init__(self, real, **overrides):
        self._real = real
        self._overrides = overrides

    def __getattr__(self, name):
        return self._overrides.get(name) or getattr(self._real, name)


def _with(module_attr: str, fake, fn, data: bytes) -> None:
    owner = events if module_attr == "events" else records
    saved = {n: getattr(owner, n) for n in ("_SCANNER", "_LINES", "_RECORDS")
             if hasattr(owner, n)}
    try:
        for n in saved:
            setattr(owner, n, fake)
        fn(data)
    finally:
        for n, v in saved.items():
            setattr(owner, n, v)


@needs_c
def test_the_scan_oracle_catches_a_wrong_column():
    real = events._SCANNER

    def scan(values, dims, *args):
        out = real.scan(values, dims, *args)
        if out is None:
            return None
        cids, eids, *rest = out
        return (cids, list(reversed(eids)), *rest)  # event ids in the wrong order

    seed = run.seeds("scan")[0]
    targets.scan(seed)  # the real build passes
    with pytest.raises(AssertionError):
        _with("events", _Wrong(real, scan=scan), targets.scan, seed)


@needs_c
def test_the_lines_oracle_catches_a_wrong_bound():
    real = events._LINES

    def line_bounds(buffer, pos, limit):
        bounds, numbers, consumed, seen = real.line_bounds(buffer, pos, limit)
        return bounds, numbers, consumed + 1, seen

    seed = run.seeds("lines")[0]
    targets.lines(seed)
    with pytest.raises(AssertionError):
        _with("events", _Wrong(real, line_bounds=line_bounds), targets.lines, seed)


@needs_c
def test_the_records_oracle_catches_a_wrong_text():
    real = records._RECORDS

    def encode_figures(figures, cls, with_keys, fallback):
        out = real.encode_figures(figures, cls, with_keys, fallback)
        values = out[0] if with_keys else out
        values[0] = values[0].replace(b'"status"', b'"Status"')
        return out

    seed = run.seeds("records")[1]
    targets.records_target(seed)
    with pytest.raises(AssertionError):
        _with("records", _Wrong(real, encode_figures=encode_figures),
              targets.records_target, seed)


# ----------------------------------------------------- what a fuzzer once found

@needs_c
@pytest.mark.parametrize("path", sorted(p for p in REGRESSIONS.glob("*-*") if p.is_file()),
                         ids=lambda p: p.name)
def test_regression_inputs_pass(path):
    targets.TARGETS[path.name.split("-", 1)[0]](path.read_bytes())


def test_targets_are_what_make_fuzz_runs():
    makefile = (ROOT / "Makefile").read_text()
    loop = re.search(r"for t in ([a-z ]+); do", makefile)
    assert loop is not None and sorted(loop.group(1).split()) == sorted(targets.TARGETS)

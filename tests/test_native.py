"""The mypyc-compiled detector core: same verdicts as the Python source, snapshots that
load in either, and a stale build never used (ctrguard/native.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ctrguard import native

ROOT = Path(__file__).resolve().parent.parent

# Feeds 60 campaigns x 4 series for 120 windows with a click outage in a few of them,
# optionally resuming from a pickled snapshot; prints every verdict and the snapshot.
_STREAM = r'''
import base64, json, pickle, sys
import numpy as np
from ctrguard.detectors.base import Counts, Window
from ctrguard.detectors.settings import DetectorSettings
from ctrguard.detectors.monitor import build_monitor
import ctrguard.native as native

mode, cut = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(11)
C, W = 60, 120
base_n = rng.integers(5, 400, size=C)
ctr = rng.uniform(0.005, 0.05, size=C)
data = []
for t in range(W):
    row = []
    for c in range(C):
        f = 0.0 if (c % 7 == 0 and 70 <= t < 90) else (2.5 if c % 11 == 3 and t >= 95 else 1.0)
        counts, tn, tk = {}, 0, 0
        for j, s in enumerate(("desktop", "mobile", "tablet")):
            n = int(rng.poisson(base_n[c] * (0.5, 0.35, 0.15)[j]))
            k = int(rng.binomial(n, min(ctr[c] * f, 1.0)))
            counts[s] = Counts(n, k); tn += n; tk += k
        counts["all"] = Counts(tn, tk)
        row.append(counts)
    data.append(row)
if mode == "resume":
    mons = pickle.loads(base64.b64decode(sys.stdin.read()))
    start = cut
else:
    mons = [build_monitor(DetectorSettings()) for _ in range(C)]
    start = 0
out = []
snapshot = None
for t in range(start, W):
    if mode == "cut" and t == cut:
        snapshot = base64.b64encode(pickle.dumps(mons)).decode()
    w = Window(1767600000 + t * 300, 1767600300 + t * 300)
    for c in range(C):
        out.extend(repr(v) for v in mons[c].update(w, data[t][c]))
print(json.dumps({"core": native.in_use(), "verdicts": out, "snapshot": snapshot}))
'''


def _run(pure: bool, mode: str = "full", cut: int = 0, stdin: str | None = None,
         cwd: Path = ROOT, pythonpath: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    if pure:
        env[native.PURE_ENV] = "1"
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    proc = subprocess.run([sys.executable, "-c", _STREAM, mode, str(cut)], input=stdin,
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=300,
                          check=True)
    return json.loads(proc.stdout)


compiled_only = pytest.mark.skipif(native.status() != "compiled",
                                   reason="detector core not compiled (make native)")


def test_status_says_what_is_imported():
    import ctrguard.detectors.monitor  # noqa: F401

    expected = "compiled" if native.status() == "compiled" else "python"
    assert native.in_use() == expected


@compiled_only
def test_compiled_core_gives_the_python_verdicts():
    py = _run(pure=True)
    c = _run(pure=False)
    assert (py["core"], c["core"]) == ("python", "compiled")
    assert len(py["verdicts"]) > 50          # the stream has incidents to compare
    assert c["verdicts"] == py["verdicts"]


@compiled_only
def test_snapshots_load_in_either_core():
    whole = _run(pure=True)["verdicts"]
    cut = 80  # inside the outages: incidents open in the snapshot
    for first, second in ((False, True), (True, False)):
        head = _run(pure=first, mode="cut", cut=cut)
        tail = _run(pure=second, mode="resume", cut=cut, stdin=head["snapshot"])
        n_head = len(head["verdicts"]) - len(tail["verdicts"])
        assert n_head > 0
        assert head["verdicts"][n_head:] == tail["verdicts"]
        assert head["verdicts"] == whole


@compiled_only
@pytest.mark.parametrize("edited", ["monitor.py", "levels.py"])
def test_a_stale_build_is_not_used(tmp_path, edited):
    # A copy of the installed layout (ctrguard/ with its subpackages, extensions included),
    # whose source of one module of the monitor then changes: every module runs its source.
    pkg = tmp_path / "ctrguard"
    shutil.copytree(ROOT / "ctrguard", pkg)
    for folder in ("detectors", "flows", "sinks", "replay"):
        shutil.copytree(ROOT / folder, pkg / folder)
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    env["PYTHONPATH"] = str(tmp_path)
    probe = ("import warnings; warnings.simplefilter('error', RuntimeWarning)\n"
             "import ctrguard.native as n\n")
    ok = subprocess.run([sys.executable, "-c", probe + "import ctrguard.detectors.monitor\n"
                         "print(n.status(), n.in_use())"],
                        capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
    assert ok.stdout.split() == ["compiled", "compiled"]
    src = pkg / "detectors" / edited
    src.write_text(src.read_text() + "\n# edited after the build\n")
    stale = subprocess.run([sys.executable, "-W", "always::RuntimeWarning", "-c",
                            "import ctrguard.detectors.monitor, ctrguard.native as n, sys\n"
                            "print(n.status(), n.in_use(), *sorted({sys.modules[m].__file__"
                            "[-3:] for m in n.MODULES}))"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
    assert stale.stdout.split() == ["stale", "python", ".py"]
    assert "does not match its source" in stale.stderr


def test_cli_status_exit_code():
    proc = subprocess.run([sys.executable, "-m", "ctrguard.native", "status"], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, native.PURE_ENV: "1"})
    assert (proc.returncode, proc.stdout.strip()) == (3, "disabled")


def _examples(module: str) -> list[str]:
    """Every docstring with examples in a module's source (module, classes, functions)."""
    import ast

    tree = ast.parse(native._source(module).read_text())
    nodes = [tree, *(n for n in ast.walk(tree)
                     if isinstance(n, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef))]
    docs = [ast.get_docstring(n, clean=False) for n in nodes]
    return [d for d in docs if d and ">>>" in d]


@pytest.mark.parametrize("module", native.MODULES)
def test_docstring_examples_run_against_the_core_in_use(module):
    import doctest
    import importlib

    mod = importlib.import_module(module)
    docs = _examples(module)
    assert docs, f"{module} has no examples"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    parser = doctest.DocTestParser()
    for i, doc in enumerate(docs):
        test = parser.get_doctest(doc, dict(mod.__dict__), f"{module}[{i}]", module, 0)
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0
    assert result.failed == 0


def test_version_names_the_core():
    out = subprocess.run([sys.executable, "-m", "ctrguard", "--version"], capture_output=True,
                         text=True, cwd=ROOT, check=True).stdout
    assert f"(detector core: {native.status()})" in out
    forced = subprocess.run([sys.executable, "-m", "ctrguard", "--version"],
                            capture_output=True, text=True, cwd=ROOT, check=True,
                            env={**os.environ, native.PURE_ENV: "1"}).stdout
    assert "(detector core: disabled)" in forced

"""Dependencies chosen on purpose: the lock file the image installs matches pyproject.toml,
the image is pinned, one JSON library is in the product, and SciPy is only needed (and
asked for by name) where labels are scored."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from ctrguard.errors import CtrGuardError
from ctrguard.replay.generator import Label, write_labels

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
#: What pip-compile writes for a requirement of the project itself.
TOP = "ctrguard (pyproject.toml)"
#: The packages that ship in the wheel (what production runs).
PRODUCT = ("ctrguard", "flows", "detectors", "sinks", "replay")


def parse_lock(text: str) -> dict[str, tuple[Version, set[str], int]]:
    """``name -> (version, what requires it, number of hashes)`` of a pip-compile file.

    >>> version, via, hashes = parse_lock('''a==1.0 \\\\
    ...     --hash=sha256:00
    ...     # via ctrguard (pyproject.toml)
    ... b==2 \\\\
    ...     --hash=sha256:11 \\\\
    ...     --hash=sha256:22
    ...     # via
    ...     #   a
    ...     #   ctrguard (pyproject.toml)
    ... ''')["b"]
    >>> version, sorted(via), hashes
    (<Version('2')>, ['a', 'ctrguard (pyproject.toml)'], 2)
    """
    out: dict[str, tuple[Version, set[str], int]] = {}
    name = None
    in_via = False
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^ \\]+)", line)
        if m:
            name = canonicalize_name(m.group(1))
            out[name] = (Version(m.group(2)), set(), 0)
            in_via = False
            continue
        stripped = line.strip()
        if name is None or not stripped:
            continue
        version, via, hashes = out[name]
        if stripped.startswith("--hash="):
            out[name] = (version, via, hashes + 1)
        elif stripped == "# via":
            in_via = True
        elif stripped.startswith("# via "):
            via.add(stripped.removeprefix("# via ").strip())
            in_via = False
        elif in_via and stripped.startswith("#   "):
            via.add(stripped.removeprefix("#   ").strip())
        else:
            in_via = False
    return out


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def lock_problems(text: str, requirements: list[Requirement]) -> list[str]:
    """What is wrong with a lock file for these runtime requirements (nothing: ``[]``)."""
    lock = parse_lock(text)
    required = {canonicalize_name(r.name): r for r in requirements}
    problems = []
    for name, req in required.items():   # pinned, within pyproject's range
        if name not in lock:
            problems.append(f"{name} is not locked")
        elif not req.specifier.contains(lock[name][0], prereleases=True):
            problems.append(f"{name}=={lock[name][0]} is outside {req.specifier}")
    problems += [f"{name} has no hash" for name, (_, _, n) in lock.items() if not n]
    # Nothing stale: what the lock calls ctrguard's own is exactly pyproject's list, and
    # every other entry is required by something locked (an entry whose only reason is a
    # dependency since removed is reached from nowhere).
    direct = {name for name, (_, via, _) in lock.items() if TOP in via}
    problems += [f"{name} is locked as ctrguard's own but pyproject does not require it"
                 for name in sorted(direct - set(required))]
    children: dict[str, set[str]] = {}
    for name, (_, via, _) in lock.items():
        for parent in via - {TOP}:
            children.setdefault(canonicalize_name(parent), set()).add(name)
    reached, todo = set(), list(direct)
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(children.get(name, ()))
    problems += [f"{name} is required by nothing locked" for name in sorted(set(lock) - reached)]
    return problems


def test_every_runtime_dependency_is_pinned_with_hashes_and_nothing_is_stale():
    assert lock_problems(LOCK.read_text(), runtime_requirements()) == [], "run make lock"


def test_the_lock_check_finds_a_missing_a_stale_and_an_outdated_pin():
    text, reqs = LOCK.read_text(), runtime_requirements()
    missing = re.sub(r"(?ms)^msgspec==.*?(?=^[a-z])", "", text)
    assert lock_problems(missing, reqs) == ["msgspec is not locked"]
    stale = text + "orjson==3.9.0 \\\n    --hash=sha256:00\n    # via ctrguard (pyproject.toml)\n"
    assert lock_problems(stale, reqs) == [
        "orjson is locked as ctrguard's own but pyproject does not require it"]
    orphan = text + "six==1.0 \\\n    --hash=sha256:00\n    # via python-dateutil-old\n"
    assert lock_problems(orphan, reqs) == ["six is required by nothing locked"]
    old = re.sub(r"^bytewax==\S+", "bytewax==0.20.0", text, flags=re.M)
    assert lock_problems(old, reqs) == ["bytewax==0.20.0 is outside ==0.21.1"]


def test_the_image_installs_the_lock_and_a_pinned_base():
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.M).group(1)
    assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", base), base
    assert "--require-hashes -r requirements.lock" in dockerfile
    # ctrguard itself adds nothing the lock did not pin, and the build checks that.
    assert "--no-deps ." in dockerfile and "pip check" in dockerfile
    assert "make lock" in LOCK.read_text()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out


def test_one_json_library_in_the_product_and_scipy_only_for_evaluation():
    importers: dict[str, list[str]] = {"orjson": [], "scipy": [], "msgspec": []}
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in _imports(path) & importers.keys():
                importers[name].append(str(path.relative_to(ROOT)))
    assert importers["orjson"] == []
    assert importers["scipy"] == ["replay/evaluate.py"]
    assert "ctrguard/records.py" in importers["msgspec"]
    names = {canonicalize_name(r.name) for r in runtime_requirements()}
    assert "orjson" not in names and "scipy" not in names and "msgspec" in names


def test_scoring_without_scipy_names_the_extra(monkeypatch):
    from ctrguard.replay import evaluate

    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    with pytest.raises(CtrGuardError, match=r"pip install 'ctrguard\[eval\]'"):
        evaluate.require_eval()


def test_evaluate_command_without_scipy_exits_1_naming_the_extra(tmp_path):
    """``ctrguard evaluate`` where SciPy is not installed (an import of it fails): a clear
    error and exit 1, not a traceback."""
    figures = tmp_path / "figures.jsonl"
    figures.write_text("".join(
        f'{{"campaign_id":"c1","segment":"all","window_start_s":{300 * w},'
        f'"impressions":1000,"clicks":{0 if 10 <= w < 14 else 20}}}\n' for w in range(30)))
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text('{"campaign_id":"c1","segment":"all","window_start_s":3000,'
                      '"severity":"critical"}\n')
    labels = tmp_path / "incidents.csv"
    write_labels(labels, [Label("c1", "*", "click_outage", 3000, 4200)])
    args = ["evaluate", "--alerts", str(alerts), "--figures", str(figures), "--labels",
            str(labels), "--window", "300"]
    code = ("import sys; sys.modules['scipy'] = None; from ctrguard.cli import main; "
            f"sys.exit(main({args!r}))")
    blocked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=ROOT, timeout=120)
    assert blocked.returncode == 1, blocked.stderr[-2000:]
    assert "pip install 'ctrguard[eval]'" in blocked.stderr
    assert "Traceback" not in blocked.stderr
    # With SciPy the same command scores the label.
    ok = subprocess.run([sys.executable, "-m", "ctrguard.cli", *args], capture_output=True,
                        text=True, cwd=ROOT, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]

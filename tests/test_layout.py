"""The installed product: one ``ctrguard`` namespace, no test or development machinery, and
imports that follow the data path (docs/architecture.md)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Source folder -> installed package (pyproject.toml's package-dir).
PACKAGES = {"ctrguard": "ctrguard", "flows": "ctrguard.flows", "detectors": "ctrguard.detectors",
            "sinks": "ctrguard.sinks", "replay": "ctrguard.replay", "config": "ctrguard.defaults"}
DEV = ("devtools", "tests", "bench")


def _project_files() -> list[str]:
    """The files a clean clone would have (tracked, and new ones not ignored)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> list[str]:
    src = tmp_path_factory.mktemp("src")
    for name in _project_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(src)], check=True,
                   capture_output=True)
    (wheel,) = out.glob("ctrguard-*.whl")
    return zipfile.ZipFile(wheel).namelist()


@pytest.mark.slow
def test_the_wheel_installs_one_namespace_and_no_dev_tooling(wheel_names):
    top = {n.split("/")[0] for n in wheel_names}
    assert top == {"ctrguard", next(t for t in top if t.endswith(".dist-info"))}, top
    for package in PACKAGES.values():
        assert package.replace(".", "/") + "/__init__.py" in wheel_names, package
    assert "ctrguard/defaults/default.yaml" in wheel_names
    dev = [n for n in wheel_names
           if any(part in ("devtools", "tests", "bench", "fuzz") for part in n.split("/"))
           or Path(n).stem in ("services", "slack_emulator", "faults", "demo", "conftest")]
    assert dev == []


@pytest.mark.slow
def test_every_product_module_is_in_the_wheel(wheel_names):
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).glob("*.py"):
            assert f"{package.replace('.', '/')}/{path.name}" in wheel_names, path


# ------------------------------------------------------------------- import direction

def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    rest = rel.parts[1:-1] if rel.parts[-1] == "__init__" else rel.parts[1:]
    return ".".join((PACKAGES[rel.parts[0]], *rest))


def _imports() -> dict[str, set[str]]:
    """Product module -> the project modules it imports (anywhere in its code)."""
    graph: dict[str, set[str]] = {}
    for folder in PACKAGES:
        for path in (ROOT / folder).glob("*.py"):
            found: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module)
                    found.update(f"{node.module}.{a.name}" for a in node.names)
                elif isinstance(node, ast.Import):
                    found.update(a.name for a in node.names)
            graph[_module(path)] = {m for m in found
                                    if m.split(".")[0] in ("ctrguard", *PACKAGES, *DEV)}
    return graph


#: The data path: source -> engine -> detectors -> sinks. A stage may import the stages
#: after it, never one before it: detectors know nothing of the engine, sinks nothing of
#: the engine or the detectors. Shared modules (events, records, errors, probes, settings
#: models) are imported by all; the wiring (flows/ctr_flow.py, the CLI commands, replay,
#: config) may import anything of the product.
STAGES = {"ctrguard.flows.source": 0, "ctrguard.flows.engine": 1, "ctrguard.detectors": 2,
          "ctrguard.sinks": 3}
SHARED = ("ctrguard.events", "ctrguard.records", "ctrguard.errors", "ctrguard.probes",
          "ctrguard.native", "ctrguard.native", "ctrguard.detectors.settings",
          "ctrguard.sinks.settings", "ctrguard.config", "ctrguard.detectors.base")


def _stage(module: str) -> int | None:
    if module.startswith(SHARED) or module == "ctrguard":
        return None
    for prefix, stage in STAGES.items():
        if module == prefix or module.startswith(prefix + "."):
            return stage
    return None


def test_nothing_in_the_product_imports_dev_tooling():
    bad = {m: sorted(i for i in imports if i.split(".")[0] in DEV)
           for m, imports in _imports().items()}
    assert {m: i for m, i in bad.items() if i} == {}


def test_imports_follow_the_data_path():
    backwards = []
    for module, imports in _imports().items():
        here = _stage(module)
        if here is None:
            continue
        for target in imports:
            there = _stage(target)
            if there is not None and there < here:
                backwards.append(f"{module} imports {target}")
    assert backwards == []


def test_no_top_level_product_packages_are_importable_when_installed():
    code = ("import importlib.util, sys; sys.path = [p for p in sys.path if p not in ('', "
            f"{str(ROOT)!r})]; print([n for n in ('flows', 'detectors', 'sinks', 'replay', "
            "'devtools') if importlib.util.find_spec(n)])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd="/", check=True).stdout.strip()
    assert out == "[]"


# --------------------------------------------------------------- Bytewax's surface

#: The only product modules that may import Bytewax (README, "Bytewax is pinned"): an
#: upgrade, or a move to another stream processor, rewrites these two and nothing else.
BYTEWAX_MODULES = {"ctrguard.flows.ctr_flow", "ctrguard.flows.source"}


def _imports_bytewax(path: Path) -> bool:
    """Whether the module imports Bytewax anywhere in its code: ``import``, ``from ...
    import`` (in functions too) or ``importlib.import_module`` / ``__import__`` of a
    literal name."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__")):
            names = [node.args[0].value]
        else:
            continue
        if any(n == "bytewax" or n.startswith("bytewax.") for n in names):
            return True
    return False


def test_only_the_flow_and_its_source_import_bytewax():
    importers = {_module(path) for folder in PACKAGES for path in (ROOT / folder).rglob("*.py")
                 if _imports_bytewax(path)}
    assert importers == BYTEWAX_MODULES

"""Everything ctrguard compiles, in one place: what is built, the build, and whether the
built code is in use.

Two kinds of compiled code, each beside a Python reference that computes the same thing:

* the detector core: mypyc compiles the hot detector modules (:data:`MODULES`,
  ``detectors/*.py``: ``monitor.py`` and the modules it is made of) into C extensions
  that compute the same floats in the same order, about three times faster;
* the hand-written C of :data:`C_EXTENSIONS`, which lives in this package's folder: the
  event scanner and line splitter (``ctrguard/_scan.c``) and a shard's loops
  (``ctrguard/_shard.c``).

Each buys at least 15 % of CPU per event on the live flow or on replay, measured in the
same ``make bench`` run with the part turned off (``CTRGUARD_NATIVE_OFF``, see
BENCHMARKS.md); a part that did not (the C figure encoder) was removed.

``make native`` (``python -m ctrguard.native build``) builds everything in place, one
build and one stamp (``ctrguard/_native.json``: a digest of every source), and ``pip
install .`` with ``CTRGUARD_BUILD_NATIVE=1`` (the Docker image) builds it into the wheel.
Without a C compiler everything still runs as Python.

A build that no longer matches its source (``detectors/monitor.py`` edited after the build)
would silently run the old code, because Python prefers an extension to a ``.py`` file; so
``import ctrguard.detectors`` loads the Python source instead, with a warning, when a digest
differs, and the C parts are not used. ``CTRGUARD_PURE_PYTHON=1`` asks for the Python
source outright (comparisons, debugging); ``CTRGUARD_NATIVE_OFF=core,scan,shard`` turns
single parts off.

``python -m ctrguard.native status`` says which is in use.

>>> [m.rsplit(".", 1)[1] for m in MODULES], tuple(C_EXTENSIONS)
(['stats', 'drift', 'incidents', 'series', 'evidence', 'levels', 'attribution', 'monitor'], ('ctrguard._scan', 'ctrguard._shard'))
>>> status() in {"compiled", "pure", "stale", "disabled"}
True
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

__all__ = ["C_EXTENSIONS", "MODULES", "build", "load_extension", "status"]

#: Compiled modules, in import order: each imports only modules before it (``monitor``
#: imports all the others; :func:`select` loads their sources in this order).
MODULES = ("ctrguard.detectors.stats", "ctrguard.detectors.drift",
           "ctrguard.detectors.incidents", "ctrguard.detectors.series",
           "ctrguard.detectors.evidence", "ctrguard.detectors.levels",
           "ctrguard.detectors.attribution", "ctrguard.detectors.monitor")
#: mypyc group: its shared library is ``detectors/core__mypyc*.so`` (the folder of
#: ``ctrguard.detectors``).
GROUP = "ctrguard.detectors.core"
#: Hand-written C extensions built with the core, and their sources.
C_EXTENSIONS = {"ctrguard._scan": "ctrguard/_scan.c", "ctrguard._shard": "ctrguard/_shard.c"}
#: Every extension a build makes: the modules, the group's shared library, the C ones.
_BUILT = (*MODULES, GROUP + "__mypyc", *C_EXTENSIONS)
#: Sources the compiled code was type-checked against: a change to any of them is a rebuild.
_DEPENDS = (*MODULES, "ctrguard.detectors.base", "ctrguard.detectors.settings", *C_EXTENSIONS)
#: Environment variable that forces the Python source.
PURE_ENV = "CTRGUARD_PURE_PYTHON"
#: Environment variable that turns single compiled parts off (comma-separated
#: :data:`PARTS` names), for measuring what each buys (``make bench``) and for debugging.
OFF_ENV = "CTRGUARD_NATIVE_OFF"
#: Short name of each compiled part: the mypyc core and each hand-written C extension.
PARTS = {"core": MODULES, "scan": ("ctrguard._scan",), "shard": ("ctrguard._shard",)}
_STAMP = "_native.json"
_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent


def _source(module: str) -> Path:
    """The source file of a compiled module: beside the package it belongs to, whatever
    folder that package is installed from (``ctrguard.flows`` is ``flows/``)."""
    package, _, name = module.rpartition(".")
    if module in C_EXTENSIONS:
        return _package_dir(package) / Path(C_EXTENSIONS[module]).name
    return _package_dir(package) / (name + ".py")


def _package_dir(package: str) -> Path:
    if package == "ctrguard":  # this package: no import needed
        return _HERE
    if package not in _PACKAGE_DIRS:
        try:
            spec = importlib.util.find_spec(package)
        except ModuleNotFoundError:
            spec = None
        if spec is not None and spec.submodule_search_locations:
            _PACKAGE_DIRS[package] = Path(next(iter(spec.submodule_search_locations)))
        else:  # a source tree that is not installed (setup.py while building the wheel)
            _PACKAGE_DIRS[package] = _ROOT / _FOLDERS[package]
    return _PACKAGE_DIRS[package]


#: Where each package's sources are in a source tree (pyproject.toml's package-dir).
_FOLDERS = {"ctrguard": "ctrguard", "ctrguard.flows": "flows", "ctrguard.sinks": "sinks",
            "ctrguard.replay": "replay", "ctrguard.detectors": "detectors"}
_PACKAGE_DIRS: dict[str, Path] = {}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _extension(module: str) -> Path | None:
    """The built extension file of ``module`` next to its source, if any."""
    src = _source(module)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = src.with_suffix(suffix)
        if candidate.exists():
            return candidate
    return None


def _stamp() -> dict[str, str]:
    try:
        return json.loads((_HERE / _STAMP).read_text())
    except (OSError, ValueError):
        return {}


def status() -> str:
    """``compiled`` (extensions built and matching their source), ``pure`` (none built),
    ``stale`` (built from another version of the source: the source is used) or
    ``disabled`` (``CTRGUARD_PURE_PYTHON`` set)."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return "disabled"
    built = [m for m in _BUILT if _extension(m) is not None]
    if not built:
        return "pure"
    stamp = _stamp()
    if len(built) < len(_BUILT) or any(
            stamp.get(m) != _digest(_source(m)) for m in _DEPENDS
            if _source(m).exists()):  # an installed wheel ships no C sources: its stamp holds
        return "stale"
    return "compiled"


def turned_off() -> frozenset[str]:
    """The :data:`PARTS` that ``CTRGUARD_NATIVE_OFF`` turns off (an unknown name is an
    error: a measurement must not silently measure the wrong thing).

    >>> import os
    >>> os.environ[OFF_ENV] = "scan, shard"; sorted(turned_off())
    ['scan', 'shard']
    >>> del os.environ[OFF_ENV]; turned_off()
    frozenset()
    """
    names = frozenset(n.strip() for n in os.environ.get(OFF_ENV, "").split(",") if n.strip())
    unknown = names - PARTS.keys()
    if unknown:
        raise ValueError(f"{OFF_ENV}: unknown part(s) {sorted(unknown)}; "
                         f"known: {', '.join(PARTS)}")
    return names


def load_extension(name: str) -> Any:
    """The hand-written C extension ``name`` (a key of :data:`C_EXTENSIONS`) when the build
    is ``compiled`` (so it matches its source and is not disabled or turned off), else
    ``None``: the caller then runs its Python reference code.

    >>> load_extension("ctrguard._shard") is None or hasattr(load_extension("ctrguard._shard"),
    ...                                                     "count")
    True
    """
    if name not in C_EXTENSIONS:
        raise ValueError(f"not a C extension of ctrguard: {name!r}")
    if status() != "compiled" or any(name in PARTS[p] for p in turned_off()):
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def in_use() -> str:
    """What the running process actually imported for the detector core."""
    mod = sys.modules.get("ctrguard.detectors.monitor")
    if mod is None:
        return "not imported"
    return "python" if str(getattr(mod, "__file__", "")).endswith(".py") else "compiled"


def select() -> None:
    """Called by ``import detectors``: load the Python source where the extension must
    not be used (stale, disabled, or the core turned off). Leaves the import system alone
    otherwise."""
    state = status()
    if state not in ("stale", "disabled") and "core" not in turned_off():
        return
    if state == "stale":
        warnings.warn("ctrguard: the compiled detector core does not match its source; "
                      "running the Python source (rebuild: make native)", RuntimeWarning,
                      stacklevel=3)
    package = sys.modules["ctrguard.detectors"]
    for name in MODULES:
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, _source(name))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        setattr(package, name.rsplit(".", 1)[1], module)


def build(quiet: bool = False) -> None:
    """Compile :data:`MODULES` in place with mypyc and record their digests.

    Raises ``subprocess.CalledProcessError`` when the compiler fails (the extensions of
    an earlier build are removed first, so a failed build leaves the Python source in use).
    """
    for m in _BUILT:
        ext = _extension(m)
        if ext is not None:
            ext.unlink()
    (_HERE / _STAMP).unlink(missing_ok=True)
    cmd = [sys.executable, "setup.py", "--quiet", "build_ext", "--inplace"]
    out = subprocess.DEVNULL if quiet else None
    subprocess.run(cmd, cwd=_ROOT, check=True, stdout=out,
                   env={**os.environ, PURE_ENV: "1", "CTRGUARD_BUILD_NATIVE": "1"})


def module_paths() -> list[str]:
    """Source files of :data:`MODULES`, relative to the project root."""
    return [str(_source(m).relative_to(_ROOT)) for m in MODULES]


def write_stamp() -> None:
    """Record the digests of the sources the extensions are built from."""
    digests = {m: _digest(_source(m)) for m in _DEPENDS}
    (_HERE / _STAMP).write_text(json.dumps(digests, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ctrguard.detectors",
        description="Build or inspect the mypyc-compiled detector core.")
    parser.add_argument("action", choices=("status", "build"),
                        help="status: print compiled | pure | stale | disabled (exit 0 only "
                             "for compiled); build: compile in place (exit 1 on failure)")
    parser.add_argument("--quiet", action="store_true", help="build: hide compiler output")
    args = parser.parse_args(argv)
    if args.action == "build":
        try:
            build(quiet=args.quiet)
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"ctrguard.native: build failed: {exc}", file=sys.stderr)
            return 1
    state = status()
    print(state)
    return 0 if state == "compiled" else 3


if __name__ == "__main__":
    sys.exit(main())

"""Collection rules for the doctests of the source packages (pytest's ``testpaths``).

The folders ``flows/``, ``detectors/``, ``sinks/`` and ``replay/`` are the packages
``ctrguard.flows``, ... (pyproject.toml's ``package-dir``). pytest would import a file it
collects doctests from under a name made from its path (``flows.engine``): a second copy of
the module under a top-level name the product does not have. Their doctests run against the
modules the product imports instead.
"""

import importlib
from pathlib import Path

import _pytest.python

from ctrguard import native

ROOT = Path(__file__).resolve().parent
#: Source folder -> the package it is installed as.
PACKAGES = {"flows": "ctrguard.flows", "detectors": "ctrguard.detectors",
            "sinks": "ctrguard.sinks", "replay": "ctrguard.replay", "config": "ctrguard.defaults",
            "ctrguard": "ctrguard"}


def module_name(path: Path) -> str | None:
    """``flows/engine.py`` -> ``ctrguard.flows.engine``; None outside the product."""
    try:
        parts = path.resolve().relative_to(ROOT).with_suffix("").parts
    except ValueError:
        return None
    if len(parts) < 2 or parts[0] not in PACKAGES:
        return None
    rest = parts[1:-1] if parts[-1] == "__init__" else parts[1:]
    return ".".join((PACKAGES[parts[0]], *rest))


_import_by_path = _pytest.python.importtestmodule


def _import_by_name(path: Path, config):
    name = module_name(path)
    return importlib.import_module(name) if name else _import_by_path(path, config)


# Module (doctests included) and Package (a folder's __init__.py) import through this.
_pytest.python.importtestmodule = _import_by_name

# The compiled modules' examples run in tests/test_native.py, against both cores.
collect_ignore = ([str(native._source(m).relative_to(ROOT)) for m in native.MODULES]
                  if native.status() == "compiled" else [])

"""Build hook: the compiled parts (mypyc detector core, hand-written C extensions).

Set ``CTRGUARD_BUILD_NATIVE=1`` and install with ``--no-build-isolation`` after
``pip install mypy setuptools wheel`` (see the Dockerfile) to compile
``ctrguard.native.MODULES`` and ``C_EXTENSIONS`` into the wheel. Everything else,
including editable development installs, builds pure Python; ``make native``
(``python -m ctrguard.native build``) runs ``setup.py build_ext --inplace`` with the
variable set.

The folders ``detectors/``, ``flows/``, ... install as ``ctrguard.detectors``,
``ctrguard.flows``, ... (``package-dir`` in pyproject.toml). mypy names a module after the
folders it sits in, so mypyc compiles copies of the detector sources staged under
``build/mypyc-src/ctrguard/detectors/``; the extensions it makes are named
``ctrguard.detectors.*`` and land beside their sources.
"""

import os
import runpy
import shutil
from pathlib import Path

from setuptools import Extension, setup

STAGE = Path("build") / "mypyc-src"


def stage_detectors() -> list[str]:
    """Copy ``detectors/*.py`` to ``build/mypyc-src/ctrguard/detectors/`` (with an empty
    ``ctrguard/__init__.py``); return the staged paths of the compiled modules."""
    pkg = STAGE / "ctrguard" / "detectors"
    shutil.rmtree(STAGE, ignore_errors=True)
    pkg.mkdir(parents=True)
    (STAGE / "ctrguard" / "__init__.py").write_text("")
    for src in Path("detectors").glob("*.py"):
        shutil.copy2(src, pkg / src.name)
    return [str(pkg / Path(p).name) for p in native["module_paths"]()]


ext_modules = []
if os.environ.get("CTRGUARD_BUILD_NATIVE", "") not in ("", "0"):
    from mypyc.build import mypycify

    native = runpy.run_path("ctrguard/native.py")
    native["write_stamp"]()
    # The group's shared library lives inside the package (detectors/core__mypyc...so), so
    # it imports wherever ``ctrguard.detectors`` does, editable installs included.
    ext_modules = mypycify(["--config-file", "detectors/mypyc.ini", *stage_detectors()],
                           group_name=native["GROUP"])
    # Hand-written C.
    ext_modules += [Extension(name, [source], extra_compile_args=["-O2"])
                    for name, source in native["C_EXTENSIONS"].items()]

setup(ext_modules=ext_modules)

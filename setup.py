"""Build hook for the wheel (the Docker image): the mypyc-compiled detector core.

Set ``CTRGUARD_BUILD_NATIVE=1`` and install with ``--no-build-isolation`` after
``pip install mypy setuptools wheel`` (see the Dockerfile) to compile
``detectors.native.MODULES`` into the wheel. Everything else, including editable
development installs, builds pure Python; ``make native`` (``python -m detectors build``)
runs ``setup.py build_ext --inplace`` with the variable set.
"""

import os
import runpy

from setuptools import Extension, setup

ext_modules = []
if os.environ.get("CTRGUARD_BUILD_NATIVE", "") not in ("", "0"):
    from mypyc.build import mypycify

    native = runpy.run_path("detectors/native.py")
    native["write_stamp"]()
    # The group's shared library lives inside the package (detectors/core__mypyc...so), so
    # it imports wherever ``detectors`` does, editable installs included.
    ext_modules = mypycify(["--config-file", "detectors/mypyc.ini", *native["module_paths"]()],
                           group_name=native["GROUP"])
    # Hand-written C (the event scanner, ctrguard/_scan.c).
    ext_modules += [Extension(name, [source], extra_compile_args=["-O2"])
                    for name, source in native["C_EXTENSIONS"].items()]

setup(ext_modules=ext_modules)

"""Build the C extensions that read untrusted bytes with AddressSanitizer and
UndefinedBehaviorSanitizer, into ``build/fuzz/`` (the product's own builds are untouched).

With clang, the code is also instrumented for libFuzzer's coverage
(``-fsanitize=fuzzer-no-link``), so atheris is guided by the C code's branches as well as
by Python's; with gcc only by Python's. ``python -m tests.fuzz.build`` prints what it made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "build" / "fuzz"
#: Module name -> source, the extensions fuzzed (see tests/fuzz/targets.py).
SOURCES = {"ctrguard._scan": ROOT / "ctrguard" / "_scan.c",
           "ctrguard._records": ROOT / "ctrguard" / "_records.c"}
SANITIZERS = "address,undefined"


def compiler() -> tuple[str, bool]:
    """The C compiler to use and whether it adds libFuzzer coverage (clang: ``make fuzz``
    installs clang-14 and builds atheris with it)."""
    cc = (os.environ.get("FUZZ_CC") or shutil.which("clang") or shutil.which("clang-14")
          or "gcc")
    return cc, "clang" in Path(cc).name


def runtime(cc: str) -> str:
    """The ASan runtime to preload into Python (it must be loaded before anything else).

    With clang: atheris's ``asan_with_fuzzer.so`` (ASan and libFuzzer in one library, built
    when atheris is installed from source with clang), so that the coverage counters of the
    instrumented C go to libFuzzer. With gcc: gcc's ``libasan`` (no C coverage: its stubs
    of the coverage callbacks would shadow libFuzzer's, and atheris warns about it).
    """
    if "clang" in Path(cc).name:
        merged = Path(sysconfig.get_paths()["purelib"]) / "asan_with_fuzzer.so"
        if merged.exists():
            return str(merged)
        raise SystemExit("atheris was not built with clang (no asan_with_fuzzer.so): "
                         "make fuzz-setup")
    path = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True,
                          text=True, check=True).stdout.strip()
    if not os.path.isabs(path) or not os.path.exists(path):
        raise SystemExit(f"no ASan runtime found for {cc}")
    return path


def output(module: str) -> Path:
    return OUT / (module.rpartition(".")[2] + sysconfig.get_config_var("EXT_SUFFIX"))


def build() -> dict[str, Path]:
    cc, coverage = compiler()
    OUT.mkdir(parents=True, exist_ok=True)
    sanitize = SANITIZERS + (",fuzzer-no-link" if coverage else "")
    made = {}
    for module, src in SOURCES.items():
        target = output(module)
        cmd = [cc, "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer",
               f"-fsanitize={sanitize}", "-fno-sanitize-recover=undefined",
               f"-I{sysconfig.get_path('include')}", str(src), "-o", str(target)]
        subprocess.run(cmd, check=True)
        made[module] = target
    return made


if __name__ == "__main__":
    built = build()
    cc, coverage = compiler()
    print(f"compiler: {cc} (C coverage for libFuzzer: {'yes' if coverage else 'no'})")
    print(f"runtime: {runtime(cc)}")
    for module, path in built.items():
        print(f"{module}: {path.relative_to(ROOT)}")
    sys.exit(0)

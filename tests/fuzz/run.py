"""``python -m tests.fuzz.run TARGET [-- libFuzzer flags]``: fuzz one target with atheris
against the sanitizer builds of ``tests/fuzz/build.py``.

Run it through ``make fuzz`` (``FUZZ_SECONDS=600 make fuzz`` for a long run), which builds
the extensions and preloads the ASan runtime; started otherwise it refuses (exit 2),
because an extension built with ASan cannot load in a process without its runtime.
A finding stops the run with exit 1 and leaves the input in ``build/fuzz/crashes/``;
replay it with ``python -m tests.fuzz.run TARGET build/fuzz/crashes/<file>``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tests.fuzz import build

CORPUS = build.OUT / "corpus"
CRASHES = build.OUT / "crashes"


def asan_loaded() -> bool:
    maps = Path("/proc/self/maps").read_text()
    return any(name in maps for name in ("libasan", "libclang_rt.asan", "asan_with_fuzzer"))


def _event(i: int, **extra: object) -> bytes:
    base = {"event_id": f"e{i}", "ts": 1767225600000 + i, "campaign_id": f"c{i % 3}"}
    base.update(extra)
    return json.dumps(base, separators=(",", ":")).encode()


def seeds(target: str) -> list[bytes]:
    """Starting inputs: valid and nearly valid batches, lines, figures."""
    if target == "scan":
        plain = b"\n".join(_event(i, device=["mobile", "desktop"][i % 2]) for i in range(4))
        rich = b"\n".join([
            _event(1, ts="2026-01-01T00:00:00.250Z", channel="email", user_agent="Mozilla/5.0"),
            _event(2, is_internal=True, geo="DE", creative_id="cr-1", extra=[1, {"a": 2}]),
            _event(3, device="m\u00f6bile", user_id="u1"),
            b'{"event_id":"x","ts":"2026-01-01T00:00:00+01:00","campaign_id":"c"}',
            b'{"event_id":"a\\u0000","ts":1,"campaign_id":"c"}', b"not json", b""])
        return [b"\x01" + plain, b"\x13" + rich, b"\x02" + plain + b"\r\n\n" + plain]
    if target == "lines":
        return [b"\x00\x05" + b'{"a":1}\r\n \n{"b":2}\n{"c"', b"\x03\x10" + b"a\nb\r\r\n\n\nc"]
    return [bytes(range(256)), b"\x00" * 64, "c\u00e9|seg\ud800".encode("utf-8", "surrogatepass")]


def main(argv: list[str] | None = None) -> int:
    from tests.fuzz.targets import TARGETS

    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("libfuzzer", nargs="*",
                        help="libFuzzer flags and inputs (-max_total_time=60, a crash file)")
    args = parser.parse_args(argv)
    if not asan_loaded():
        print("the ASan runtime is not loaded: run through `make fuzz`", file=sys.stderr)
        return 2
    import atheris

    with atheris.instrument_imports(include=["ctrguard", "flows", "msgspec"]):
        from tests.fuzz import targets
    modules = {name: targets.load(name, build.output(name)) for name in build.SOURCES}
    targets.use(scan=modules["ctrguard._scan"], recs=modules["ctrguard._records"])
    corpus = CORPUS / args.target
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds(args.target)):
        (corpus / f"seed-{i}").write_bytes(seed)
    CRASHES.mkdir(parents=True, exist_ok=True)
    flags = list(args.libfuzzer)
    if not any(not f.startswith("-") for f in flags):  # no input files given: fuzz
        flags.append(str(corpus))
    fuzz_argv = [sys.argv[0], f"-artifact_prefix={CRASHES}/{args.target}-", *flags]
    print(f"fuzzing {args.target}: sanitizers {build.SANITIZERS}, extensions "
          + ", ".join(str(m.__file__) for m in modules.values()), flush=True)
    atheris.Setup(fuzz_argv, targets.TARGETS[args.target])
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())

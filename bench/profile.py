"""Summarise a py-spy ``--format raw`` (collapsed stacks) profile into the top functions.

``python -m bench.profile FILE [--top N]`` prints inclusive and self shares per function
(``FILE`` may be gzip-compressed, as ``bench/profile.collapsed.gz`` is).
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
from collections import Counter
from pathlib import Path

#: The frame of ``bench.child`` that wraps the timed ``run_main``.
ROOT = "main.<locals>.run (bench/child.py)"
_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _name(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    return f"{m['func']} ({_short(m['file'])})"


def summarize(path: Path, top: int = 20, root: str | None = ROOT) -> dict[str, object]:
    """Inclusive and self sample shares of the hottest functions of a collapsed profile.

    With ``root``, only stacks through that frame count (the timed run, not start-up), and
    the frames above and including it are dropped.
    """
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    for line in data.decode("utf-8", "replace").splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        n = int(m["count"])
        frames = [_name(f) for f in m["stack"].split(";") if f]
        if root is not None:
            if root not in frames:
                continue
            frames = frames[frames.index(root) + 1:]
        if not frames:
            continue
        total += n
        for name in set(frames):
            inclusive[name] += n
        own[frames[-1]] += n

    def share(c: Counter[str]) -> list[list[object]]:
        return [[name, round(100 * n / total, 1)] for name, n in c.most_common(top)]

    return {"samples": total, "inclusive_pct": share(inclusive), "self_pct": share(own)}


def render(summary: dict[str, object], top: int = 20) -> str:
    lines = [f"samples: {summary['samples']}", "", "inclusive %  function"]
    lines += [f"{pct:10.1f}  {name}" for name, pct in summary["inclusive_pct"][:top]]
    lines += ["", "self %       function"]
    lines += [f"{pct:10.1f}  {name}" for name, pct in summary["self_pct"][:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument("file", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--all", action="store_true", help="include start-up, not only the run")
    args = p.parse_args(argv)
    print(render(summarize(args.file, args.top, None if args.all else ROOT), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())

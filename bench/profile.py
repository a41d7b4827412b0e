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
from collections.abc import Iterable, Iterator
from pathlib import Path

#: The frame of ``bench.child`` that wraps the timed ``run_main``.
ROOT = "main.<locals>.run (bench/child.py)"
_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


#: The product's folders, named as in the tree (``flows/``), not as installed
#: (``ctrguard/flows/``): revisions from before the namespace compare with those after.
#: (py-spy itself names files from the ``sys.path`` entry they were found under.)
_INSTALLED = re.compile(r"^ctrguard/(flows|detectors|sinks|replay|config)/")


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return _INSTALLED.sub(r"\1/", path)


def _name(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    return f"{m['func']} ({_short(m['file'])})"


def _stacks(path: Path) -> Iterator[tuple[list[str], int]]:
    """Each stack of a collapsed profile (frames named by :func:`_name`, outermost first)
    with its samples."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    for line in data.decode("utf-8", "replace").splitlines():
        m = _LINE.match(line)
        if m:
            yield [_name(f) for f in m["stack"].split(";") if f], int(m["count"])


def _count(paths: Iterable[Path], root: str | tuple[str, ...] | None,
           ) -> tuple[int, Counter[str], Counter[str]]:
    """Samples, inclusive and self samples per function over ``paths`` (see
    :func:`summarize` for ``root``; several roots: stacks through any of them)."""
    roots = (root,) if isinstance(root, str) else root or ()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for path in paths:
        for frames, n in _stacks(path):
            if root is not None:
                at = next((i for i, f in enumerate(frames) if f in roots), None)
                if at is None:
                    continue
                frames = frames[at + 1:]
            if not frames:
                continue
            total += n
            for name in set(frames):
                inclusive[name] += n
            own[frames[-1]] += n
    return total, inclusive, own


def summarize(path: Path, top: int = 20, root: str | None = ROOT) -> dict[str, object]:
    """Inclusive and self sample shares of the hottest functions of a collapsed profile.

    With ``root``, only stacks through that frame count (the timed run, not start-up), and
    the frames above and including it are dropped.
    """
    total, inclusive, own = _count([path], root)

    def share(c: Counter[str]) -> list[list[object]]:
        return [[name, round(100 * n / total, 1)] for name, n in c.most_common(top)]

    return {"samples": total, "inclusive_pct": share(inclusive), "self_pct": share(own)}


def compare(base: list[Path], new: list[Path], top: int = 25,
            root: str | tuple[str, ...] | None = None) -> str:
    """Where two sides' samples differ: per function, the self and inclusive samples per
    profile (run) of each side and new minus base, largest differences of self samples
    first. py-spy leaves out threads that wait in a system call, so on a quiet machine
    samples are CPU time: a function whose self samples grew by ``d`` a run cost about
    ``d / rate`` seconds more. (A thread that is ready but waits for a core is sampled
    too: on a loaded machine the shares stay meaningful, the seconds do not.)
    """
    (nb, ib, ob), (nn, in_, on) = _count(base, root), _count(new, root)
    kb, kn = max(len(base), 1), max(len(new), 1)
    rows = sorted(set(ob) | set(on), key=lambda f: -abs(on[f] / kn - ob[f] / kb))[:top]
    lines = [f"samples per run: base {nb / kb:,.0f}, new {nn / kn:,.0f} "
             f"({len(base)} and {len(new)} runs)", "",
             f"{'self base':>10} {'new':>8} {'diff':>8}   {'incl base':>10} {'new':>8}  function"]
    for f in rows:
        lines.append(f"{ob[f] / kb:10.1f} {on[f] / kn:8.1f} {on[f] / kn - ob[f] / kb:+8.1f}   "
                     f"{ib[f] / kb:10.1f} {in_[f] / kn:8.1f}  {f}")
    return "\n".join(lines)


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

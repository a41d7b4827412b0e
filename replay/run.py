"""Replay recorded streams through the same preparation, windowing and detection as the live flow.

No Kafka, Redis or Slack: files in, files out. Deterministic: the two files are read in
chunks, always from the one whose event time is behind, and each chunk reports its source's
frontier exactly as a Kafka partition batch does in the live flow.

Outputs in ``out_dir``: ``alerts.jsonl`` (one escalation a line), ``figures.jsonl`` (every
decided series-window with its status), ``deadletter.jsonl`` (rejected and late events with
the reason), ``summary.json`` (counts), with baselines ``alerts_<name>.jsonl``, and with
bands ``bands.jsonl`` (the expected CTR and its band per series-window: :mod:`ctrguard.replay.bands`).
"""

from __future__ import annotations

import base64
import gc
import gzip
import io
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec
import numpy as np

from ctrguard.config import Settings
from ctrguard.events import CLICK, IMPRESSION, LineBlock, line_bounds
from ctrguard.flows.engine import (
    DeadLetter,
    EventPreparer,
    RawBatch,
    ShardState,
    conservation,
    tune_gc,
)
from ctrguard.reasons import reason_code
from ctrguard.records import WindowDecision, encode_lines, encode_pretty
from ctrguard.replay.evaluate import ReplayInputError

IMPRESSIONS_SOURCE = "impressions"
CLICKS_SOURCE = "clicks"


@dataclass
class ReplayResult:
    out_dir: Path
    alerts_path: Path
    figures_path: Path
    deadletter_path: Path
    summary_path: Path
    summary: dict[str, Any]
    baseline_alert_paths: dict[str, Path] = field(default_factory=dict)


def open_lines(path: str | Path) -> IO[bytes]:
    """Open a JSONL file, gzip-compressed or not (detected by magic bytes, not the name)."""
    raw = open(path, "rb")  # noqa: SIM115 - returned to the caller
    head = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
    if head == b"\x1f\x8b":
        return io.BufferedReader(gzip.GzipFile(fileobj=raw, mode="rb"), buffer_size=1 << 20)
    return raw


try:  # ISA-L's inflate: the same bytes in about a third of zlib's time
    from isal.igzip import IGzipFile as _GzipFile
    from isal.isal_zlib import error as _IsalError
except ImportError:  # (a platform without its wheels: the standard library's)
    _GzipFile = gzip.GzipFile  # type: ignore[assignment,misc]
    _IsalError = zlib.error    # type: ignore[assignment,misc]
#: What a damaged gzip file raises, from either decompressor.
_DAMAGED = (OSError, EOFError, zlib.error, _IsalError)

#: Bytes read from a file at a time; lines are cut out of these blocks in C. Not smaller:
#: glibc returns a freed block of 1 MiB at the top of the heap to the system, and the next
#: one faults its pages in again (measured: 6x the page faults, slower than 4 MiB blocks).
READ_BLOCK = 1 << 22


def _open_blocks(path: str | Path) -> tuple[IO[bytes], IO[bytes]]:
    """The file as a reader of its (decompressed) bytes, and the raw file to close after it.

    Like :func:`open_lines` without the buffered reader on top of the GzipFile, which only
    costs a copy and a trip through Python per 8 KiB when the reads are large anyway.
    """
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if raw.peek(2)[:2] == b"\x1f\x8b":
        return _GzipFile(fileobj=raw, mode="rb"), raw
    return raw, raw


class _FileSource:
    """Reads one file in chunks of lines, tracking its event-time frontier cheaply.

    A chunk is the next ``chunk_lines`` lines of the file (blank lines are skipped but
    counted, so offsets are line numbers), as a readline loop would cut them; the chunk
    that reaches the end of the file is marked idle. The file is read in large blocks and
    a chunk's messages are offsets into its block (:class:`~ctrguard.events.LineBlock`),
    not a bytes object per line.
    """

    def __init__(self, path: str | Path, topic: str, kind: int, chunk_lines: int):
        self.path = str(path)
        self.topic = topic
        self.kind = kind
        self.chunk_lines = chunk_lines
        self._fh, self._raw = _open_blocks(path)
        self._line_no = 0
        self._buf = b""     # blocks read: lines from self._pos on are not taken yet
        self._pos = 0
        self._eof = False
        self.done = False
        self.frontier: int | None = None

    def close(self) -> None:
        self._fh.close()
        self._raw.close()

    def _read_more(self) -> None:
        """Append the next block to what is not taken yet; at the end of the file, end an
        unterminated last line (a last line without a newline is still a line)."""
        try:
            block = self._fh.read(READ_BLOCK)
        except _DAMAGED as exc:
            raise ReplayInputError(self.path, None, f"unreadable (damaged gzip data?): "
                                   f"{type(exc).__name__}: {exc}") from exc
        rest = self._buf[self._pos:]
        if not block:
            self._eof = True
            self.close()
            block = b"\n" if rest and not rest.endswith(b"\n") else b""
        self._buf = rest + block if rest else block
        self._pos = 0

    def read_chunk(self) -> RawBatch:
        want = self.chunk_lines
        while True:
            bounds, numbers, consumed, seen = line_bounds(self._buf, self._pos, want)
            if seen == want or self._eof:
                break
            self._read_more()  # (the lines found are cut again from the larger buffer)
        values = LineBlock(self._buf, bounds)
        self._pos = consumed
        first = self._line_no + 1
        self._line_no += seen
        # Like readline: the chunk that tries to read past the last line finds the end.
        if seen < want:
            self.done = True
        offsets: Sequence[int] = (range(first, first + seen) if numbers is None else
                                  (np.frombuffer(numbers, dtype=np.int64) + first).tolist())
        return RawBatch(self.topic, 0, self.kind, values, offsets, idle=self.done)


def _write_lines(fh: IO[bytes], records: Sequence[Any]) -> None:
    """Write ``records`` as JSON lines in one write."""
    if records:
        fh.write(encode_lines(records))


def dead_letter_record(d: DeadLetter) -> dict[str, Any]:
    try:
        text = d.raw.decode("utf-8")
        raw_field = {"raw": text}
    except UnicodeDecodeError:
        raw_field = {"raw_base64": base64.b64encode(d.raw).decode("ascii")}
    return {"stage": d.stage, "reason": d.reason, "reason_code": reason_code(d.stage, d.code),
            "source": d.topic, "line": d.offset, **raw_field}


class _Progress:
    def __init__(self, enabled: bool, stream: IO[str] = sys.stderr):
        self.enabled = enabled and stream is not None
        self.stream = stream
        self.start = time.perf_counter()
        self.last = 0.0

    def update(self, read: int, windows: int, alerts: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not final and now - self.last < 1.0:
            return
        self.last = now
        rate = read / max(now - self.start, 1e-9)
        end = "\n" if final else "\r"
        print(f"replay: {read:,} events read, {windows:,} series-windows, {alerts:,} alerts, "
              f"{rate:,.0f} events/s", end=end, file=self.stream, flush=True)


def run_replay(
    impressions: str | Path,
    clicks: str | Path,
    settings: Settings,
    out_dir: str | Path,
    *,
    baselines: bool = False,
    progress: bool = False,
    chunk_lines: int = 5000,
    monitor_factory: Callable[[], Any] | None = None,
    annotations: Sequence[Any] = (),
    bands: bool = False,
    decisions: Callable[[list[Any]], None] | None = None,
    on_state: Callable[[ShardState], None] | None = None,
) -> ReplayResult:
    """Replay two JSONL(.gz) files and write alerts, figures, dead letters and a summary
    (and with ``bands``, the expected CTR and band of every series-window).

    ``annotations``: planned changes (:class:`ctrguard.sinks.annotations.Annotation`) besides the
    configuration's; alerts inside them are marked expected and do not quarantine.
    ``decisions``, if given, sees what the main detector state returns, as it returns it
    (before planned changes mark alerts expected). ``on_state``, if given, is handed the
    main detector state once made (a recording reads its closing context).
    """
    from ctrguard.detectors.monitor import build_monitor
    from ctrguard.replay.expected import ExpectedMarker

    expected = ExpectedMarker(settings, annotations)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    factory = monitor_factory or (lambda: build_monitor(settings.detectors))
    recorder = None
    if bands:
        from ctrguard.replay.bands import BandRecorder

        recorder = BandRecorder()
        factory = recorder.factory(factory)
    sources = [
        _FileSource(impressions, IMPRESSIONS_SOURCE, IMPRESSION, chunk_lines),
        _FileSource(clicks, CLICKS_SOURCE, CLICK, chunk_lines),
    ]
    source_ids = [f"{s.topic}:0" for s in sources]
    preparer = EventPreparer(settings)
    states: dict[str, ShardState] = {"ctrguard": ShardState(settings, source_ids, factory)}
    if on_state is not None:
        on_state(states["ctrguard"])
    if baselines:
        from ctrguard.detectors import baselines as bl

        states["raw_river"] = ShardState(settings, source_ids,
                                         lambda: bl.RawRiverBaseline(settings.detectors))
        states["ztest"] = ShardState(settings, source_ids,
                                     lambda: bl.ZTestBaseline(settings.detectors))
    paths = {
        "alerts": out / "alerts.jsonl",
        "figures": out / "figures.jsonl",
        "deadletter": out / "deadletter.jsonl",
        "summary": out / "summary.json",
    }
    baseline_paths = {name: out / f"alerts_{name}.jsonl" for name in states if name != "ctrguard"}
    if recorder is not None:
        paths["bands"] = out / "bands.jsonl"
    files = {name: open(path, "wb") for name, path in paths.items() if name != "summary"}  # noqa: SIM115
    baseline_files = {name: open(path, "wb") for name, path in baseline_paths.items()}  # noqa: SIM115
    read = 0
    parse_errors = 0
    excluded: Counter = Counter()
    dead_by_stage: Counter = Counter()
    prog = _Progress(progress)
    # Recorded history never lies in the future: the same plausibility bound as live.
    now_ms = int(time.time() * 1000)
    main = states["ctrguard"]

    def emit(name: str, items: list[WindowDecision | DeadLetter]) -> None:
        if name == "ctrguard":
            if decisions is not None:
                decisions(items)
            items = expected(items)
            figures: list[Any] = []
            alerts: list[Any] = []
            dead: list[dict[str, Any]] = []
            for item in items:
                if isinstance(item, WindowDecision):
                    figures.extend(item.figures)
                    alerts.extend(item.alerts)
                else:
                    dead_by_stage[item.stage] += 1
                    dead.append(dead_letter_record(item))
            if figures:
                files["figures"].write(encode_lines(figures))
            _write_lines(files["alerts"], alerts)
            _write_lines(files["deadletter"], dead)
            if recorder is not None:
                band_lines = recorder.lines(items)
                if band_lines:
                    files["bands"].write(b"\n".join(band_lines) + b"\n")
        else:
            _write_lines(baseline_files[name], [alert for item in items
                                                if isinstance(item, WindowDecision)
                                                for alert in item.alerts])

    gc_thresholds = gc.get_threshold()
    tune_gc()
    try:
        while True:
            pending = [s for s in sources if not s.done]
            if not pending:
                break
            # Read from the source that is furthest behind in event time, like a consumer
            # that keeps its partitions in step.
            src = min(pending, key=lambda s: (s.frontier is not None, s.frontier or 0))
            batch = src.read_chunk()
            read += len(batch.values)
            prepared = preparer.prepare(batch, now_ms=now_ms)
            if prepared.frontier_ms is not None:
                src.frontier = prepared.frontier_ms
            excluded.update(prepared.excluded)
            if prepared.dead_letters:
                for d in prepared.dead_letters:
                    if d.stage == "parse":
                        parse_errors += 1
                    dead_by_stage[d.stage] += 1
                _write_lines(files["deadletter"],
                             [dead_letter_record(d) for d in prepared.dead_letters])
            # Replay runs all campaigns in one state (shards only matter for parallelism):
            # one chunk with the shards' events in shard order, as the live flow sees them.
            merged = preparer.merged(prepared, batch.kind)
            for name, state in states.items():
                emit(name, state.ingest(merged))
            prog.update(read, main.stats.windows, main.stats.alerts)
        for name, state in states.items():
            emit(name, state.flush())
    finally:
        gc.set_threshold(*gc_thresholds)
        for source in sources:
            source.close()
        for fh in [*files.values(), *baseline_files.values()]:
            fh.close()
    prog.update(read, main.stats.windows, main.stats.alerts, final=True)
    stats = main.stats.as_dict()
    summary = {
        "events_read": read,
        "events_counted": stats["events"],
        "excluded": dict(sorted(excluded.items())),
        "excluded_total": sum(excluded.values()),
        "duplicates": stats["duplicates"],
        "late": stats["late"],
        "dead_lettered": sum(dead_by_stage.values()),
        "dead_lettered_by_stage": dict(sorted(dead_by_stage.items())),
        "invalid": parse_errors,
        "windows": stats["windows"],
        "quarantined_windows": stats["quarantined"] - expected.figures_released,
        "alerts": stats["alerts"],
        "campaigns": main.campaigns,
        "series": main.series(),
        "baseline_alerts": {name: s.stats.alerts for name, s in states.items() if name != "ctrguard"},
        # Per input file: every line read ended in exactly one of these (README, "Nothing
        # vanishes"); "balanced" false would be a bug.
        "conservation": conservation(main.tally),
    }
    if expected.annotations:
        summary["expected_alerts"] = expected.alerts
    paths["summary"].write_bytes(encode_pretty(summary))
    return ReplayResult(out, paths["alerts"], paths["figures"], paths["deadletter"],
                        paths["summary"], summary, baseline_paths)


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    with open_lines(path) as fh:
        for line in fh:
            if line.strip():
                yield msgspec.json.decode(line)

"""The expected CTR and its band per series-window, as the detectors saw them: ``bands.jsonl``.

Replay writes it beside ``figures.jsonl`` (one line per campaign-window, every series the
detectors had state for)::

    {"campaign_id": "c007", "window_start_s": 1767611100,
     "series": {"all": [0.0212, 0.0151, 0.0273, 411.6], "device=mobile": [...]}}

Each value is ``[expected ctr, ctr_low, ctr_high, expected impressions]``, read from the
monitor (:meth:`ctrguard.detectors.monitor.CampaignMonitor.expectations`) just before the window is
fed to it: the same expectation and 99% band an alert on that window reports
(``baseline_ctr``, ``ctr_low``, ``ctr_high``). A series' first window has no line entry (no
state yet), nor does a window the detectors never saw.

How it is taken: every campaign's monitor is wrapped (:class:`BandedMonitor`), and the
wrapper notes the expectations of each ``update`` call in call order. The engine returns one
:class:`~ctrguard.records.WindowDecision` per ``update`` call, in the same order, so the
notes are matched to the decisions (campaign and window) as they come out; a mismatch
raises rather than mislabel a band.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from ctrguard.errors import CtrGuardError
from ctrguard.records import WindowDecision, encode_record

__all__ = ["BandedMonitor", "BandRecorder", "load_bands"]

Expectations = dict[str, tuple[float, float, float, float]]


class BandedMonitor:
    """A monitor that notes its expectations before each window (see the module doc)."""

    __slots__ = ("monitor", "notes")

    def __init__(self, monitor: Any, notes: list[tuple[int, Expectations]]):
        self.monitor = monitor
        self.notes = notes

    def update(self, window: Any, counts: dict[str, Any]) -> list[Any]:
        self.notes.append((window.start, self.monitor.expectations(window, counts)))
        return self.monitor.update(window, counts)

    def revise(self, verdicts: list[Any], evidence: dict[str, Any]) -> list[Any]:
        """The wrapped monitor's (the bot evidence of a CTR rise): bands change nothing."""
        return self.monitor.revise(verdicts, evidence)


class BandRecorder:
    """Wraps a monitor factory and turns the notes into ``bands.jsonl`` lines.

    >>> from ctrguard.detectors.base import Counts, Window
    >>> from ctrguard.detectors.settings import DetectorSettings
    >>> from ctrguard.detectors.monitor import build_monitor
    >>> rec = BandRecorder()
    >>> m = rec.factory(lambda: build_monitor(DetectorSettings()))()
    >>> _ = m.update(Window(0, 300), {"all": Counts(100, 2)})
    >>> _ = m.update(Window(300, 600), {"all": Counts(100, 2)})
    >>> d = [WindowDecision("c1", 0, 300, (), ()), WindowDecision("c1", 300, 600, (), ())]
    >>> rec.lines(d)
    [b'{"campaign_id":"c1","window_start_s":300,"series":{"all":[0.02,0.0,0.07099881829611657,100.0]}}']
    """

    def __init__(self) -> None:
        self.notes: list[tuple[int, Expectations]] = []

    def factory(self, make: Callable[[], Any]) -> Callable[[], BandedMonitor]:
        notes = self.notes

        def banded() -> BandedMonitor:
            return BandedMonitor(make(), notes)

        return banded

    def lines(self, decisions: Iterable[Any]) -> list[bytes]:
        """The lines of the notes taken since the last call, matched to ``decisions`` (the
        :class:`WindowDecision` objects among what the engine returned since then)."""
        notes = self.notes
        out: list[bytes] = []
        i = 0
        for d in decisions:
            if not isinstance(d, WindowDecision):
                continue
            if i >= len(notes) or notes[i][0] != d.window_start_s:
                raise CtrGuardError(
                    f"bands: decision {d.campaign_id}@{d.window_start_s} does not match the "
                    f"monitor call {'(none)' if i >= len(notes) else notes[i][0]}")
            series = notes[i][1]
            i += 1
            if series:
                out.append(encode_record({"campaign_id": d.campaign_id,
                                          "window_start_s": d.window_start_s,
                                          "series": series}))
        if i != len(notes):
            raise CtrGuardError(f"bands: {len(notes) - i} monitor calls without a decision")
        notes.clear()
        return out


def load_bands(path: str | Path, campaigns: set[str] | None = None
               ) -> Iterator[tuple[str, int, dict[str, list[float]]]]:
    """``(campaign_id, window_start_s, {segment: [ctr, low, high, impressions]})`` per line
    of a ``bands.jsonl`` file, only for ``campaigns`` when given (filtered before parsing)."""
    from ctrguard.replay.evaluate import ReplayInputError
    from ctrguard.replay.run import open_lines

    prefixes = None
    if campaigns is not None:
        # (``,"window_start_s":`` cannot occur inside the id's text: its quotes are escaped)
        prefixes = {b'{"campaign_id":' + encode_record(c) for c in campaigns}
    with open_lines(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if prefixes is not None and line[:line.find(b',"window_start_s":')] not in prefixes:
                continue
            try:
                rec = msgspec.json.decode(line)
                yield rec["campaign_id"], int(rec["window_start_s"]), rec["series"]
            except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
                raise ReplayInputError(path, n, f"bad band record: {exc!r}") from None

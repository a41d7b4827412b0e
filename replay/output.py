"""The lines of ``figures.jsonl``: byte for byte ``orjson.dumps(figure)``, at a fraction of
its cost.

orjson serialises a slots dataclass through one attribute lookup by name per field, about
1 µs a figure here, and a replay writes a figure for every series-window. The figures of one
:class:`~ctrguard.records.WindowDecision` share their campaign and window, so that text is
encoded once per decision and each figure costs one bytes formatting. Every piece of text
still comes from orjson (strings, floats and alert ids are encoded by it and cached), and a
figure that does not have the expected shape goes through ``orjson.dumps`` whole.

>>> from ctrguard.records import Figure
>>> f = Figure("c1", "all", "2026-01-05T00:00:00Z", "2026-01-05T00:05:00Z", 1767571200,
...            40, 3, 0.075, "ok")
>>> lines = FigureLines()
>>> lines.encode([f]) == orjson.dumps(f) + b"\\n"
True
"""

from __future__ import annotations

from collections.abc import Iterable
from math import copysign
from operator import attrgetter
from typing import Any

import orjson

from ctrguard.records import Figure

#: The fields of a figure in the order orjson writes them (the dataclass's order).
FIELDS = ("campaign_id", "segment", "window_start", "window_end", "window_start_s",
          "impressions", "clicks", "ctr", "status", "alert_ids")
_ROW = attrgetter(*FIELDS)
#: Cached encodings are dropped past this many (campaign ids and segments are unbounded).
_CACHE_LIMIT = 200_000
#: Integers written with %d: within orjson's range (it refuses integers beyond 64 bits).
_INT_LIMIT = 1 << 63


#: A line from its cached pieces: head (campaign), segment, mid (window), then the counts.
_LINE = b'%b%b%b%d,"clicks":%d,"ctr":%b,"status":%b,"alert_ids":%b}\n'


class FigureLines:
    """Encodes figures as JSON lines, each ``orjson.dumps(figure) + b"\\n"``.

    One per output file; it keeps small caches of encoded strings and numbers.
    """

    def __init__(self) -> None:
        # The fast path writes the field names itself: only for the Figure it was made for.
        fields = getattr(Figure, "__dataclass_fields__", {})
        self.fast = tuple(fields) == FIELDS
        self._text: dict[str, bytes] = {}
        self._float: dict[float, bytes] = {}
        self._heads: dict[str, bytes] = {}
        self._window: tuple[Any, Any, Any] | None = None
        self._mid = b""

    def _str(self, text: str) -> bytes:
        b = self._text.get(text)
        if b is None:
            if len(self._text) > _CACHE_LIMIT:
                self._text.clear()
            b = self._text[text] = orjson.dumps(text)
        return b

    def encode(self, figures: Iterable[Figure]) -> bytes:
        """The lines of ``figures`` (of one decision or several), each ending in a newline."""
        out: list[bytes] = []
        self.extend(out, figures)
        return b"".join(out)

    def extend(self, out: list[bytes], figures: Iterable[Figure]) -> None:
        """Append the line (with its newline) of each of ``figures`` to ``out``."""
        if not self.fast:
            for f in figures:
                out.append(orjson.dumps(f) + b"\n")
            return
        text, floats = self._text, self._float
        head = mid = None
        cid = ws = we = start_s = None
        for f in figures:
            row = _ROW(f) if type(f) is Figure else None
            if row is None:
                out.append(orjson.dumps(f) + b"\n")
                continue
            f_cid, seg, f_ws, f_we, f_s, imps, clicks, ctr, status, ids = row
            # The figures of one decision share these objects; anything else starts anew.
            if f_cid is not cid or f_ws is not ws or f_we is not we or f_s is not start_s:
                head, mid = self._pieces(f_cid, f_ws, f_we, f_s)
                cid, ws, we, start_s = f_cid, f_ws, f_we, f_s
            if (head is None or type(imps) is not int or type(clicks) is not int
                    or not (0 <= imps < _INT_LIMIT and 0 <= clicks < _INT_LIMIT)
                    or type(seg) is not str or type(status) is not str):
                out.append(orjson.dumps(f) + b"\n")
                continue
            seg_b = text.get(seg)
            if seg_b is None:
                seg_b = self._str(seg)
            status_b = text.get(status)
            if status_b is None:
                status_b = self._str(status)
            # -0.0 equals 0.0 as a key but is written "-0.0": it is never cached.
            if type(ctr) is float and (ctr or copysign(1.0, ctr) > 0):
                ctr_b = floats.get(ctr)
                if ctr_b is None:
                    if len(floats) > _CACHE_LIMIT:
                        floats.clear()
                    ctr_b = floats[ctr] = orjson.dumps(ctr)
            else:
                ctr_b = orjson.dumps(ctr)
            ids_b = b"[]" if ids == () else orjson.dumps(ids)
            out.append(_LINE % (head, seg_b, mid, imps, clicks, ctr_b, status_b, ids_b))

    def _pieces(self, cid: Any, ws: Any, we: Any, start_s: Any
                ) -> tuple[bytes, bytes] | tuple[None, None]:
        """The text of a line before the segment (campaign ``cid``) and between segment and
        counts (window ``ws``..``we``); None when these are not of the types written here
        as orjson writes them."""
        if type(cid) is not str or type(ws) is not str or type(we) is not str \
                or type(start_s) is not int or not 0 <= start_s < _INT_LIMIT:
            return None, None
        window = (ws, we, start_s)
        if window != self._window:
            self._window = window
            self._mid = (b',"window_start":' + self._str(ws) + b',"window_end":'
                         + self._str(we) + b',"window_start_s":' + b"%d" % start_s
                         + b',"impressions":')
        head = self._heads.get(cid)
        if head is None:
            if len(self._heads) > _CACHE_LIMIT:
                self._heads.clear()
            head = self._heads[cid] = b'{"campaign_id":' + orjson.dumps(cid) + b',"segment":'
        return head, self._mid

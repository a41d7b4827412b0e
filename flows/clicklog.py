"""The evidence of bot clicks, from the clicks themselves, per campaign-window.

Bots that disguise their user agent still betray themselves: their clicks come from few
users, many clicks each, often without an impression behind them (no ``impression_id``, or
one that matches no impression of the campaign). A real surge of clicks (a creative that
works) spreads over as many users as ever, each click on an impression just shown.

A shard keeps, for the clicks it counted in its open windows, five columns: campaign id,
dims key, de-duplication key, and the keys of ``user_id`` and ``impression_id``
(:func:`ctrguard.flows.engine.ref_keys`, 8 bytes each; clicks are about 2 % of events). Nothing is
done per click in Python: a chunk of clicks is appended as it is; when a window closes,
its clicks leave the log as :class:`WindowClicks`, which lives while the window closes.
The first campaign whose detectors raised a CTR rise to ask it for its evidence has
the clicks matched, in bulk, against the impressions' de-duplication keys the shard keeps
anyway for that window and the one before (an impression and its click are routed to the
same shard: both by campaign); a window with no rise to judge costs no matching. The
evidence (:meth:`WindowClicks.evidence`), per series: the suspicious clicks (without a
matching impression, or from a user with more than one click in the window) and the
clicks. :meth:`ctrguard.detectors.monitor.CampaignMonitor.revise` weighs it.

>>> import numpy as np
>>> from ctrguard.flows.engine import dedup_keys, ref_keys
>>> log = ClickLog()
>>> cids = ["c1"] * 4 + ["c2"]
>>> log.add(np.array([7, 7, 7, 7, 7]), cids, ["m", "m", "d", "m", "m"],
...         dedup_keys(cids, ["k1", "k2", "k3", "k4", "k5"]),
...         ref_keys(cids, ["u1", "u2", "bot", "bot", "u9"]),
...         ref_keys(cids, ["i1", "i2", None, "i9", "i5"]), next_close=None)
>>> shown = dedup_keys(["c1", "c1", "c2"], ["i1", "i2", "i5"])
>>> w = log.close(7, [np.sort(shown)])
>>> segs = {"m": ("all", "device=m"), "d": ("all", "device=d")}
>>> w.evidence("c1", segs.__getitem__)
{'all': (2.0, 4), 'device=m': (1.0, 3), 'device=d': (1.0, 1)}
>>> w.evidence("c2", segs.__getitem__), len(log)
({'all': (0.0, 1), 'device=m': (0.0, 1)}, 0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import compress
from typing import Any

import numpy as np

__all__ = ["ClickLog", "WindowClicks", "REF_SHARE"]

#: A missing ``impression_id`` is suspicious only where most of the campaign's clicks in
#: the window carry one (a tracker that never sends it is no evidence of anything).
REF_SHARE = 0.5


class _Part:
    """The counted-so-far clicks of one chunk: columns as the chunk holds them."""

    __slots__ = ("wids", "lo", "hi", "cids", "dks", "keys", "users", "refs")

    def __init__(self, wids: np.ndarray, cids: Sequence[str], dks: Sequence[Any],
                 keys: np.ndarray, users: np.ndarray, refs: np.ndarray):
        self.wids = wids
        self.lo = int(wids.min())
        self.hi = int(wids.max())
        self.cids = cids
        self.dks = dks
        self.keys = keys
        self.users = users
        self.refs = refs

    def __getstate__(self) -> tuple:
        return (self.wids, list(self.cids), list(self.dks), self.keys, self.users, self.refs)

    def __setstate__(self, state: tuple) -> None:
        self.wids, self.cids, self.dks, self.keys, self.users, self.refs = state
        self.lo = int(self.wids.min())
        self.hi = int(self.wids.max())


class ClickLog:
    """The clicks of a shard's open windows, with their reference keys; pickles with the
    shard and continues identically. Memory: the chunks' columns for the clicks of the
    open windows (and of a closed window, until its close)."""

    __slots__ = ("parts", "closing")

    def __init__(self) -> None:
        self.parts: list[_Part] = []
        #: The clicks of the window being closed (not pickled: they live for one close).
        self.closing: WindowClicks | None = None

    def __getstate__(self) -> list:
        return self.parts

    def __setstate__(self, parts: list) -> None:
        self.parts = parts
        self.closing = None

    def __len__(self) -> int:
        return sum(len(p.wids) for p in self.parts)

    def add(self, wids: np.ndarray, cids: Sequence[str], dks: Sequence[Any], keys: np.ndarray,
            users: np.ndarray, refs: np.ndarray, next_close: int | None) -> None:
        """Log a chunk of clicks (window ids, campaign ids, dims keys, de-duplication keys,
        user and impression keys); those of windows already closed (``< next_close``) are
        left out: they are late, and dead-lettered."""
        if next_close is not None and int(wids.min()) < next_close:
            keep = np.flatnonzero(wids >= next_close)
            if not keep.size:
                return
            idx = keep.tolist()
            wids, keys, users, refs = wids[keep], keys[keep], users[keep], refs[keep]
            cids = [cids[i] for i in idx]
            dks = [dks[i] for i in idx]
        self.parts.append(_Part(wids, cids, dks, keys, users, refs))

    def close(self, wid: int, shown: Sequence[np.ndarray]) -> WindowClicks | None:
        """The clicks of window ``wid`` (each once), matched against ``shown``: sorted
        arrays of the impressions' de-duplication keys of this window and the one before.
        Forgets them; ``None`` when the window had no clicks."""
        taken: list[tuple[_Part, np.ndarray | None]] = []
        rest: list[_Part] = []
        for part in self.parts:
            if part.lo > wid:
                rest.append(part)
                continue
            if part.lo == part.hi:  # (the common case: a chunk within one window)
                if part.lo == wid:
                    taken.append((part, None))
                continue
            mask = part.wids == wid
            if mask.any():
                taken.append((part, mask))
            if part.hi > wid:
                rest.append(part)
        self.parts = rest
        if not taken:
            return None
        return WindowClicks(taken, list(shown))


def _match(taken: list[tuple[_Part, np.ndarray | None]], shown: Sequence[np.ndarray],
           ) -> tuple[np.ndarray, list[Any], np.ndarray, np.ndarray, np.ndarray]:
    """The columns of :class:`WindowClicks` from the parts taken for a window (each with the
    mask of its clicks in it, ``None`` for all) and the impressions' key runs."""
    cids: list[str] = []
    dks: list[Any] = []
    cols: list[list[np.ndarray]] = [[], [], []]
    for part, mask in taken:
        if mask is None:
            cids.extend(part.cids)
            dks.extend(part.dks)
            cols[0].append(part.keys)
            cols[1].append(part.users)
            cols[2].append(part.refs)
        else:
            cids.extend(compress(part.cids, mask.tolist()))
            dks.extend(compress(part.dks, mask.tolist()))
            cols[0].append(part.keys[mask])
            cols[1].append(part.users[mask])
            cols[2].append(part.refs[mask])
    keys, users, refs = (np.concatenate(c) for c in cols)
    # A click logged twice (delivered again) counts once, as the shard counted it.
    _, first = np.unique(keys, return_index=True)
    if len(first) < len(keys):
        first.sort()
        idx = first.tolist()
        users, refs = users[first], refs[first]
        cids = [cids[i] for i in idx]
        dks = [dks[i] for i in idx]
    has_ref = refs != 0
    matched = np.zeros(len(refs), dtype=bool)
    for run in shown:
        if len(run):
            pos = np.minimum(run.searchsorted(refs), len(run) - 1)
            matched |= run[pos] == refs
    matched &= has_ref
    return np.array(cids, dtype=object), dks, users, has_ref, matched


class WindowClicks:
    """The clicks of one closing window, for the evidence of the campaigns that ask.

    Matched when first asked (most windows close without a CTR rise to judge, and then
    nothing is done): the clicks' columns are taken from the log at the close, and the
    impressions' key runs are arrays a shard never changes (it replaces them), so the
    answer is the same whenever it is computed.
    """

    __slots__ = ("_taken", "_shown", "_cols")

    def __init__(self, taken: list[tuple[_Part, np.ndarray | None]],
                 shown: list[np.ndarray]):
        self._taken: list[tuple[_Part, np.ndarray | None]] | None = taken
        self._shown = shown
        #: campaign ids (object array), dims keys, user keys, per click whether it carries
        #: an impression id and whether that impression was shown (this window or before)
        self._cols: tuple[np.ndarray, list[Any], np.ndarray, np.ndarray, np.ndarray] | None \
            = None

    def _columns(self) -> tuple[np.ndarray, list[Any], np.ndarray, np.ndarray, np.ndarray]:
        cols = self._cols
        if cols is None:
            assert self._taken is not None
            cols = self._cols = _match(self._taken, self._shown)
            self._taken = self._shown = None  # type: ignore[assignment]
        return cols

    @property
    def cids(self) -> np.ndarray:
        """The campaign of each click (an object array)."""
        return self._columns()[0]

    def evidence(self, campaign_id: str, segments: Callable[[Any], Sequence[str]]
                 ) -> dict[str, tuple[float, int]] | None:
        """Per series of the campaign (``segments``: a dims key's series), its suspicious
        clicks and its clicks in this window; ``None`` when its clicks carry neither a
        user nor an impression id (nothing to judge by)."""
        cids, dks, all_users, all_has_ref, all_matched = self._columns()
        idx = np.flatnonzero(cids == campaign_id)
        if not idx.size:
            return {}
        users = all_users[idx]
        has_ref, matched = all_has_ref[idx], all_matched[idx]
        # Without an impression id, a click is suspicious only where most of the campaign's
        # clicks carry one (a tracker that never sends it is no evidence of anything). Per
        # campaign: the same however the campaigns are sharded.
        unmatched = ~matched if has_ref.mean() >= REF_SHARE else has_ref & ~matched
        known = users != 0
        if not known.any() and not unmatched.any():
            return None
        _, inverse, counts = np.unique(users, return_inverse=True, return_counts=True)
        suspicious = unmatched | (known & (counts[inverse] > 1))
        out: dict[str, list] = {}
        for i, sus in zip(idx.tolist(), suspicious.tolist(), strict=True):
            for seg in segments(dks[i]):
                got = out.get(seg)
                if got is None:
                    out[seg] = [float(sus), 1]
                else:
                    got[0] += sus
                    got[1] += 1
        return {seg: (s, n) for seg, (s, n) in out.items()}

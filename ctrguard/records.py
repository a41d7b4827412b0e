"""Output records: window figures and alerts, as published to Kafka, files and sinks.

An :class:`Alert`'s ``kind`` says what moved: ``click_outage``, ``ctr_drop``, ``ctr_spike``,
``click_surge``, ``segment_break``, ``silence``, ``drift``, ``ingestion_stall``. Its
``suspected_cause`` says why (:data:`detectors.base.CAUSES`): ``click_tracking``,
``impression_logging``, ``bot_clicks`` (only when the clicks themselves show bots),
``behaviour_change`` (a real change: a rise over as many users as ever, a drop at normal
volume), ``segment_break`` (one segment falls while its siblings hold), ``drift``,
``silence``, ``ingestion_stall`` and ``volume_change``. ``quarantine`` follows
``quarantine.causes``. An ingestion stall is one pipeline incident: one ``ingestion_stall``
alert per affected campaign-window, all with ``incident`` ``stall:<impressions|clicks>:
<window_start_s of its first window>`` (the same in every shard and worker).

>>> a = make_alert_id("c1", "all", 1767225600, "binomial_cusum", "ctr_drop")
>>> a == make_alert_id("c1", "all", 1767225600, "binomial_cusum", "ctr_drop"), len(a)
(True, 20)
>>> series_key("c1", "device=mobile")
'c1|device=mobile'
>>> figure_key("x|device=mobile", "all", 1767225600), figure_key("x", "device=mobile|all", 1767225600)
(b'x%7Cdevice=mobile|all|1767225600', b'x|device=mobile%7Call|1767225600')
>>> parse_figure_key(b'x%7Cdevice=mobile|all|1767225600')
('x|device=mobile', 'all', 1767225600)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson

from detectors import native

STATUS_OK = "ok"
STATUS_QUARANTINED = "quarantined"


def make_alert_id(campaign_id: str, segment: str, window_start: int, detector: str,
                  kind: str) -> str:
    """Deterministic id: the same alarm on a re-run (restart, replay) gets the same id."""
    digest = hashlib.blake2b(
        f"{campaign_id}\x1f{segment}\x1f{window_start}\x1f{detector}\x1f{kind}".encode(),
        digest_size=10,
    ).hexdigest()
    return digest


def series_key(campaign_id: str, segment: str) -> str:
    return f"{campaign_id}|{segment}"


def key_part(text: str) -> str:
    """A campaign id or segment as it appears in a figure's record key: ``%`` written as
    ``%25`` and ``|`` (the separator) as ``%7C``, everything else as it is. Any
    percent-decoder (``urllib.parse.unquote``, JavaScript's ``decodeURIComponent``) gives
    the id back, so ``x|device=mobile`` with segment ``all`` and ``x`` with segment
    ``device=mobile|all`` have different keys.

    >>> key_part("50%|off"), key_part("device=mobile")
    ('50%25%7Coff', 'device=mobile')
    """
    if type(text) is not str:
        text = f"{text}"   # what the key's f-string made of it before it was escaped
    if "%" in text:
        text = text.replace("%", "%25")
    if "|" in text:
        text = text.replace("|", "%7C")
    return text


def figure_key(campaign_id: str, segment: str, window_start_s: int) -> bytes:
    """The record key of a figure: ``campaign|segment|window_start_s``, campaign and segment
    escaped by :func:`key_part`, UTF-8 with lone surrogates passed."""
    return (f"{key_part(campaign_id)}|{key_part(segment)}|{window_start_s}"
            .encode("utf-8", "surrogatepass"))


def parse_figure_key(key: bytes) -> tuple[str, str, int]:
    """``(campaign_id, segment, window_start_s)`` of a key made by :func:`figure_key`."""
    campaign, segment, start = key.decode("utf-8", "surrogatepass").split("|")
    return (unquote(campaign, errors="surrogatepass"), unquote(segment, errors="surrogatepass"),
            int(start))


@dataclass(frozen=True, slots=True)
class Alert:
    """An escalation: one detector's alarm on one series in one window."""

    alert_id: str
    campaign_id: str
    segment: str
    window_start: str          # ISO-8601 UTC
    window_end: str
    window_start_s: int        # epoch seconds, for keys and arithmetic
    impressions: int
    clicks: int
    ctr: float
    kind: str
    severity: str
    detector: str
    baseline_ctr: float
    score: float
    confidence: float
    ctr_low: float
    ctr_high: float
    expected_clicks: float
    expected_impressions: float
    suspected_cause: str
    quarantine: bool
    #: Id grouping the alerts of one incident of the campaign ("" if the detector has none).
    incident: str = ""
    #: The planned change this alert falls in ("kind: reason", see ``sinks/annotations.py``),
    #: or "" when it is unexpected. An expected alert does not quarantine.
    expected: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Figure:
    """The CTR figure of one series in one closed window, with its status."""

    campaign_id: str
    segment: str
    window_start: str
    window_end: str
    window_start_s: int
    impressions: int
    clicks: int
    ctr: float
    status: str                # STATUS_OK | STATUS_QUARANTINED
    alert_ids: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["alert_ids"] = list(self.alert_ids)
        return d


#: The fields of a figure in the order orjson writes them (the dataclass's order).
FIGURE_FIELDS = ("campaign_id", "segment", "window_start", "window_end", "window_start_s",
                 "impressions", "clicks", "ctr", "status", "alert_ids")
# encode_figures writes these names itself: only for the Figure it was written for, a slots
# dataclass with exactly these fields (orjson writes them all, in this order, and nothing else).
_FIGURE_AS_DICT = (tuple(getattr(Figure, "__dataclass_fields__", ())) == FIGURE_FIELDS
                   and getattr(Figure, "__slots__", None) == FIGURE_FIELDS)
#: The C encoder of figures (``ctrguard/_records.c``), or ``None``.
_RECORDS = native.load_extension("ctrguard._records")
#: Between two figures in orjson's text of a list of them, and what it is split at.
_BETWEEN = b'},{"campaign_id":'
_SPLIT_AT = b'}\n{"campaign_id":'


def encode_figures(figures: Sequence[Figure]) -> list[bytes]:
    """``[orjson.dumps(f) for f in figures]``, byte for byte: in C (``ctrguard/_records.c``)
    for every figure it writes the same (strings without lone surrogates, a CTR written
    without an exponent; any other figure is written by ``orjson.dumps``, in its place),
    else from one orjson call.

    orjson reads a slots dataclass field by field and gives every result a 4 KiB buffer
    (about 4 µs a figure here, most of it memory traffic when thousands are kept for one
    flush); a list of plain dicts of the same fields in the same order is written in one
    call, with the same text for every value. The list's text is cut where one figure ends
    and the next begins: ``},{"campaign_id":`` cannot occur inside a figure's text (a
    string's quotes are escaped), unless a field holds an object with that key, and then
    the count of pieces is off. Anything unexpected (another type than Figure, a count that
    does not match, a value orjson refuses) goes through ``orjson.dumps`` figure by figure,
    which then also raises as before.

    >>> f = Figure("c1", "all", "2026-01-05T00:00:00Z", "2026-01-05T00:05:00Z",
    ...            1767571200, 40, 3, 0.075, "ok")
    >>> encode_figures([f, f]) == [orjson.dumps(f)] * 2
    True
    """
    if figures and _FIGURE_AS_DICT and _RECORDS is not None:
        return _RECORDS.encode_figures(figures, Figure, False, orjson.dumps)
    return _encode_figures_py(figures)


def figure_records(figures: Sequence[Figure]) -> tuple[list[bytes], list[bytes]]:
    """:func:`encode_figures` and :func:`figure_keys` of ``figures``, in one pass where the
    C encoder is built.

    >>> f = Figure("c1", "all", "2026-01-05T00:00:00Z", "2026-01-05T00:05:00Z",
    ...            1767571200, 40, 3, 0.075, "ok")
    >>> figure_records([f]) == ([orjson.dumps(f)], [b"c1|all|1767571200"])
    True
    """
    if figures and _FIGURE_AS_DICT and _RECORDS is not None:
        return _RECORDS.encode_figures(figures, Figure, True, _figure_record)
    return _encode_figures_py(figures), figure_keys(figures)


def decision_records(decisions: Sequence[WindowDecision]) -> tuple[list[bytes], list[bytes]]:
    """:func:`figure_records` of the figures of ``decisions``, in order: the C encoder walks
    the decisions itself, so no list of thousands of figures is made only to be read once.

    >>> f = Figure("c1", "all", "2026-01-05T00:00:00Z", "2026-01-05T00:05:00Z",
    ...            1767571200, 40, 3, 0.075, "ok")
    >>> d = WindowDecision("c1", 1767571200, 1767571500, (f, f), ())
    >>> decision_records([d, d]) == figure_records([f] * 4)
    True
    """
    if decisions and _FIGURE_AS_DICT and _RECORDS is not None:
        out = _RECORDS.decision_records(decisions, WindowDecision, Figure, _figure_record)
        if out is not None:
            return out
    return figure_records([f for d in decisions for f in d.figures])


def figure_keys(figures: Sequence[Figure]) -> list[bytes]:
    """Record keys (:func:`figure_key`): ``campaign|segment|window_start_s`` with ``%`` and
    ``|`` in campaign and segment escaped, UTF-8 with lone surrogates passed."""
    return [figure_key(f.campaign_id, f.segment, f.window_start_s) for f in figures]


def _figure_record(f: Figure) -> tuple[bytes, bytes]:
    """The reference record of one figure: the C encoder's fallback for a figure it does
    not write itself."""
    return orjson.dumps(f), figure_key(f.campaign_id, f.segment, f.window_start_s)


def _encode_figures_py(figures: Sequence[Figure]) -> list[bytes]:
    """:func:`encode_figures` without the C encoder (the reference it is tested against)."""
    if figures and _FIGURE_AS_DICT and set(map(type, figures)) == {Figure}:
        try:
            text = orjson.dumps([
                {"campaign_id": f.campaign_id, "segment": f.segment,
                 "window_start": f.window_start, "window_end": f.window_end,
                 "window_start_s": f.window_start_s, "impressions": f.impressions,
                 "clicks": f.clicks, "ctr": f.ctr, "status": f.status,
                 "alert_ids": f.alert_ids}
                for f in figures])
        except orjson.JSONEncodeError:
            pass  # the path below raises it again, for the same figure as before
        else:
            # JSON text has no raw newline: every newline is one that was put in here.
            values = text.replace(_BETWEEN, _SPLIT_AT).split(b"\n")
            if len(values) == len(figures):
                # The list's brackets come off the first and last piece (not a copy of the
                # whole text).
                values[0] = values[0][1:]
                values[-1] = values[-1][:-1]
                return values
    return list(map(orjson.dumps, figures))



@dataclass(frozen=True, slots=True)
class WindowDecision:
    """Everything decided when one campaign's window closed: its figures and alerts.

    Sinks write the quarantine flags of ``alerts`` and the "checked through" watermark
    **before** they publish ``figures``.
    """

    campaign_id: str
    window_start_s: int
    window_end_s: int
    figures: tuple[Figure, ...]
    alerts: tuple[Alert, ...]

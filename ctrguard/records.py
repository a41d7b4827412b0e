"""Output records: window figures and alerts, as published to Kafka, files and sinks.

An :class:`Alert`'s ``kind`` says what moved: ``click_outage``, ``ctr_drop``, ``ctr_spike``,
``click_surge``, ``segment_break``, ``silence``, ``drift``, ``ingestion_stall``. Its
``suspected_cause`` says why (:data:`ctrguard.detectors.base.CAUSES`): ``click_tracking``,
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
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import unquote

import msgspec

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


class Figure(msgspec.Struct, frozen=True):
    """The CTR figure of one series in one closed window, with its status.

    A frozen :class:`msgspec.Struct`, not a dataclass like the other records: the live flow
    makes and encodes every figure (tens of thousands per window close); msgspec writes a
    Struct in about half the time of a slotted dataclass, as the same JSON object (fields
    in order), and a Struct holding only strings, numbers and tuples of strings is not
    tracked by the garbage collector. Copies with changes: :func:`msgspec.structs.replace`.
    """

    campaign_id: str
    segment: str
    window_start: str
    window_end: str
    window_start_s: int
    impressions: int
    clicks: int
    ctr: float
    status: str                # STATUS_OK | STATUS_QUARANTINED
    alert_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = msgspec.structs.asdict(self)
        d["alert_ids"] = list(self.alert_ids)
        return d


#: The one JSON encoder of records (msgspec; it also decodes events): a figure, an alert, a
#: dead letter. A dataclass is written as an object of its fields in their order; a float
#: by its shortest text (``0.075``, ``5e-6``; at 1e16 and beyond ``1e16``, where orjson,
#: used before, wrote ``1e+16``: no CTR, count or score of a run gets there).
_ENCODER = msgspec.json.Encoder()
encode_record = _ENCODER.encode
#: Records as JSON lines, each ending in a newline, in one call (a file of figures, alerts,
#: dead letters): the texts of :func:`encode_record` without an object per record.
encode_lines = _ENCODER.encode_lines


def encode_pretty(obj: Any) -> bytes:
    """``obj`` as JSON indented by two spaces (``summary.json``, ``evaluation.json``), the
    text orjson's ``OPT_INDENT_2`` wrote before.

    >>> print(encode_pretty({"events_read": 3, "excluded": {}, "ids": ["a"]}).decode())
    {
      "events_read": 3,
      "excluded": {},
      "ids": [
        "a"
      ]
    }
    """
    return msgspec.json.format(encode_record(obj), indent=2)


def encode_figures(figures: Sequence[Figure]) -> list[bytes]:
    """The JSON text of each figure (:func:`encode_record`): written as JSON lines in one
    call (:func:`encode_lines`) and cut at the newlines, which JSON text holds nowhere else
    (a newline in a string is escaped), cheaper than a call per figure.

    >>> f = Figure("c1", "all", "2026-01-05T00:00:00Z", "2026-01-05T00:05:00Z",
    ...            1767571200, 40, 3, 0.075, "ok", ("a1",))
    >>> encode_figures([f])
    [b'{"campaign_id":"c1","segment":"all","window_start":"2026-01-05T00:00:00Z","window_end":"2026-01-05T00:05:00Z","window_start_s":1767571200,"impressions":40,"clicks":3,"ctr":0.075,"status":"ok","alert_ids":["a1"]}']
    """
    values = encode_lines(figures).split(b"\n")
    values.pop()  # (after the last newline)
    return values


def decision_records(decisions: Sequence[WindowDecision]) -> tuple[list[bytes], list[bytes]]:
    """The values (:func:`encode_figures`) and keys (:func:`figure_keys`) of the figures of
    ``decisions``, in order.

    A decision's figures share its campaign and window (the engine makes them of the same
    objects): their keys are the campaign's key part followed by one per segment and window,
    made once per call (the live flow sends thousands of decisions of a few windows and
    segments at a time). A figure of another campaign or window object gets its own key.

    >>> f = Figure("c1", "all", "2026-01-05T00:00:00Z", "2026-01-05T00:05:00Z",
    ...            1767571200, 40, 3, 0.075, "ok")
    >>> d = WindowDecision("c1", 1767571200, 1767571500, (f, f), ())
    >>> decision_records([d]) == (encode_figures([f, f]), figure_keys([f, f]))
    True
    """
    keys: list[bytes] = []
    add_key = keys.append
    #: window start -> segment -> ``b"|segment|window_start"`` (int starts and str segments
    #: only: equal values of other types, 1.0 or True, have other keys)
    tails_by_start: dict[int, dict[str, bytes]] = {}
    for d in decisions:
        campaign, start = d.campaign_id, d.window_start_s
        tails = tails_by_start.get(start) if type(start) is int else {}
        if tails is None:
            tails = tails_by_start[start] = {}
        head = key_part(campaign).encode("utf-8", "surrogatepass")
        for f in d.figures:
            segment = f.segment
            if f.campaign_id is campaign and f.window_start_s is start:
                tail = tails.get(segment)
                if tail is None:
                    tail = f"|{key_part(segment)}|{start}".encode("utf-8", "surrogatepass")
                    if type(segment) is str:
                        tails[segment] = tail
                add_key(head + tail)
            else:
                add_key(figure_key(f.campaign_id, segment, f.window_start_s))
    return encode_figures([f for d in decisions for f in d.figures]), keys


def figure_keys(figures: Sequence[Figure]) -> list[bytes]:
    """Record keys (:func:`figure_key`): ``campaign|segment|window_start_s`` with ``%`` and
    ``|`` in campaign and segment escaped, UTF-8 with lone surrogates passed."""
    return [figure_key(f.campaign_id, f.segment, f.window_start_s) for f in figures]


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

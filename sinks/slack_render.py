"""Slack messages for incidents: Block Kit, a plain-text fallback, thread follow-ups.

Campaign ids, segment values and anything else that comes from the event stream is
untrusted. Everything untrusted goes through :func:`inert` (mrkdwn) or :func:`plain`
(``plain_text``): control characters and newlines collapse to spaces, backticks are replaced
so code spans and fences cannot be closed or opened, the text is truncated, and in mrkdwn
``&``, ``<``, ``>`` are escaped as Slack requires, so ``<!channel>``, ``<@U123>`` and
``<https://evil|click>`` show as text and never notify or link. Text objects that carry
untrusted data are also sent with ``verbatim: true`` (no auto-linking of URLs and
``#channel``/``@name``).

>>> inert("<!channel> & <@U123>")
'&lt;!channel&gt; &amp; &lt;@U123&gt;'
>>> code("```rm -rf```\\nnext line")
'`ˋˋˋrm -rfˋˋˋ next line`'
>>> sanitize("x" * 100, 10)
'xxxxxxxxx…'
>>> mention("U024BE7LH"), mention("S0614TZR7"), mention("<!here>")
('<@U024BE7LH>', '<!subteam^S0614TZR7>', '@‹!here›')
"""

from __future__ import annotations

import html
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ctrguard.sinks.incidents import Incident, IncidentUpdate, SeriesTotals, iso

__all__ = [
    "RenderedMessage",
    "code",
    "inert",
    "mention",
    "plain",
    "render_console",
    "render_incident",
    "render_thread_reply",
    "sanitize",
]

#: Default length of one untrusted value in a message.
MAX_VALUE = 80
MAX_HEADER = 150
MAX_SECTION = 3000
MAX_FALLBACK = 3000
MAX_SEGMENTS_SHOWN = 5
BACKTICK_STANDIN = "\u02cb"   # MODIFIER LETTER GRAVE ACCENT: looks like ` but is not markup
ELLIPSIS = "…"

SEVERITY_ICON = {"critical": "🔴", "warning": "🟠", "info": "🔵"}
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,30}$")
_GROUP_ID = re.compile(r"^S[A-Z0-9]{2,30}$")
_WS = re.compile(r"\s+")


def sanitize(value: Any, limit: int = MAX_VALUE) -> str:
    """Untrusted value -> one line of harmless plain text of at most ``limit`` characters."""
    text = "" if value is None else str(value)
    if len(text) > 4 * limit + 64:
        text = text[: 4 * limit + 64]   # bound the work on huge inputs before normalising
    chars = []
    for ch in text:
        cat = unicodedata.category(ch)
        # Cc: control (ANSI escapes, NUL, newlines); Cf: format (bidi overrides, zero width).
        chars.append(" " if cat in ("Cc", "Cf", "Zl", "Zp") else ch)
    text = _WS.sub(" ", "".join(chars)).strip().replace("`", BACKTICK_STANDIN)
    if len(text) > limit:
        text = text[: max(limit - 1, 0)].rstrip() + ELLIPSIS
    return text


def escape(text: str) -> str:
    """Slack's escaping for mrkdwn and message text: ``&``, ``<``, ``>`` only."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def inert(value: Any, limit: int = MAX_VALUE) -> str:
    """Untrusted value for mrkdwn text."""
    return escape(sanitize(value, limit))


def code(value: Any, limit: int = MAX_VALUE) -> str:
    """Untrusted value as inline code (no bold/italic/strike from ``*``, ``_``, ``~``)."""
    text = inert(value, limit)
    return f"`{text}`" if text else "`(empty)`"


def plain(value: Any, limit: int = MAX_VALUE) -> str:
    """Untrusted value for a ``plain_text`` object: angle brackets replaced by look-alikes."""
    return sanitize(value, limit).replace("<", "‹").replace(">", "›")


def mention(owner: str | None) -> str:
    """A configured owner as mrkdwn: ids become mentions, anything else inert text."""
    if not owner:
        return "—"
    if _USER_ID.fullmatch(owner):  # (match's "$" would let a final "\n" through)
        return f"<@{owner}>"
    if _GROUP_ID.fullmatch(owner):
        return f"<!subteam^{owner}>"
    name = sanitize(owner, 60).lstrip("@").replace("<", "‹").replace(">", "›")
    return "@" + escape(name)


def _pct(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{100 * x:.2f}%"


def _num(x: float, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    if abs(x) < 0.5:
        x = 0.0   # no "−0"
    s = f"{x:+,.0f}" if signed else f"{x:,.0f}"
    return s.replace("-", "−")


def _count(x: float | None) -> str:
    """An expected count: one decimal below 100 (so small differences add up), else whole.

    >>> _count(4.66), _count(1234.5), _count(None)
    ('4.7', '1,234', 'n/a')
    """
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:,.1f}" if abs(x) < 100 else f"{x:,.0f}"


def rarity(days: float | None) -> str:
    """How rarely chance gives this evidence, in words a person can compare.

    >>> rarity(50.0), rarity(1004.2)
    ('about 1 in 50 days', 'about 1 in 1,000 days (3 years)')
    >>> rarity(0.25), rarity(0.8), rarity(None)
    ('about 4 times a day', 'about once a day', 'not stated by the detector')
    >>> rarity(3e7)
    'rarer than 1 in a million days (2,700 years)'
    """
    if days is None or not days > 0:
        return "not stated by the detector"
    if 1 / 1.5 < days < 1.5:
        return "about once a day"
    if days < 1.0:
        return f"about {_sig2(1.0 / days)} times a day"
    if days > 1e6:
        return "rarer than 1 in a million days (2,700 years)"
    text = f"about 1 in {_sig2(days)} days"
    if days >= 730:
        text += f" ({_sig2(days / 365.25)} years)"
    return text


def _sig2(x: float) -> str:
    """Two significant figures, with thousands separators."""
    if x < 10:
        return f"{x:.0f}"
    digits = int(math.floor(math.log10(x))) - 1
    return f"{round(x, -digits):,.0f}"


def _clicks(n: int) -> str:
    return "1 click" if n == 1 else f"{_num(n)} clicks"


def _money(x: float | None, currency: str) -> str:
    if x is None or not math.isfinite(x):
        return ""
    return f"{x:+,.2f} {currency}".replace("-", "−")


def _hm(iso_ts: str) -> str:
    try:
        return datetime.fromisoformat(iso_ts).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError):
        return inert(iso_ts, 40)


def _span(start_s: int, end_s: int) -> str:
    """``2026-01-05 05:25–08:00 UTC`` (the end's date too when it differs).

    >>> _span(1767590700, 1767600000), _span(1767657600, 1767745200)
    ('2026-01-05 05:25–08:00 UTC', '2026-01-06 00:00–2026-01-07 00:20 UTC')
    """
    a, b = _hm(iso(start_s)), _hm(iso(end_s))
    return f"{a[:-4]}–{b[11:] if a[:10] == b[:10] else b}"


def _duration(seconds: int) -> str:
    minutes = max(int(seconds) // 60, 0)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _alerts(n: int) -> str:
    return f"{n} alert" if n == 1 else f"{n} alerts"


def _cause(cause: str) -> str:
    return inert(cause.replace("_", " "), 40)


def _segments(segments: tuple[str, ...]) -> str:
    shown = [code(s, 60) for s in segments[:MAX_SEGMENTS_SHOWN]]
    more = len(segments) - len(shown)
    return ", ".join(shown) + (f" (+{more} more)" if more > 0 else "")


@dataclass(frozen=True)
class RenderedMessage:
    """A message ready for ``chat.postMessage`` / ``chat.update`` / a webhook."""

    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": _cap(text, MAX_SECTION), "verbatim": True}


def _cap(text: str, limit: int) -> str:
    """Keep text within a Slack limit, cutting at a line end when possible."""
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit - 1)
    if cut < limit // 2:
        cut = limit - 1
        # Never cut inside an escape such as "&amp;".
        amp = text.rfind("&", cut - 5, cut)
        if amp != -1 and ";" not in text[amp:cut]:
            cut = amp
    return text[:cut] + ELLIPSIS


def render_incident(update: IncidentUpdate, *, owner: str | None = None,
                    currency: str = "USD") -> RenderedMessage:
    """The incident's main message (posted on open, edited on update and resolve)."""
    inc = update.incident
    if inc.scope == "pipeline":
        return render_stall(update, owner=owner)
    resolved = inc.status == "resolved"
    sev = inc.severity.upper() if inc.severity in SEVERITY_ICON else "ALERT"
    icon = "✅" if resolved else SEVERITY_ICON.get(inc.severity, "⚪")
    state = "RESOLVED" if resolved else sev
    header = f"{icon} {state}: CTR incident on {plain(inc.campaign_id, 60)}"
    impact = f"{_num(inc.clicks_delta, signed=True)} clicks"
    money = _money(inc.revenue_delta, currency)
    if money:
        impact += f" ({money})"
    observed, expected, brief = _block(inc.totals)
    evidence = f"{rarity(inc.chance_days)} by chance at this campaign's volume"
    if resolved:
        status = (f"*Resolved* at {_hm(inc.resolved_at or '')} after "
                  f"{_duration(inc.duration_s)} ({_alerts(inc.alert_count)})")
    else:
        status = f"*Open* since {_hm(inc.first_window_start)}, {_alerts(inc.alert_count)}"
    summary = "\n".join([
        f"*Campaign* {code(inc.campaign_id)}",
        f"*Suspected cause* {_cause(inc.suspected_cause)}"
        f" · *Driving segment* {code(inc.driving_segment, 60)}",
        status,
    ])
    fields = [
        observed,
        expected,
        f"*Clicks vs expected*\n{impact}",
        f"*Evidence*\n{evidence}",
        f"*Segments* ({len(inc.segments)})\n{_segments(inc.segments)}",
        f"*Owner*\n{mention(owner)}",
        f"*Windows*\n{_hm(inc.first_window_start)} → {_hm(inc.last_window_end)}",
        f"*Severity*\n{sev.lower()}",
    ]
    context = (f"incident {inc.incident_id} · revision {inc.revision} · "
               f"detectors: {inert(', '.join(inc.detectors), 200)} · ctrguard")
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": _cap(header, MAX_HEADER),
                                    "emoji": False}},
        {"type": "section", "text": _mrkdwn(summary)},
        {"type": "section", "fields": [_mrkdwn(_cap(f, 2000)) for f in fields]},
        {"type": "context", "elements": [_mrkdwn(context)]},
    ]
    lead = "Resolved" if resolved else f"[{sev}]"
    text = (f"{lead} CTR incident on campaign {code(inc.campaign_id)}: "
            f"{_cause(inc.suspected_cause)} suspected; {brief}; {impact}; evidence "
            f"{evidence}. Owner {mention(owner)}")
    return RenderedMessage(text=_cap(text, MAX_FALLBACK), blocks=blocks)


def _block(t: SeriesTotals | None) -> tuple[str, str, str]:
    """The observed and expected fields, and the fallback text's summary, of one series
    over the same windows (so the click difference next to them is their difference)."""
    if t is None:
        return "*Observed*\nn/a", "*Expected*\nn/a", "no figures"
    where = f"{code(t.segment, 40)}, {t.windows} window{'s' if t.windows != 1 else ''}"
    observed = (f"*Observed* ({where})\n{_clicks(t.clicks)} / "
                f"{_num(t.impressions)} impressions = CTR {_pct(t.ctr)}")
    lo, hi = t.clicks_range()
    expected = (f"*Expected*\n{_count(t.expected_clicks)} clicks (99%: {_count(lo)}–"
                f"{_count(hi)}) at CTR {_pct(t.expected_ctr)}")
    if abs(t.expected_basis - t.impressions) > 0.5:
        # Windows without impressions: their clicks were expected at the usual volume.
        expected += f" of {_num(t.expected_basis)} impressions"
    if t.impressions == 0 or abs(t.expected_impressions - t.impressions) \
            > 0.5 * max(t.expected_impressions, 1.0):
        expected += f"; {_num(t.expected_impressions)} impressions expected"
    brief = (f"{where}: {_clicks(t.clicks)} / {_num(t.impressions)} impressions "
             f"(CTR {_pct(t.ctr)}) vs {_count(t.expected_clicks)} clicks expected "
             f"(CTR {_pct(t.expected_ctr)})")
    return observed, expected, brief


def _campaigns(n: int) -> str:
    return "1 campaign" if n == 1 else f"{_num(n)} campaigns"


def render_stall(update: IncidentUpdate, *, owner: str | None = None) -> RenderedMessage:
    """A pipeline-level incident: one source (Kafka topic) stopped delivering for many
    campaigns at once. One message for all of them, edited as it grows."""
    inc = update.incident
    resolved = inc.status == "resolved"
    sev = inc.severity.upper() if inc.severity in SEVERITY_ICON else "ALERT"
    icon = "✅" if resolved else SEVERITY_ICON.get(inc.severity, "⚪")
    state = "RESOLVED" if resolved else sev
    header = f"{icon} {state}: ingestion stall on topic {plain(inc.topic, 100)}"
    since = _hm(inc.first_window_start)
    if resolved:
        status = (f"*Resolved* at {_hm(inc.resolved_at or '')}: the topic delivered again "
                  f"after {_duration(inc.duration_s)}")
    else:
        status = f"*Open*: no {inert(inc.source, 40)} since {since}"
    summary = "\n".join([
        f"*Topic* {code(inc.topic, 100)} (source {code(inc.source, 40)}) stopped delivering "
        f"for most campaigns at once, from the window starting {since}.",
        f"*{_campaigns(inc.campaigns_affected)} affected*: their windows are flagged under "
        "this one incident, not as campaign incidents.",
        status,
    ])
    fields = [
        f"*Topic*\n{code(inc.topic, 100)}",
        f"*Stalled since*\n{since}",
        f"*Campaigns affected*\n{_num(inc.campaigns_affected)}",
        f"*Windows*\n{since} → {_hm(inc.last_window_end)}",
        f"*Owner*\n{mention(owner)}",
        f"*Severity*\n{sev.lower()}",
    ]
    context = (f"incident {inc.incident_id} · revision {inc.revision} · "
               f"{inert(inc.campaign_id, 80)} · ctrguard")
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": _cap(header, MAX_HEADER),
                                    "emoji": False}},
        {"type": "section", "text": _mrkdwn(summary)},
        {"type": "section", "fields": [_mrkdwn(_cap(f, 2000)) for f in fields]},
        {"type": "context", "elements": [_mrkdwn(context)]},
    ]
    lead = "Resolved" if resolved else f"[{sev}]"
    text = (f"{lead} ingestion stall on topic {code(inc.topic, 100)} since {since}: "
            f"{_campaigns(inc.campaigns_affected)} affected. Owner {mention(owner)}")
    return RenderedMessage(text=_cap(text, MAX_FALLBACK), blocks=blocks)


_CHANGE_TEXT = {
    "severity": lambda v: f"Severity raised to *{inert(v, 20)}*",
    "cause": lambda v: f"Suspected cause now *{_cause(v)}*",
    "driving_segment": lambda v: f"Driving segment now {code(v, 60)}",
    "segments_added": lambda v: "New segments: " + ", ".join(
        code(s, 60) for s in v.split(", ")[:MAX_SEGMENTS_SHOWN])
        + (f" (+{len(v.split(', ')) - MAX_SEGMENTS_SHOWN} more)"
           if len(v.split(", ")) > MAX_SEGMENTS_SHOWN else ""),
}


def render_thread_reply(update: IncidentUpdate, *, owner: str | None = None,
                        currency: str = "USD") -> str | None:
    """A threaded follow-up for notable changes and for resolution (None: nothing notable)."""
    inc = update.incident
    if update.kind == "resolve" and inc.scope == "pipeline":
        return _cap(f"✅ Resolved at {_hm(inc.resolved_at or '')}: topic {code(inc.topic)} "
                    f"delivered again; the stall lasted {_duration(inc.duration_s)} and "
                    f"affected {_campaigns(inc.campaigns_affected)}.", MAX_FALLBACK)
    if update.kind == "resolve":
        impact = f"{_num(inc.clicks_delta, signed=True)} clicks"
        money = _money(inc.revenue_delta, currency)
        if money:
            impact += f" ({money})"
        return _cap(f"✅ Resolved at {_hm(inc.resolved_at or '')}: lasted "
                    f"{_duration(inc.duration_s)}, {_alerts(inc.alert_count)}, impact {impact}.",
                    MAX_FALLBACK)
    if update.kind != "update" or not update.changes:
        return None
    lines = [_CHANGE_TEXT[k](v) for k, v in update.changes if k in _CHANGE_TEXT]
    if not lines:
        return None
    if any(k == "severity" for k, _ in update.changes) and owner:
        lines.append(f"cc {mention(owner)}")
    return _cap("\n".join(lines), MAX_FALLBACK)


_MENTION = re.compile(r"<@([UW][A-Z0-9]+)>|<!subteam\^(S[A-Z0-9]+)>")


_BOLD = re.compile(r"\*([^*\n`]+)\*")


def _console_text(text: str) -> str:
    text = _MENTION.sub(lambda m: "@" + (m.group(1) or m.group(2)), text)
    text = _BOLD.sub(r"\1", text)
    return html.unescape(text) if "&" in text else text


def render_console(message: RenderedMessage | str) -> str:
    """The message as a person would read it in Slack, for a terminal."""
    if isinstance(message, str):
        return _console_text(message)
    lines: list[str] = []
    for block in message.blocks:
        kind = block.get("type")
        if kind == "header":
            title = block["text"]["text"]
            lines += [title, "=" * min(len(title), 72)]
        elif kind == "section":
            if "text" in block:
                lines.append(_console_text(block["text"]["text"]))
            for f in block.get("fields", []):
                name, _, value = f["text"].partition("\n")
                lines.append(f"  {_console_text(name)}: {_console_text(value)}")
        elif kind == "context":
            lines.append(" ".join(_console_text(e.get("text", "")) for e in block["elements"]))
    if not lines:
        lines.append(_console_text(message.text))
    return "\n".join(lines)


def incident_title(inc: Incident) -> str:
    return f"{inc.severity} incident on {sanitize(inc.campaign_id, 60)}"


# --------------------------------------------------------------------------- feedback

#: Stable ids of the feedback buttons (``ctrguard serve`` dispatches on them).
FEEDBACK_ACTIONS = {
    "ctrguard_feedback_confirmed": "confirmed",
    "ctrguard_feedback_false_alarm": "false_alarm",
    "ctrguard_feedback_expected": "expected",
}
FEEDBACK_TEXT = {"confirmed": "Confirmed", "false_alarm": "False alarm",
                 "expected": "Expected (planned change)"}
FEEDBACK_ICON = {"confirmed": "✅", "false_alarm": "🙅", "expected": "🗓️"}
#: Block ids of the blocks :func:`render_feedback_blocks` adds (to find and replace them).
FEEDBACK_BLOCK_PREFIX = "ctrguard_feedback"


def render_feedback_blocks(incident_id: str, latest: dict[str, str] | None = None,
                           expected: str | None = None, *,
                           buttons: bool = True,
                           expected_spans: Sequence[tuple[int, int]] | None = None
                           ) -> list[dict[str, Any]]:
    """Blocks added under an incident message: the planned change it falls in (if any), the
    latest feedback (who said what, when) and the three feedback buttons.

    ``latest`` is the feedback record (``verdict``, ``user_id``, ``user_name``, ``at``);
    the user and the planned change's text are untrusted and rendered inert.

    >>> blocks = render_feedback_blocks("abc123", {"verdict": "false_alarm",
    ...     "user_id": "U024BE7LH", "user_name": "alice", "at": "2026-01-01T10:00:00Z"})
    >>> [b["type"] for b in blocks], blocks[0]["elements"][0]["text"]
    (['context', 'actions'], '🙅 *False alarm* — said <@U024BE7LH> at 2026-01-01 10:00 UTC')
    >>> [(e["action_id"], e["value"]) for e in blocks[-1]["elements"]][0]
    ('ctrguard_feedback_confirmed', 'abc123')
    """
    blocks: list[dict[str, Any]] = []
    if expected and expected_spans:
        # Only part of the incident is inside the planned change: its other windows are
        # quarantined, so "not quarantined" would tell the reader the wrong thing.
        spans = ", ".join(_span(a, b) for a, b in expected_spans[:3])
        more = f" (+{len(expected_spans) - 3} more)" if len(expected_spans) > 3 else ""
        blocks.append({"type": "context", "block_id": f"{FEEDBACK_BLOCK_PREFIX}_expected",
                       "elements": [_mrkdwn(f"🗓️ *Partly expected*: {spans}{more} is inside a "
                                            f"planned change ({inert(expected, 200)}) and not "
                                            "quarantined; the incident's other windows are")]})
    elif expected:
        blocks.append({"type": "context", "block_id": f"{FEEDBACK_BLOCK_PREFIX}_expected",
                       "elements": [_mrkdwn(f"🗓️ *Expected*: inside a planned change "
                                            f"({inert(expected, 200)}); not quarantined")]})
    if latest and latest.get("verdict") in FEEDBACK_TEXT:
        verdict = latest["verdict"]
        user_id = latest.get("user_id") or ""
        who = mention(user_id) if _USER_ID.fullmatch(user_id) \
            else inert(latest.get("user_name") or "someone", 60)
        blocks.append({"type": "context", "block_id": f"{FEEDBACK_BLOCK_PREFIX}_latest",
                       "elements": [_mrkdwn(f"{FEEDBACK_ICON[verdict]} *{FEEDBACK_TEXT[verdict]}*"
                                            f" — said {who} at {_hm(latest.get('at') or '')}")]})
    if not buttons:
        return blocks
    styles = {"confirmed": "primary", "false_alarm": "danger"}
    elements = []
    for action_id, verdict in FEEDBACK_ACTIONS.items():
        button = {"type": "button", "action_id": action_id, "value": incident_id,
                  "text": {"type": "plain_text", "text": FEEDBACK_TEXT[verdict],
                           "emoji": True}}
        if verdict in styles:
            button["style"] = styles[verdict]
        elements.append(button)
    blocks.append({"type": "actions", "block_id": f"{FEEDBACK_BLOCK_PREFIX}_buttons",
                   "elements": elements})
    return blocks


def with_feedback_blocks(message: RenderedMessage,
                         blocks: list[dict[str, Any]]) -> RenderedMessage:
    """``message`` with its feedback blocks replaced by ``blocks``."""
    kept = [b for b in message.blocks
            if not str(b.get("block_id", "")).startswith(FEEDBACK_BLOCK_PREFIX)]
    return RenderedMessage(text=message.text, blocks=kept + blocks)

"""Feedback on incidents: who said *Confirmed*, *False alarm* or *Expected*, and labels from it.

People press a button under an incident message in Slack; Slack sends the interaction to
``ctrguard serve`` (``sinks/feedback_server.py``), which checks Slack's signature, parses
the payload with :func:`parse_interaction` and records each vote with
:meth:`FeedbackStore.record`. ``ctrguard feedback export`` turns the latest vote per
incident into the labels that ``ctrguard replay --labels`` and ``ctrguard evaluate`` read
(:func:`feedback_labels`), so tuning learns from what people said.

Redis keys (``P`` = ``redis.key_prefix``)
-----------------------------------------
``P:feedback``                    stream: one entry per vote (who, what, when, which incident)
``P:feedback:latest:<incident>``  hash: the latest vote on an incident (shown in its message)
``P:feedback:incident:<incident>`` hash: the incident's campaign, driving segment, kind and
                                  event-time span, written by the Slack delivery thread on
                                  every update it delivers (what export turns into a label)
``P:feedback:seen:<digest>``      "this interaction was recorded" (a re-sent request is not
                                  counted twice), kept one day

>>> import json, urllib.parse
>>> body = urllib.parse.urlencode({"payload": json.dumps({
...     "type": "block_actions", "user": {"id": "U024BE7LH", "username": "alice"},
...     "team": {"id": "T1"}, "container": {"channel_id": "C1", "message_ts": "17.01"},
...     "actions": [{"action_id": "ctrguard_feedback_confirmed", "value": "abc",
...                  "action_ts": "17.5"}]})}).encode()
>>> [(v.incident_id, v.verdict, v.user_id, v.channel_id) for v in parse_interaction(body)]
[('abc', 'confirmed', 'U024BE7LH', 'C1')]
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from ctrguard.errors import CtrGuardError, RedisUnavailable
from ctrguard.replay.generator import Label
from ctrguard.sinks.slack_render import FEEDBACK_ACTIONS
from ctrguard.sinks.stalls import parse_stall_id

__all__ = [
    "FeedbackStore",
    "InteractionError",
    "Vote",
    "feedback_labels",
    "decode_payload",
    "parse_interaction",
    "votes_of",
]

VERDICTS = ("confirmed", "false_alarm", "expected")
#: Kinds of the trap labels written for votes that say "not an incident".
TRAP_KIND = {"false_alarm": "false_alarm", "expected": "planned_change"}
_INCIDENT_ID_MAX = 64
_SEEN_TTL_S = 86400


class InteractionError(CtrGuardError):
    """A request to the interaction endpoint is not a Slack interaction we can read."""


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(int(epoch_s), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Vote:
    """One press of a feedback button."""

    incident_id: str
    verdict: str
    user_id: str
    user_name: str
    team_id: str
    channel_id: str
    message_ts: str
    action_ts: str
    response_url: str = ""

    def digest(self) -> str:
        raw = "\x1f".join([self.incident_id, self.verdict, self.user_id, self.action_ts])
        return hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def _text(value: Any, limit: int = 200) -> str:
    return "" if value is None else str(value)[:limit]


def decode_payload(body: bytes) -> dict[str, Any]:
    """The JSON object of a Slack interaction request body (``payload=<json>``,
    form-encoded, as Slack sends it); :class:`InteractionError` if it is not one."""
    try:
        form = urllib.parse.parse_qs(body.decode("utf-8"), strict_parsing=False)
        payload = json.loads(form["payload"][0])
    except (UnicodeDecodeError, KeyError, IndexError, ValueError):
        raise InteractionError("not a Slack interaction (no payload= JSON)") from None
    if not isinstance(payload, dict):
        raise InteractionError("interaction payload is not a JSON object")
    return payload


def parse_interaction(body: bytes) -> list[Vote]:
    """The feedback votes in a Slack interaction request body. Other interaction types and
    other buttons give no vote; a body that is not an interaction raises
    :class:`InteractionError`."""
    return votes_of(decode_payload(body))


def votes_of(payload: dict[str, Any]) -> list[Vote]:
    """The feedback votes of a decoded interaction payload."""
    if payload.get("type") != "block_actions":
        return []
    user = payload.get("user") if isinstance(payload.get("user"), dict) else {}
    team = payload.get("team") if isinstance(payload.get("team"), dict) else {}
    container = payload.get("container") if isinstance(payload.get("container"), dict) else {}
    channel = payload.get("channel") if isinstance(payload.get("channel"), dict) else {}
    message = payload.get("message") if isinstance(payload.get("message"), dict) else {}
    votes = []
    for action in payload.get("actions") or []:
        if not isinstance(action, dict):
            continue
        verdict = FEEDBACK_ACTIONS.get(str(action.get("action_id")))
        incident_id = _text(action.get("value"), 200)
        if verdict is None or not incident_id or len(incident_id) > _INCIDENT_ID_MAX:
            continue
        votes.append(Vote(
            incident_id=incident_id, verdict=verdict,
            user_id=_text(user.get("id"), 40),
            user_name=_text(user.get("username") or user.get("name"), 80),
            team_id=_text(team.get("id"), 40),
            channel_id=_text(container.get("channel_id") or channel.get("id"), 40),
            message_ts=_text(container.get("message_ts") or message.get("ts"), 40),
            action_ts=_text(action.get("action_ts"), 40),
            response_url=_text(payload.get("response_url"), 2000)))
    return votes


def _errors(what: str) -> Any:
    class _Ctx:
        def __enter__(self) -> None:
            return None

        def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
            if isinstance(exc, redis.RedisError):
                raise RedisUnavailable(f"{what}: {type(exc).__name__}: {exc}") from None
            return False

    return _Ctx()


class FeedbackStore:
    """Votes and the incident facts labels are made of, in Redis.

    Parameters
    ----------
    client
        A :class:`redis.Redis` (``decode_responses=True``).
    key_prefix
        ``redis.key_prefix``.
    retention_s
        How long votes and incident facts are kept (``feedback.retention_days``).
    """

    def __init__(self, client: redis.Redis, key_prefix: str = "ctrguard", *,
                 retention_s: int = 365 * 86400, clock: Callable[[], float] = time.time):
        self.client = client
        self.prefix = f"{key_prefix}:feedback"
        self.stream_key = self.prefix
        self.retention_s = retention_s
        self.clock = clock

    def latest_key(self, incident_id: str) -> str:
        return f"{self.prefix}:latest:{incident_id}"

    def incident_key(self, incident_id: str) -> str:
        return f"{self.prefix}:incident:{incident_id}"

    # ------------------------------------------------------------------ incidents

    def remember_incident(self, incident: Any, channel: str = "", ts: str = "",
                          pipe: Any = None) -> None:
        """Store what a label needs of an incident (the Slack delivery thread calls this on
        every update it delivers, so the span is the latest one)."""
        client = pipe if pipe is not None else self.client
        key = self.incident_key(incident.incident_id)
        fields = {"incident_id": incident.incident_id, "campaign_id": incident.campaign_id,
                  "segment": incident.driving_segment,
                  "kind": incident.kinds[0] if incident.kinds else "unknown",
                  "cause": incident.suspected_cause, "status": incident.status,
                  "start_s": str(incident.first_window_start_s),
                  "end_s": str(incident.last_window_end_s)}
        if channel and ts:
            fields.update(channel=channel, ts=ts)
        client.hset(key, mapping=fields)
        client.expire(key, self.retention_s)

    def incident(self, incident_id: str) -> dict[str, str]:
        with _errors("reading incident facts"):
            return self.client.hgetall(self.incident_key(incident_id))

    # ------------------------------------------------------------------ votes

    def record(self, vote: Vote) -> bool:
        """Append a vote (False if this very interaction was recorded before)."""
        if vote.verdict not in VERDICTS:
            raise InteractionError(f"unknown verdict {vote.verdict!r}")
        now = self.clock()
        with _errors("recording feedback"):
            if not self.client.set(f"{self.prefix}:seen:{vote.digest()}", "1", nx=True,
                                   ex=_SEEN_TTL_S):
                return False
            facts = self.client.hgetall(self.incident_key(vote.incident_id))
            entry = {k: v for k, v in asdict(vote).items() if k != "response_url"}
            entry["at"] = _iso(now)
            for k in ("campaign_id", "segment", "kind", "start_s", "end_s"):
                entry[k] = facts.get(k, "")
            latest = {"verdict": vote.verdict, "user_id": vote.user_id,
                      "user_name": vote.user_name, "at": entry["at"]}
            minid = f"{max(int(now) - self.retention_s, 0) * 1000}"
            pipe = self.client.pipeline(transaction=True)
            pipe.xadd(self.stream_key, entry, minid=minid, approximate=False)
            pipe.expire(self.stream_key, self.retention_s)
            pipe.hset(self.latest_key(vote.incident_id), mapping=latest)
            pipe.expire(self.latest_key(vote.incident_id), self.retention_s)
            pipe.execute()
        return True

    def latest(self, incident_id: str) -> dict[str, str]:
        """The latest vote on an incident (empty if none)."""
        with _errors("reading feedback"):
            return self.client.hgetall(self.latest_key(incident_id))

    def entries(self, batch: int = 1000) -> Iterator[dict[str, str]]:
        """Every vote, oldest first."""
        start = "-"
        while True:
            with _errors("reading feedback"):
                chunk = self.client.xrange(self.stream_key, start, "+", count=batch)
            for entry_id, fields in chunk:
                yield {"id": entry_id, **fields}
            if len(chunk) < batch:
                return
            start = "(" + chunk[-1][0]

    def labels(self) -> tuple[list[Label], list[Label], list[str]]:
        """:func:`feedback_labels` of every vote, with the latest incident facts."""
        votes = list(self.entries())
        facts: dict[str, dict[str, str]] = {}
        ids = sorted({v["incident_id"] for v in votes})
        with _errors("reading incident facts"):
            pipe = self.client.pipeline(transaction=False)
            for i in ids:
                pipe.hgetall(self.incident_key(i))
            for i, f in zip(ids, pipe.execute(), strict=True):
                facts[i] = f
        return feedback_labels(votes, facts)


def feedback_labels(votes: list[dict[str, str]], facts: dict[str, dict[str, str]]
                    ) -> tuple[list[Label], list[Label], list[str]]:
    """Labels from votes (pure): the latest vote per incident counts.

    *Confirmed* incidents become labels (campaign, driving segment or ``*`` for ``all``,
    the incident's alert kind, its event-time span; ``*,*`` for an ingestion stall); *False alarm* and *Expected* become
    trap labels of kind ``false_alarm`` / ``planned_change`` (``replay --traps`` reports
    which of them the detectors still fall for). Returns ``(labels, traps, skipped)``,
    ``skipped`` naming incidents whose facts are unknown.

    >>> votes = [{"incident_id": "i1", "verdict": "false_alarm"},
    ...          {"incident_id": "i1", "verdict": "confirmed"},
    ...          {"incident_id": "i2", "verdict": "expected"}]
    >>> facts = {"i1": {"campaign_id": "c1", "segment": "all", "kind": "ctr_drop",
    ...                 "start_s": "600", "end_s": "1500"},
    ...          "i2": {"campaign_id": "c2", "segment": "device=mobile", "kind": "ctr_spike",
    ...                 "start_s": "0", "end_s": "300"}}
    >>> feedback_labels(votes, facts)
    ([Label(campaign_id='c1', segment='*', kind='ctr_drop', start_s=600, end_s=1500)], \
[Label(campaign_id='c2', segment='device=mobile', kind='planned_change', start_s=0, end_s=300)], [])
    """
    last: dict[str, dict[str, str]] = {}
    for v in votes:
        last[v["incident_id"]] = v
    labels: list[Label] = []
    traps: list[Label] = []
    skipped: list[str] = []
    for incident_id, vote in sorted(last.items()):
        f = {**{k: vote.get(k, "") for k in ("campaign_id", "segment", "kind", "start_s",
                                              "end_s")},
             **{k: v for k, v in facts.get(incident_id, {}).items() if v}}
        try:
            start_s, end_s = int(f["start_s"]), int(f["end_s"])
        except (KeyError, ValueError):
            skipped.append(incident_id)
            continue
        if not f.get("campaign_id") or end_s <= start_s:
            skipped.append(incident_id)
            continue
        campaign = f["campaign_id"]
        segment = f.get("segment") or "all"
        segment = "*" if segment == "all" else segment
        if parse_stall_id(campaign) is not None:
            # A stall's "campaign" is its id: the label is the pipeline's, every campaign's
            # (as ``ctrguard generate`` labels a stall).
            campaign, segment = "*", "*"
        if vote["verdict"] == "confirmed":
            labels.append(Label(campaign, segment, f.get("kind") or "unknown",
                                start_s, end_s))
        elif vote["verdict"] in TRAP_KIND:
            traps.append(Label(campaign, segment, TRAP_KIND[vote["verdict"]],
                               start_s, end_s))
    return labels, traps, skipped

"""Settings of the edges: Redis, Slack, quarantine."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisSettings(_Strict):
    url: str = "redis://127.0.0.1:6379/0"
    username: str | None = None
    password: SecretStr | None = None
    key_prefix: str = Field("ctrguard", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    #: Stated explicitly: redis-py's defaults have changed between releases.
    socket_timeout_s: float = Field(5.0, gt=0, le=300)
    connect_timeout_s: float = Field(5.0, gt=0, le=300)
    #: Back-off between attempts while Redis is down (fail closed: figures wait).
    retry_backoff_s: float = Field(0.5, gt=0, le=60)
    retry_backoff_max_s: float = Field(10.0, gt=0, le=600)
    #: How long the Slack sink waits for Redis (its outbox) before failing the flow, which
    #: then restarts from its last snapshot. Figures never wait-and-fail: they wait.
    slack_outage_wait_s: float = Field(600.0, gt=0, le=86400)

    @field_validator("url")
    @classmethod
    def _a_redis_url(cls, url: str) -> str:
        # Checked at load (exit 2 with the line), not when the first client is made.
        from redis.connection import parse_url

        from ctrguard.sinks.redis_client import redact_url

        try:
            parse_url(url)
        except ValueError as exc:
            raise ValueError(f"not a Redis URL ({redact_url(url)}): {exc}") from None
        return url


#: Severities in increasing order (the detectors' ``SEVERITIES``).
SlackSeverity = Literal["info", "warning", "critical"]

#: A Slack user (U..., W...) or user-group (S...) id, mentioned as such; or a plain name
#: (``alice``, ``@ads-oncall``) shown as text, because Slack cannot mention by name reliably.
_OWNER = r"^(?:[UWS][A-Z0-9]{2,30}|@?[A-Za-z0-9._-]{1,80})$"
#: A channel name (``#ctr-alerts``) or id (``C0123ABCD``).
_CHANNEL = r"^(?:#[a-z0-9_-][a-z0-9._-]{0,79}|[CG][A-Z0-9]{2,30})$"


class SlackRoute(_Strict):
    """Where a campaign's incidents go and who owns them. The first matching route wins."""

    #: Glob patterns (``fnmatch``, case-sensitive) on ``campaign_id``.
    campaigns: list[str] = Field(default_factory=list)
    #: Labels from ``slack.campaign_labels``.
    labels: list[str] = Field(default_factory=list)
    channel: str | None = Field(None, pattern=_CHANNEL)
    owner: str | None = Field(None, pattern=_OWNER)
    #: Incidents below this severity are not posted (default: ``slack.min_severity``).
    min_severity: SlackSeverity | None = None

    @model_validator(mode="after")
    def _matches_something(self) -> SlackRoute:
        if not self.campaigns and not self.labels:
            raise ValueError("a route needs 'campaigns' patterns or 'labels'")
        return self


class SlackMute(_Strict):
    """Silence matching campaigns until ``until`` (compared with the alerts' event time)."""

    campaigns: list[str] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)
    until: AwareDatetime
    reason: str = Field("", max_length=200)

    @model_validator(mode="after")
    def _matches_something(self) -> SlackMute:
        if not self.campaigns and not self.labels:
            raise ValueError("a mute needs 'campaigns' patterns or 'labels'")
        return self


class SlackSettings(_Strict):
    bot_token: SecretStr | None = None
    webhook_url: SecretStr | None = None
    default_channel: str = Field("#ctr-alerts", pattern=_CHANNEL)
    #: Override of the Web API base URL (tests point it at the local emulator).
    base_url: str | None = None
    timeout_s: float = Field(10.0, gt=0, le=120)
    #: Attempts per outbox entry for 5xx and timeouts before it is dead-lettered
    #: (waits Slack asks for with 429 Retry-After do not count).
    max_attempts: int = Field(8, ge=1, le=100)
    #: ``auto``: Web API with ``bot_token``, else webhook with ``webhook_url``, else console.
    mode: Literal["auto", "web", "webhook", "console"] = "auto"
    #: Incidents below this severity are not posted unless a route says otherwise.
    min_severity: SlackSeverity = "warning"
    default_owner: str | None = Field(None, pattern=_OWNER)
    routes: list[SlackRoute] = Field(default_factory=list)
    #: Label -> glob patterns on ``campaign_id``, for routes and mutes by label.
    campaign_labels: dict[str, list[str]] = Field(default_factory=dict)
    mutes: list[SlackMute] = Field(default_factory=list)
    #: Alerts of a campaign at most this many windows apart form one incident; after this
    #: many windows without an alert (event time) the incident is resolved.
    incident_gap_windows: int = Field(3, ge=1, le=10_000)
    #: Revenue per click, to state the business impact in money (none: clicks only).
    value_per_click: float | None = Field(None, gt=0)
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    #: Back-off of the delivery thread for 5xx and timeouts (doubling up to the maximum).
    retry_backoff_s: float = Field(1.0, gt=0, le=600)
    retry_backoff_max_s: float = Field(60.0, gt=0, le=3600)
    #: How long "already delivered" marks and incident state are kept in Redis.
    idempotency_ttl_s: int = Field(14 * 86400, ge=3600, le=365 * 86400)
    state_ttl_s: int = Field(14 * 86400, ge=3600, le=365 * 86400)

    @model_validator(mode="after")
    def _labels_defined(self) -> SlackSettings:
        known = set(self.campaign_labels)
        for kind, rules in (("routes", self.routes), ("mutes", self.mutes)):
            for i, rule in enumerate(rules):
                missing = sorted(set(rule.labels) - known)
                if missing:
                    raise ValueError(f"{kind}[{i}]: unknown label(s) {missing}; "
                                     "define them in slack.campaign_labels")
        if self.mode == "web" and self.bot_token is None:
            raise ValueError("mode 'web' needs bot_token (SLACK_BOT_TOKEN)")
        if self.mode == "webhook" and self.webhook_url is None:
            raise ValueError("mode 'webhook' needs webhook_url (SLACK_WEBHOOK_URL)")
        return self

    @property
    def effective_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        if self.bot_token is not None:
            return "web"
        if self.webhook_url is not None:
            return "webhook"
        return "console"


#: Whether an alert holds its figure back, by suspected cause (``quarantine.causes``):
#: what corrupts the data is quarantined; real behaviour (a CTR that moves at normal volume
#: and users, a slow drift, a change of traffic) is alerted on and still reported.
DEFAULT_QUARANTINE_CAUSES: dict[str, bool] = {
    "click_tracking": True,
    "impression_logging": True,
    "bot_clicks": True,
    "ingestion_stall": True,
    "silence": True,
    "segment_break": True,
    "behaviour_change": False,
    "drift": False,
    "volume_change": False,
}


class QuarantineSettings(_Strict):
    """``quarantine:``: retention, auto-release and which causes hold figures back.

    >>> QuarantineSettings(causes={"segment_break": False}).causes["bot_clicks"]
    True
    >>> try:
    ...     QuarantineSettings(causes={"bots": True})
    ... except ValueError as err:
    ...     print(err.errors()[0]["msg"][:33])
    Value error, unknown cause 'bots'
    """

    #: How long flags and audit entries are kept (data retention policy), in days.
    retention_days: int = Field(30, ge=1, le=3650)
    auto_release: bool = False
    #: Suspected cause -> quarantine its alerts' figures. Causes left out keep their
    #: default (:data:`DEFAULT_QUARANTINE_CAUSES`).
    causes: dict[str, bool] = Field(default_factory=lambda: dict(DEFAULT_QUARANTINE_CAUSES))

    @field_validator("causes", mode="after")
    @classmethod
    def _known_causes(cls, v: dict[str, bool]) -> dict[str, bool]:
        unknown = sorted(set(v) - set(DEFAULT_QUARANTINE_CAUSES))
        if unknown:
            raise ValueError(f"unknown cause {unknown[0]!r} (known: "
                             f"{', '.join(sorted(DEFAULT_QUARANTINE_CAUSES))})")
        return {**DEFAULT_QUARANTINE_CAUSES, **v}


# --------------------------------------------------------------------------- feedback

#: What a planned change is, for people and for the labels exported from feedback.
PlannedChangeKind = Literal["launch", "budget_change", "promotion", "holiday", "other"]


class PlannedChange(_Strict):
    """A change people expect to move the CTR: alerts of matching campaigns whose window
    overlaps ``[start, end)`` (event time) are marked expected and do not quarantine."""

    #: Glob patterns (``fnmatch``, case-sensitive) on ``campaign_id``, as in ``slack.routes``.
    campaigns: list[str] = Field(min_length=1)
    start: AwareDatetime
    end: AwareDatetime
    kind: PlannedChangeKind = "other"
    reason: str = Field("", max_length=200)

    @model_validator(mode="after")
    def _ordered(self) -> PlannedChange:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        if any(not p.strip() for p in self.campaigns):
            raise ValueError("campaign patterns must not be empty")
        return self


class AnnotationSettings(_Strict):
    #: Planned changes declared in the configuration (``ctrguard annotate`` adds more in
    #: Redis; both apply).
    planned_changes: list[PlannedChange] = Field(default_factory=list)
    #: How often the sinks re-read the planned changes declared in Redis (one read per
    #: period and process, never one per event or window).
    refresh_s: float = Field(30.0, gt=0, le=3600)


class FeedbackSettings(_Strict):
    #: Add the *Confirmed* / *False alarm* / *Expected* buttons to incident messages.
    buttons: bool = True
    #: The Slack app's signing secret (``SLACK_SIGNING_SECRET``); ``ctrguard serve`` needs it.
    signing_secret: SecretStr | None = None
    #: Where ``ctrguard serve`` listens for Slack's interaction requests.
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=0, le=65535)
    path: str = Field("/slack/interactions", pattern=r"^/[A-Za-z0-9/_.-]{0,200}$")
    #: Larger request bodies are refused (413) before they are read.
    max_body_bytes: int = Field(1 << 20, ge=1024, le=16 << 20)
    #: How long feedback entries are kept in Redis, in days.
    retention_days: int = Field(365, ge=1, le=3650)


class ChartSettings(_Strict):
    #: Post a PNG chart of the driving series in each incident's thread (Web API mode only:
    #: ``files_upload_v2`` needs the bot token and the ``files:write`` scope).
    enabled: bool = True
    #: Windows of the series shown (and kept per campaign by the Slack sink to draw it).
    windows: int = Field(24, ge=4, le=288)

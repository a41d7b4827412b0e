"""Configuration: one YAML file, validated once at start-up, every error with file, line, field.

Secrets come from the environment, never from the file in production:
``CTRGUARD_KAFKA_BROKERS``, ``CTRGUARD_KAFKA_SASL_USERNAME``, ``CTRGUARD_KAFKA_SASL_PASSWORD``,
``CTRGUARD_REDIS_URL``, ``CTRGUARD_REDIS_PASSWORD``, ``SLACK_BOT_TOKEN``, ``SLACK_WEBHOOK_URL``,
``SLACK_SIGNING_SECRET``.
``CTRGUARD_METRICS_PORT`` (a port, or ``off``) overrides ``metrics.port``.

>>> cfg = load_config_text("windows:\\n  length: 10m\\n", source="inline.yaml")
>>> cfg.windows.length_s, cfg.windows.allowed_lateness_s
(600, 120)
>>> load_config_text("windows:\\n  length: -1\\n", source="bad.yaml")
Traceback (most recent call last):
...
ctrguard.errors.ConfigError: invalid configuration:
  bad.yaml:2: windows.length: duration must be positive
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError

from ctrguard.detectors.settings import DetectorSettings
from ctrguard.errors import ConfigError, ConfigIssue
from ctrguard.sinks.settings import (
    AnnotationSettings,
    ChartSettings,
    FeedbackSettings,
    QuarantineSettings,
    RedisSettings,
    SlackSettings,
)

#: The embedded defaults: ``config/default.yaml`` in the source tree, installed as the
#: package data of ``ctrguard.defaults``.
DEFAULT_CONFIG_PATH = Path(str(resources.files("ctrguard.defaults") / "default.yaml"))

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: Any) -> int:
    """Seconds from ``90``, ``"90s"``, ``"5m"``, ``"2h"``, ``"30d"``.

    >>> parse_duration("5m"), parse_duration(30), parse_duration("1d")
    (300, 30, 86400)
    """
    if isinstance(value, bool):
        raise ValueError("duration must be a number of seconds or a string like '5m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 2h, 30d)")
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    else:
        raise ValueError("duration must be a number of seconds or a string like '5m'")
    if seconds <= 0:
        raise ValueError("duration must be positive")
    return int(round(seconds))


Duration = Annotated[int, BeforeValidator(parse_duration)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TopicSettings(StrictModel):
    impressions: str = "ctr.impressions"
    clicks: str = "ctr.clicks"
    figures: str = "ctr.figures"
    alerts: str = "ctr.alerts"
    deadletter: str = "ctr.deadletter"


class KafkaSettings(StrictModel):
    brokers: list[str] = Field(default_factory=lambda: ["127.0.0.1:9092"], min_length=1)
    topics: TopicSettings = TopicSettings()
    #: librdkafka settings passed through to consumers and producers (security.protocol,
    #: sasl.mechanism, ssl.ca.location, ...). The SASL password comes from the environment.
    client: dict[str, str | int | bool] = Field(default_factory=dict)
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    batch_size: int = Field(5000, ge=1, le=1_000_000)
    #: ``true`` keeps reading forever; ``false`` stops at the end of every partition (drain).
    tail: bool = True
    starting_offset: Literal["beginning", "end"] = "beginning"
    #: Producer settings stated explicitly rather than trusting librdkafka defaults.
    producer_linger_ms: int = Field(20, ge=0, le=10_000)
    producer_acks: Literal["all", "1", "0"] = "all"
    #: Create missing *output* topics (figures, alerts, dead letters) at start-up: a
    #: convenience for development. Input topics are never created: a missing one stops
    #: ``ctrguard run`` (exit code 3), so a misspelt name cannot start an empty topic.
    create_topics: bool = False
    #: Consumer group under which the read offsets are committed after every snapshot
    #: (epoch), for lag tools; Bytewax recovery, not the group, decides where a run resumes.
    group_id: str = Field("ctrguard", min_length=1, max_length=249)
    #: How long start-up waits for the cluster before giving up (exit code 3).
    connect_timeout_s: float = Field(15.0, gt=0, le=600)
    partitions: int = Field(1, ge=1, le=1024)

    def client_config(self) -> dict[str, Any]:
        """librdkafka configuration shared by consumers, producers and admin clients (their
        log goes through Python logging, rate-limited: :mod:`ctrguard.kafka_log`)."""
        from ctrguard.kafka_log import client_logging

        conf: dict[str, Any] = {"bootstrap.servers": ",".join(self.brokers),
                                **client_logging()}
        conf.update(self.client)
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        return conf


class WindowSettings(StrictModel):
    length: Duration = 300
    allowed_lateness: Duration = 120
    #: Events further ahead than this of the wall clock are dead-lettered as ``future``
    #: (an event time beyond the present is impossible). An event far ahead of its *stream*
    #: but not of the wall clock is counted in its window and cannot move the watermark on
    #: its own: see ``event_time.frontier_quorum``.
    future_tolerance: Duration = 3600
    #: Windows of a campaign with no events for this long (event time) are forgotten.
    series_ttl: Duration = 86400
    #: Keyed shards the stream is spread over (>= workers; more shards, finer balance).
    shards: int = Field(16, ge=1, le=4096)

    @property
    def length_s(self) -> int:
        return self.length

    @property
    def allowed_lateness_s(self) -> int:
        return self.allowed_lateness


class SegmentSettings(StrictModel):
    #: Event fields whose values define segments (``device=mobile``).
    dimensions: list[Literal["device", "channel", "geo", "creative_id"]] = Field(
        default_factory=lambda: ["device", "channel"]
    )
    #: Values beyond this many per dimension and campaign are folded into ``other``.
    max_values_per_dimension: int = Field(50, ge=1, le=10_000)


class ExclusionSettings(StrictModel):
    internal: bool = True
    #: Case-insensitive regular expressions matched against ``user_agent``.
    bot_user_agents: list[str] = Field(
        default_factory=lambda: [
            r"bot\b", r"crawl", r"spider", r"slurp", r"headless", r"python-requests",
            r"curl/", r"wget/", r"phantomjs", r"facebookexternalhit",
        ]
    )


class EventTimeSettings(StrictModel):
    """How sources prove their progress in event time (README, "Event time and idle
    sources").

    A source's frontier is the ``frontier_quorum``-th largest event time it has delivered:
    fewer events than that far ahead of the rest (one forward-dated event in a back-filled
    stream) cannot move it, and so cannot move the watermark; they are counted in their
    windows when the stream gets there. A live partition is idle (holds no watermark back)
    only after its consumer position has been at the log end, with no message returned,
    for ``idle_timeout`` of wall-clock time, polled without a gap of more than a quarter of
    it; it renews that claim every quarter of ``idle_timeout``, and a shard honours a claim
    only while it is at most half of ``idle_timeout`` older than the newest poll the shard
    has seen from any source (a pause, a blocked sink or a slow exchange makes the claim
    stale: the partition holds the watermark at its frontier again). A claim lets the
    watermark go no further than the other partitions had read when it was made.
    """

    idle_timeout: Duration = 5
    frontier_quorum: int = Field(3, ge=1, le=1000)


class MetricsSettings(StrictModel):
    """The HTTP endpoint of ``ctrguard run``: ``/metrics`` (Prometheus), ``/healthz``,
    ``/readyz``. Process ``I`` of a cluster (``--process-id I``) serves ``port + I``."""

    #: null (or ``CTRGUARD_METRICS_PORT=off``) turns the endpoint off.
    port: int | None = Field(9464, ge=1, le=65535)
    host: str = "0.0.0.0"
    #: How often Redis and Kafka are asked for what the flow itself does not know (outbox
    #: depth, open incidents, quarantined windows, reachability for ``/readyz``).
    probe_interval: Duration = 15
    #: ``/readyz`` fails when events keep arriving but no shard's watermark has moved
    #: for this long.
    watermark_stall: Duration = 600


class LogSettings(StrictModel):
    #: A heartbeat line (events/s, watermark, lag, Slack outbox, figures held back) this
    #: often while ``ctrguard run`` runs, busy or idle; null: none.
    heartbeat: Duration | None = 60


class Settings(StrictModel):
    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    slack: SlackSettings = SlackSettings()
    windows: WindowSettings = WindowSettings()
    event_time: EventTimeSettings = EventTimeSettings()
    segments: SegmentSettings = SegmentSettings()
    exclusions: ExclusionSettings = ExclusionSettings()
    detectors: DetectorSettings = DetectorSettings()
    quarantine: QuarantineSettings = QuarantineSettings()
    annotations: AnnotationSettings = AnnotationSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    charts: ChartSettings = ChartSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LogSettings = LogSettings()
    max_event_bytes: int = Field(64 * 1024, ge=256, le=16 * 1024 * 1024)
    #: Source of this configuration, for messages.
    source: str = Field("<defaults>", exclude=True)


# --------------------------------------------------------------------------- loading


def _line_index(text: str) -> dict[tuple[str | int, ...], int]:
    """Map every field path in a YAML document to its 1-based line."""
    index: dict[tuple[str | int, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return index

    def walk(node: yaml.Node, path: tuple[str | int, ...]) -> None:
        index[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = path + (key_node.value,)
                walk(value_node, key)
                index[key] = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (i,))

    if root is not None:
        walk(root, ())
    return index


def _env_overrides(data: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    data = dict(data)

    def section(name: str) -> dict[str, Any]:
        value = data.get(name)
        value = dict(value) if isinstance(value, dict) else {}
        data[name] = value
        return value

    if env.get("CTRGUARD_KAFKA_BROKERS"):
        section("kafka")["brokers"] = [b.strip() for b in env["CTRGUARD_KAFKA_BROKERS"].split(",")]
    if env.get("CTRGUARD_KAFKA_SASL_USERNAME"):
        section("kafka")["sasl_username"] = env["CTRGUARD_KAFKA_SASL_USERNAME"]
    if env.get("CTRGUARD_KAFKA_SASL_PASSWORD"):
        section("kafka")["sasl_password"] = env["CTRGUARD_KAFKA_SASL_PASSWORD"]
    if env.get("CTRGUARD_REDIS_URL"):
        section("redis")["url"] = env["CTRGUARD_REDIS_URL"]
    if env.get("CTRGUARD_REDIS_PASSWORD"):
        section("redis")["password"] = env["CTRGUARD_REDIS_PASSWORD"]
    if env.get("CTRGUARD_METRICS_PORT"):
        port = env["CTRGUARD_METRICS_PORT"].strip()
        section("metrics")["port"] = None if port.lower() in ("off", "none", "") else port
    if env.get("SLACK_BOT_TOKEN"):
        section("slack")["bot_token"] = env["SLACK_BOT_TOKEN"]
    if env.get("SLACK_WEBHOOK_URL"):
        section("slack")["webhook_url"] = env["SLACK_WEBHOOK_URL"]
    if env.get("SLACK_SIGNING_SECRET"):
        section("feedback")["signing_secret"] = env["SLACK_SIGNING_SECRET"]
    return data


def _issue_message(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    if err.get("type") == "extra_forbidden":
        return "unknown setting"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return msg


def load_config_text(
    text: str, *, source: str = "<string>", env: dict[str, str] | None = None
) -> Settings:
    """Validate a YAML document; raise :class:`ConfigError` listing every issue."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigIssue(source, line, "<document>", f"YAML syntax: {problem}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(source, 1, "<document>", "must be a mapping of sections")])
    data = _env_overrides(data, dict(os.environ) if env is None else env)
    lines = _line_index(text)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        issues = []
        for err in exc.errors():
            loc = tuple(err.get("loc", ()))
            line = None
            for cut in range(len(loc), -1, -1):
                if loc[:cut] in lines:
                    line = lines[loc[:cut]]
                    break
            field = ".".join(str(p) for p in loc) or "<document>"
            issues.append(ConfigIssue(source, line, field, _issue_message(err)))
        raise ConfigError(issues) from None
    return settings.model_copy(update={"source": source})


def load_config(path: str | Path | None = None, *, env: dict[str, str] | None = None) -> Settings:
    """Load and validate a configuration file (the embedded defaults when ``path`` is None)."""
    if path is None and not DEFAULT_CONFIG_PATH.exists():
        # Installed from a wheel: config/ is not shipped, and its values are the model's
        # defaults anyway (a test keeps the two equal).
        return load_config_text("", source="<embedded defaults>", env=env)
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(path), None, "<file>", f"cannot read: {exc.strerror}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError([ConfigIssue(
            str(path), line, "<file>", f"not UTF-8: byte 0x{data[exc.start]:02x} at column "
            f"{column} (save the file as UTF-8)")]) from None
    return load_config_text(text, source=str(path), env=env)


def issue_at(settings: Settings, path: tuple[str, ...], message: str) -> ConfigIssue:
    """A problem found after loading (a check against a library, at start-up), located at
    the line of ``path`` in the file the settings came from, as load-time issues are.

    >>> s = load_config_text("kafka:\\n  client:\\n    no.such: 1\\n", source="<s>", env={})
    >>> str(issue_at(s, ("kafka", "client", "no.such"), "unknown librdkafka setting"))
    '<s>: kafka.client.no.such: unknown librdkafka setting'
    """
    line = None
    try:
        lines = _line_index(Path(settings.source).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        lines = {}
    for cut in range(len(path), -1, -1):
        if path[:cut] in lines:
            line = lines[path[:cut]]
            break
    return ConfigIssue(settings.source, line, ".".join(path), message)

"""Settings of the edges: Redis, Slack, quarantine."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


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


class SlackSettings(_Strict):
    bot_token: SecretStr | None = None
    webhook_url: SecretStr | None = None
    default_channel: str = "#ctr-alerts"
    #: Override of the Web API base URL (tests point it at the local emulator).
    base_url: str | None = None
    timeout_s: float = Field(10.0, gt=0, le=120)
    max_attempts: int = Field(8, ge=1, le=100)


class QuarantineSettings(_Strict):
    #: How long flags and audit entries are kept (data retention policy), in days.
    retention_days: int = Field(30, ge=1, le=3650)
    auto_release: bool = False

"""One exception hierarchy for ctrguard.

Every error the project raises on purpose is a :class:`CtrGuardError`. Subclasses carry the
context a person needs (the file and line of a bad setting, the reason an event was rejected,
whether retrying can help) and never carry secrets.

>>> err = EventError("missing field 'campaign_id'", field="campaign_id")
>>> isinstance(err, CtrGuardError), err.reason, err.retryable
(True, "missing field 'campaign_id'", False)
>>> str(ConfigIssue(file="c.yaml", line=3, field="windows.length", message="must be > 0"))
'c.yaml:3: windows.length: must be > 0'
"""

from __future__ import annotations

from dataclasses import dataclass


class CtrGuardError(Exception):
    """Base of every ctrguard error.

    ``retryable`` says whether the same operation can succeed if tried again later
    (a service outage) or never will (bad input, bad configuration).
    """

    retryable: bool = False


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file, located by file, line and field path."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.field}: {self.message}"


class ConfigError(CtrGuardError):
    """The configuration is invalid. Holds every issue found, not just the first."""

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = list(issues)
        super().__init__(
            "invalid configuration:\n" + "\n".join(f"  {issue}" for issue in self.issues)
        )


class EventError(CtrGuardError):
    """An input event is malformed or violates the event contract.

    ``reason`` is a short sentence that goes into the dead-letter record; ``code`` is one of
    the closed set of :mod:`ctrguard.reasons` (the ``ctrguard-reason-code`` header).
    """

    def __init__(self, reason: str, *, field: str | None = None, code: str = "invalid"):
        self.reason = reason
        self.field = field
        self.code = code
        super().__init__(reason)


class ServiceError(CtrGuardError):
    """A backing service (Kafka, Redis, Slack) failed.

    ``service`` names it; ``retryable`` is True for outages, timeouts, rate limits and 5xx.
    """

    def __init__(self, service: str, message: str, *, retryable: bool = True):
        self.service = service
        self.retryable = retryable
        super().__init__(f"{service}: {message}")


class RedisUnavailable(ServiceError):
    """Redis could not be written or read; figures wait (fail closed)."""

    def __init__(self, message: str):
        super().__init__("redis", message, retryable=True)


class SlackDeliveryError(ServiceError):
    """A Slack API call failed. ``retry_after`` is set when Slack asked us to wait."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None,
                 status: int | None = None):
        self.retry_after = retry_after
        self.status = status
        super().__init__("slack", message, retryable=retryable)


class KafkaUnavailable(ServiceError):
    """The Kafka cluster could not be reached or refused an operation."""

    def __init__(self, message: str, *, retryable: bool = True):
        super().__init__("kafka", message, retryable=retryable)


class QuarantineError(CtrGuardError):
    """A quarantine operation was refused (unknown flag, invalid transition)."""

    def __init__(self, message: str, *, key: str | None = None):
        self.key = key
        super().__init__(message)


class SnapshotFormatError(CtrGuardError):
    """Recovery state written by another version that this one cannot read (never retryable:
    the same snapshot fails the same way)."""

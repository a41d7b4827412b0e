"""A Redis client built from :class:`~ctrguard.sinks.settings.RedisSettings`, every knob stated.

redis-py has changed its defaults between minor releases (socket timeouts, retries on by
default since 6.0), so nothing here relies on them: timeouts, retries, back-off, protocol
and response decoding are all set from our settings or fixed here on purpose.

Secrets never reach logs or messages: use :func:`redact_url` whenever a URL is shown.

>>> redact_url("redis://alice:s3cret@cache:6380/2")
'redis://alice:***@cache:6380/2'
>>> redact_url("rediss://:s3cret@cache/0?password=s3cret&socket_timeout=1")
'rediss://:***@cache/0?password=***&socket_timeout=1'
>>> redact_url("redis://cache:6379/0")
'redis://cache:6379/0'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.connection import ConnectionPool, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

if TYPE_CHECKING:
    from ctrguard.sinks.settings import RedisSettings

#: Attempts after the first one that redis-py makes by itself on a connection error or
#: timeout. One is enough to replace a pooled connection that died while Redis restarted;
#: longer outages are the caller's business (it backs off and retries; figures wait).
CLIENT_RETRIES = 1
#: Idle pooled connections are PINGed before reuse after this many seconds, so a Redis
#: restart is noticed before a write rather than during it.
HEALTH_CHECK_INTERVAL_S = 30
#: Connections one process may open; a sink or a CLI call uses one at a time.
MAX_CONNECTIONS = 16
#: Every response is decoded as UTF-8 text: keys, fields and values are all strings.
DECODE_RESPONSES = True

_SECRET_QUERY_KEYS = {"password", "pass", "pwd", "token", "auth"}


def redact_url(url: str) -> str:
    """``url`` with any password (in the userinfo or the query string) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable redis url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if sep else f"{user}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs],
            safe="*",
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def client_options(
    url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    socket_timeout_s: float = 5.0,
    connect_timeout_s: float = 5.0,
    retry_backoff_s: float = 0.5,
    retry_backoff_max_s: float = 10.0,
) -> dict[str, Any]:
    """Connection options: the URL's, then ours on top, every one stated explicitly.

    Options given here win over the same options in the URL's query string, so a stray
    ``?socket_timeout=`` cannot silently lengthen our timeouts. ``username`` and
    ``password`` win over the URL's only when given.
    """
    options = parse_url(url)
    options.pop("max_connections", None)
    options.update(
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        socket_keepalive=True,
        retry=Retry(
            ExponentialBackoff(cap=retry_backoff_max_s, base=retry_backoff_s),
            retries=CLIENT_RETRIES,
            supported_errors=(RedisConnectionError, RedisTimeoutError, OSError),
        ),
        retry_on_timeout=True,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        decode_responses=DECODE_RESPONSES,
        encoding="utf-8",
        encoding_errors="strict",
        # RESP2: stable reply shapes across server versions, no push messages.
        protocol=2,
        client_name="ctrguard",
    )
    if username is not None:
        options["username"] = username
    if password is not None:
        options["password"] = password
    return options


def redis_from_url(url: str, **kwargs: Any) -> redis.Redis:
    """A :class:`redis.Redis` for ``url``; ``kwargs`` as for :func:`client_options`.

    For tools that have a URL but no ctrguard configuration (reporting pipelines).
    Raises ``ValueError`` for a URL redis-py cannot parse; the message holds the redacted URL.
    No connection is opened until first use.
    """
    try:
        options = client_options(url, **kwargs)
    except ValueError as exc:
        raise ValueError(f"invalid redis url {redact_url(url)}: {exc}") from None
    pool = ConnectionPool(max_connections=MAX_CONNECTIONS, **options)
    return redis.Redis(connection_pool=pool)


def make_redis(settings: RedisSettings) -> redis.Redis:
    """A :class:`redis.Redis` for ``settings`` (no connection is opened until first use)."""
    return redis_from_url(
        settings.url,
        username=settings.username,
        password=settings.password.get_secret_value() if settings.password is not None else None,
        socket_timeout_s=settings.socket_timeout_s,
        connect_timeout_s=settings.connect_timeout_s,
        retry_backoff_s=settings.retry_backoff_s,
        retry_backoff_max_s=settings.retry_backoff_max_s,
    )

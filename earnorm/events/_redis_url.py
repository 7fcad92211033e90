"""Opening Redis clients from URLs, and showing URLs without their secrets.

TLS and credentials travel in the URL, as redis-py reads it::

    rediss://user:password@host:6380/0?ssl_ca_certs=/etc/ca.pem
        &ssl_certfile=/etc/client.pem&ssl_keyfile=/etc/client.key&ssl_cert_reqs=required

Every other query parameter of ``redis.asyncio.Redis.from_url`` works the same way.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from earnorm._errors import BrokerConnectionError, ConfigError

# Query parameters redis-py accepts that hold a secret (a password may be given either way).
_SECRET_PARAMS = frozenset({"password", "ssl_password"})


def mask_url(url: str) -> str:
    """The URL with every secret replaced by ``***``: safe for logs, reprs and errors.

    >>> mask_url("redis://user:secret@host:6379/0")
    'redis://user:***@host:6379/0'
    >>> mask_url("rediss://host/0?password=secret&ssl_ca_certs=/ca.pem")
    'rediss://host/0?password=***&ssl_ca_certs=/ca.pem'
    """
    try:
        parts = urlsplit(url)
        password, port = parts.password, parts.port
    except (ValueError, TypeError, AttributeError):
        return "<invalid url>"
    if password is not None:
        host = parts.hostname or ""
        if ":" in host:  # IPv6: urlsplit drops the brackets
            host = f"[{host}]"
        if port:
            host = f"{host}:{port}"
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    if parts.query:
        query = parse_qsl(parts.query, keep_blank_values=True)
        if any(name in _SECRET_PARAMS for name, _ in query):
            masked = [(n, "***" if n in _SECRET_PARAMS else v) for n, v in query]
            parts = parts._replace(query=urlencode(masked, safe="/*"))
    return urlunsplit(parts)


def open_redis(url: str, **options: Any) -> Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` or ``unix://``) that retries briefly on
    connection errors; callers above it decide how long to keep trying."""
    scheme = urlsplit(url).scheme if isinstance(url, str) else ""
    if scheme not in ("redis", "rediss", "unix"):
        shown = mask_url(url) if isinstance(url, str) else repr(url)
        raise ConfigError(f"redis_uri must be a redis://, rediss:// or unix:// URL, got {shown}")
    options.setdefault("socket_connect_timeout", 5)
    options.setdefault("health_check_interval", 30)
    options.setdefault(
        "retry", Retry(ExponentialBackoff(cap=0.5, base=0.02), retries=2)
    )
    options.setdefault("retry_on_error", [RedisConnectionError, RedisTimeoutError])
    try:
        return Redis.from_url(url, **options)
    except ValueError as exc:
        raise ConfigError(f"invalid redis_uri {mask_url(url)}: {exc}") from None


def unreachable(url: str, exc: BaseException) -> BrokerConnectionError:
    """The error for a Redis at ``url`` that could not be reached (its secrets masked).

    >>> str(unreachable("redis://:pw@127.0.0.1:1/0", ConnectionError("refused")))
    'cannot reach Redis at redis://:***@127.0.0.1:1/0: ConnectionError: refused'
    """
    return BrokerConnectionError(
        f"cannot reach Redis at {mask_url(url)}: {type(exc).__name__}: {exc}")

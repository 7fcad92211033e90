"""Opening Redis clients from URLs, and showing URLs without their secrets."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from earnorm.errors import ConfigError


def mask_url(url: str) -> str:
    """``redis://user:secret@host:6379/0`` -> ``redis://user:***@host:6379/0``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def open_redis(url: str, **options: Any) -> Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` or ``unix://``) that retries briefly on
    connection errors; callers above it decide how long to keep trying."""
    if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"redis_uri must be a redis://, rediss:// or unix:// URL, got {url!r}")
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

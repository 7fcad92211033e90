"""Opening Redis clients from URLs, and showing URLs without their secrets.

TLS and credentials travel in the URL, as redis-py reads it::

    rediss://user:password@host:6380/0?ssl_ca_certs=/etc/ca.pem
        &ssl_certfile=/etc/client.pem&ssl_keyfile=/etc/client.key&ssl_cert_reqs=required

Every other query parameter of ``redis.asyncio.Redis.from_url`` works the same way.

A read timeout (``?socket_timeout=``; redis-py's own default is 5 s) is never shorter than
reading the largest reply we may ask for (a message near ``max_message_bytes``) on a slow
link: a shorter one is lifted, with a warning naming both, because a reply that cannot arrive
in time would make every try of that read time out the same way.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from earnorm._errors import BrokerConnectionError, ConfigError
from earnorm.events._broker import topology

log = logging.getLogger("earnorm.events")

# The slowest link a read is planned for (16 Mbit/s), and a round trip's allowance on top.
READ_BYTES_PER_SECOND = 2 * 1024 * 1024
READ_ALLOWANCE_SECONDS = 1.0
DEFAULT_READ_TIMEOUT = 5.0  # redis-py's, when the URL gives none
_SOCKET_TIMEOUT = re.compile(r"(?<=[?&])socket_timeout=([^&;#]*)")

# Query parameters redis-py accepts that hold a secret (a password may be given either way).
_SECRET_PARAMS = frozenset({"password", "ssl_password", "sentinel_password"})


_USERINFO = re.compile(r"(://[^:/@;?#]*:)[^@/;?#]*@")
_QUERY = re.compile(r"\?([^;#]*)")


def _mask_query(match: re.Match[str]) -> str:
    query = parse_qsl(match.group(1), keep_blank_values=True)
    if not any(name in _SECRET_PARAMS for name, _ in query):
        return match.group(0)
    masked = [(n, "***" if n in _SECRET_PARAMS else v) for n, v in query]
    return "?" + urlencode(masked, safe="/*")


def mask_url(url: str) -> str:
    """The URL with every secret replaced by ``***``: safe for logs, reprs and errors. Works
    for the several-host cluster and sentinel forms too.

    >>> mask_url("redis://user:secret@host:6379/0")
    'redis://user:***@host:6379/0'
    >>> mask_url("rediss://host/0?password=secret&ssl_ca_certs=/ca.pem")
    'rediss://host/0?password=***&ssl_ca_certs=/ca.pem'
    >>> mask_url("sentinel://:pw@h1:26379;sentinel://:pw@h2:26379?sentinel_password=x")
    'sentinel://:***@h1:26379;sentinel://:***@h2:26379?sentinel_password=***'
    """
    if not isinstance(url, str):
        return "<invalid url>"
    return _QUERY.sub(_mask_query, _USERINFO.sub(lambda m: m.group(1) + "***@", url))


def min_read_timeout(largest_reply: int) -> float:
    """The shortest read timeout that lets a reply of ``largest_reply`` bytes arrive over the
    slowest link planned for.

    >>> min_read_timeout(20 * 1024 * 1024)
    11.0
    """
    return READ_ALLOWANCE_SECONDS + largest_reply / READ_BYTES_PER_SECOND


def fit_read_timeout(url: str, largest_reply: int) -> str:
    """``url`` with a ``socket_timeout`` too short for ``largest_reply`` lifted to
    ``min_read_timeout`` (logged once, naming both); unchanged otherwise.

    >>> fit_read_timeout("redis://h/0?socket_timeout=0.5", 20 * 1024 * 1024)
    'redis://h/0?socket_timeout=11'
    >>> fit_read_timeout("redis://h/0?socket_timeout=30", 20 * 1024 * 1024)
    'redis://h/0?socket_timeout=30'
    >>> fit_read_timeout("redis://h/0", 20 * 1024 * 1024)
    'redis://h/0'
    """
    if not isinstance(url, str) or "socket_timeout=" not in url:
        return url
    floor = min_read_timeout(largest_reply)

    def lift(match: re.Match[str]) -> str:
        try:
            given = float(match.group(1))
        except ValueError:
            return match.group(0)  # redis-py reports it
        if given <= 0 or given >= floor:
            return match.group(0)
        log.warning("socket_timeout=%gs in the Redis URL is shorter than reading the largest reply "
                    "asked for (%.1f MB: max_message_bytes and the size estimate's margin, at "
                    "%.0f MB/s): using %gs, else that read would time out on every try",
                    given, largest_reply / 1e6, READ_BYTES_PER_SECOND / 1e6, floor)
        return f"socket_timeout={floor:g}"
    return _SOCKET_TIMEOUT.sub(lift, url)


def open_redis(url: str, *, largest_reply: int = 0, **options: Any) -> Redis:
    """A client for ``url`` that retries briefly on connection errors; callers above it decide
    how long to keep trying. ``redis://``, ``rediss://``, ``unix://``, and the cluster and
    sentinel forms of ``topology`` (whose clients are ``RedisCluster`` and a Sentinel-managed
    ``Redis``). ``largest_reply``: the most bytes one reply may hold (``fit_read_timeout``)."""
    if largest_reply:
        url = fit_read_timeout(url, largest_reply)
        if "socket_timeout=" not in url:  # redis-py's own default (5 s) may be too short
            options.setdefault("socket_timeout", max(DEFAULT_READ_TIMEOUT,
                                                     min_read_timeout(largest_reply)))
    scheme = urlsplit(url).scheme.lower() if isinstance(url, str) else ""
    if scheme not in ("redis", "rediss", "unix") and topology.kind(url) == "single":
        shown = mask_url(url) if isinstance(url, str) else repr(url)
        raise ConfigError("redis_uri must be a redis://, rediss://, unix://, redis+cluster:// "
                          f"or redis+sentinel:// (or kombu's sentinel://) URL, got {shown}")
    options.setdefault("socket_connect_timeout", 5)
    options.setdefault(
        "retry", Retry(ExponentialBackoff(cap=0.5, base=0.02), retries=2)
    )
    options.setdefault("retry_on_error", [RedisConnectionError, RedisTimeoutError])
    try:
        if topology.kind(url) == "cluster":
            return topology.open_cluster(url, **options)
        options.setdefault("health_check_interval", 30)
        if topology.kind(url) == "sentinel":
            return topology.open_sentinel(url, **options)
        # Past max_connections (redis-py 8: 100) a plain pool fails the command at once
        # (MaxConnectionsError); this one makes it wait for a connection to come back, so
        # many concurrent publishes queue instead of failing.
        options.setdefault("max_connections", 100)  # redis-py 8's own default
        return Redis.from_pool(BlockingConnectionPool.from_url(url, **options))
    except ValueError as exc:
        raise ConfigError(f"invalid redis_uri {mask_url(url)}: {exc}") from None


def unreachable(url: str, exc: BaseException) -> BrokerConnectionError:
    """The error for a Redis at ``url`` that could not be reached (its secrets masked).

    >>> str(unreachable("redis://:pw@127.0.0.1:1/0", ConnectionError("refused")))
    'cannot reach Redis at redis://:***@127.0.0.1:1/0: ConnectionError: refused'
    """
    return BrokerConnectionError(
        f"cannot reach Redis at {mask_url(url)}: {type(exc).__name__}: {exc}")

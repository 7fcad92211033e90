"""A connection closed under a write is a connection error, whatever redis-py 8.1 raises.

When a connection is closed while a command is being written (the peer reset it while it sat
idle in the pool: redis-py#4287; or another task of a cluster client disconnected it during a
topology refresh, seen mid-resharding), redis-py lets the transport's internals leak: an
``AttributeError`` (``'NoneType' object has no attribute 'writelines'``) or a ``TypeError``
(``'NoneType' object is not callable``), which no retry policy and no ``except
ConnectionError`` catches, so a consumer loop would die of it. Here they become
``ConnectionTorn``, a ``ConnectionError``: retried and backed off like any lost connection.
Only errors raised inside the write path itself are converted; a caller's own ``TypeError``
never reaches it (commands are packed before the write starts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError

# Where the leaked errors are raised: the connection's write, or the transport under it.
_WRITE_PATH = ("redis/asyncio/connection.py", "asyncio/selector_events.py",
               "asyncio/streams.py", "asyncio/sslproto.py")


class ConnectionTorn(RedisConnectionError):
    """The connection was closed while a command was being written."""


def torn(exc: BaseException) -> bool:
    """Whether ``exc`` is one of the transport errors a closed connection leaks.

    >>> torn(ValueError("x")), torn(AttributeError("x"))  # raised here, not in a write
    (False, False)
    """
    if not isinstance(exc, (AttributeError, TypeError)):
        return False
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename.replace("\\", "/")
    return filename.endswith(_WRITE_PATH)


def _as_connection_error(exc: BaseException) -> ConnectionTorn:
    return ConnectionTorn(f"connection closed while writing ({type(exc).__name__}: {exc})")


async def _converted(call: Callable[[], Any]) -> Any:
    try:
        return await call()
    except (AttributeError, TypeError) as exc:
        if torn(exc):
            raise _as_connection_error(exc) from exc
        raise


class _TornWrites:
    """Mixed into a redis-py connection class, before it. Every command's write passes here
    (the publish hot path too), so no closure: one frame and a try that costs nothing."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
        except (AttributeError, TypeError) as exc:
            if torn(exc):
                raise _as_connection_error(exc) from exc
            raise


class TornSafeConnection(_TornWrites, Connection):
    pass


class TornSafeSSLConnection(_TornWrites, SSLConnection):
    pass


class TornSafeUnixConnection(_TornWrites, UnixDomainSocketConnection):
    pass


class TornSafeSentinelConnection(_TornWrites, SentinelManagedConnection):
    pass


class TornSafeSentinelSSLConnection(_TornWrites, SentinelManagedSSLConnection):
    pass


def connection_class(scheme: str) -> type[Connection] | type[UnixDomainSocketConnection]:
    """The connection class for a ``redis://``, ``rediss://`` or ``unix://`` URL."""
    if scheme == "rediss":
        return TornSafeSSLConnection
    if scheme == "unix":
        return TornSafeUnixConnection
    return TornSafeConnection


class TornSafeCluster(RedisCluster):
    """``RedisCluster`` whose commands and pipelines raise ``ConnectionTorn`` for a torn
    connection (its nodes' connection class is fixed inside redis-py, so the conversion is
    made around its two entry points)."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return await _converted(lambda: super(TornSafeCluster, self).execute_command(
            *args, **kwargs))

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None
                 ) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # raises, as redis-py does
        pipeline: Any = _TornSafePipeline  # redis-py's own class is typed abstract, too
        return cast(ClusterPipeline, pipeline(self, transaction))


class _TornSafePipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True
                      ) -> list[Any]:
        result: list[Any] = await _converted(lambda: super(_TornSafePipeline, self).execute(
            raise_on_error, allow_redirections))
        return result


def torn_safe(cls: type[Any]) -> type[Any]:
    """The torn-safe class for a cluster node's ``connection_class`` (plain or TLS)."""
    return TornSafeSSLConnection if issubclass(cls, SSLConnection) else TornSafeConnection

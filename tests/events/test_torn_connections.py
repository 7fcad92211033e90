"""A connection closed under a write raises a connection error (retried like any lost
connection), not the transport's ``AttributeError``/``TypeError`` that redis-py 8.1 leaks."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from earnorm.events._redis_url import open_redis
from earnorm.events._topology import open_cluster
from earnorm.events._torn import (
    ConnectionTorn,
    TornSafeCluster,
    TornSafeConnection,
    TornSafeSentinelConnection,
    TornSafeSentinelSSLConnection,
    TornSafeSSLConnection,
    torn,
    torn_safe,
)

pytestmark = pytest.mark.anyio


class _TornUnderTheWrite(TornSafeConnection):
    """What a cluster client's topology refresh does to a task that is writing (seen
    mid-resharding): the write starts on a connected connection, which another task has
    disconnected by the time the bytes go out."""

    tear = False

    @property
    def is_connected(self) -> bool:
        if self.tear:  # the check at the start of the write passes; then it is torn
            self.tear = False
            self._reader = self._writer = None
            return True
        return self._reader is not None and self._writer is not None


async def test_a_write_on_a_torn_connection_is_a_connection_error(redis_url: str) -> None:
    client: Redis = Redis.from_url(redis_url, connection_class=_TornUnderTheWrite)
    try:
        pool: Any = client.connection_pool
        connection = await pool.get_connection()
        await connection.connect()
        connection.tear = True
        with pytest.raises(ConnectionTorn) as raised:
            await connection.send_command("PING")
        assert isinstance(raised.value, RedisConnectionError)  # what every retry expects
        assert isinstance(raised.value.__cause__, AttributeError)
        await pool.release(connection)
    finally:
        await client.aclose()


async def test_every_client_earnorm_opens_converts_torn_writes(redis_url: str) -> None:
    client = open_redis(redis_url)
    assert issubclass(client.connection_pool.connection_class, TornSafeConnection)
    await client.aclose()
    assert isinstance(open_cluster("redis+cluster://127.0.0.1:1"), TornSafeCluster)
    for node_class, safe in ((Connection, TornSafeConnection),
                             (SSLConnection, TornSafeSSLConnection)):
        assert torn_safe(node_class) is safe  # the idle wait's own cluster connection
    for url, kind in (("redis+sentinel://127.0.0.1:1/m/0", TornSafeSentinelConnection),
                      ("rediss+sentinel://127.0.0.1:1/m/0", TornSafeSentinelSSLConnection)):
        sentinel = open_redis(url)
        assert sentinel.connection_pool.connection_class is kind
        await sentinel.aclose()


def test_only_errors_raised_in_the_write_path_count() -> None:
    try:
        None.writelines([])  # type: ignore[attr-defined]
    except AttributeError as exc:
        assert not torn(exc)  # raised in this test's frame, not in a connection's write
    assert not torn(ValueError("not a transport error"))

"""The publisher's own connection: one command at a time, sent and read directly.

A command through the redis-py client checks a connection out of the pool and back in, wraps
the call in its retry helper and records it for observability: on this 2-core VM that is
~40 us of a sequential publish's ~150 us. The lane keeps one connection of its own (made by the
client's pool, so with the same options: TLS, auth, db, Sentinel's master lookup) and sends on
it directly. It serves one command at a time; a publish that finds it busy (concurrent
publishers) takes the client's pool as before, so concurrency is never reduced.

After anything but a whole error reply the connection is dropped (``OwnConnection``); the
caller then retries on the client's pool, whose retry policy applies as it always did.
"""

from __future__ import annotations

from typing import Any, cast

from redis.asyncio import Redis

from earnorm.events._broker.own_connection import OwnConnection


class PublishLane(OwnConnection):
    def __init__(self, redis: Redis) -> None:
        super().__init__()
        self._redis = redis
        self.busy = False

    async def execute(self, *args: bytes | str) -> Any:
        """Send one command and return its reply; the caller checks ``busy`` first."""
        connection = self._connection
        if connection is None:
            connection = cast(Any, self._redis.connection_pool).make_connection()
            self._connection = connection
        self.busy = True
        try:
            try:
                await connection.send_packed_command(_pack(args))
            except BaseException:
                await self._drop(connection)
                raise
            return await self._read_reply(connection)
        finally:
            self.busy = False


def _pack(args: tuple[bytes | str, ...]) -> list[bytes]:
    """RESP for a command of strings and bytes (a seventh of redis-py's generic packer's time);
    large values stay separate buffers, written without being copied into one."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return parts

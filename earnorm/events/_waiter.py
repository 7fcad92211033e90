"""The consumer's idle wait: ``BLMOVE`` of one message from the main ready list into the
consumer's landing list, on a connection of its own, reading the reply without keeping it.

BLMOVE answers with the element it moved. Kept, a 50 MB message on an idle queue would be 50 MB
(twice, in the parser and as bytes) in the consumer. The moved element is not needed: the next
fetch script takes it from the landing list, inside Redis, and diverts it if it is too large.
So the reply is read from the socket in chunks and dropped.
"""

from __future__ import annotations

from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

_CHUNK = 64 * 1024


class BlockingWait:
    def __init__(self, redis: Redis) -> None:
        self._pool = redis.connection_pool
        self._connection: Any = None

    async def move(self, source: str, destination: str, timeout: float) -> bool:
        """Block up to ``timeout`` s; True if a message was moved."""
        connection = self._connection
        if connection is None:
            connection = cast(Any, self._pool).make_connection()
            await connection.connect()
            self._connection = connection
        try:
            await connection.send_command("BLMOVE", source, destination, "RIGHT", "LEFT",
                                          timeout)
            return await _discard_reply(connection)
        except BaseException:
            # Cancelled or failed mid-reply: the stream's position is unknown; start afresh.
            self._connection = None
            await connection.disconnect(nowait=True)
            raise

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect()


async def _discard_reply(connection: Any) -> bool:
    reader = connection._reader  # redis-py's asyncio StreamReader for this connection
    if reader is None:
        raise ConnectionError("connection closed")
    line = await reader.readline()
    if not line:
        raise ConnectionError("connection closed while waiting")
    kind, rest = line[:1], line[1:].strip()
    if kind == b"-":
        raise ResponseError(rest.decode(errors="replace"))
    if kind == b"_" or rest == b"-1":  # RESP3 null, or RESP2 null bulk / null array: timed out
        return False
    if kind != b"$":
        raise ResponseError(f"unexpected reply to BLMOVE: {line[:40]!r}")
    remaining = int(rest) + 2  # the element and its CRLF
    while remaining:
        chunk = await reader.read(min(remaining, _CHUNK))
        if not chunk:
            raise ConnectionError("connection closed while reading a reply")
        remaining -= len(chunk)
    return True

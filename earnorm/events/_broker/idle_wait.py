"""The consumer's idle wait: ``BLMOVE`` of one message from the main ready list into the
consumer's landing list, on a connection of its own, reading the reply without keeping it, and
the fetch script sent right behind it (answered as soon as the BLMOVE returns).

BLMOVE answers with the element it moved. Kept, a 50 MB message on an idle queue would be 50 MB
(twice, in the parser and as bytes) in the consumer. The moved element is not needed: the next
fetch script takes it from the landing list, inside Redis, and diverts it if it is too large.
So the reply is read from the socket in chunks and dropped.

On a Redis Cluster the connection goes to the master serving the queue's slot, looked up again
after any error: a MOVED or CLUSTERDOWN reply (resharding, failover) is a transient error like a
lost connection, and the next wait asks the cluster client where the slot lives now.
"""

from __future__ import annotations

from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError

from earnorm.events._broker.own_connection import OwnConnection
from earnorm.events._broker.topology import is_cluster

_CHUNK = 64 * 1024
_CLUSTER_MOVING = ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")


class BlockingWait(OwnConnection):
    def __init__(self, redis: Redis) -> None:
        super().__init__()
        self._redis = redis

    def _new_connection(self, key: str) -> Any:
        if is_cluster(self._redis):
            node: Any = cast(Any, self._redis).get_node_from_key(key)
            kwargs = {**node.connection_kwargs, "socket_timeout": None}
            return node.connection_class(**kwargs)
        return cast(Any, self._redis.connection_pool).make_connection()

    async def move_then(self, source: str, destination: str, timeout: float,
                        command: tuple[Any, ...]) -> tuple[bool, Any]:
        """``move``, with ``command`` sent right behind the BLMOVE on the same connection: Redis
        runs it as soon as the BLMOVE returns (or times out). Returns (moved, its reply)."""
        connection = self._connection
        if connection is None:
            connection = self._new_connection(source)
            await connection.connect()
            self._connection = connection
        try:
            await connection.send_packed_command(connection.pack_commands([
                ("BLMOVE", source, destination, "RIGHT", "LEFT", timeout), command]))
            moved = await _discard_reply(connection)
        except BaseException:  # even an error reply: the command's reply is still unread
            await self._drop(connection)
            raise
        return moved, await self._read_reply(connection)


async def _discard_reply(connection: Any) -> bool:
    reader = connection._reader  # redis-py's asyncio StreamReader for this connection
    if reader is None:
        raise ConnectionError("connection closed")
    line = await reader.readline()
    if not line:
        raise ConnectionError("connection closed while waiting")
    kind, rest = line[:1], line[1:].strip()
    if kind == b"-":
        error = rest.decode(errors="replace")
        if error.startswith(_CLUSTER_MOVING):
            raise RedisConnectionError(f"cluster: {error}")
        if error.startswith("READONLY"):  # a demoted master; the next wait finds the new one
            raise ReadOnlyError(error)
        raise ResponseError(error)
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

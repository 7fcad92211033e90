"""The consumer's idle wait: ``BLMOVE`` of one message from the main ready list into the
consumer's landing list, on a connection of its own, with the fetch script sent right behind it
(answered as soon as the BLMOVE returns).

BLMOVE answers with the element it moved. Kept, a 50 MB message on an idle queue would be 50 MB
(twice, in the parser and as bytes) in the consumer. The moved element is not needed: the next
fetch script takes it from the landing list, inside Redis, and diverts it if it is too large.
So the BLMOVE goes behind ``CLIENT REPLY SKIP``: Redis sends no reply to it at all, whether it
moved a message, timed out or failed (a failure such as MOVED or READONLY comes back from the
fetch script right behind it, which touches the same keys). Only the fetch script's reply is
read, through redis-py's public ``read_response``.

A server or ACL that refuses ``CLIENT REPLY`` (a user without ``+client|reply``, a proxy) is
found once per connection, by a probe when it is made: then the BLMOVE's reply is read whole
and dropped, and a warning says so once (messages woken from an idle wait then take their size
in the consumer's memory for a moment).

On a Redis Cluster the connection goes to the master serving the queue's slot, looked up again
after any error: a MOVED or CLUSTERDOWN reply (resharding, failover) is a transient error like a
lost connection, and the next wait asks the cluster client where the slot lives now.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from earnorm.events._broker.own_connection import OwnConnection
from earnorm.events._broker.topology import is_cluster

log = logging.getLogger("earnorm.consumer")

_CLUSTER_MOVING = (MovedError, AskError, ClusterDownError, TryAgainError)
_CLUSTER_PREFIXES = ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")
_SKIP = ("CLIENT", "REPLY", "SKIP")


class BlockingWait(OwnConnection):
    def __init__(self, redis: Redis) -> None:
        super().__init__()
        self._redis = redis
        self._skips = True  # this connection's server takes CLIENT REPLY SKIP
        self._warned = False

    def _new_connection(self, key: str) -> Any:
        if is_cluster(self._redis):
            node: Any = cast(Any, self._redis).get_node_from_key(key)
            kwargs = {**node.connection_kwargs, "socket_timeout": None}
            return node.connection_class(**kwargs)
        return cast(Any, self._redis.connection_pool).make_connection()

    async def _connect(self, key: str) -> Any:
        connection = self._new_connection(key)
        try:
            await connection.connect()
            self._skips = await _takes_reply_skip(connection)
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        if not self._skips and not self._warned:
            self._warned = True
            log.warning(
                "Redis refuses CLIENT REPLY SKIP on the consumer's idle-wait connection (an ACL "
                "without +client|reply, or a proxy): each message that wakes an idle wait is "
                "read whole and dropped, so it takes its size in this process for a moment")
        self._connection = connection
        return connection

    async def move_then(self, source: str, destination: str, timeout: float,
                        command: tuple[Any, ...]) -> Any:
        """``BLMOVE source destination``, with ``command`` sent right behind it on the same
        connection: Redis runs it as soon as the BLMOVE returns (or times out). Returns its
        reply."""
        connection = self._connection or await self._connect(source)
        blmove = ("BLMOVE", source, destination, "RIGHT", "LEFT", timeout)
        # The first reply comes once the BLMOVE returns: up to ``timeout`` on top of the
        # socket timeout (a poll interval may be longer than the socket timeout).
        socket_timeout = connection.socket_timeout
        wait = None if socket_timeout is None else socket_timeout + timeout
        try:
            if self._skips:
                await connection.send_packed_command(
                    connection.pack_commands([_SKIP, blmove, command]))
            else:
                await connection.send_packed_command(
                    connection.pack_commands([blmove, command]))
                await connection.read_response(disconnect_on_error=False, timeout=wait)
                wait = None
        except ResponseError as exc:  # the BLMOVE's, read whole: the reply behind it is not
            await self._drop(connection)
            raise _elsewhere(exc) or exc from exc
        except BaseException:
            await self._drop(connection)
            raise
        try:
            return await self._read_reply(connection, wait)
        except ResponseError as exc:
            moved = _elsewhere(exc)
            if moved is None:
                raise
            await self._drop(connection)  # the next wait asks again where the queue lives
            raise moved from exc


async def _takes_reply_skip(connection: Any) -> bool:
    """Whether the server skips replies here: ``CLIENT REPLY SKIP`` then two ``ECHO``s. Taken,
    the second ECHO's reply (or its refusal) is the only one; refused, the CLIENT's error
    comes first, then both ECHOs'."""
    await connection.send_packed_command(connection.pack_commands(
        [_SKIP, ("ECHO", b"skipped"), ("ECHO", b"answered")]))
    try:
        await connection.read_response(disconnect_on_error=False)
    except ResponseError as exc:
        if "'client" not in str(exc).lower():
            return True  # the ECHO refused, after the CLIENT REPLY was taken
        for _ in range(2):
            with contextlib.suppress(ResponseError):
                await connection.read_response(disconnect_on_error=False)
        return False
    return True


def _elsewhere(exc: ResponseError) -> Exception | None:
    """The error to retry on when ``exc`` says the queue is served elsewhere now (a cluster's
    slot moved, a demoted master), else None."""
    if isinstance(exc, ReadOnlyError):
        return exc
    if isinstance(exc, _CLUSTER_MOVING) or str(exc).startswith(_CLUSTER_PREFIXES):
        return RedisConnectionError(f"cluster: {type(exc).__name__}: {exc}")
    if str(exc).startswith("READONLY"):  # from inside the fetch script
        return ReadOnlyError(str(exc))
    return None

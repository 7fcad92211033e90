"""A connection of this process's own, outside the client's pool, used for one command (or one
pipelined pair) at a time with its replies read in order: the consumer's idle wait and the
publisher's lane.

After anything but a whole error reply (a lost connection, a timeout, a cancellation between
send and reply) its reply stream may be out of step, so it is dropped; the next use makes a
new one.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError


class OwnConnection:
    def __init__(self) -> None:
        self._connection: Any = None

    @property
    def connected(self) -> bool:
        return self._connection is not None

    async def _drop(self, connection: Any) -> None:
        """Forget ``connection`` (out of step) and close it without waiting."""
        if self._connection is connection:
            self._connection = None
        await connection.disconnect(nowait=True)

    async def _read_reply(self, connection: Any, timeout: float | None = None) -> Any:
        """The next reply (within ``timeout`` s, else the connection's socket timeout); an
        error reply is raised with the connection kept (it was read whole), anything else
        drops it."""
        try:
            return await connection.read_response(disconnect_on_error=False, timeout=timeout)
        except ResponseError:
            raise
        except BaseException:
            await self._drop(connection)
            raise

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect()

"""Redis's clock as seen from this process: due times are computed by the clock every consumer
shares (Redis's ``TIME``), not by each machine's own."""

from __future__ import annotations

import time


class ServerClock:
    """The offset between this process's clock and Redis's, updated from any reading of it.

    >>> clock = ServerClock()
    >>> clock.observe(server_ms=time.time() * 1000 + 5000, sent=time.time(), received=time.time())
    >>> 4900 < clock.now_ms() - time.time() * 1000 < 5100
    True
    """

    def __init__(self) -> None:
        self.offset_ms = 0.0

    def observe(self, server_ms: float, sent: float, received: float) -> None:
        """Record a reading of Redis's clock taken between ``sent`` and ``received`` (unix s);
        the server read it, on average, half-way between the two."""
        self.offset_ms = server_ms - (sent + received) * 500

    def now_ms(self) -> float:
        """Now, in unix ms by Redis's clock."""
        return time.time() * 1000 + self.offset_ms

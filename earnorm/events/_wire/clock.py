"""Redis's clock as seen from this process: due times are computed by the clock every consumer
shares (Redis's ``TIME``), not by each machine's own."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime


class ServerClock:
    """The offset between this process's clock and Redis's, from readings of Redis's clock.

    A reading taken between ``sent`` and ``received`` places the offset within half that round
    trip of the midpoint estimate. The clock keeps the tightest recent reading (the smallest
    round trip, as NTP does): one slow reading, such as the first on a new connection, which
    includes its TCP handshake, would otherwise shift every due time by half of it (2-3 ms
    here). A reading older than ``max_age`` seconds gives way to the next one, so a changed
    offset (a failover to another machine, a stepped clock) is followed.

    >>> clock = ServerClock()
    >>> clock.observe(server_ms=time.time() * 1000 + 5000, sent=time.time(), received=time.time())
    >>> 4900 < clock.now_ms() - time.time() * 1000 < 5100
    True
    """

    def __init__(self, max_age: float = 60.0) -> None:
        self.offset_ms = 0.0
        self.uncertainty_ms = math.inf  # half the kept reading's round trip (plus resolution)
        self.max_age = max_age
        self._kept_at = -math.inf

    def observe(self, server_ms: float, sent: float, received: float,
                resolution_ms: float = 0.0) -> None:
        """A reading of Redis's clock taken between ``sent`` and ``received`` (unix s), made
        to ``resolution_ms`` (a script's whole milliseconds: 1.0)."""
        uncertainty = ((received - sent) * 1000 + resolution_ms) / 2
        now = time.monotonic()
        if uncertainty <= self.uncertainty_ms or now - self._kept_at > self.max_age:
            self.offset_ms = server_ms + resolution_ms / 2 - (sent + received) * 500
            self.uncertainty_ms = uncertainty
            self._kept_at = now

    def now_ms(self) -> float:
        """Now, in unix ms by Redis's clock."""
        return time.time() * 1000 + self.offset_ms


def iso_ms(ms: float) -> str:
    """Unix ms as ISO-8601 UTC, to the millisecond.

    >>> iso_ms(0)
    '1970-01-01T00:00:00.000+00:00'
    """
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")

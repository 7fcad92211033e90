"""A consumer's HTTP endpoints (``/healthz``, ``/readyz``, ``/metrics``, served by
``_telemetry/http``) and the loop that refreshes its queue-wide metrics from Redis. They see
the consumer through ``Probe``, a read-only view, never its private state."""

from __future__ import annotations

import time
from typing import Protocol

import anyio

from earnorm.events._broker.broker import Broker
from earnorm.events._broker.errors import RETRYABLE_ERRORS
from earnorm.events._telemetry import http
from earnorm.events._telemetry.metrics import Metrics
from earnorm.events._wire.records import QueueStats


class Probe(Protocol):
    """What the endpoints read of a consumer (``Consumer`` is one)."""

    @property
    def started(self) -> bool: ...
    @property
    def broker(self) -> Broker | None: ...
    @property
    def last_progress(self) -> float | None:
        """``time.monotonic()`` of the fetch loop's last progress; None before it runs."""
    @property
    def ready_window(self) -> float: ...
    def loop_blocked(self) -> str | None:
        """Why a handler blocking the event loop makes the consumer not ready, or None."""
    @property
    def metrics(self) -> Metrics | None: ...
    @property
    def refresh_interval(self) -> float: ...
    async def stats(self) -> QueueStats: ...


class Endpoints:
    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    def routes(self) -> dict[str, http.Route]:
        routes: dict[str, http.Route] = {"/healthz": self.healthz, "/readyz": self.readyz}
        if self.probe.metrics is not None:
            routes["/metrics"] = self.metrics_page
        return routes

    async def healthz(self) -> http.Response:
        """Alive, and Redis answers a PING within a second."""
        broker = self.probe.broker
        try:
            with anyio.fail_after(1):
                assert broker is not None
                await broker.ping()
        except Exception as exc:
            return 503, "text/plain", f"redis unreachable: {type(exc).__name__}\n".encode()
        return 200, "text/plain", b"ok\n"

    async def readyz(self) -> http.Response:
        """Ready while the fetch loop makes progress, or there is nothing to fetch: a consumer
        that stays connected but stopped consuming (celery#8030) is not ready."""
        probe = self.probe
        broker, last_progress = probe.broker, probe.last_progress
        if not probe.started or last_progress is None or broker is None:
            return 503, "text/plain", b"not started\n"
        blocked = probe.loop_blocked()
        if blocked is not None:
            return 503, "text/plain", f"not ready: {blocked}\n".encode()
        idle = time.monotonic() - last_progress
        if idle <= probe.ready_window:
            return 200, "text/plain", b"consuming\n"
        try:
            with anyio.fail_after(1):
                waiting = await broker.ready_count()
        except Exception as exc:
            return 503, "text/plain", f"redis unreachable: {type(exc).__name__}\n".encode()
        if waiting == 0:
            return 200, "text/plain", b"idle: nothing to consume\n"
        return 503, "text/plain", (f"not consuming: no fetch for {idle:.1f}s with {waiting} "
                                   "message(s) waiting\n").encode()

    async def metrics_page(self) -> http.Response:
        metrics = self.probe.metrics
        assert metrics is not None
        body, content_type = metrics.generate()
        return 200, content_type, body

    async def refresh_metrics(self) -> None:
        """Queue-wide gauges from Redis, on the heartbeat's rhythm."""
        metrics = self.probe.metrics
        assert metrics is not None
        while True:
            try:
                stats = await self.probe.stats()
                metrics.refresh(stats, {c["id"]: f"earnorm-{c['id']}@{c['host']}"
                                        for c in stats["consumers"]})
            except RETRYABLE_ERRORS:
                pass
            await anyio.sleep(self.probe.refresh_interval)

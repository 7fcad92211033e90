"""A consumer's HTTP endpoints (``/healthz``, ``/readyz``, ``/metrics``, served by ``_http``)
and the loop that refreshes its queue-wide metrics from Redis."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio

from earnorm.events._broker.errors import RETRYABLE_ERRORS
from earnorm.events._telemetry import http

if TYPE_CHECKING:
    from earnorm.events.consumer._consumer import Consumer


class Endpoints:
    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer

    def routes(self) -> dict[str, http.Route]:
        routes: dict[str, http.Route] = {"/healthz": self.healthz, "/readyz": self.readyz}
        if self.consumer._metrics is not None:
            routes["/metrics"] = self.metrics_page
        return routes

    async def healthz(self) -> http.Response:
        """Alive, and Redis answers a PING within a second."""
        broker = self.consumer._broker
        try:
            with anyio.fail_after(1):
                assert broker is not None
                await broker.redis.ping()
        except Exception as exc:
            return 503, "text/plain", f"redis unreachable: {type(exc).__name__}\n".encode()
        return 200, "text/plain", b"ok\n"

    async def readyz(self) -> http.Response:
        """Ready while the fetch loop makes progress, or there is nothing to fetch: a consumer
        that stays connected but stopped consuming (celery#8030) is not ready."""
        consumer = self.consumer
        fetcher, broker = consumer._fetcher, consumer._broker
        if not consumer._started.is_set() or fetcher is None or broker is None:
            return 503, "text/plain", b"not started\n"
        idle = time.monotonic() - fetcher.last_progress
        if idle <= consumer.ready_window:
            return 200, "text/plain", b"consuming\n"
        try:
            with anyio.fail_after(1):
                waiting = sum([await broker.redis.llen(key) for key in broker.keys.ready])
        except Exception as exc:
            return 503, "text/plain", f"redis unreachable: {type(exc).__name__}\n".encode()
        if waiting == 0:
            return 200, "text/plain", b"idle: nothing to consume\n"
        return 503, "text/plain", (f"not consuming: no fetch for {idle:.1f}s with {waiting} "
                                   "message(s) waiting\n").encode()

    async def metrics_page(self) -> http.Response:
        metrics = self.consumer._metrics
        assert metrics is not None
        body, content_type = metrics.generate()
        return 200, content_type, body

    async def refresh_metrics(self) -> None:
        """Queue-wide gauges from Redis, on the heartbeat's rhythm."""
        consumer = self.consumer
        metrics = consumer._metrics
        assert metrics is not None
        while True:
            try:
                stats = await consumer.bus.stats()
                metrics.refresh(stats, {c["id"]: f"earnorm-{c['id']}@{c['host']}"
                                        for c in stats["consumers"]})
            except RETRYABLE_ERRORS:
                pass
            await anyio.sleep(consumer.config.heartbeat_interval)

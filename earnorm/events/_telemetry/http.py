"""The consumer's HTTP endpoints, ``/metrics``, ``/healthz`` and ``/readyz``: served on their own
port by a minimal asyncio HTTP/1.1 server (``--metrics-port``), or mounted in an application as
an ASGI app (``consumer.asgi_app()``). GET only; nothing else is exposed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("earnorm.consumer")

Response = tuple[int, str, bytes]
Route = Callable[[], Awaitable[Response]]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def asgi_app(routes: dict[str, Route]) -> Callable[..., Awaitable[None]]:
    """An ASGI app answering GET on ``routes`` (path -> handler), 404 elsewhere."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        status, content_type, body = await _answer(routes, scope["method"], scope["path"])
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


async def _answer(routes: dict[str, Route], method: str, path: str) -> Response:
    route = routes.get(path.split("?", 1)[0])
    if route is None:
        return 404, "text/plain", b"not found\n"
    if method not in ("GET", "HEAD"):
        return 405, "text/plain", b"GET only\n"
    return await route()


async def serve(routes: dict[str, Route], host: str, port: int) -> None:
    """Serve ``routes`` until cancelled."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):  # not wait_for: it can lose a cancel on 3.11
                request = await reader.readuntil(b"\r\n\r\n")
            method, path, _ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            status, content_type, body = await _answer(routes, method, path)
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\ncontent-type: "
                f"{content_type}\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
                .encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ValueError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connection, host, port)
    log.info("metrics and health on http://%s:%d (/metrics, /healthz, /readyz)", host, port)
    async with server:
        await server.serve_forever()

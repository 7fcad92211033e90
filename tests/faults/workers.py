"""Consumer subprocesses for fault tests: output to a file (a pipe nobody reads would fill and
stall the consumer), stopped by PID, and measured from ``/proc`` (CPU time, resident memory)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.processes import ROOT, stop

APP = "tests.faults.apps.recording"


class Worker:
    """One ``python -m earnorm.events.consumer`` process running the recording app."""

    def __init__(
        self, redis_url: str, queue: str, record: Path, *, concurrency: int = 20,
        heartbeat: tuple[float, float] = (0.2, 1.0), log_level: str = "WARNING",
        env: dict[str, str] | None = None, wrapper: tuple[str, ...] = (),
    ) -> None:
        self.record = record
        self.log = record.with_name(f"{record.stem}-consumer-{os.urandom(3).hex()}.log")
        interval, timeout = heartbeat
        full_env = {
            **os.environ,
            "EARNORM_REDIS_URI": redis_url,
            "EARNORM_QUEUE": queue,
            "EARNORM_TEST_RECORD": str(record),
            "EARNORM_HEARTBEAT_INTERVAL": str(interval),
            "EARNORM_HEARTBEAT_TIMEOUT": str(timeout),
            "PYTHONPATH": str(ROOT),
            **(env or {}),
        }
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [*wrapper, sys.executable, "-m", "earnorm.events.consumer", "--app", APP,
                 "--concurrency", str(concurrency), "--log-level", log_level],
                cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        stop(self.process, signal.SIGKILL)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait for the graceful stop; the exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            stop(self.process)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def cpu_seconds(self) -> float:
        """User + system CPU time so far (``/proc/<pid>/stat`` fields 14 and 15)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def peak_rss_bytes(self) -> int:
        """The most resident memory the process ever had (``VmHWM``)."""
        return rss_bytes(self.pid, "VmHWM")


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def record_size(record: Path) -> int:
    """Bytes in the record so far (it only grows): a cheap sign of progress."""
    try:
        return record.stat().st_size
    except FileNotFoundError:
        return 0


def recorded(record: Path, kind: str = "done") -> Counter[str]:
    """How many times each event id has a ``kind`` line in the record."""
    if not record.exists():
        return Counter()
    counts: Counter[str] = Counter()
    for line in record.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == kind:
            counts[parts[1]] += 1
    return counts

"""Consumer subprocesses for tests: started by PID, always stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def start_consumer(
    redis_url: str, queue: str, *, app: str = "tests.apps.counting", concurrency: int = 50,
    extra_env: dict[str, str] | None = None, args: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "EARNORM_REDIS_URI": redis_url,
        "EARNORM_QUEUE": queue,
        "PYTHONPATH": str(ROOT),
        **(extra_env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "earnorm.events.consumer", "--app", app,
         "--concurrency", str(concurrency), "--log-level", "WARNING", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextmanager
def consumer_process(redis_url: str, queue: str, **kwargs: object) -> Iterator[
    subprocess.Popen[bytes]
]:
    process = start_consumer(redis_url, queue, **kwargs)  # type: ignore[arg-type]
    try:
        yield process
    finally:
        stop(process)


@dataclass
class CliConsumer:
    """``python -m earnorm.events.consumer`` as a user runs it, and the lines it printed."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def printed(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def output(self) -> str:
        return "\n".join(self.lines)


@contextmanager
def run_cli_consumer(app_dir: Path, app: str, *args: str,
                     env: dict[str, str] | None = None) -> Iterator[CliConsumer]:
    """The CLI consumer for ``--app app`` (a module in ``app_dir``), with none of the test
    run's own Redis settings in its environment; SIGTERM when done."""
    inherited = {k: v for k, v in os.environ.items()
                 if k not in ("REDIS_URL", "EARNORM_REDIS_URI", "EARNORM_QUEUE")}
    process = subprocess.Popen(
        [sys.executable, "-m", "earnorm.events.consumer", "--app", app, *args],
        cwd=app_dir, env={**inherited, "PYTHONPATH": os.pathsep.join([str(app_dir), str(ROOT)]),
                          "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    consumer = CliConsumer(process)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            consumer.lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield consumer
    finally:
        stop(process, signal.SIGTERM)
        reader.join(timeout=10)


def counting_env(handler_sleep: float) -> dict[str, str]:
    """Environment for ``tests.apps.counting`` consumers: each handler sleeps
    ``handler_sleep`` s; fast heartbeats, so a killed one's messages come back in ~1 s."""
    return {"EARNORM_TEST_HANDLER_SLEEP": str(handler_sleep),
            "EARNORM_HEARTBEAT_INTERVAL": "0.2", "EARNORM_HEARTBEAT_TIMEOUT": "1.0"}


async def publish_counted(bus: Any, count: int, batch: int = 500) -> list[str]:
    """Publish ``count`` ``test.counted`` events in batches; their ids."""
    from earnorm import Event

    ids: list[str] = []
    for start in range(0, count, batch):
        ids += await bus.publish_batch([Event(name="test.counted", data={"i": i})
                                        for i in range(start, min(start + batch, count))])
    return ids

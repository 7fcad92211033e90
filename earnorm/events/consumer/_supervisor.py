"""``--processes N``: N consumer processes under one supervisor, for CPU-bound handlers.

Each child is a whole consumer (``python -m earnorm.events.consumer`` with the same options and
``--processes 1``): its own consumer id, heartbeat and in-flight hash, so ``stats`` shows each as
a consumer, and a child that dies is like any dead consumer: a live one recovers what it held
(the delivery limit keeps a poison event from killing children forever).

The supervisor restarts a child that dies, after a backoff that doubles with each recent death
of that slot (0.5 s up to 30 s); if one slot dies more than ``max_restarts`` times within
``window`` seconds it stops them all and exits 5. A child that exits with a usage or --app error
(2, 4) will not do better a second time: the supervisor stops the others and exits with that
code. SIGTERM/SIGINT go to every child (each stops gracefully), then it exits 0. Children get
SIGTERM if the supervisor itself dies (Linux's parent-death signal), so none is orphaned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence

log = logging.getLogger("earnorm.consumer")

KEEP_DYING = 5
_FATAL = (2, 4)  # usage/configuration error, --app could not be imported
_PR_SET_PDEATHSIG = 1


SUPERVISOR_PID_ENV = "EARNORM_SUPERVISOR_PID"


def die_with_supervisor() -> None:
    """In a child, first thing: ask Linux for SIGTERM when the supervisor dies, and exit at once
    if it already has (the child's parent is then no longer the pid it was given).

    Set after exec, not in a ``preexec_fn``: that would run Python between fork and exec in a
    process with threads (asyncio's child watchers), where a lock another thread held at the
    fork (malloc's, the dynamic loader's) stays held forever: a child hung there once, neither
    started nor killable by the parent-death signal it never got to set."""
    expected = os.environ.pop(SUPERVISOR_PID_ENV, None)
    if expected is None:
        return
    if sys.platform == "linux":
        import ctypes  # only in a supervised child

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if str(os.getppid()) != expected:
        log.warning("supervisor %s is gone: not starting", expected)
        raise SystemExit(0)


def restart_delay(recent_deaths: int) -> float:
    """
    >>> [restart_delay(n) for n in (1, 2, 3, 8, 20)]
    [0.5, 1.0, 2.0, 30.0, 30.0]
    """
    return float(min(30.0, 0.5 * 2 ** min(recent_deaths - 1, 10)))


class Supervisor:
    def __init__(self, child_args: Sequence[str], processes: int, *,
                 metrics_port: int | None = None, shutdown_timeout: float = 30.0,
                 max_restarts: int = 5, window: float = 60.0) -> None:
        self.child_args = list(child_args)
        self.processes = processes
        self.metrics_port = metrics_port
        self.shutdown_timeout = shutdown_timeout
        self.max_restarts = max_restarts
        self.window = window
        self.children: dict[int, asyncio.subprocess.Process] = {}
        self.restarts = 0
        self._stopping = asyncio.Event()

    def _command(self, slot: int) -> list[str]:
        args = [sys.executable, "-m", "earnorm.events.consumer", *self.child_args,
                "--processes", "1"]
        if self.metrics_port is not None:  # one port each: P, P+1, ...
            args += ["--metrics-port", str(self.metrics_port + slot)]
        return args

    async def _spawn(self, slot: int) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            *self._command(slot), env={**os.environ, SUPERVISOR_PID_ENV: str(os.getpid())})
        self.children[slot] = process
        return process

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        log.info("supervising %d consumer processes", self.processes)
        results = await asyncio.gather(*(self._keep(slot) for slot in range(self.processes)))
        await self._stop_children()
        failures = [code for code in results if code]
        return failures[0] if failures else 0

    async def _keep(self, slot: int) -> int:
        """Keep slot ``slot`` running until stopping; its exit code for the supervisor."""
        deaths: deque[float] = deque()
        while not self._stopping.is_set():
            process = await self._spawn(slot)
            log.info("consumer process %d started (pid %d)", slot, process.pid)
            waiter = asyncio.ensure_future(process.wait())
            stopping = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({waiter, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not waiter.done():
                waiter.cancel()
                return 0
            code = waiter.result()
            if self._stopping.is_set():
                return 0
            if code in _FATAL:
                log.error("consumer process %d exited with %d (configuration or --app): "
                          "stopping all", slot, code)
                self.stop()
                return code
            now = time.monotonic()
            deaths.append(now)
            while deaths and deaths[0] < now - self.window:
                deaths.popleft()
            if len(deaths) > self.max_restarts:
                log.error("consumer process %d died %d times in %.0f s: stopping all", slot,
                          len(deaths), self.window)
                self.stop()
                return KEEP_DYING
            delay = restart_delay(len(deaths))
            log.warning("consumer process %d (pid %d) exited with %s; restarting in %.1f s",
                        slot, process.pid, _describe(code), delay)
            self.restarts += 1
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
                return 0
            except TimeoutError:
                pass
        return 0

    async def _stop_children(self) -> None:
        live = [p for p in self.children.values() if p.returncode is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if not live:
            return
        await asyncio.wait([asyncio.ensure_future(p.wait()) for p in live],
                           timeout=self.shutdown_timeout + 20)
        for process in live:
            if process.returncode is None:
                log.warning("consumer process pid %d did not stop: killing it", process.pid)
                process.kill()
                await process.wait()


def _describe(code: int) -> str:
    """
    >>> _describe(-9), _describe(1)
    ('signal SIGKILL', 'code 1')
    """
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"

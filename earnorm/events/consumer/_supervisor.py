"""``--processes N``: N consumer processes under one supervisor, for CPU-bound handlers.

Each child is a whole consumer (``python -m earnorm.events.consumer`` with the same options and
``--processes 1``): its own consumer id, heartbeat and in-flight hash, so ``stats`` shows each as
a consumer, and a child that dies is like any dead consumer: a live one recovers what it held
(the delivery limit keeps a poison event from killing children forever).

A child that retires (``--max-tasks-per-child``, ``--max-memory-per-child``: it fetched no more,
finished what it had and exited ``RETIRED``) is replaced at once. The supervisor restarts a
child that dies, after a backoff that doubles with each recent death
of that slot (0.5 s up to 30 s); if one slot dies more than ``max_restarts`` times within
``window`` seconds it stops them all and exits 5. A child that exits with a usage or --app error
(2, 4) will not do better a second time: the supervisor stops the others and exits with that
code. SIGTERM/SIGINT go to every child (each stops gracefully), then it exits 0. Children get
SIGTERM if the supervisor itself dies (Linux's parent-death signal), so none is orphaned.

Each child has a pipe to the supervisor (``ChildLine``), on which its loop watch
(``_loop_watch``) ticks while its event loop runs. A child whose handler blocks the loop past
its hard limit asks to be replaced; one that says nothing for its block limit (a block holding
the GIL, a stopped process) is replaced too. Replaced means SIGKILL, then the restart above:
its messages are recovered like any dead consumer's.
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
from dataclasses import dataclass, field

from earnorm.events.consumer._loop_watch import KILL, LIMIT, STOPPED, TICK, WATCH_FD_ENV

log = logging.getLogger("earnorm.consumer")

KEEP_DYING = 5
# A child's code for "retired past --max-tasks-per-child / --max-memory-per-child": replaced at
# once, not counted as a death.
RETIRED = 6
_FATAL = (2, 4)  # usage/configuration error, --app could not be imported
_PR_SET_PDEATHSIG = 1


SUPERVISOR_PID_ENV = "EARNORM_SUPERVISOR_PID"


def die_with_supervisor() -> bool:
    """In a child, first thing: ask Linux for SIGTERM when the supervisor dies, and exit at once
    if it already has (the child's parent is then no longer the pid it was given).

    Set after exec, not in a ``preexec_fn``: that would run Python between fork and exec in a
    process with threads (asyncio's child watchers), where a lock another thread held at the
    fork (malloc's, the dynamic loader's) stays held forever: a child hung there once, neither
    started nor killable by the parent-death signal it never got to set."""
    expected = os.environ.pop(SUPERVISOR_PID_ENV, None)
    if expected is None:
        return False
    if sys.platform == "linux":
        import ctypes  # only in a supervised child

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if str(os.getppid()) != expected:
        log.warning("supervisor %s is gone: not starting", expected)
        raise SystemExit(0)
    return True


def restart_delay(recent_deaths: int) -> float:
    """
    >>> [restart_delay(n) for n in (1, 2, 3, 8, 20)]
    [0.5, 1.0, 2.0, 30.0, 30.0]
    """
    return float(min(30.0, 0.5 * 2 ** min(recent_deaths - 1, 10)))


@dataclass
class ChildLine:
    r"""What a child's loop watch says on its pipe: ticks while its loop runs, its block
    limit (which arms the silence check), a request to be replaced, that it stopped watching.

    >>> line = ChildLine(fd=-1)
    >>> line.feed(b"L2.5\n\x00\x00"); line.limit, line.kill
    (2.5, False)
    >>> line.feed(b"\x00K"); line.kill
    False
    >>> line.feed(b"\n"); line.kill
    True
    """

    fd: int
    limit: float | None = None
    kill: bool = False
    last: float = field(default_factory=time.monotonic)
    _buffer: bytes = b""

    def feed(self, data: bytes) -> None:
        self.last = time.monotonic()
        buffer = self._buffer + data.replace(TICK, b"")
        *lines, self._buffer = buffer.split(b"\n")
        for line in lines:
            if line == KILL:
                self.kill = True
            elif line == STOPPED:
                self.limit = None
            elif line.startswith(LIMIT):
                with contextlib.suppress(ValueError):
                    self.limit = float(line[len(LIMIT):])

    def silent_for(self) -> float:
        return time.monotonic() - self.last


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
        self.retired = 0  # children replaced because they retired
        self._stopping = asyncio.Event()

    def _command(self, slot: int) -> list[str]:
        args = [sys.executable, "-m", "earnorm.events.consumer", *self.child_args,
                "--processes", "1"]
        if self.metrics_port is not None:  # one port each: P, P+1, ...
            args += ["--metrics-port", str(self.metrics_port + slot)]
        return args

    async def _spawn(self, slot: int) -> tuple[asyncio.subprocess.Process, ChildLine]:
        read, write = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command(slot), pass_fds=(write,),
                env={**os.environ, SUPERVISOR_PID_ENV: str(os.getpid()),
                     WATCH_FD_ENV: str(write)})
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        self.children[slot] = process
        line = ChildLine(read)
        os.set_blocking(read, False)
        asyncio.get_running_loop().add_reader(read, self._hear, line)
        return process, line

    @staticmethod
    def _hear(line: ChildLine) -> None:
        try:
            data = os.read(line.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            line.feed(data)
        else:  # the child closed it: exited
            Supervisor._hang_up(line)

    @staticmethod
    def _hang_up(line: ChildLine) -> None:
        if line.fd >= 0:
            asyncio.get_running_loop().remove_reader(line.fd)
            os.close(line.fd)
            line.fd = -1
        line.limit = None

    async def _replace_if_blocked(self, slot: int, process: asyncio.subprocess.Process,
                                  line: ChildLine) -> None:
        """Kill the child when its loop watch asks, or when its loop has said nothing for
        its block limit (plus a second of grace)."""
        while process.returncode is None:
            await asyncio.sleep(0.1)
            if self._stopping.is_set():
                return
            limit = line.limit
            if line.kill:
                log.error("consumer process %d (pid %d): a handler blocks its event loop past "
                          "its limit: replacing it", slot, process.pid)
            elif limit is not None and line.silent_for() > limit + 1:
                log.error("consumer process %d (pid %d): its event loop has not run for %.1fs "
                          "(limit %gs): replacing it", slot, process.pid, line.silent_for(),
                          limit)
            else:
                continue
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            return

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
            process, line = await self._spawn(slot)
            log.info("consumer process %d started (pid %d)", slot, process.pid)
            waiter = asyncio.ensure_future(process.wait())
            stopping = asyncio.ensure_future(self._stopping.wait())
            watching = asyncio.ensure_future(self._replace_if_blocked(slot, process, line))
            try:
                await asyncio.wait({waiter, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                watching.cancel()
                self._hang_up(line)
            if not waiter.done():
                waiter.cancel()
                return 0
            code = waiter.result()
            if self._stopping.is_set():
                return 0
            if code == RETIRED:
                self.retired += 1
                log.info("consumer process %d (pid %d) retired (task or memory limit): "
                         "replacing it (%d so far)", slot, process.pid, self.retired)
                continue
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
            try:  # asyncio.timeout: wait_for on 3.11 can lose a cancellation
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
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

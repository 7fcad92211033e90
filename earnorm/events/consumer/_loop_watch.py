"""Handlers that block the event loop: seen, named, counted, and (supervised) replaced.

An async handler that calls something blocking (``time.sleep``, a sync driver, a long CPU
loop) holds the whole loop: the other handlers, the heartbeat and the endpoints all wait, and
no timeout or time limit can cancel it, since they run on the loop too. So the loop is watched
from outside it:

- a callback on the loop notes the time every ``interval`` (``_tick``);
- a thread sees that note go stale. It only reads and logs (handlers never run in it): past
  ``warn`` seconds it names the task's handler, job and the line it is at, counts the block
  and keeps the consumer not ready until ``ready_window`` after the loop runs again;
- past the handler's hard limit (the message's ``time_limit``, else the handler's
  ``time_limit`` or ``timeout``), or past ``limit`` (default: the heartbeat timeout, after
  which other consumers take its messages back anyway), a child of ``--processes`` asks its
  supervisor to replace it (``SupervisorLine``). The supervisor kills it, and its messages are
  recovered as after a crash: the delivery limit applies.

A block that holds the GIL (a C extension that never releases it) or a stopped process keeps
the thread from running too; for those the supervisor also kills a child whose loop says
nothing on its line for ``limit`` seconds. Outside a supervisor nothing is killed: an
application that embeds the consumer decides about its own process.

One watch per event loop, shared by the consumers on it (a ``ConsumerGroup``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import Any

from earnorm.events._handlers import Handler

log = logging.getLogger("earnorm.consumer")

WATCH_FD_ENV = "EARNORM_SUPERVISOR_WATCH_FD"
# What a child says to its supervisor (``_supervisor.ChildLine`` reads it): a tick byte while
# its loop runs, and lines: replace me, stopped watching, and its block limit ("L<seconds>").
TICK, KILL, STOPPED, LIMIT = b"\x00", b"K", b"S", b"L"

# (job id, event name, the message's own hard limit or None) of the job a task runs
RunningJob = tuple[str, str, float | None]


@dataclass(frozen=True)
class Block:
    """One stretch of time the loop did not run."""

    since: float  # time.monotonic() of the loop's last tick
    handler: str | None  # the registered handler it is in, if any
    job_id: str | None
    event: str | None
    at: str  # "file:line in function" where the loop thread is
    hard_limit: float | None  # the handler's hard limit, when it has one

    def describe(self) -> str:
        who = f"handler {self.handler}" if self.handler else "code outside any handler"
        job = f" on {self.event} {self.job_id}" if self.job_id else ""
        return f"{who}{job}, at {self.at}"


@dataclass(eq=False)
class Watched:
    """What one consumer lends the watch: its running jobs, its handlers, its counters."""

    running_job: Callable[[asyncio.Task[Any]], RunningJob | None]
    handlers: Callable[[], Iterable[Handler]]
    blocked: Callable[[Block], None]  # called in the watch's thread
    ended: Callable[[Block, float], None]  # the block and how long it lasted, in the thread


class SupervisorLine:
    """The pipe a ``--processes`` supervisor gave this child (``EARNORM_SUPERVISOR_WATCH_FD``);
    writes never block and are dropped once the supervisor is gone."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)

    @classmethod
    def from_env(cls) -> SupervisorLine | None:
        raw = os.environ.pop(WATCH_FD_ENV, None)
        if raw is None or not raw.isdigit():
            return None
        try:
            return cls(int(raw))
        except OSError:
            return None

    def tick(self) -> None:
        self._write(TICK)

    def say(self, line: bytes) -> None:
        self._write(line + b"\n")

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # full (the supervisor reads late) or gone
            os.write(self.fd, data)


@functools.cache
def supervisor_line() -> SupervisorLine | None:
    """This process's line to its supervisor, if it is a ``--processes`` child."""
    return SupervisorLine.from_env()


@dataclass(eq=False)
class LoopWatch:
    loop: asyncio.AbstractEventLoop
    warn: float
    limit: float
    line: SupervisorLine | None = None
    interval: float = 0.0
    _watched: list[Watched] = field(default_factory=list)
    _last: float = 0.0
    _loop_thread: int = 0
    _timer: asyncio.TimerHandle | None = None
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _current: Block | None = None
    _owner: Watched | None = None
    _asked_kill: bool = False
    _last_block: tuple[Block, float, float] | None = None  # block, seconds, ended at

    def __post_init__(self) -> None:
        self.interval = self.interval or min(0.1, self.warn / 2)

    # ------------------------------------------------------------------ on the loop

    def join(self, watched: Watched) -> None:
        self._watched.append(watched)
        if self._thread is None:
            self._loop_thread = threading.get_ident()
            self._stop.clear()
            self._tick()
            if self.line is not None:
                self.line.say(LIMIT + f"{self.limit:g}".encode())
            self._thread = threading.Thread(target=self._watch, name="earnorm-loop-watch",
                                            daemon=True)
            self._thread.start()

    def leave(self, watched: Watched) -> None:
        with contextlib.suppress(ValueError):
            self._watched.remove(watched)
        if self._watched or self._thread is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._stop.set()
        self._thread.join(timeout=2)
        self._thread = None
        if self.line is not None:
            self.line.say(STOPPED)
        _watches.pop(self.loop, None)

    def _tick(self) -> None:
        self._last = time.monotonic()
        if self.line is not None:
            self.line.tick()
        self._timer = self.loop.call_later(self.interval, self._tick)

    def not_ready(self, window: float) -> str | None:
        """Why the consumer is not ready: a block in progress, or one that ended less than
        ``window`` seconds ago; None otherwise."""
        current = self._current
        if current is not None:
            return f"event loop blocked for {time.monotonic() - current.since:.1f}s by " \
                   f"{current.describe()}"
        last = self._last_block
        if last is not None and time.monotonic() - last[2] < window:
            block, seconds, ended = last
            return (f"event loop was blocked for {seconds:.1f}s by {block.describe()}, "
                    f"{time.monotonic() - ended:.1f}s ago")
        return None

    # ------------------------------------------------------------------ in the thread

    def _watch(self) -> None:
        poll = min(0.05, self.interval)
        while not self._stop.wait(poll):
            silent = time.monotonic() - self._last
            current = self._current
            if current is None:
                if silent >= self.warn:
                    self._began()
                continue
            if self._last > current.since:
                self._ended(current, self._last - current.since)
                continue
            limit = self.limit if current.hard_limit is None else min(self.limit,
                                                                       current.hard_limit)
            if silent >= limit and not self._asked_kill:
                self._asked_kill = True
                self._past_limit(current, silent, limit)

    def _began(self) -> None:
        block, owner = self._identify()
        self._current, self._owner, self._asked_kill = block, owner, False
        log.warning("event loop blocked for %.1fs by %s: every other handler, the heartbeat "
                    "and the endpoints wait (a blocking call in an async handler?)",
                    time.monotonic() - block.since, block.describe())
        if owner is not None:
            owner.blocked(block)

    def _ended(self, block: Block, seconds: float) -> None:
        self._last_block = (block, seconds, self._last)
        self._current = None
        log.warning("event loop ran again after %.1fs blocked by %s", seconds,
                    block.describe())
        if self._owner is not None:
            self._owner.ended(block, seconds)
        self._owner = None

    def _past_limit(self, block: Block, silent: float, limit: float) -> None:
        if self.line is None:
            log.error("event loop blocked for %.1fs by %s, past its limit of %gs; it cannot "
                      "be cancelled: run the consumer under --processes to have the process "
                      "replaced", silent, block.describe(), limit)
            return
        log.error("event loop blocked for %.1fs by %s, past its limit of %gs: asking the "
                  "supervisor to replace this process (its messages are recovered)",
                  silent, block.describe(), limit)
        self.line.say(KILL)

    def _identify(self) -> tuple[Block, Watched | None]:
        since = self._last
        task = asyncio.current_task(self.loop) if self.loop.is_running() else None
        owner: Watched | None = None
        job: RunningJob | None = None
        codes: dict[CodeType, Handler] = {}
        for watched in list(self._watched):
            for registered in watched.handlers():
                code = getattr(registered.func, "__code__", None)
                if isinstance(code, CodeType):
                    codes[code] = registered
            if task is not None and job is None:
                job = watched.running_job(task)
                if job is not None:
                    owner = watched
        frame = _frame_of(self._loop_thread)
        at, handler = _where(frame, codes)
        hard = None
        if handler is not None:
            hard = (job[2] if job is not None and job[2] is not None
                    else handler.time_limit or handler.timeout)
        block = Block(since, handler.name if handler else None,
                      job[0] if job else None, job[1] if job else None, at, hard)
        return block, owner or (self._watched[0] if self._watched else None)


def _frame_of(thread_id: int) -> FrameType | None:
    """The frame the loop's thread is executing (``sys._current_frames``, documented for
    debuggers and watchdogs like this one; absent on some Pythons)."""
    frames = getattr(sys, "_current_frames", None)
    return None if frames is None else frames().get(thread_id)


def _where(frame: FrameType | None,
           codes: dict[CodeType, Handler]) -> tuple[str, Handler | None]:
    """Where the loop thread is ("file:line in function"), and the handler whose frame is on
    its stack, innermost first."""
    if frame is None:
        return "an unknown line", None
    at = f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
    walk: FrameType | None = frame
    while walk is not None:
        found = codes.get(walk.f_code)
        if found is not None:
            return at, found
        walk = walk.f_back
    return at, None


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWatch] = \
    weakref.WeakKeyDictionary()


def watch_loop(warn: float, limit: float) -> LoopWatch:
    """The running loop's watch, made by its first consumer (whose settings it keeps)."""
    loop = asyncio.get_running_loop()
    watch = _watches.get(loop)
    if watch is None:
        watch = _watches[loop] = LoopWatch(loop, warn, limit, supervisor_line())
    return watch

"""Limits after which a consumer retires (``max_tasks``, ``max_memory_mb``), for ``--processes``
children that the supervisor replaces (``--max-tasks-per-child``, ``--max-memory-per-child``).

A retiring consumer fetches nothing more, runs what it fetched and exits; nothing goes back to
the queue or to recovery. The task limit is exact: the fetcher never asks for more than is left
of it. The memory limit is read from the process's resident set once a second."""

from __future__ import annotations

import logging
import os
import resource
import sys
from collections.abc import Callable

import anyio

from earnorm._errors import ConfigError

log = logging.getLogger("earnorm.consumer")

CHECK_EVERY_S = 1.0
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def check_limits(max_tasks: int | None, max_memory_mb: float | None) -> None:
    if max_tasks is not None and (isinstance(max_tasks, bool) or not isinstance(max_tasks, int)
                                  or max_tasks < 1):
        raise ConfigError(f"max_tasks must be a positive integer or None, got {max_tasks!r}")
    if max_memory_mb is not None and (isinstance(max_memory_mb, bool) or not isinstance(
            max_memory_mb, (int, float)) or not max_memory_mb > 0):
        raise ConfigError(f"max_memory_mb must be a positive number of MB or None, got "
                          f"{max_memory_mb!r}")


def rss_bytes() -> int:
    """This process's resident set now (Linux), else its peak (``getrusage``)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def check_memory_at_start(limit_mb: float) -> None:
    """``ConfigError`` for a limit the idle process is already over: it would retire before
    running anything, and its replacement too, forever."""
    rss = rss_bytes()
    if rss > limit_mb * 1024 * 1024:
        raise ConfigError(f"max_memory_mb={limit_mb:g} is below this consumer's resident memory "
                          f"at start ({rss / 1048576:.1f} MB): it would retire at once")


async def watch_memory(limit_mb: float, retire: Callable[[], None]) -> None:
    """Call ``retire`` once the resident set exceeds ``limit_mb``, then return."""
    limit = int(limit_mb * 1024 * 1024)
    while True:  # polled: no event says the resident set grew
        rss = rss_bytes()
        if rss > limit:
            break
        await anyio.sleep(CHECK_EVERY_S)
    log.warning("resident memory %.1f MB is over max_memory_mb=%g: fetching no more, "
                "retiring once the running handlers finish", rss / 1048576, limit_mb)
    retire()

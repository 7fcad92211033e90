"""An app for fault-test consumer subprocesses: appends each handled event id to a file.

The record does not go through Redis, so it is written even while Redis is down, and a line
that ``write()`` returned survives a SIGKILL of the process (it is in the kernel's page cache).

- ``EARNORM_TEST_RECORD``: the file; one ``done <event id>`` line per completed handler call.
- ``EARNORM_TEST_RECORD_STARTS=1``: also a ``start <event id> <pid>`` line when a call begins.
- ``EARNORM_TEST_HANDLER_SLEEP``: seconds each call awaits before it completes (a "hung" handler
  when long: the loop stays free, so heartbeats go on).
- ``fault.limited`` events (rate limit ``EARNORM_TEST_RATE_LIMIT``, default 20/s, across the
  fleet): a ``ran <event id> <unix time> <pid>`` line each.
- ``fault.keyed`` events (``concurrency_key="key"``, ``max_concurrent`` from
  ``EARNORM_TEST_KEY_MAX``, default 1, across the fleet): ``begin <event id> <key> <unix time>
  <pid>`` and, ``EARNORM_TEST_KEYED_SLEEP`` seconds later (default 0.02), ``end ...`` lines.
- ``fault.hog`` events: each keeps ``EARNORM_TEST_HOG_MB`` MB (default 10) for the life of the
  process (a leak), writes ``hog <event id> <pid>`` and sleeps ``EARNORM_TEST_HOG_SLEEP`` s.
- ``EARNORM_TEST_HANDLER_REDIS=1``: each call also does ``HINCRBY <queue>:touched <id> 1`` on the
  consumer's Redis first, so it fails while Redis is down (a handler that needs the same Redis).
"""

from __future__ import annotations

import os
import time

import anyio
from redis.asyncio import Redis

from earnorm import Event, event_handler

_FD = os.open(os.environ["EARNORM_TEST_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
_SLEEP = float(os.environ.get("EARNORM_TEST_HANDLER_SLEEP", "0"))
_STARTS = os.environ.get("EARNORM_TEST_RECORD_STARTS") == "1"
_PID = os.getpid()
_TOUCH = os.environ.get("EARNORM_TEST_HANDLER_REDIS") == "1"
_clients: list[Redis] = []


async def _touch(event_id: str) -> None:
    if not _clients:
        _clients.append(Redis.from_url(os.environ["EARNORM_REDIS_URI"]))
    await _clients[0].hincrby(f"{os.environ['EARNORM_QUEUE']}:touched", event_id, 1)


@event_handler("fault.recorded")
async def record(event: Event) -> None:
    if _STARTS:
        os.write(_FD, f"start {event.id} {_PID}\n".encode())
    if _SLEEP:
        await anyio.sleep(_SLEEP)
    if _TOUCH:
        await _touch(event.id)
    os.write(_FD, f"done {event.id}\n".encode())


@event_handler("fault.limited", rate_limit=os.environ.get("EARNORM_TEST_RATE_LIMIT", "20/s"))
async def limited(event: Event) -> None:
    os.write(_FD, f"ran {event.id} {time.time():.6f} {_PID}\n".encode())


_KEYED_SLEEP = float(os.environ.get("EARNORM_TEST_KEYED_SLEEP", "0.02"))


@event_handler("fault.keyed", concurrency_key="key",
               max_concurrent=int(os.environ.get("EARNORM_TEST_KEY_MAX", "1")))
async def keyed(event: Event) -> None:
    key = event.data["key"]
    os.write(_FD, f"begin {event.id} {key} {time.time():.6f} {_PID}\n".encode())
    await anyio.sleep(_KEYED_SLEEP)
    os.write(_FD, f"end {event.id} {key} {time.time():.6f} {_PID}\n".encode())


@event_handler("soak.tick")
async def tick(event: Event) -> None:
    """Does nothing: the soak test measures the consumer, not the handler."""


@event_handler("fault.poison")
async def poison(event: Event) -> None:
    """Kills its own process (as a segfault or the OOM killer would), after saying so."""
    os.write(_FD, f"start {event.id} {_PID}\n".encode())
    os._exit(70)


_HOARD: list[bytearray] = []


@event_handler("fault.hog")
async def hog(event: Event) -> None:
    """Leaks memory, as a handler with a growing cache would."""
    _HOARD.append(bytearray(os.urandom(1024)) * (int(os.environ.get("EARNORM_TEST_HOG_MB", "10"))
                                                 * 1024))
    os.write(_FD, f"hog {event.id} {_PID}\n".encode())
    await anyio.sleep(float(os.environ.get("EARNORM_TEST_HOG_SLEEP", "0.2")))

"""Periodic events: ``@periodic_event("report.daily", cron="0 7 * * *", tz="Europe/Paris")``.

A schedule is a name, when it fires (a cron expression in a time zone, read by croniter, or an
interval ``every=`` seconds aligned to the unix epoch), the data of its events, and what to do
with ticks missed while no consumer ran (``missed="skip"`` or ``"catch_up"``). Every consumer
runs the schedules it was given; Redis decides which consumer fires each tick (see
``consumer/_scheduler.py``), so there is no beat process.

This module is pure time arithmetic: which tick is the latest at a moment, how many ticks fall
between two, when the next one is. Times are unix milliseconds.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar, cast

from earnorm._errors import ConfigError
from earnorm.events._handlers import HandlerRegistry, default_registry
from earnorm.events._wire.event import validate_event_name

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
Missed = Literal["skip", "catch_up"]
_NAMESPACE = uuid.UUID("5a0c6a2e-2f43-4f0a-9f53-5c3d6c0e7d11")
_MAX_COUNT = 100_000  # missed ticks counted one by one at most (cron); more is "at least"


@dataclass(frozen=True)
class Schedule:
    """When ``name`` fires. Give ``cron`` (with ``tz``, default UTC) or ``every`` (seconds or a
    timedelta). A tick fires if a consumer reaches it within ``grace`` seconds (default: a tenth
    of the interval, between 1 s and 5 min); ticks missed while no consumer ran are dropped
    (``missed="skip"``) or fired as one catch-up event for the whole window
    (``missed="catch_up"``)."""

    name: str
    cron: str | None = None
    every: float | timedelta | None = None  # stored as seconds
    tz: str = "UTC"
    data: Mapping[str, Any] = field(default_factory=dict)
    missed: Missed = "skip"
    grace: float | None = None
    priority: int = 0

    def __post_init__(self) -> None:
        validate_event_name(self.name)
        if (self.cron is None) == (self.every is None):
            raise ConfigError(f"schedule {self.name!r}: give exactly one of cron= or every=")
        if self.every is not None:
            every: Any = self.every  # a timedelta is accepted too
            if isinstance(every, timedelta):
                every = every.total_seconds()
            if isinstance(every, bool) or not isinstance(every, (int, float)) or every < 0.01:
                raise ConfigError(f"schedule {self.name!r}: every= must be >= 0.01 s, got "
                                  f"{self.every!r}")
            object.__setattr__(self, "every", float(every))
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # only where schedules are made

        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"schedule {self.name!r}: unknown time zone {self.tz!r}") from None
        if self.cron is not None and not _croniter_class().is_valid(self.cron):
            raise ConfigError(f"schedule {self.name!r}: invalid cron expression {self.cron!r}")
        if self.missed not in ("skip", "catch_up"):
            raise ConfigError(f"schedule {self.name!r}: missed= must be 'skip' or 'catch_up', "
                              f"got {self.missed!r}")
        if self.grace is not None and not (isinstance(self.grace, (int, float))
                                           and self.grace > 0):
            raise ConfigError(f"schedule {self.name!r}: grace= must be a positive number")

    # ------------------------------------------------------------------ time arithmetic

    @property
    def _every_s(self) -> float | None:
        return None if self.every is None else float(cast(float, self.every))

    @property
    def _step_ms(self) -> int:
        """The interval in whole milliseconds: ticks are integers, so that every consumer
        computes the same ones and the stored last tick compares equal."""
        return max(1, round((self._every_s or 0) * 1000))

    @property
    def interval_ms(self) -> float:
        """The nominal interval (for cron: the gap after the next tick from now)."""
        if self._every_s is not None:
            return float(self._step_ms)
        start = self.next_after(_now_ms())
        return self.next_after(start) - start

    @property
    def grace_ms(self) -> float:
        if self.grace is not None:
            return self.grace * 1000
        return min(max(self.interval_ms / 10, 1000.0), 300_000.0)

    def latest_at(self, now_ms: float) -> float:
        """The latest tick at or before ``now_ms``."""
        if self._every_s is not None:
            step = self._step_ms
            return float(int(now_ms) // step * step)
        it = _croniter_class()(self.cron, _at(now_ms + 1, self.tz))
        return float(round(_ms(it.get_prev(datetime))))

    def next_after(self, now_ms: float) -> float:
        """The first tick after ``now_ms``."""
        if self._every_s is not None:
            step = self._step_ms
            return float((int(now_ms) // step + 1) * step)
        it = _croniter_class()(self.cron, _at(now_ms, self.tz))
        return float(round(_ms(it.get_next(datetime))))

    def ticks_between(self, after_ms: float, before_ms: float) -> int:
        """How many ticks fall strictly between ``after_ms`` and ``before_ms``."""
        if before_ms <= after_ms:
            return 0
        if self._every_s is not None:
            return max(0, round((before_ms - after_ms) / self._step_ms) - 1)
        count = 0
        it = _croniter_class()(self.cron, _at(after_ms, self.tz))
        while count < _MAX_COUNT and _ms(it.get_next(datetime)) < before_ms:
            count += 1
        return count

    def event_id(self, queue: str, tick_ms: float, kind: str = "tick") -> str:
        """The same id for the same schedule, queue and tick, in every consumer."""
        return str(uuid.uuid5(_NAMESPACE, f"{queue}\n{self.name}\n{kind}\n{int(tick_ms)}"))

    def describe(self) -> str:
        return f"cron {self.cron!r} {self.tz}" if self.cron else f"every {self._every_s:g} s"


def _croniter_class() -> Any:
    try:
        from croniter import croniter
    except ImportError:
        raise ConfigError("cron= schedules need croniter: pip install 'earnorm[periodic]'"
                          ) from None
    return croniter


def _now_ms() -> float:
    return datetime.now(UTC).timestamp() * 1000


def _at(ms: float, tz: str) -> datetime:
    from zoneinfo import ZoneInfo

    return datetime.fromtimestamp(ms / 1000, ZoneInfo(tz))


def _ms(moment: datetime) -> float:
    return moment.timestamp() * 1000


class ScheduleRegistry:
    """Schedules by name; ``@periodic_event`` fills ``default_schedules``."""

    def __init__(self) -> None:
        self._schedules: dict[str, Schedule] = {}

    def add(self, schedule: Schedule) -> Schedule:
        if schedule.name in self._schedules:
            raise ConfigError(f"a schedule named {schedule.name!r} is already registered")
        self._schedules[schedule.name] = schedule
        return schedule

    def all(self) -> list[Schedule]:
        return list(self._schedules.values())

    def clear(self) -> None:
        self._schedules.clear()

    def __len__(self) -> int:
        return len(self._schedules)


default_schedules = ScheduleRegistry()


def periodic_event(
    name: str, *, cron: str | None = None, every: float | timedelta | None = None,
    tz: str = "UTC", data: Mapping[str, Any] | None = None, missed: Missed = "skip",
    grace: float | None = None, priority: int = 0,
    schedules: ScheduleRegistry | None = None, registry: HandlerRegistry | None = None,
    **handler_options: Any,
) -> Callable[[F], F]:
    """Fire ``name`` on a schedule, and handle it with the decorated function::

        @periodic_event("report.daily", cron="0 7 * * *", tz="Europe/Paris", data={"to": "ops"})
        async def daily_report(event: Event) -> None: ...

    The fired event is a normal event (retries, dead letters, metrics apply);
    ``handler_options`` go to the handler's registration (``retry_policy``, ``timeout``...).
    """
    seconds = every.total_seconds() if isinstance(every, timedelta) else every
    schedule = Schedule(name, cron=cron, every=seconds, tz=tz, data=dict(data or {}),
                        missed=missed, grace=grace, priority=priority)

    def decorate(func: F) -> F:
        (default_schedules if schedules is None else schedules).add(schedule)
        (default_registry if registry is None else registry).register(
            name, func, **handler_options)
        return func

    return decorate

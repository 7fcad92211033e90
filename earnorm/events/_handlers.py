"""Handler registry and the ``@event_handler`` / ``@model_event_handler`` decorators."""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from earnorm._config import RetryPolicy
from earnorm._errors import ConfigError
from earnorm._rate import parse_rate
from earnorm.events._concurrency import KeyLimit
from earnorm.events._wire.event import Event

HandlerFunc = Callable[[Event], Awaitable[Any]]
BatchHandlerFunc = Callable[[list[Event]], Awaitable[Any]]
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_PATTERN_RE = re.compile(r"^([a-z0-9_]+|\*|#)(\.([a-z0-9_]+|\*|#))*$")


@dataclass(frozen=True, slots=True)
class Handler:
    """A registered handler and its options."""

    pattern: str
    func: Callable[[Any], Awaitable[Any]]  # HandlerFunc, or BatchHandlerFunc with batch_size
    name: str
    retry_policy: RetryPolicy | None = None
    timeout: float | None = None
    retry_on: tuple[type[BaseException], ...] = ()
    no_retry_on: tuple[type[BaseException], ...] = ()
    # The user's own labels for the handler (``metadata={"team": "billing"}``): never read by
    # EarnORM. Any other keyword a decorator does not know is refused (a typo, or an option
    # from another task queue, would otherwise be accepted and do nothing).
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # With batch_size the handler receives a list of up to batch_size events, flushed when
    # full or batch_timeout seconds after its first event arrived.
    batch_size: int | None = None
    batch_timeout: float = 1.0
    # Skip an event id this handler already handled successfully within idempotency_ttl s.
    idempotent: bool = False
    idempotency_ttl: float = 86400.0
    # Celery's time limits: SoftTimeLimitExceeded raised inside the handler after
    # soft_time_limit s; cancelled (TimeLimitExceeded) after time_limit s. A message's own
    # ``timelimit`` header (apply_async(soft_time_limit=, time_limit=)) wins.
    soft_time_limit: float | None = None
    time_limit: float | None = None
    # Events per second for this handler's event names across every consumer of the queue
    # (Celery's syntax: "10/s", "100/m", "1000/h"); over it, an event waits in Redis.
    rate_limit: float | None = None
    # At most ``max`` of this handler's events with one key (``concurrency_key=``) run at once
    # across every consumer of the queue (``max_concurrent=``); the others wait in Redis.
    key_limit: KeyLimit | None = None


def _known_options() -> list[str]:
    parameters = inspect.signature(HandlerRegistry.register).parameters.values()
    return sorted(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _unknown_options(pattern: str, unknown: Mapping[str, Any]) -> str:
    """The error for handler options nobody reads, naming the known ones (and the likeliest
    meant, for a typo)."""
    import difflib  # only when an option is wrong

    known = _known_options()
    named = []
    for option in sorted(unknown):
        close = difflib.get_close_matches(option, known, n=1)
        named.append(f"{option} (did you mean {close[0]}?)" if close else option)
    return (f"unknown handler option(s) for {pattern!r}: {', '.join(named)}; known: "
            f"{', '.join(known)} (metadata={{...}} carries labels of your own)")


def _check_pattern(pattern: str) -> bool:
    """Validate ``pattern``; True if it has wildcards."""
    if not isinstance(pattern, str) or not _PATTERN_RE.fullmatch(pattern):
        raise ConfigError(
            f"invalid handler pattern {pattern!r}: lowercase dot-separated words, "
            "'*' for one word or '#' for any number of words (e.g. 'user.*', 'order.#')"
        )
    return "*" in pattern or "#" in pattern


def _matches(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    """AMQP topic rules: ``*`` is exactly one word, ``#`` is zero or more words."""
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_matches(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head in ("*", words[0])) and _matches(rest, words[1:])


class HandlerRegistry:
    """Maps event names to handlers. Lookups are cached; registering clears the cache.

    >>> registry = HandlerRegistry()
    >>> async def on_user(event): ...
    >>> _ = registry.register("user.*", on_user)
    >>> [h.name for h in registry.handlers_for("user.created")][0].endswith("on_user")
    True
    """

    def __init__(self) -> None:
        self._exact: dict[str, list[Handler]] = {}
        self._wild: list[tuple[tuple[str, ...], Handler]] = []
        self._cache: dict[str, tuple[Handler, ...]] = {}

    def register(
        self,
        pattern: str,
        func: HandlerFunc | BatchHandlerFunc,
        *,
        retry_policy: RetryPolicy | dict[str, Any] | None = None,
        timeout: float | None = None,
        retry_on: tuple[type[BaseException], ...] = (),
        no_retry_on: tuple[type[BaseException], ...] = (),
        name: str | None = None,
        batch_size: int | None = None,
        batch_timeout: float = 1.0,
        idempotent: bool = False,
        idempotency_ttl: float = 86400.0,
        metadata: Mapping[str, Any] | None = None,
        soft_time_limit: float | None = None,
        time_limit: float | None = None,
        rate_limit: str | float | None = None,
        concurrency_key: str | Callable[[Event], Any] | None = None,
        max_concurrent: int | None = None,
        **unknown: Any,
    ) -> Handler:
        if unknown:
            raise ConfigError(_unknown_options(pattern, unknown))
        key_limit = KeyLimit.parse(concurrency_key, max_concurrent, pattern)
        if key_limit is not None and batch_size is not None:
            raise ConfigError(f"concurrency_key for {pattern!r} is for handlers of single "
                              "events, not batches")
        for limit_name, limit in (("soft_time_limit", soft_time_limit),
                                  ("time_limit", time_limit)):
            if limit is not None and (isinstance(limit, bool) or not isinstance(
                    limit, (int, float)) or not limit > 0):
                raise ConfigError(f"{limit_name} must be a positive number, got {limit!r}")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ConfigError(f"metadata must be a dict, got {type(metadata).__name__}")
        if not inspect.iscoroutinefunction(func):
            raise ConfigError(
                f"handler {getattr(func, '__qualname__', func)!r} for {pattern!r} must be an "
                "'async def' function: handlers run natively on the event loop"
            )
        if timeout is not None and (isinstance(timeout, bool) or timeout <= 0):
            raise ConfigError(f"timeout must be a positive number, got {timeout!r}")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if (
            isinstance(batch_timeout, bool) or not isinstance(batch_timeout, (int, float))
            or not batch_timeout > 0
        ):
            raise ConfigError(f"batch_timeout must be a positive number, got {batch_timeout!r}")
        for option, value in (("retry_on", retry_on), ("no_retry_on", no_retry_on)):
            if not isinstance(value, tuple) or not all(
                isinstance(t, type) and issubclass(t, BaseException) for t in value
            ):
                raise ConfigError(f"{option} must be a tuple of exception classes, got {value!r}")
        if not isinstance(idempotent, bool):
            raise ConfigError(f"idempotent must be True or False, got {idempotent!r}")
        if idempotent and batch_size is not None:
            raise ConfigError("idempotent=True is for handlers of single events, not batches")
        if isinstance(idempotency_ttl, bool) or not isinstance(idempotency_ttl, (int, float)) \
                or not idempotency_ttl > 0:
            raise ConfigError(
                f"idempotency_ttl must be a positive number, got {idempotency_ttl!r}")
        wild = _check_pattern(pattern)
        policy = None if retry_policy is None else RetryPolicy.from_dict(retry_policy)
        handler = Handler(
            pattern=pattern,
            func=func,
            name=name or f"{func.__module__}.{func.__qualname__}",
            retry_policy=policy,
            timeout=timeout,
            retry_on=tuple(retry_on),
            no_retry_on=tuple(no_retry_on),
            metadata=dict(metadata or {}),
            batch_size=batch_size,
            batch_timeout=float(batch_timeout),
            idempotent=idempotent,
            idempotency_ttl=float(idempotency_ttl),
            soft_time_limit=None if soft_time_limit is None else float(soft_time_limit),
            time_limit=None if time_limit is None else float(time_limit),
            rate_limit=None if rate_limit is None else parse_rate(rate_limit, "rate_limit"),
            key_limit=key_limit,
        )
        if any(h.name == handler.name for h in self.all()):
            raise ConfigError(f"a handler named {handler.name!r} is already registered")
        if wild:
            self._wild.append((tuple(pattern.split(".")), handler))
        else:
            self._exact.setdefault(pattern, []).append(handler)
        self._cache.clear()
        return handler

    def handlers_for(self, event_name: str) -> tuple[Handler, ...]:
        found = self._cache.get(event_name)
        if found is None:
            matches = list(self._exact.get(event_name, ()))
            words = tuple(event_name.split("."))
            matches += [h for pattern, h in self._wild if _matches(pattern, words)]
            found = self._cache[event_name] = tuple(matches)
        return found

    def all(self) -> list[Handler]:
        exact = [h for handlers in self._exact.values() for h in handlers]
        return exact + [h for _, h in self._wild]

    def clear(self) -> None:
        self._exact.clear()
        self._wild.clear()
        self._cache.clear()

    def __len__(self) -> int:
        return len(self.all())


default_registry = HandlerRegistry()


def event_handler(
    pattern: str, *, registry: HandlerRegistry | None = None, **options: Any
) -> Callable[[F], F]:
    """Register an async function as a handler for events matching ``pattern``.

    >>> @event_handler("user.created")
    ... async def welcome(event: Event) -> None:
    ...     print(event.data["email"])
    """

    def decorate(func: F) -> F:
        (default_registry if registry is None else registry).register(pattern, func, **options)
        return func

    return decorate


def model_event_name(model: str | type, action: str) -> str:
    """``("User", "created")`` -> ``"user.created"``; a class uses its name."""
    name = model if isinstance(model, str) else model.__name__
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
    return f"{snake}.{action.lower()}"


def model_event_handler(
    model: str | type, action: str, *, registry: HandlerRegistry | None = None, **options: Any
) -> Callable[[F], F]:
    """Subscribe to ``<model>.<action>``: ``@model_event_handler("User", "created")``."""
    return event_handler(model_event_name(model, action), registry=registry, **options)

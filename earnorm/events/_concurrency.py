"""Per-key concurrency limits as handlers declare them: ``concurrency_key=`` (a dotted path into
the event's ``data``, or a function of the event) and ``max_concurrent=`` (at most that many
handlers for one key run at once, across every consumer of the queue).

>>> limit = KeyLimit.parse("tenant.id", 2, "billing.*")
>>> limit.key_of(Event(name="billing.charged", data={"tenant": {"id": 42}}))
'tenant.id=42'
>>> KeyLimit.parse(lambda e: f"acct-{e.data['account']}", None, "x").max
1
>>> KeyLimit.parse(None, 3, "x")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
earnorm._errors.ConfigError: max_concurrent=3 for 'x' needs a concurrency_key=...
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from earnorm._errors import ConfigError
from earnorm.events._wire.event import Event

_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
# A key's length in a Redis key name (a longer one is refused, not cut: two would collide).
MAX_KEY_CHARS = 512


class NoConcurrencyKey(Exception):
    """The event has no value at the handler's ``concurrency_key`` (or its function raised)."""


@dataclass(frozen=True, slots=True)
class KeyLimit:
    """At most ``max`` handlers of events with one key run at once across the fleet."""

    spec: str | Callable[[Event], Any]
    max: int

    @classmethod
    def parse(cls, concurrency_key: Any, max_concurrent: Any, pattern: str) -> KeyLimit | None:
        """The limit a handler's options declare (None: no limit); ``ConfigError`` naming the
        option when one is invalid."""
        if concurrency_key is None:
            if max_concurrent is not None:
                raise ConfigError(f"max_concurrent={max_concurrent!r} for {pattern!r} needs a "
                                  "concurrency_key=... (a dotted path into data, or a function "
                                  "of the event)")
            return None
        if isinstance(concurrency_key, str):
            if not _PATH.fullmatch(concurrency_key):
                raise ConfigError(f"concurrency_key for {pattern!r} must be a dotted path into "
                                  f"the event's data ('tenant_id', 'account.id') or a function "
                                  f"of the event, got {concurrency_key!r}")
        elif not callable(concurrency_key) or inspect.iscoroutinefunction(concurrency_key):
            raise ConfigError(f"concurrency_key for {pattern!r} must be a dotted path or a "
                              f"plain (not async) function of the event, got "
                              f"{concurrency_key!r}")
        most = 1 if max_concurrent is None else max_concurrent
        if isinstance(most, bool) or not isinstance(most, int) or most < 1:
            raise ConfigError(f"max_concurrent for {pattern!r} must be an integer >= 1, got "
                              f"{max_concurrent!r}")
        return cls(concurrency_key, most)

    def key_of(self, event: Event) -> str:
        """The event's key: ``path=value`` for a dotted path, the function's value as text
        otherwise. ``NoConcurrencyKey`` when there is none."""
        spec = self.spec
        if isinstance(spec, str):
            value: Any = event.data
            for part in spec.split("."):
                if not isinstance(value, dict) or part not in value:
                    raise NoConcurrencyKey(f"the event's data has no {spec!r} "
                                           "(its concurrency_key)")
                value = value[part]
            key = f"{spec}={_text(value)}"
        else:
            try:
                key = _text(spec(event))
            except Exception as exc:
                raise NoConcurrencyKey(f"concurrency_key function raised {exc!r}") from exc
        if len(key) > MAX_KEY_CHARS:
            raise NoConcurrencyKey(f"concurrency key of {len(key)} characters (at most "
                                   f"{MAX_KEY_CHARS})")
        return key

    @property
    def described(self) -> str:
        """How the key is named in logs and stats."""
        spec = self.spec
        return spec if isinstance(spec, str) else getattr(spec, "__qualname__", repr(spec))


def _text(value: Any) -> str:
    if value is None or isinstance(value, (dict, list)):
        raise NoConcurrencyKey(f"concurrency key value {value!r} is not a scalar")
    return str(value).lower() if isinstance(value, bool) else str(value)

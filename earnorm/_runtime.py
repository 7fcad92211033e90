"""``init()`` / ``close()`` and the process-wide handles they set up.

``event_bus`` is a proxy: ``from earnorm import event_bus`` works even before ``init()`` and
forwards to the live bus once it exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from earnorm.config import EventConfig
from earnorm.errors import ConfigError, NotInitializedError
from earnorm.events.bus import EventBus


class _BusProxy:
    """Forwards attribute access to the bus ``init()`` created."""

    __slots__ = ("_target",)

    def __init__(self) -> None:
        self._target: EventBus | None = None

    def _bind(self, bus: EventBus | None) -> None:
        self._target = bus

    def __getattr__(self, name: str) -> Any:
        target = self._target
        if target is None:
            raise NotInitializedError(
                f"earnorm.event_bus.{name}: the event bus is not set up; "
                "call 'await earnorm.init(redis_uri=...)' first"
            )
        return getattr(target, name)

    def __bool__(self) -> bool:
        return self._target is not None

    def __repr__(self) -> str:
        return repr(self._target) if self._target else "<event_bus: not initialized>"


event_bus: Any = _BusProxy()


async def init(
    *,
    redis_uri: str | None = None,
    event_config: Mapping[str, Any] | EventConfig | None = None,
    mongo_uri: str | None = None,
    mongodb_uri: str | None = None,
    database: str | None = None,
) -> EventBus:
    """Validate the configuration, connect, and set ``earnorm.event_bus``.

    Raises ``ConfigError`` naming the bad field; ``PublishError`` if Redis is unreachable.
    """
    config = EventConfig.from_dict(event_config)
    if redis_uri is None:
        raise ConfigError("redis_uri is required (e.g. 'redis://localhost:6379/0')")
    if mongo_uri and mongodb_uri and mongo_uri != mongodb_uri:
        raise ConfigError("mongo_uri and mongodb_uri are the same setting; give one")
    await close()
    bus = await EventBus.connect(redis_uri, config)
    event_bus._bind(bus)
    return bus


async def close() -> None:
    """Release connections made by ``init()``. Safe to call twice."""
    bus: EventBus | None = event_bus._target
    event_bus._bind(None)
    if bus is not None:
        await bus.close()

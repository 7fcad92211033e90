"""``init()`` / ``close()`` and the process-wide handles they set up.

``event_bus`` and ``env`` are proxies: ``from earnorm import event_bus, env`` works even before
``init()`` and forwards to the live bus / ``Environment`` once they exist.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

from redis.exceptions import RedisError

from earnorm._config import EventConfig
from earnorm._environment import Environment, activate, connect_mongo, current_environment
from earnorm._errors import ConfigError, NotInitializedError
from earnorm.events._bus import EventBus

log = logging.getLogger("earnorm")


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
            if name.startswith("__"):  # hasattr(), inspect, copy, pickle probe these
                raise AttributeError(name)
            raise NotInitializedError(
                f"earnorm.event_bus.{name}: the event bus is not set up; "
                "call 'await earnorm.init(redis_uri=...)' first"
            )
        return getattr(target, name)

    def __bool__(self) -> bool:
        return self._target is not None

    def __repr__(self) -> str:
        return repr(self._target) if self._target else "<event_bus: not initialized>"


# Typed as the bus it stands for, so users' type checkers see EventBus's methods.
event_bus: EventBus = cast(EventBus, _BusProxy())
_bus_proxy = cast(_BusProxy, event_bus)


class _EnvProxy:
    """Forwards attribute access to the ``Environment`` ``init()`` made current."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # hasattr(), inspect, copy, pickle probe these
            raise AttributeError(name)
        return getattr(current_environment(), name)

    def __bool__(self) -> bool:
        try:
            current_environment()
        except NotInitializedError:
            return False
        return True

    def __repr__(self) -> str:
        return repr(current_environment()) if self else "<env: not initialized>"


# Typed as the Environment it stands for (services registered at run time are ``Any``).
env: Environment = cast(Environment, _EnvProxy())


async def init(
    *,
    redis_uri: str | None = None,
    event_config: Mapping[str, Any] | EventConfig | None = None,
    mongo_uri: str | None = None,
    mongodb_uri: str | None = None,
    database: str | None = None,
    mongo_timeout: float = 5.0,
) -> EventBus:
    """Validate the configuration, connect, and set ``earnorm.event_bus`` and ``earnorm.env``.

    ``mongo_uri`` (also spelled ``mongodb_uri``) is optional; with it, MongoDB must answer a
    ping within ``mongo_timeout`` seconds. ``database`` defaults to the URI's, else "earnorm".

    Raises ``ConfigError`` naming the bad setting, ``BrokerConnectionError`` if Redis is
    unreachable, ``DatabaseError`` if MongoDB is.
    """
    config = EventConfig.from_dict(event_config)
    if redis_uri is None:
        raise ConfigError("redis_uri is required (e.g. 'redis://localhost:6379/0')")
    if mongo_uri and mongodb_uri and mongo_uri != mongodb_uri:
        raise ConfigError("mongo_uri and mongodb_uri are the same setting; give one")
    uri = mongo_uri or mongodb_uri
    if database is not None and not uri:
        raise ConfigError("database= needs mongo_uri= (the MongoDB server to use)")
    await close()
    bus = await EventBus.connect(redis_uri, config)
    try:
        client, db = await connect_mongo(uri, database, mongo_timeout) if uri else (None, None)
    except BaseException:
        await bus.close()
        raise
    await _announce(bus)
    _bus_proxy._bind(bus)
    environment = Environment(event_bus=bus, client=client, database=db)
    if db is not None and config.outbox_relay:
        # Committed outbox entries (events of earnorm.transaction()) go to Redis from here.
        from earnorm._outbox import OutboxRelay

        relay = OutboxRelay(bus, db)
        relay.start()
        bus.outbox = relay
    activate(environment)
    return bus


async def _announce(bus: EventBus) -> None:
    """Tell consumers which queue this app uses (they warn when theirs was never used while
    others were). Best effort: a full Redis, a user not allowed that key, or a cluster node of
    that key being down costs the app nothing."""
    try:
        await bus.broker.announce_app()
    except RedisError as exc:
        log.debug("could not record the app's queue: %s", exc)


async def close() -> None:
    """Release connections made by ``init()``. Safe to call twice."""
    bus: EventBus | None = _bus_proxy._target
    _bus_proxy._bind(None)
    try:
        environment = current_environment()
    except NotInitializedError:
        environment = None
    activate(None)
    if bus is not None and bus.outbox is not None:  # first: it uses both connections
        relay, bus.outbox = bus.outbox, None
        await relay.stop()
    try:
        if environment is not None:
            await environment.close()
    finally:
        if bus is not None:
            await bus.close()

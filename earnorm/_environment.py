"""``Environment``: what a model reaches through ``self._env``.

It holds the MongoDB client and database, the event bus, a small cache on the bus's Redis, the
model classes by name, and services the application registers (``env.search`` and the like).
``earnorm.init()`` creates one and makes it current; ``earnorm.env`` forwards to it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from earnorm._errors import ConfigError, DatabaseError, NotInitializedError
from earnorm.events._broker.cache import Cache

if TYPE_CHECKING:
    from pymongo import AsyncMongoClient
    from pymongo.asynchronous.database import AsyncDatabase

    from earnorm.events._bus import EventBus

_models: dict[str, type] = {}


def register_model(cls: type) -> None:
    """Called for every model class; a later class with the same name replaces the earlier."""
    _models[cls.__name__] = cls


class Environment:
    """The database, event bus, cache, models and services of one application.

    Services: ``env.register_service("search", SearchClient())`` makes ``env.search`` (and so
    ``self._env.search`` in a model) return that object.
    """

    def __init__(
        self,
        *,
        event_bus: EventBus | None = None,
        client: AsyncMongoClient[dict[str, Any]] | None = None,
        database: AsyncDatabase[dict[str, Any]] | None = None,
        cache_prefix: str | None = None,
    ) -> None:
        self._event_bus = event_bus
        self.client = client
        self._database = database
        self._services: dict[str, Any] = {}
        self._cache: Cache | None = None
        if event_bus is not None:
            prefix = cache_prefix or event_bus.broker.keys.cache_prefix
            self._cache = Cache(event_bus.redis, prefix)

    @property
    def database(self) -> AsyncDatabase[dict[str, Any]]:
        if self._database is None:
            raise NotInitializedError(
                "no MongoDB database is configured: call "
                "'await earnorm.init(mongo_uri=..., database=..., redis_uri=...)' first"
            )
        return self._database

    @property
    def event_bus(self) -> EventBus:
        if self._event_bus is None:
            raise NotInitializedError("no event bus is configured: pass redis_uri= to init()")
        return self._event_bus

    @property
    def cache(self) -> Cache:
        if self._cache is None:
            raise NotInitializedError("the cache lives on the event bus's Redis; none is set up")
        return self._cache

    @property
    def models(self) -> Mapping[str, type]:
        """Every model class defined so far, by class name."""
        return MappingProxyType(_models)

    def register_service(self, name: str, service: Any, *, replace: bool = False) -> None:
        """Make ``service`` reachable as ``env.<name>`` (``self._env.<name>`` in models).

        >>> environment = Environment()
        >>> environment.register_service("search", {"index": "users"})
        >>> environment.search
        {'index': 'users'}
        """
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise ConfigError(f"service name must be an identifier, got {name!r}")
        if hasattr(type(self), name) or name in vars(self):
            raise ConfigError(f"service name {name!r} is taken by Environment.{name}")
        if name in self._services and not replace:
            raise ConfigError(f"a service named {name!r} is already registered; pass replace=True")
        self._services[name] = service

    def __getattr__(self, name: str) -> Any:
        services = self.__dict__.get("_services", {})
        if name in services:
            return services[name]
        raise AttributeError(
            f"Environment has no attribute or service {name!r}; register one with "
            f"env.register_service({name!r}, obj)"
        )

    async def close(self) -> None:
        """Close the MongoDB client. The event bus is closed by whoever opened it."""
        client, self.client, self._database = self.client, None, None
        if client is not None:
            await client.close()

    def __repr__(self) -> str:
        db = self._database.name if self._database is not None else None
        return f"<Environment database={db!r} event_bus={self._event_bus!r}>"


_current: Environment | None = None


def current_environment() -> Environment:
    """The environment ``earnorm.init()`` set up; ``NotInitializedError`` before that."""
    if _current is None:
        raise NotInitializedError(
            "EarnORM is not initialized: call 'await earnorm.init(mongo_uri=..., "
            "database=..., redis_uri=...)' first"
        )
    return _current


def activate(env: Environment | None) -> None:
    """Make ``env`` current (``None``: none is)."""
    global _current  # noqa: PLW0603 - the one place the process-wide handle is set
    _current = env


_MONGO_USERINFO = re.compile(r"(?<=://)([^:/@]*):[^@/]*@")


def mask_mongo_uri(uri: str) -> str:
    """``mongodb://app:secret@db/x`` -> ``mongodb://app:***@db/x``."""
    return _MONGO_USERINFO.sub(r"\1:***@", uri)


async def connect_mongo(
    uri: str, database: str | None, timeout: float
) -> tuple[AsyncMongoClient[dict[str, Any]], AsyncDatabase[dict[str, Any]]]:
    """Open a client, check the server answers within ``timeout`` seconds, pick the database
    (``database``, else the URI's, else ``"earnorm"``)."""
    from pymongo import AsyncMongoClient
    from pymongo.errors import ConfigurationError, InvalidName, PyMongoError

    shown = mask_mongo_uri(uri) if isinstance(uri, str) else repr(uri)
    if not isinstance(uri, str) or not uri.startswith(("mongodb://", "mongodb+srv://")):
        raise ConfigError(f"mongo_uri must be a mongodb:// or mongodb+srv:// URI, got {shown}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"mongo_timeout must be a positive number of seconds, got {timeout!r}")
    ms = max(1, round(timeout * 1000))
    try:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, tz_aware=True
        )
    except (ConfigurationError, ValueError, TypeError) as exc:
        raise ConfigError(f"invalid mongo_uri {shown}: {exc}") from None
    try:
        db = client[database] if database else client.get_default_database("earnorm")
        await db.command("ping")
    except InvalidName as exc:
        await client.close()
        raise ConfigError(f"invalid database name {database!r}: {exc}") from None
    except PyMongoError as exc:
        await client.close()
        raise DatabaseError(
            f"cannot reach MongoDB at {shown} within {timeout}s: {type(exc).__name__}: "
            f"{str(exc).split(', Timeout:')[0]}"
        ) from exc
    return client, db

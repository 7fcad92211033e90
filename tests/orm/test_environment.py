"""``init()`` with MongoDB, ``earnorm.env``, the cache and registered services."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from redis.asyncio import Redis

import earnorm
from earnorm import BaseModel, ConfigError, DatabaseError, NotInitializedError
from earnorm._environment import Environment, current_environment
from earnorm.events._tools.embedded import free_port
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio


class Note(BaseModel):
    _collection = "notes"
    text: str


async def test_init_accepts_the_mongodb_uri_spelling(
    mongo_uri: str, database_name: str, redis_url: str, queue_name: str, redis: Redis
) -> None:
    await earnorm.init(mongodb_uri=mongo_uri, database=database_name, redis_uri=redis_url,
                       event_config={"queue_name": queue_name})
    try:
        assert earnorm.env.database.name == database_name
        assert earnorm.env.event_bus is earnorm._runtime._bus_proxy._target
        await Note(text="hi").create()
        assert await Note.count() == 1
    finally:
        await earnorm.close()
    assert not earnorm.env
    with pytest.raises(NotInitializedError, match="not initialized"):
        await Note.count()


async def test_init_refuses_a_malformed_uri(redis_url: str) -> None:
    with pytest.raises(ConfigError, match="mongo_uri must be a mongodb://"):
        await earnorm.init(mongo_uri="postgres://x", redis_uri=redis_url)
    with pytest.raises(ConfigError, match=r"invalid mongo_uri mongodb://u:\*\*\*@"):
        await earnorm.init(mongo_uri="mongodb://u:secret@h:notaport/db", redis_uri=redis_url)
    assert not earnorm.event_bus


async def test_init_refuses_two_different_uris(redis_url: str) -> None:
    with pytest.raises(ConfigError, match="same setting"):
        await earnorm.init(mongo_uri="mongodb://a", mongodb_uri="mongodb://b", redis_uri=redis_url)


async def test_unreachable_mongodb_fails_init_within_the_timeout(redis_url: str) -> None:
    started = time.monotonic()
    with pytest.raises(DatabaseError, match=r"cannot reach MongoDB at mongodb://127\.0\.0\.1"):
        await earnorm.init(mongo_uri=f"mongodb://127.0.0.1:{free_port()}/x",
                           redis_uri=redis_url, mongo_timeout=0.5)
    assert time.monotonic() - started < 5
    assert not earnorm.event_bus and not earnorm.env


async def test_redis_only_init_still_works_and_models_say_what_is_missing(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    await earnorm.init(redis_uri=redis_url, event_config={"queue_name": queue_name})
    try:
        await earnorm.env.cache.set("k", 1)
        assert await earnorm.env.cache.get("k") == 1
        with pytest.raises(NotInitializedError, match="no MongoDB database is configured"):
            await Note.count()
    finally:
        await earnorm.close()


async def test_close_closes_the_mongo_client(orm: Environment) -> None:
    client = orm.client
    assert client is not None
    await earnorm.close()
    with pytest.raises(NotInitializedError):
        current_environment()
    assert orm.client is None


async def test_models_are_registered_by_name(orm: Environment) -> None:
    assert orm.models["Note"] is Note


async def test_cache_round_trips_wire_types_and_deletes(orm: Environment) -> None:
    value = {"at": datetime(2026, 1, 2, tzinfo=UTC), "amount": Decimal("1.50"), "n": [1, "a"]}
    await orm.cache.set("user:1", value)
    assert await orm.cache.get("user:1") == value
    assert await orm.cache.delete("user:1", "user:2") == 1
    assert await orm.cache.get("user:1", "gone") == "gone"


async def test_cache_keys_live_under_the_queue_prefix(
    orm: Environment, queue_name: str, redis: Redis
) -> None:
    await orm.cache.set("user:1", "x")
    assert await redis.exists(f"{queue_name}:cache:user:1") == 1


async def test_cache_ttl_expires_values(orm: Environment) -> None:
    await orm.cache.set("short", "x", ttl=timedelta(milliseconds=100))
    assert await orm.cache.get("short") == "x"

    async def gone() -> bool:
        return await orm.cache.get("short") is None

    await wait_until(gone, timeout=5, message="cache entry expiry")
    with pytest.raises(ConfigError, match="ttl must be a positive"):
        await orm.cache.set("k", 1, ttl=0)


async def test_registered_service_is_an_attribute_of_env(orm: Environment) -> None:
    search = object()
    orm.register_service("search", search)
    assert earnorm.env.search is search
    with pytest.raises(ConfigError, match="already registered"):
        orm.register_service("search", object())
    orm.register_service("search", None, replace=True)
    assert orm.search is None
    with pytest.raises(ConfigError, match=r"taken by Environment\.cache"):
        orm.register_service("cache", object())
    with pytest.raises(AttributeError, match=r"register_service\('mail', obj\)"):
        _ = orm.mail

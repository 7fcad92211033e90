"""``earnorm.init()``: configuration errors name the field; the bus proxy works before init."""

from __future__ import annotations

from typing import Any, cast

import pytest

import earnorm
from earnorm import Event, event_bus
from earnorm._errors import ConfigError, NotInitializedError

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"queue_name": ""}, "queue_name"),
        ({"queue_name": 5}, "queue_name"),
        ({"retry_policy": {"max_retries": -1}}, "retry_policy.max_retries"),
        ({"retry_policy": {"max_retries": 1.5}}, "retry_policy.max_retries"),
        ({"retry_policy": {"interval_start": "1"}}, "retry_policy.interval_start"),
        ({"retry_policy": {"interval_step": -2}}, "retry_policy.interval_step"),
        ({"retry_policy": {"interval_max": True}}, "retry_policy.interval_max"),
        ({"retry_policy": {"max_retrys": 3}}, "max_retrys"),
        ({"retry_policy": []}, "retry_policy"),
        ({"queue": "x"}, "queue"),
        ({"serializer": "pickle"}, "serializer"),
        ({"heartbeat_interval": 5, "heartbeat_timeout": 1}, "heartbeat_timeout"),
    ],
)
async def test_invalid_event_config_names_the_field(
    redis_url: str, config: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError, match=field):
        await earnorm.init(redis_uri=redis_url, event_config=config)
    assert not event_bus


async def test_bad_redis_uri_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="redis_uri"):
        await earnorm.init(redis_uri="http://localhost:6379")


async def test_event_bus_proxy_before_init_raises_clearly() -> None:
    await earnorm.close()
    with pytest.raises(NotInitializedError, match=r"earnorm\.init"):
        await event_bus.publish(Event(name="user.created"))


async def test_init_binds_the_imported_proxy(redis_url: str, queue_name: str) -> None:
    await earnorm.init(
        redis_uri=redis_url,
        event_config={
            "queue_name": queue_name,
            "retry_policy": {"max_retries": 3, "interval_start": 0, "interval_step": 0.2,
                             "interval_max": 0.5},
        },
    )
    try:
        job_id = await event_bus.publish(Event(name="user.created", data={"id": 1}))
        assert job_id
        assert event_bus.config.retry_policy.max_retries == 3
        assert (await event_bus.stats())["ready"][0] == 1
    finally:
        await event_bus.redis.delete(queue_name)
        await earnorm.close()
    assert not event_bus


async def test_init_with_redis_unreachable_raises_a_connection_error_naming_the_url() -> None:
    from earnorm.events._tools.embedded import free_port

    port = free_port()
    with pytest.raises(earnorm.BrokerConnectionError, match=f"127.0.0.1:{port}") as raised:
        await earnorm.init(redis_uri=f"redis://:secret@127.0.0.1:{port}/0")
    assert not isinstance(raised.value, earnorm.PublishError)
    assert "secret" not in str(raised.value)
    assert not event_bus


def test_the_proxies_answer_introspection_before_init() -> None:
    """hasattr(), inspect and copy probe dunder names; they must not raise NotInitializedError."""
    import inspect

    assert not hasattr(event_bus, "__wrapped__")
    assert inspect.unwrap(cast(Any, event_bus)) is event_bus
    assert not hasattr(earnorm.env, "__wrapped__")
    with pytest.raises(NotInitializedError, match=r"earnorm\.init"):
        event_bus.publish  # noqa: B018 - a real attribute still says what to do

"""The user's spec, run: each Python block of ``tests/spec/spec.md`` with its imports and calls
as written, against a real Redis, the MongoDB-wire server and the CLI consumer
(``python -m earnorm.events.consumer --app ...``) running the spec's handler blocks.

What the spec leaves undefined is supplied here: ``is_valid_email``, ``send_welcome_email``,
``update_user_cache`` and ``log_user_login`` (which print, so the test reads the consumer's
output), the search service behind ``self._env.search``, and ``Order`` (a test double whose
``count`` answers synchronously, as the spec's ``has_active_orders`` calls it).
"""

from __future__ import annotations

import re
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from redis.asyncio import Redis

import earnorm
from earnorm import LocalRedis
from tests.helpers import wait_until
from tests.processes import CliConsumer
from tests.spec.blocks import block
from tests.spec.conftest import SPEC_QUEUE, Servers, cli_consumer, default_database

pytestmark = pytest.mark.anyio

INIT = block('mongo_uri="mongodb://localhost:27017"')
INIT_MONGODB_URI = block('mongodb_uri="mongodb://localhost:27017"')
HANDLER = block('@event_handler("user.created")')
PUBLISH = block("await event_bus.publish(")
LIFECYCLE_USER = block("class User(BaseModel):", 0)
EVENTS_USER = block("class User(BaseModel):", 1)
MODEL_HANDLERS = block('@model_event_handler("User", "created")')
CONFIG = block("event_config = {")

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")


def is_valid_email(email: str) -> bool:
    return bool(_EMAIL.fullmatch(email))


class Order:
    """The spec's ``Order``: ``Order.count(filter)`` answered from a list, synchronously."""

    orders: ClassVar[list[dict[str, Any]]] = []

    @classmethod
    def count(cls, filter: dict[str, Any]) -> int:
        return sum(all(o.get(k) == v for k, v in filter.items()) for o in cls.orders)


class Search:
    """The service behind ``self._env.search``: records what was indexed."""

    def __init__(self) -> None:
        self.indexed: list[tuple[str, Any, dict[str, Any]]] = []

    async def index_document(self, index: str, doc_id: Any, doc: dict[str, Any]) -> None:
        self.indexed.append((index, doc_id, doc))


# What the spec's model handlers call, printed so the test reads it from the CLI's output.
PRINTING_HELPERS = textwrap.dedent('''
    async def send_welcome_email(email):
        print("SPEC welcome", email, flush=True)

    async def update_user_cache(user_id, status):
        print("SPEC cache", user_id, status, flush=True)

    async def log_user_login(user_id, last_login):
        print("SPEC login", user_id, type(last_login).__name__, flush=True)
''')


def write_app(directory: Path, name: str, *sources: str) -> str:
    (directory / f"{name}.py").write_text("\n".join(sources))
    return name


async def test_init_as_the_spec_shows_with_mongo_uri_and_database(servers: Servers) -> None:
    await servers.run(INIT, {})
    bus = earnorm.event_bus
    assert bus.config.queue_name == SPEC_QUEUE
    policy = bus.config.retry_policy
    assert (policy.max_retries, policy.interval_start, policy.interval_step,
            policy.interval_max) == (3, 0, 0.2, 0.5)
    assert earnorm.env.database.name == "earnbase"


async def test_init_as_the_spec_shows_with_mongodb_uri(servers: Servers) -> None:
    await servers.run(INIT_MONGODB_URI, {})
    assert earnorm.event_bus.config.queue_name == SPEC_QUEUE
    assert earnorm.env.database.name == default_database(servers.mongo_uri)
    assert await earnorm.event_bus.stats()


async def test_the_configuration_block_is_a_valid_event_config(servers: Servers) -> None:
    config = (await servers.run(CONFIG, {}))["event_config"]
    bus = await earnorm.init(redis_uri=servers.redis_url, event_config=config)
    assert bus.config.queue_name == SPEC_QUEUE
    assert bus.config.retry_policy.interval_max == 0.5


async def test_the_handler_runs_in_the_cli_consumer_and_delay_waits_in_redis(
    servers: Servers, spec_redis: LocalRedis, tmp_path: Path
) -> None:
    app = write_app(tmp_path, "spec_handlers", HANDLER.code)
    with cli_consumer(tmp_path, app, servers.redis_url) as consumer:
        await servers.run(INIT, {})
        await servers.run(PUBLISH, {})
        await wait_until(
            lambda: consumer.printed(
                "User created: {'id': '123', 'email': 'user@example.com'}"),
            15, message=f"the spec's handler to print; the consumer said:\n{consumer.output()}")
    redis = Redis.from_url(servers.redis_url)
    try:
        delayed: Any = await redis.zrange(f"{SPEC_QUEUE}:delayed", 0, -1, withscores=True)
        clock: Any = await redis.time()
        ((member, due_ms),), (seconds, micros) = delayed, clock
    finally:
        await redis.aclose()
    assert b'"user.welcome_email"' in member
    assert 55_000 < due_ms - (seconds * 1000 + micros / 1000) <= 60_000  # delay=60


async def test_the_lifecycle_hooks_model_as_written(servers: Servers) -> None:
    await servers.run(INIT, {})
    search = Search()
    earnorm.env.register_service("search", search)
    Order.orders = []
    User = (await servers.run(LIFECYCLE_USER, {"is_valid_email": is_valid_email,
                                               "Order": Order}))["User"]

    user = User(username="ann", email="ann@example.com")
    await user.create()  # before_create: created_at, email checks; after_write: cache, index
    stored = await User.get(user.id)
    assert stored.email == "ann@example.com" and stored.created_at is not None
    assert stored.updated_at is not None  # kept by the ORM: the spec's hook never sets it
    assert search.indexed == [("users", user.id, {"username": "ann", "email": "ann@example.com",
                                                  "status": "inactive"})]

    with pytest.raises(ValueError, match="Invalid email format"):
        await User(username="bob", email="not-an-email").create()
    with pytest.raises(ValueError, match="Email already exists"):
        await User(username="ann2", email="ann@example.com").create()
    assert await User.count() == 1

    await earnorm.env.cache.set(f"user:{user.id}", {"status": "inactive"}, ttl=60)
    await user.write({"status": "active"})
    assert await earnorm.env.cache.get(f"user:{user.id}") is None  # after_write invalidated
    assert search.indexed[-1][2]["status"] == "active"

    Order.orders = [{"user_id": user.id, "status": "active"}]
    with pytest.raises(ValueError, match="Cannot delete user with active orders"):
        await user.delete()
    Order.orders = [{"user_id": user.id, "status": "shipped"}]
    await user.delete()
    assert await User.count() == 0


async def test_the_events_model_and_its_handlers_through_the_cli_consumer(
    servers: Servers, tmp_path: Path
) -> None:
    app = write_app(tmp_path, "spec_model_handlers", PRINTING_HELPERS, MODEL_HANDLERS.code)
    with cli_consumer(tmp_path, app, servers.redis_url) as consumer:
        await servers.run(INIT_MONGODB_URI, {})
        User = (await servers.run(EVENTS_USER, {}))["User"]
        user = User(username="ann", email="ann@example.com")
        await user.create()
        await user.update_status("active")
        await user.record_login()

        def said(text: str) -> Any:
            return lambda: consumer.printed(text)

        for line in ("SPEC welcome ann@example.com", f"SPEC cache {user.id} active",
                     f"SPEC login {user.id} datetime"):
            await wait_until(said(line), 15,
                             message=f"{line!r}; the consumer said:\n{consumer.output()}")
        # user.before_create / user.before_update have no handler in the spec: counted and
        # logged once each, not dead-lettered.
        await wait_until(lambda: _unhandled(consumer) >= {"user.before_create",
                                                          "user.before_update"}, 15,
                         message=f"the unhandled warnings; the consumer said:\n"
                                 f"{consumer.output()}")
        # The warning is logged as the skip is settled: wait for the counter too.
        await wait_until(lambda: _counted_unhandled(2), 15, message="two events counted")
        stats = await earnorm.event_bus.stats()
    assert await earnorm.event_bus.get_failed_jobs() == []
    assert stats["counters"]["unhandled"] == 2
    assert stats["delayed"] == 1  # user.welcome_email, delay=60
    stored = await User.get(user.id)
    assert stored.status == "active" and isinstance(stored.last_login, datetime)
    assert stored.last_login <= datetime.now(UTC)


async def _counted_unhandled(count: int) -> bool:
    return (await earnorm.event_bus.stats())["counters"]["unhandled"] == count


def _unhandled(consumer: CliConsumer) -> set[str]:
    return set(re.findall(r"no handler subscribes to '([^']+)'", consumer.output()))


async def test_failed_jobs_are_listed_retried_and_removed_as_the_spec_says(
    servers: Servers, tmp_path: Path
) -> None:
    flag = tmp_path / "gateway-up"
    app = write_app(tmp_path, "spec_failing", textwrap.dedent(f'''
        import os
        from earnorm.events import event_handler

        @event_handler("order.payment.completed")
        async def charge(event):
            if not os.path.exists({str(flag)!r}):
                raise RuntimeError("payment gateway down")
            print("SPEC charged", event.data["order_id"], flush=True)
    '''))
    with cli_consumer(tmp_path, app, servers.redis_url) as consumer:
        await servers.run(INIT, {})
        from earnorm import event_bus
        from earnorm.events import Event

        first = await event_bus.publish(Event(name="order.payment.completed",
                                              data={"order_id": 1}))
        second = await event_bus.publish(Event(name="order.payment.completed",
                                               data={"order_id": 2}))

        async def failed() -> list[str]:
            return [job["job_id"] for job in await event_bus.get_failed_jobs()]
        # The spec's policy: 3 retries 0.2 s apart at most 0.5 s, then the failed store.
        await wait_until(lambda: _same(failed(), {first, second}), 15,
                         message=f"both in the failed store; consumer:\n{consumer.output()}")
        job = next(j for j in await event_bus.get_failed_jobs() if j["job_id"] == first)
        assert (job["attempts"], job["error_type"], job["error"]) == (
            4, "RuntimeError", "payment gateway down")

        flag.touch()
        await event_bus.retry_job(first)
        await wait_until(lambda: consumer.printed("SPEC charged 1"), 15,
                         message=f"the retried job to run; consumer:\n{consumer.output()}")
        assert await failed() == [second]
        await event_bus.remove_job(second)
        assert await failed() == []
    assert not consumer.printed("SPEC charged 2")


async def _same(ids: Any, expected: set[str]) -> bool:
    return set(await ids) == expected

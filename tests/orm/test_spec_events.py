"""The spec's "Using Events in Models" ``User`` and its three ``@model_event_handler``s, end to
end: the model writes to MongoDB, events go through Redis, a real ``Consumer`` runs the
handlers. Handlers live in a private ``HandlerRegistry`` per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Optional

import orjson
import pytest
from redis.asyncio import Redis

from earnorm import Consumer, Event, HandlerRegistry, event_handler, model_event_handler
from earnorm._environment import Environment
from earnorm.base import BaseModel
from earnorm.events.decorators import after_save, before_save
from earnorm.events.utils import dispatch_model_event
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio


class User(BaseModel):
    """User model with event handling (the spec's code, unchanged)."""

    _collection = "users"

    username: str
    email: str
    status: str = "inactive"
    last_login: Optional[datetime] = None  # noqa: UP045
    created_at: datetime = datetime.utcnow()
    updated_at: datetime = datetime.utcnow()

    @before_save("user.before_create")
    async def create(self) -> None:
        self.created_at = datetime.utcnow()
        self.updated_at = datetime.utcnow()
        await super().create()
        await dispatch_model_event(self._env.event_bus, User, "created", str(self.id), self)
        await dispatch_model_event(
            self._env.event_bus, User, "welcome_email", str(self.id), self, delay=60
        )

    @before_save("user.before_update")
    async def update_status(self, new_status: str) -> None:
        old_status = self.status
        self.status = new_status
        self.updated_at = datetime.utcnow()
        await super().save()
        if old_status != new_status:
            await dispatch_model_event(
                self._env.event_bus, User, "status_changed", str(self.id), self
            )

    @after_save("user.login")
    async def record_login(self) -> None:
        self.last_login = datetime.utcnow()
        self.updated_at = datetime.utcnow()
        await super().save()


class Recorder:
    """Stands in for the spec's send_welcome_email / update_user_cache / log_user_login."""

    def __init__(self) -> None:
        self.welcome: list[str] = []
        self.cache: list[tuple[str, str]] = []
        self.logins: list[tuple[str, datetime]] = []
        self.seen: list[Event] = []


def spec_handlers(registry: HandlerRegistry, rec: Recorder) -> None:
    @model_event_handler("User", "created", registry=registry)
    async def handle_user_created(event: Event) -> None:
        user_data = event.data
        rec.welcome.append(user_data["email"])

    @model_event_handler("User", "status_changed", registry=registry)
    async def handle_user_status_changed(event: Event) -> None:
        rec.cache.append((event.data["id"], event.data["status"]))

    @model_event_handler("User", "login", registry=registry)
    async def handle_user_login(event: Event) -> None:
        rec.logins.append((event.data["id"], event.data["last_login"]))

    @event_handler("user.*", registry=registry)
    async def audit(event: Event) -> None:
        rec.seen.append(event)


class PrivateRegistry(HandlerRegistry):
    # event_handler() does `registry or default_registry`, and an empty HandlerRegistry is
    # falsy (__len__), so its first handler would land in the global registry. Until that is
    # fixed in handlers.py, a private registry must be truthy when empty.
    def __bool__(self) -> bool:
        return True


@pytest.fixture
async def running(orm: Environment) -> AsyncIterator[Recorder]:
    registry, rec = PrivateRegistry(), Recorder()
    spec_handlers(registry, rec)
    async with Consumer(bus=orm.event_bus, registry=registry, concurrency=4):
        yield rec


def names(rec: Recorder) -> set[str]:
    return {event.name for event in rec.seen}


async def test_create_publishes_before_create_created_and_a_delayed_welcome(
    orm: Environment, running: Recorder, redis: Redis, queue_name: str
) -> None:
    user = User(username="ann", email="ann@example.com")
    await user.create()
    await wait_until(lambda: running.welcome, message="user.created handler")
    assert running.welcome == ["ann@example.com"]
    await wait_until(lambda: {"user.before_create", "user.created"} <= names(running),
                     message="before_create and created events")
    before = next(e for e in running.seen if e.name == "user.before_create")
    assert before.data["id"] is None and before.data["email"] == "ann@example.com"
    created = next(e for e in running.seen if e.name == "user.created")
    assert created.data["id"] == user.id
    assert created.metadata == {"model": "User", "action": "created"}
    assert await redis.zcard(f"{queue_name}:delayed") == 1  # welcome_email, due in 60 s
    assert "user.welcome_email" not in names(running)
    assert await User.count() == 1


async def test_update_status_publishes_status_changed_only_on_a_change(
    orm: Environment, running: Recorder
) -> None:
    user = User(username="ann", email="ann@example.com")
    await user.create()
    await user.update_status("active")
    await wait_until(lambda: running.cache, message="status_changed handler")
    assert running.cache == [(user.id, "active")]
    stored = await User.get(user.id or "")
    assert stored is not None and stored.status == "active"
    await user.update_status("active")  # no change: before_update again, no status_changed
    await wait_until(
        lambda: sum(e.name == "user.before_update" for e in running.seen) == 2,
        message="second before_update",
    )
    assert running.cache == [(user.id, "active")]


async def test_record_login_publishes_login_with_the_new_last_login(
    orm: Environment, running: Recorder
) -> None:
    user = User(username="ann", email="ann@example.com")
    await user.create()
    await user.record_login()
    await wait_until(lambda: running.logins, message="login handler")
    (user_id, last_login), = running.logins
    assert user_id == user.id
    assert last_login == user.last_login  # a datetime again after the trip through Redis
    stored = await User.get(user.id or "")
    assert stored is not None and stored.last_login is not None


class Account(BaseModel):
    _collection = "accounts"
    owner_id: Any = None
    balance: int = 0

    @before_save("account.closing")
    async def close(self) -> None:
        raise RuntimeError("cannot close")

    @after_save("account.closed")
    async def close_quietly(self) -> None:
        raise RuntimeError("cannot close either")


async def test_before_save_publishes_first_and_after_save_only_on_success(
    orm: Environment, redis: Redis, queue_name: str
) -> None:
    account = Account()
    await account.create()
    with pytest.raises(RuntimeError, match="cannot close either"):
        await account.close_quietly()
    with pytest.raises(RuntimeError, match="cannot close"):
        await account.close()
    # No consumer runs here: what was published is still on the queue's Celery list.
    queued = await redis.lrange(queue_name, 0, -1)
    published = [orjson.loads(raw)["headers"]["task"] for raw in queued]
    assert published == ["account.closing"]


async def test_dispatch_model_event_serializes_objectids_and_datetimes(
    orm: Environment, running: Recorder
) -> None:
    from bson import ObjectId

    owner = ObjectId()
    account = Account(owner_id=owner, balance=5)
    await account.create()
    job_id = await dispatch_model_event(orm.event_bus, "User", "audit_trail", account.id, account)
    await wait_until(lambda: "user.audit_trail" in names(running), message="user.audit_trail")
    event = next(e for e in running.seen if e.name == "user.audit_trail")
    assert event.id == job_id
    assert event.data == {"id": account.id, "owner_id": str(owner), "balance": 5}
    stamp = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    await dispatch_model_event(orm.event_bus, User, "imported", None, {"at": stamp})
    await wait_until(lambda: "user.imported" in names(running), message="user.imported")
    imported = next(e for e in running.seen if e.name == "user.imported")
    assert imported.data == {"id": None, "at": stamp}

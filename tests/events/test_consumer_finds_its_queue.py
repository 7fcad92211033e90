"""A consumer never serves the wrong thing in silence: it takes the Redis and queue the
``--app`` module declares (``EARNORM_SETTINGS``, what the app gives ``init()``), and says at
WARNING when it started a private Redis or was given a queue nobody uses while apps use
others."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import earnorm
from earnorm import Event, LocalRedis, start_local_redis
from tests.helpers import wait_until
from tests.processes import run_cli_consumer

pytestmark = pytest.mark.anyio


def write_app(directory: Path, redis_url: str | None, queue: str | None) -> str:
    settings: dict[str, object] = {}
    if redis_url:
        settings["redis_uri"] = redis_url
    if queue:
        settings["event_config"] = {"queue_name": queue}
    (directory / "declared_app.py").write_text(textwrap.dedent(f'''
        from earnorm.events import event_handler

        EARNORM_SETTINGS = {settings!r}

        @event_handler("order.placed")
        async def placed(event):
            print("handled", event.data["n"], flush=True)
    '''))
    return "declared_app"


@pytest.fixture
def server() -> Iterator[LocalRedis]:
    local = start_local_redis()
    yield local
    local.stop()


async def test_the_consumer_uses_the_redis_and_queue_the_app_declares(
    server: LocalRedis, tmp_path: Path
) -> None:
    app = write_app(tmp_path, server.url, "shop:events")
    with run_cli_consumer(tmp_path, app) as consumer:
        bus = await earnorm.init(redis_uri=server.url, event_config={"queue_name":
                                                                     "shop:events"})
        try:
            await bus.publish(Event(name="order.placed", data={"n": 1}))
            await wait_until(lambda: consumer.printed("handled 1"), 15,
                             message=f"the app's event handled:\n{consumer.output()}")
        finally:
            await earnorm.close()
    said = consumer.output()
    assert "has never been used" not in said and "private server" not in said, said


async def test_an_explicit_queue_option_wins_over_the_app(
    server: LocalRedis, tmp_path: Path
) -> None:
    app = write_app(tmp_path, server.url, "shop:events")
    with run_cli_consumer(tmp_path, app, "--queue", "other:events") as consumer:
        await wait_until(lambda: consumer.printed("queue=other:events"), 15,
                         message=f"the consumer on other:events:\n{consumer.output()}")


async def test_a_queue_nobody_uses_while_apps_use_others_is_warned_of_with_the_fix(
    server: LocalRedis, tmp_path: Path
) -> None:
    await earnorm.init(redis_uri=server.url, event_config={"queue_name": "shop:events"})
    await earnorm.close()
    app = write_app(tmp_path, None, None)
    with run_cli_consumer(tmp_path, app, "--redis-uri", server.url) as consumer:
        await wait_until(lambda: consumer.printed("has never been used"), 15,
                         message=f"the warning:\n{consumer.output()}")
    warning = next(line for line in consumer.lines if "has never been used" in line)
    assert "WARNING" in warning and "queue 'earnorm:events'" in warning
    assert "apps called init() for 'shop:events'" in warning
    assert "--queue shop:events" in warning


async def test_a_private_redis_is_warned_of_with_the_fix(tmp_path: Path) -> None:
    app = write_app(tmp_path, None, "shop:events")
    with run_cli_consumer(tmp_path, app) as consumer:
        await wait_until(lambda: consumer.printed("queue=shop:events"), 15,
                         message=f"the consumer to start:\n{consumer.output()}")
    warning = next(line for line in consumer.lines if "started a private server" in line)
    assert "WARNING" in warning and "give --redis-uri" in warning


@pytest.mark.parametrize(("settings", "why"), [
    ("['redis://x']", "declared_app.EARNORM_SETTINGS must be a dict of init()'s keyword "
                      "arguments, got list"),
    ("{'redis_url': 'redis://x'}", "unknown key(s) in declared_app.EARNORM_SETTINGS: "
                                   "redis_url (known: redis_uri, event_config, mongo_uri, "
                                   "mongodb_uri, database)"),
    ("{'event_config': {'queue': 'x'}}", "unknown key(s) in event_config: queue"),
])
async def test_bad_app_settings_are_one_line_and_exit_2(
    tmp_path: Path, settings: str, why: str
) -> None:
    (tmp_path / "declared_app.py").write_text(f"EARNORM_SETTINGS = {settings}\n")
    with run_cli_consumer(tmp_path, "declared_app") as consumer:
        assert consumer.process.wait(30) == 2
    await wait_until(lambda: consumer.lines, 5, message="the error line")
    assert len(consumer.lines) == 1 and consumer.lines[0].startswith(f"error: {why}"), \
        consumer.lines


async def test_a_supervisor_of_processes_uses_the_redis_the_app_declares(
    server: LocalRedis, tmp_path: Path
) -> None:
    app = write_app(tmp_path, server.url, "shop:events")
    with run_cli_consumer(tmp_path, app, "--processes", "2") as consumer:
        bus = await earnorm.init(redis_uri=server.url, event_config={"queue_name":
                                                                     "shop:events"})
        try:
            await bus.publish_batch([Event(name="order.placed", data={"n": n})
                                     for n in range(10)])
            await wait_until(lambda: all(consumer.printed(f"handled {n}") for n in range(10)),
                             30, message=f"the app's events handled:\n{consumer.output()}")
        finally:
            await earnorm.close()
    assert "private server" not in consumer.output()

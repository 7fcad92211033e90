"""Handlers that block the event loop: named, counted, not ready; under ``--processes`` the
blocked child is replaced and its message runs again elsewhere."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import pytest

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from earnorm._errors import ConfigError
from tests.helpers import wait_until
from tests.processes import consumer_process

pytestmark = pytest.mark.anyio


async def test_a_handler_blocking_the_loop_is_named_counted_and_makes_the_consumer_not_ready(
    redis_url: str, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "earnorm.consumer")
    registry = HandlerRegistry()

    async def blocks(event: Event) -> None:
        time.sleep(0.6)  # noqa: ASYNC251 - a blocking call: the whole loop waits

    registry.register("fault.blocks", blocks)
    name = registry.handlers_for("fault.blocks")[0].name
    bus = await EventBus.connect(redis_url, queue_name=queue_name, heartbeat_interval=0.2,
                                 heartbeat_timeout=1.0)
    async with Consumer(bus=bus, registry=registry, block_warn=0.2, metrics=True) as consumer:
        status, _, body = await consumer.http_routes()["/readyz"]()
        assert status == 200, body
        job = await bus.publish(Event(name="fault.blocks"))
        await wait_until(lambda: consumer.processed == 1, 10, message="handled")
        await wait_until(lambda: "ran again after" in caplog.text, 5, message="block ended")
        status, _, body = await consumer.http_routes()["/readyz"]()
        assert status == 503 and b"event loop was blocked" in body, body
        assert f"handler {name} on fault.blocks {job}".encode() in body
        assert consumer.metrics is not None
        page = consumer.metrics.generate()[0].decode()

        async def summarised() -> bool:
            return [c["loop_blocks"] for c in (await bus.stats())["consumers"]] == [1]

        await wait_until(summarised, 5, message="stats() counts the block")
    await bus.close()
    blocked = [r.getMessage() for r in caplog.records if "event loop blocked" in r.getMessage()]
    assert len(blocked) == 1, blocked
    assert f"handler {name} on fault.blocks {job}, at {__file__}:" in blocked[0]
    assert f'earnorm_loop_blocked_total{{handler="{name}",queue_name="{queue_name}"}} 1.0' \
        in page
    seconds = [line for line in page.splitlines()
               if line.startswith("earnorm_loop_blocked_seconds_total{")]
    assert seconds and float(seconds[0].split()[-1]) >= 0.4, seconds


async def test_block_limits_are_checked(redis_url: str) -> None:
    with pytest.raises(ConfigError, match="block_warn must be a positive number"):
        Consumer(redis_url, block_warn=0)
    with pytest.raises(ConfigError, match=r"block_limit \(1s\) must be greater than block_warn"):
        Consumer(redis_url, block_warn=2, block_limit=1)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.mark.parametrize("how", ["sleep", "stop"])
async def test_a_child_blocked_past_its_limit_is_replaced_and_its_message_runs_again(
    redis_url: str, queue_name: str, tmp_path: Path, how: str
) -> None:
    """``sleep``: the handler's time_limit (1 s) passes while it blocks the loop; the child's
    watch asks the supervisor to replace it. ``stop``: the whole child is stopped (as a block
    holding the GIL would stop its watch too); the supervisor hears nothing for the block
    limit (2 s) and replaces it. Either way another consumer recovers the message."""
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    args = ("--processes", "2", "--heartbeat-interval", "0.2", "--heartbeat-timeout", "1",
            "--block-warn", "0.2", "--block-limit", "2")
    with consumer_process(redis_url, queue_name, app="tests.faults.apps.blocking",
                          extra_env={"EARNORM_TEST_BLOCK_DIR": str(tmp_path)},
                          args=args) as supervisor:
        await wait_until(lambda: len(_children(supervisor.pid)) == 2, 15, message="2 children")
        job = await bus.publish(Event(name="fault.blocking", data={"how": how}))
        done, blocked = tmp_path / f"{job}.done", tmp_path / f"{job}.blocked"
        await wait_until(blocked.exists, 20, message="a child blocked")
        await wait_until(lambda: blocked.read_text() != "", 5)
        blocker = int(blocked.read_text())
        await wait_until(lambda: blocker not in _children(supervisor.pid), 15,
                         message="the blocked child replaced")
        await wait_until(done.exists, 20, message="the message handled by another")
        assert int(done.read_text()) != blocker
        await wait_until(lambda: len(_children(supervisor.pid)) == 2, 15,
                         message="two children again")
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=30) == 0
        assert supervisor.stdout is not None
        output = supervisor.stdout.read().decode()
    await bus.close()
    expected = ("blocks its event loop past its limit: replacing it" if how == "sleep"
                else "its event loop has not run for")
    assert expected in output, output
    with pytest.raises(ProcessLookupError):
        os.kill(blocker, 0)

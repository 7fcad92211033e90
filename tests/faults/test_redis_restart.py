"""Redis stops mid-stream and comes back on the same port with its append-only file.

The publisher (in this process) and the consumer (a subprocess) must ride it out: retry with
backoff, without crashing and without spinning, and every publish that returned must be handled.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from earnorm import Event, EventBus, start_local_redis
from earnorm._errors import PublishError
from tests.faults.workers import Worker, recorded
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio

OUTAGE_S = 3.0
CONCURRENCY = 20
# Each of the consumer's loops (one per handler slot, plus fetch, ack, heartbeat and promote)
# doubles its wait after each failure (0.1 s, 0.2 s, ... 5 s): a handful of retries each.
MAX_RETRIES_LOGGED = (CONCURRENCY + 4) * 8
BACKLOG = 3000  # with 20 handlers of 50 ms, work is queued and in flight when Redis stops
# Patient enough to outlast the outage: 40 attempts, at most 0.25 s apart.
PUBLISH_RETRY = {"max_retries": 40, "interval_start": 0.05, "interval_step": 0.05,
                 "interval_max": 0.25}


@pytest.mark.parametrize(
    ("crash", "fsync", "handler_uses_redis"),
    [(False, "everysec", False), (True, "always", False), (False, "everysec", True)],
    ids=["sigterm-appendfsync-everysec", "sigkill-appendfsync-always", "handler-needs-redis"],
)
async def test_redis_restart_mid_stream_loses_no_acknowledged_publish(
    tmp_path: Path, queue_name: str, record: Path, crash: bool, fsync: str,
    handler_uses_redis: bool,
) -> None:
    workdir = tmp_path / "redis"
    workdir.mkdir()
    extra = ("--appendfsync", fsync)
    server = start_local_redis(appendonly=True, workdir=str(workdir), extra_args=extra)
    worker: Worker | None = None
    try:
        bus = await EventBus.connect(
            server.url, {"queue_name": queue_name, "retry_policy": PUBLISH_RETRY}
        )
        worker = Worker(
            server.url, queue_name, record, heartbeat=(0.5, 10.0), concurrency=CONCURRENCY,
            env={"EARNORM_TEST_HANDLER_REDIS": "1" if handler_uses_redis else "0",
                 "EARNORM_TEST_HANDLER_SLEEP": "0.05"},
        )
        acked = await bus.publish_batch(
            [Event(name="fault.recorded", data={"i": i}) for i in range(BACKLOG)]
        )
        stop_publishing = anyio.Event()

        async def publish_steadily() -> None:
            while not stop_publishing.is_set():
                acked.append(await bus.publish(Event(name="fault.recorded", data={})))
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_steadily)
            await wait_until(lambda: len(recorded(record)) >= 200, 30, message="flowing")
            (server.kill if crash else server.stop)()
            down_at, acked_before = time.monotonic(), len(acked)
            cpu_before = worker.cpu_seconds()
            await anyio.sleep(OUTAGE_S)
            cpu_during = worker.cpu_seconds() - cpu_before
            server = start_local_redis(
                server.port, appendonly=True, workdir=str(workdir), extra_args=extra
            )
            back_at = time.monotonic()
            await wait_until(
                lambda: len(acked) > acked_before + 100, 30, message="publishing again"
            )
            stop_publishing.set()
        published_again_after = time.monotonic() - back_at
        await wait_until(
            lambda: set(acked) <= set(recorded(record)), 60, interval=0.2,
            message="every acknowledged publish handled",
        )
        handled_again_after = time.monotonic() - back_at
        assert worker.alive(), worker.output()
        output = worker.output()
        retries_logged = output.count("Redis unavailable")
        print(
            f"\nredis restart ({'SIGKILL' if crash else 'SIGTERM'}, appendfsync {fsync}"
            f"{', handler needs Redis' if handler_uses_redis else ''}): "
            f"{len(acked)} acknowledged publishes, all handled; outage {OUTAGE_S:.0f}s; "
            f"consumer CPU during outage {cpu_during:.2f}s, {retries_logged} backoff retries "
            f"logged; backlog drained {handled_again_after:.1f}s after Redis returned "
            f"(total {time.monotonic() - down_at:.1f}s)"
        )
        assert cpu_during < 0.25 * OUTAGE_S, "the consumer must back off, not spin"
        assert retries_logged < MAX_RETRIES_LOGGED, output[-2000:]
        assert "Traceback" not in output, output[-3000:]
        assert published_again_after < 5
        assert worker.terminate() == 0, worker.output()[-3000:]
        await bus.close()
    except PublishError as exc:  # pragma: no cover - a failure, shown plainly
        pytest.fail(f"the publisher gave up during the outage: {exc}")
    finally:
        if worker is not None:
            worker.kill()
        server.kill()

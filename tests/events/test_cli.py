"""``python -m earnorm.events``, run as a subprocess: output and exit codes of each command."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import anyio
import orjson
import pytest
from redis.asyncio import Redis

from earnorm import Event, EventBus
from tests.helpers import store_failed_job

pytestmark = pytest.mark.anyio


class Cli:
    def __init__(self, redis_url: str, queue_name: str) -> None:
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("REDIS_URL", "EARNORM_REDIS_URI", "EARNORM_QUEUE")}
        self.env.update(EARNORM_REDIS_URI=redis_url, EARNORM_QUEUE=queue_name)

    async def __call__(
        self, *args: str, env: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        result = await anyio.run_process(
            [sys.executable, "-m", "earnorm.events", *args], check=False,
            env=self.env if env is None else env,
        )
        return result.returncode, result.stdout.decode(), result.stderr.decode()

    async def json(self, *args: str) -> Any:
        code, out, err = await self(*args, "--json")
        assert code == 0, err
        return orjson.loads(out)


@pytest.fixture
def cli(redis_url: str, queue_name: str) -> Cli:
    return Cli(redis_url, queue_name)


async def test_stats_prints_a_table_and_json(cli: Cli, bus: EventBus) -> None:
    await bus.publish_batch([Event(name="a.b")] * 2)
    await bus.publish(Event(name="a.b"), priority=9)
    await bus.publish(Event(name="a.b"), delay=60)
    code, out, err = await cli("stats")
    assert code == 0, err
    assert re.search(r"^ready\s+3\s+\(p0 2, p3 0, p6 0, p9 1\)$", out, re.M), out
    assert re.search(r"^delayed\s+1$", out, re.M)
    assert re.search(r"^failed\s+0$", out, re.M)
    assert "no live consumers" in out
    stats = await cli.json("stats")
    assert stats["ready"] == {"0": 2, "3": 0, "6": 0, "9": 1}
    assert stats["delayed"] == 1 and stats["queue"] == bus.config.queue_name


async def test_stats_of_a_queue_never_seen_says_so_instead_of_printing_zeros(
    cli: Cli, bus: EventBus, redis_url: str
) -> None:
    code, out, err = await cli("stats", "--queue", "nosuch:queue")
    assert code == 1
    assert out == ""
    assert err.strip() == (f"error: queue 'nosuch:queue' has never been seen on {redis_url}: "
                           "none of its keys exist (check --queue / EARNORM_QUEUE)")
    await bus.publish(Event(name="a.b"))
    code, out, err = await cli("stats")
    assert code == 0, err
    assert "never seen" not in out
    assert (await bus.stats())["seen"] is True


async def test_stats_watch_refreshes(cli: Cli, bus: EventBus) -> None:
    await bus.publish(Event(name="a.b"), delay=60)
    code, out, _ = await cli("stats", "--watch", "--count", "3", "--interval", "0.05")
    assert code == 0
    assert out.count(f"queue {bus.config.queue_name}") == 3
    assert "\x1b[" not in out  # not a terminal: no screen control codes
    code, out, _ = await cli("stats", "--watch", "--count", "2", "--interval", "0.05", "--json")
    assert [orjson.loads(line)["delayed"] for line in out.splitlines()] == [1, 1]


async def test_failed_list_pages_with_a_cursor(cli: Cli, bus: EventBus) -> None:
    ids = [await store_failed_job(bus, "order.paid", 1000.0 + i) for i in range(3)]
    code, out, _ = await cli("failed", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["JOB", "ID", "EVENT", "REASON"]
    assert [line.split()[0] for line in lines[1:]] == ids
    assert "order.paid" in lines[1] and "no_handler" in lines[1]

    first = await cli.json("failed", "list", "--limit", "2")
    assert [job["job_id"] for job in first["jobs"]] == ids[:2]
    rest = await cli.json("failed", "list", "--limit", "2", "--cursor", first["next_cursor"])
    assert [job["job_id"] for job in rest["jobs"]] == ids[2:]
    assert rest["next_cursor"] is None
    code, out, _ = await cli("failed", "list", "--limit", "2")
    assert f"more: --cursor '{first['next_cursor']}'" in out
    empty = await cli.json("failed", "list", "--event", "other.event")
    assert empty == {"jobs": [], "next_cursor": None}


async def test_failed_show_and_not_found(cli: Cli, bus: EventBus) -> None:
    job_id = await store_failed_job(bus, "order.paid", 1000.0)
    code, out, _ = await cli("failed", "show", job_id)
    assert code == 0
    assert re.search(rf"^job id\s+{job_id}$", out, re.M)
    assert re.search(r"^reason\s+no_handler$", out, re.M)
    assert (await cli.json("failed", "show", job_id))["name"] == "order.paid"
    code, out, err = await cli("failed", "show", "no-such-job")
    assert (code, out) == (1, "")
    assert "no failed job with id 'no-such-job'" in err


async def test_failed_retry_one_and_all(cli: Cli, bus: EventBus, redis: Redis) -> None:
    queue = bus.config.queue_name
    one = await store_failed_job(bus, "order.paid", 1000.0)
    for i in range(2):
        await store_failed_job(bus, "mail.sent", 2000.0 + i)
    await store_failed_job(bus, "order.paid", 3000.0)
    code, out, _ = await cli("failed", "retry", one)
    assert (code, out.strip()) == (0, "retried 1 job(s)")
    assert await redis.llen(queue) == 1
    code, _, err = await cli("failed", "retry", one)
    assert code == 1 and "no failed job" in err
    assert await cli.json("failed", "retry", "--all", "--event", "mail.sent") == {"retried": 2}
    assert await cli.json("failed", "retry", "--all") == {"retried": 1}
    assert await redis.llen(queue) == 4
    assert await redis.hlen(f"{queue}:failed") == 0


async def test_revoke_stores_the_ids_for_every_consumer(cli: Cli, bus: EventBus) -> None:
    code, out, _ = await cli("revoke", "job-1", "job-2")
    assert (code, out.strip()) == (0, "revoked 2 job(s)")
    assert await cli.json("revoke", "job-3", "--terminate") == {"revoked": 1, "terminate": True}
    ids, terminate = await bus.broker.revoked.load()
    assert set(ids) == {"job-1", "job-2", "job-3"} and terminate == {"job-3"}
    assert (await bus.stats())["revoked"] == 3


async def test_failed_remove_one_and_all(cli: Cli, bus: EventBus) -> None:
    one = await store_failed_job(bus, "order.paid", 1000.0)
    for i in range(3):
        await store_failed_job(bus, "mail.sent", 2000.0 + i)
    code, out, _ = await cli("failed", "remove", one)
    assert (code, out.strip()) == (0, "removed 1 job(s)")
    code, _, _ = await cli("failed", "remove", one)
    assert code == 1
    code, out, _ = await cli("failed", "remove", "--all")
    assert (code, out.strip()) == (0, "removed 3 job(s)")
    assert await bus.get_failed_jobs() == []


@pytest.mark.parametrize("args", [
    (),
    ("bogus",),
    ("failed",),
    ("failed", "retry"),
    ("failed", "retry", "some-id", "--all"),
    ("failed", "remove", "some-id", "--event", "a.b"),
    ("failed", "list", "--limit", "0"),
    ("failed", "list", "--cursor", "not-a-cursor"),
])
async def test_usage_errors_exit_2(cli: Cli, args: tuple[str, ...]) -> None:
    code, out, err = await cli(*args)
    assert (code, out) == (2, ""), err
    assert err


async def test_redis_url_from_env_flags_and_unreachable(cli: Cli, bus: EventBus) -> None:
    await bus.publish(Event(name="a.b"))
    base = {k: v for k, v in cli.env.items() if k not in ("EARNORM_REDIS_URI", "EARNORM_QUEUE")}
    code, _, err = await cli("stats", env=base)
    assert code == 2 and "no Redis URL" in err
    # REDIS_URL is the fallback; --queue before or after the command.
    url = cli.env["EARNORM_REDIS_URI"]
    queue = bus.config.queue_name
    code, out, _ = await cli("--queue", queue, "stats", "--json", env={**base, "REDIS_URL": url})
    assert code == 0 and orjson.loads(out)["ready_total"] == 1
    code, out, _ = await cli("stats", "--json", "--queue", queue, "--redis-uri", url, env=base)
    assert code == 0 and orjson.loads(out)["ready_total"] == 1
    code, out, err = await cli("stats", "--redis-uri", "redis://:hunter2@127.0.0.1:1/0")
    assert (code, out) == (3, "")
    assert "cannot reach Redis" in err and "hunter2" not in err


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_local_redis_serves_until_a_signal_and_stops_its_server(sig: str) -> None:
    import signal
    import subprocess

    import redis

    from earnorm.events._tools.embedded import free_port, port_in_use

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "earnorm.events", "local-redis", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith(f"serving redis://127.0.0.1:{port}/0"), line
        client = redis.Redis(port=port)
        assert client.ping()
        client.close()
        process.send_signal(getattr(signal, sig))
        assert process.wait(10) == 0
        assert not port_in_use(port), "the server outlived local-redis"
    finally:
        process.kill()
        process.wait()


def test_local_redis_on_a_busy_port_says_so_in_one_line_and_fails() -> None:
    import subprocess

    from earnorm import start_local_redis

    taken = start_local_redis()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "earnorm.events", "local-redis", "--port", str(taken.port)],
            check=False, capture_output=True, text=True, timeout=30)
    finally:
        taken.stop()
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"error: port {taken.port} on 127.0.0.1 is in use (another server?): choose another "
        "port"]

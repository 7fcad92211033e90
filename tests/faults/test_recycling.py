"""``--max-tasks-per-child`` and ``--max-memory-per-child``: a child past its limit fetches no
more, runs what it fetched, exits and is replaced; every event runs once and nothing goes back
to the queue or to recovery on the way."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from earnorm import Event, EventBus
from tests.faults.workers import Worker, recorded
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio

RETIRED = re.compile(r"consumer process \d+ \(pid (\d+)\) retired")


def started_by(record: Path) -> tuple[Counter[str], Counter[str]]:
    """(starts per event id, starts per process id) from the ``start <id> <pid>`` lines."""
    per_event: Counter[str] = Counter()
    per_pid: Counter[str] = Counter()
    for line in (record.read_text() if record.exists() else "").splitlines():
        parts = line.split()
        if parts[0] in ("start", "hog"):
            per_event[parts[1]] += 1
            per_pid[parts[2]] += 1
    return per_event, per_pid


def handed_back(output: str) -> list[str]:
    return [line for line in output.splitlines()
            if ("returned" in line and "message" in line) or "recovered" in line]


async def test_max_tasks_per_child_replaces_children_and_runs_every_event_once(
    redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    ids = [e.id for e in [Event(name="fault.recorded", data={"n": n}) for n in range(1000)]]
    await bus.publish_batch([Event(name="fault.recorded", id=i, data={"n": n})
                             for n, i in enumerate(ids)])
    record = tmp_path / "record.txt"
    worker = Worker(redis_url, queue_name, record, log_level="INFO",
                    env={"EARNORM_PROCESSES": "2", "EARNORM_MAX_TASKS_PER_CHILD": "100",
                         "EARNORM_TEST_RECORD_STARTS": "1"})
    try:
        await wait_until(lambda: len(recorded(record)) == 1000, 90,
                         message="every event handled")
        await wait_until(lambda: len(RETIRED.findall(worker.output())) >= 9, 30,
                         message="nine children retired at least")
    finally:
        code = worker.terminate()
        await bus.close()
    output = worker.output()
    per_event, per_pid = started_by(record)
    retired = RETIRED.findall(output)
    assert code == 0
    assert set(per_event) == set(ids) and max(per_event.values()) == 1, "each ran once"
    assert max(recorded(record).values()) == 1
    assert 9 <= len(retired) <= 10, output[-3000:]
    assert all(per_pid[pid] == 100 for pid in retired), "each retired after exactly 100"
    assert max(per_pid.values()) <= 100
    assert handed_back(output) == []


async def test_max_memory_per_child_replaces_a_leaking_child(
    redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    """Each event leaks 10 MB: a child retires within a second of passing 120 MB (its own
    footprint is ~45), finishing what it fetched; the next one carries on."""
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    ids = await bus.publish_batch([Event(name="fault.hog") for _ in range(30)])
    record = tmp_path / "record.txt"
    worker = Worker(redis_url, queue_name, record, log_level="INFO", concurrency=1,
                    env={"EARNORM_MAX_MEMORY_PER_CHILD": "120",
                         "EARNORM_TEST_HOG_SLEEP": "0.1"})
    try:
        await wait_until(lambda: len(started_by(record)[0]) == 30, 90,
                         message="every event handled")
    finally:
        code = worker.terminate()
        await bus.close()
    output = worker.output()
    per_event, per_pid = started_by(record)
    assert code == 0
    assert set(per_event) == set(ids) and max(per_event.values()) == 1, "each ran once"
    assert len(RETIRED.findall(output)) >= 2, output[-3000:]
    assert "over max_memory_mb=120" in output
    assert len(per_pid) >= 3
    assert handed_back(output) == []

"""Fixtures for the interop suite: real Celery workers and a Celery producer on the test Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis as sync_redis
from celery import Celery

from tests.interop.celery_app import EVENT_TASKS, make_app
from tests.interop.harness import CeleryWorker, celery_worker


def _delete_queue_keys(redis_url: str, queue: str) -> None:
    client = sync_redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{queue}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="module")
def worker_queue(redis_url: str) -> Iterator[str]:
    """The queue the module's Celery worker consumes."""
    queue = f"interop:{uuid.uuid4().hex[:10]}"
    yield queue
    _delete_queue_keys(redis_url, queue)


@pytest.fixture(scope="module")
def solo_worker(redis_url: str, worker_queue: str) -> Iterator[CeleryWorker]:
    """One ``celery worker --pool=solo`` for the whole module (starting one takes ~1 s)."""
    with celery_worker(redis_url, worker_queue) as worker:
        yield worker


@pytest.fixture
def producer(redis_url: str, queue_name: str) -> Iterator[Celery]:
    """A Celery app that publishes to ``queue_name`` (``send_task`` / ``apply_async``)."""
    app = make_app(redis_url, queue_name)

    for name in (*EVENT_TASKS, "link.target"):
        def run(*args: Any, **kwargs: Any) -> None:  # never runs here: only its signature
            raise AssertionError("producer-side task must not run")

        app.task(name=name, shared=False)(run)
    try:
        yield app
    finally:
        app.close()

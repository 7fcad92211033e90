"""The dramatiq broker and actors (``dramatiq dramatiq_app``)."""

from __future__ import annotations

import os
import time
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from tracker import TRACKER

broker = RedisBroker(url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench.noop", queue_name="bench", max_retries=0)
def noop(data: dict[str, Any]) -> None:
    if TRACKER.begin(data):
        TRACKER.end()


@dramatiq.actor(actor_name="bench.io", queue_name="bench", max_retries=0)
def io(data: dict[str, Any]) -> None:
    if TRACKER.begin(data):
        time.sleep(0.01)
        TRACKER.end()

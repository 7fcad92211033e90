"""Demo: the consumer with ``examples.app`` embedded in one asyncio program, plus a publisher.

Uses a private local Redis (the ``embedded`` extra) unless ``EARNORM_REDIS_URI`` or
``REDIS_URL`` is set. ``--duration N`` stops after N seconds; otherwise Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import signal
from decimal import Decimal

import earnorm
import examples.app  # noqa: F401  (registers the handlers)
from earnorm import Consumer, Event, LocalRedis, event_bus, start_local_redis

log = logging.getLogger("examples.demo")

EVENT_CONFIG = {
    "queue_name": "demo:events",
    "retry_policy": {"max_retries": 2, "interval_start": 0.5, "interval_step": 0.5,
                     "interval_max": 2},
}


async def publish_forever(interval: float) -> None:
    for n in itertools.count(1):
        await event_bus.publish(
            Event(name="user.created", data={"user_id": n, "email": f"user{n}@example.com"})
        )
        amount = Decimal("-1") if n % 5 == 0 else Decimal("19.90")
        await event_bus.publish(
            Event(name="order.payment.completed", data={"order_id": n, "amount": amount})
        )
        if n % 3 == 0:
            await event_bus.publish(
                Event(name="user.reminder",
                      data={"email": f"user{n}@example.com", "delay": 2}), delay=2,
            )
        if n % 10 == 0:
            stats = await event_bus.stats()
            failed = await event_bus.get_failed_jobs(limit=100)
            log.info("queue: ready=%s delayed=%s failed=%d", stats["ready"], stats["delayed"],
                     len(failed))
        await asyncio.sleep(interval)


async def main(duration: float | None, interval: float) -> None:
    url = os.environ.get("EARNORM_REDIS_URI") or os.environ.get("REDIS_URL")
    local: LocalRedis | None = None
    if not url:
        local = start_local_redis()
        url = local.url
        log.info("no Redis configured: started a private server at %s", url)
    try:
        await earnorm.init(redis_uri=url, event_config=EVENT_CONFIG)
        consumer = Consumer(bus=event_bus, concurrency=20)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with consumer:
            publisher = asyncio.create_task(publish_forever(interval))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
            publisher.cancel()
        log.info("done: processed=%d retried=%d failed=%d",
                 consumer.processed, consumer.retried, consumer.failed)
        await earnorm.close()
    finally:
        if local is not None:
            local.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("earnorm.consumer").setLevel(logging.WARNING)
    asyncio.run(main(args.duration, args.interval))

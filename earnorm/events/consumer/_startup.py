"""What a consumer says when it starts: one line naming its queue, handlers and Redis, and a
warning when its queue was never used while apps use others on the same Redis (a consumer
serving the wrong queue would otherwise wait in silence)."""

from __future__ import annotations

import logging

from earnorm.events._broker.broker import Broker
from earnorm.events._broker.connect import mask_url
from earnorm.events._handlers import HandlerRegistry

log = logging.getLogger("earnorm.consumer")


def log_startup(consumer_id: str, queue: str, registry: HandlerRegistry, concurrency: int,
                prefetch: int, redis_url: str) -> None:
    names = sorted({h.pattern for h in registry.all()})
    log.info("consumer %s: queue=%s handlers=%d %s concurrency=%d prefetch=%d redis=%s",
             consumer_id, queue, len(registry), names, concurrency, prefetch,
             mask_url(redis_url))


async def warn_if_unused(broker: Broker, queue: str, redis_url: str) -> None:
    """A queue nobody ever used, on a Redis where apps called init() for other queues."""
    if await broker.queue_used():
        return
    others = sorted(q for q in await broker.app_queues() if q != queue)
    if others:
        log.warning("queue %r has never been used on %s, but apps called init() for %s: "
                    "this consumer may be serving the wrong queue; start it with --queue "
                    "%s (or EARNORM_QUEUE, or the app's EARNORM_SETTINGS: see --help)",
                    queue, mask_url(redis_url), ", ".join(map(repr, others)), others[0])

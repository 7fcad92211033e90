"""The example application: handlers the consumer runs.

Run it alone with ``python -m earnorm.events.consumer --app examples.app``.
"""

from __future__ import annotations

import logging

from earnorm import Event, event_handler

log = logging.getLogger("examples.app")


@event_handler("user.created")
async def send_welcome_email(event: Event) -> None:
    log.info("welcome email to %s (event %s)", event.data["email"], event.id[:8])


@event_handler("user.*")
async def audit_user_events(event: Event) -> None:
    log.info("audit: %s %s", event.name, event.data)


@event_handler("order.payment.completed")
async def ship_order(event: Event) -> None:
    if event.data.get("amount", 0) < 0:
        raise ValueError(f"negative amount on order {event.data['order_id']}")
    log.info("shipping order %s", event.data["order_id"])


@event_handler("user.reminder")
async def remind(event: Event) -> None:
    log.info("reminder (published with delay=%ss) for %s",
             event.data["delay"], event.data["email"])

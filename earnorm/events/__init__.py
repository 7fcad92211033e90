"""EarnORM's event system: Celery-wire events on Redis with an asyncio consumer.

Public names are imported from ``earnorm`` (``from earnorm import Consumer, Event, event_bus``);
this package holds the implementation in private modules (map: ``docs/architecture.md``). The
spec's paths ``earnorm.events.decorators`` and ``earnorm.events.utils`` are kept as aliases, and
``python -m earnorm.events`` / ``python -m earnorm.events.consumer`` are the command lines.
"""

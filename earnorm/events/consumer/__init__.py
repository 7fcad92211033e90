"""The consumer (``Consumer``) and its command line (``python -m earnorm.events.consumer``)."""

from earnorm.events.consumer._consumer import Consumer
from earnorm.events.consumer._group import ConsumerGroup

__all__ = ["Consumer", "ConsumerGroup"]

"""The consumer (``Consumer``) and its command line (``python -m earnorm.events.consumer``)."""

from earnorm.events.consumer._consumer import Consumer

__all__ = ["Consumer"]

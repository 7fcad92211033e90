"""Where the spec imports ``dispatch_model_event`` from; it lives in ``decorators``."""

from earnorm.events.decorators import dispatch_model_event, model_data

__all__ = ["dispatch_model_event", "model_data"]

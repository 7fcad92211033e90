"""Model events: ``before_save`` / ``after_save`` method decorators and ``dispatch_model_event``.

::

    class User(BaseModel):
        email: str

        @after_save("user.login")
        async def record_login(self) -> None:
            self.last_login = datetime.now(UTC)
            await self.save()
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any, TypeVar, cast

from bson import ObjectId

from earnorm._environment import current_environment
from earnorm._errors import ConfigError, EventValidationError
from earnorm.events._bus import Delay, EventBus
from earnorm.events._handlers import model_event_name
from earnorm.events._wire.event import Event, validate_event_name

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

__all__ = ["after_save", "before_save", "dispatch_model_event", "model_data"]


def model_data(obj: Any) -> dict[str, Any]:
    """Event data for ``obj``: a model's ``to_dict()`` (id and fields, ObjectIds as strings), a
    mapping as a dict, ``None`` as ``{}``."""
    if obj is None:
        return {}
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        data = to_dict()
    elif isinstance(obj, Mapping):
        data = dict(obj)
    else:
        raise EventValidationError(
            f"model event data must be a model, a mapping or None, got {type(obj).__name__}"
        )
    return {k: str(v) if isinstance(v, ObjectId) else v for k, v in data.items()}


async def dispatch_model_event(
    event_bus: EventBus,
    model: str | type,
    action: str,
    id: str | ObjectId | None,
    obj: Any = None,
    delay: Delay = None,
    debounce: float | timedelta | None = None,
) -> str:
    """Publish ``<model>.<action>`` (``User``, ``"created"`` -> ``user.created``) with the id and
    the document's fields; with ``delay`` (seconds or timedelta) it runs later. With
    ``debounce`` (seconds), a burst of these for one document runs once, ``debounce`` seconds
    after the last (a save burst -> one reindex: the key is ``<event name>:<id>``). Returns
    the job id.

    Inside a model method::

        await dispatch_model_event(self._env.event_bus, User, "created", self.id, self)
    """
    name = model if isinstance(model, str) else model.__name__
    data = model_data(obj)
    data["id"] = None if id is None else str(id)
    event = Event(
        name=model_event_name(model, action),
        data=data,
        metadata={"model": name, "action": action},
    )
    if debounce is not None:
        return await event_bus.publish(event, debounce_key=f"{event.name}:{data['id']}",
                                       debounce=debounce)
    return await event_bus.publish(event, delay=delay)


def _save_event(event_name: str, delay: Delay, *, before: bool) -> Callable[[F], F]:
    validate_event_name(event_name)
    which = "before_save" if before else "after_save"

    def decorate(func: F) -> F:
        if not inspect.iscoroutinefunction(func):
            raise ConfigError(f"@{which} needs an 'async def' method, got {func.__qualname__!r}")

        async def publish(owner: Any) -> None:
            env = getattr(owner, "_env", None) or current_environment()
            data = model_data(owner) if hasattr(owner, "to_dict") else {}
            event = Event(name=event_name, data=data)
            await env.event_bus.publish(event, delay=delay)

        @functools.wraps(func)
        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            if before:
                await publish(self)
            result = await func(self, *args, **kwargs)
            if not before:
                await publish(self)
            return result

        return cast(F, wrapper)

    return decorate


def before_save(event_name: str, *, delay: Delay = None) -> Callable[[F], F]:
    """Publish ``event_name`` with the model's data, then run the decorated method. If the
    publish fails the method does not run."""
    return _save_event(event_name, delay, before=True)


def after_save(event_name: str, *, delay: Delay = None) -> Callable[[F], F]:
    """Run the decorated method, then publish ``event_name`` with the model's data as the
    method left it. Nothing is published if the method raises."""
    return _save_event(event_name, delay, before=False)

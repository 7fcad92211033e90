"""Lifecycle hooks: ``@before_create`` and friends mark async methods that a model runs around
its writes.

Order of a create: ``before_write``, ``before_create``, type checks, insert, ``after_create``,
``after_write``. Of an update: ``before_write``, ``before_update``, type checks, ``$set`` /
``$unset``, ``after_update``, ``after_write``. Of a delete: ``before_delete``, delete,
``after_delete``.

Within one kind, hooks run base class first, then in definition order. Hooks are found by
method name: a subclass that overrides a hook method replaces it in place (decorate the
override too, or it stops being a hook). One method may carry several decorators.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from earnorm._errors import ConfigError

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

HOOK_KINDS: Final = (
    "before_write", "after_write", "before_create", "after_create",
    "before_update", "after_update", "before_delete", "after_delete",
)
_MARK = "__earnorm_hooks__"


class HookDecorator:
    """A lifecycle decorator. Apply it bare to an ``async def`` method taking only ``self``."""

    def __init__(self, kind: str, doc: str) -> None:
        self.kind = kind
        self.__doc__ = doc

    def __call__(self, func: F, /) -> F:
        target: Any = func  # checked as a plain object: a TypeIs narrowing would lose F
        if not inspect.iscoroutinefunction(target):
            raise ConfigError(
                f"@{self.kind} needs an 'async def' method, got "
                f"{getattr(func, '__qualname__', func)!r}"
            )
        kinds: tuple[str, ...] = getattr(func, _MARK, ())
        setattr(func, _MARK, (*kinds, self.kind))
        return func

    def __repr__(self) -> str:
        return f"<lifecycle decorator @{self.kind}>"


before_write = HookDecorator(
    "before_write", "Run before every insert or update, first of the before hooks."
)
after_write = HookDecorator(
    "after_write", "Run after every successful insert or update, last of the after hooks."
)
before_create = HookDecorator("before_create", "Run before a new document is inserted.")
after_create = HookDecorator("after_create", "Run after a new document was inserted.")
before_update = HookDecorator(
    "before_update", "Run before a saved document is updated; ``get_changes()`` is old/new."
)
after_update = HookDecorator(
    "after_update", "Run after an update; ``get_changes()`` still shows what was written."
)
before_delete = HookDecorator("before_delete", "Run before a document is deleted.")
after_delete = HookDecorator("after_delete", "Run after a document was deleted.")


def collect_hooks(cls: type) -> dict[str, tuple[str, ...]]:
    """Hook method names of ``cls`` by kind, in the order they run."""
    marked: dict[str, tuple[str, ...]] = {}
    for klass in reversed(cls.__mro__):
        for name, attr in vars(klass).items():
            kinds: tuple[str, ...] = getattr(attr, _MARK, ()) if callable(attr) else ()
            if kinds:
                marked[name] = kinds
            else:
                marked.pop(name, None)
    return {kind: tuple(n for n, ks in marked.items() if kind in ks) for kind in HOOK_KINDS}


async def run_hooks(obj: Any, names: tuple[str, ...]) -> None:
    """Await each hook method of ``obj`` in order; the first error propagates."""
    for name in names:
        await getattr(obj, name)()

"""Celery's canvas as a worker carries it on (docs/wire.md 5): pure, no I/O.

After a task succeeds, a Celery worker publishes each ``link`` callback and the next step of a
``chain`` with the task's return value prepended to the signature's args (unless it is
``immutable``); after a task fails for good it publishes each ``link_error`` errback with the
task id as first argument. EarnORM's consumer does the same: this module turns a finished
message into the messages to publish, each with the queue its signature names (``queue`` or
``routing_key`` in its options), else the queue the finished one came from. A signature is always
published, never run in place, so whoever handles its task runs it: an EarnORM consumer or a
Celery worker in a mixed fleet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from earnorm.events._wire import decode as protocol
from earnorm.events._wire import encode
from earnorm.events._wire.event import new_uuid4


@dataclass(frozen=True, slots=True)
class FollowUp:
    """One message to publish: its envelope, the queue and the priority list it goes to."""

    envelope: bytes
    queue: str
    priority: int
    task: str


class CanvasError(ValueError):
    """A signature EarnORM cannot carry on (a nested group, chord or chain as a callback)."""


def on_success(message: protocol.Message, result: Any, queue: str) -> list[FollowUp]:
    """What a worker publishes after ``message`` succeeded with ``result``."""
    embed = message.embed or {}
    out = [_apply(sig, [result], message, queue) for sig in embed.get("callbacks") or ()]
    chain = list(embed.get("chain") or ())
    if chain:
        step = chain.pop()  # the chain is stored last step first
        out.append(_apply(step, [result], message, queue, chain=chain))
    return out


def on_failure(message: protocol.Message, queue: str) -> list[FollowUp]:
    """What a worker publishes after ``message`` failed for good: its errbacks."""
    embed = message.embed or {}
    return [_apply(sig, [message.id], message, queue) for sig in embed.get("errbacks") or ()]


def chord_body(message: protocol.Message, results: list[Any], queue: str) -> FollowUp:
    """The body of the chord ``message`` completed, called with the header's results."""
    return _apply((message.embed or {}).get("chord"), [results], message, queue)


def chord_of(message: protocol.Message) -> tuple[str, int] | None:
    """(group id, index) when ``message`` is a part of a chord's header."""
    group = message.headers.get("group")
    if not (message.embed or {}).get("chord") or not isinstance(group, str):
        return None
    index = message.headers.get("group_index")
    return group, index if isinstance(index, int) else 0


def has_follow_ups(message: protocol.Message) -> bool:
    embed = message.embed  # on the hot path: plain lookups, no generator
    if not embed:
        return False
    return bool(embed.get("callbacks") or embed.get("chain") or embed.get("errbacks"))


def _apply(
    signature: Any, prepend: list[Any], parent: protocol.Message, default_queue: str,
    chain: list[Any] | None = None,
) -> FollowUp:
    if not isinstance(signature, dict) or not isinstance(signature.get("task"), str):
        raise CanvasError(f"not a task signature: {signature!r:.200}")
    if signature.get("subtask_type"):
        raise CanvasError(
            f"a {signature['subtask_type']} signature ({signature['task']!r}) as a callback is "
            "not carried on by EarnORM; link a plain task that starts it"
        )
    options = signature.get("options") or {}
    args = list(signature.get("args") or ())
    if not signature.get("immutable"):
        args = [*prepend, *args]
    queue = options.get("queue") or options.get("routing_key") or default_queue
    if isinstance(queue, dict):  # a kombu Queue serialized with its name
        queue = queue.get("name") or default_queue
    embed = {
        "callbacks": options.get("link") or None,
        "errbacks": options.get("link_error") or None,
        "chain": chain or None,
        "chord": options.get("chord") or None,
    }
    countdown = options.get("countdown")
    eta = None
    if isinstance(countdown, (int, float)) and countdown > 0:
        eta = datetime.now(UTC) + timedelta(seconds=countdown)
    priority = options.get("priority")
    envelope = encode.encode_call(
        signature["task"], str(options.get("task_id") or new_uuid4()), args,
        dict(signature.get("kwargs") or {}), str(queue), embed=embed,
        root_id=parent.headers.get("root_id") or parent.id, parent_id=parent.id,
        headers=options.get("headers") or None,
        priority=priority if isinstance(priority, int) else 0, eta=eta,
    )
    return FollowUp(envelope, str(queue), priority if isinstance(priority, int) else 0,
                    signature["task"])

"""Being seen as a Celery worker: Celery's events and its remote-control mailbox, on Redis.

Both are kombu fanout exchanges, which kombu's Redis transport carries over pub/sub:

- events: ``PUBLISH /<db>.celeryev/<routing key>`` of a kombu envelope whose body is the event
  (``worker-online``, ``worker-heartbeat``, ``worker-offline``, ``task-received``,
  ``task-started``, ``task-succeeded``, ``task-failed``, ``task-retried``, ``task-rejected``,
  ``task-revoked``); ``celery events``,
  Flower and celery-exporter read them;
- remote control: a client (``celery inspect ping``) PUBLISHes ``{"method", "arguments",
  "destination", "ticket", "reply_to"}`` on ``/<db>.celery.pidbox``; each worker that is
  addressed LPUSHes ``{<hostname>: <reply>}`` to the reply queue bound, in
  ``_kombu.binding.reply.celery.pidbox``, to the ``reply_to`` routing key.

Observed with a real Celery 5 worker and ``MONITOR``; nothing here runs unless the consumer is
started with ``celery_events=True`` (``--celery-events``).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import os
import platform
import resource
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import orjson
from redis.asyncio import Redis

from earnorm._version import __version__
from earnorm.events._broker.keys import kombu_binding, text
from earnorm.events._broker.topology import is_cluster

log = logging.getLogger("earnorm.consumer")

SEP = "\x06\x16"
EVENTS = "celeryev"
MAILBOX = "celery.pidbox"
REPLY_EXCHANGE = "reply.celery.pidbox"
HEARTBEAT_S = 2.0  # Celery's worker heartbeat frequency


def _envelope(body: Any, exchange: str, routing_key: str, headers: dict[str, Any],
              delivery_mode: int = 1) -> bytes:
    return orjson.dumps({
        "body": base64.b64encode(orjson.dumps(body, default=repr)).decode(),
        "content-encoding": "utf-8", "content-type": "application/json", "headers": headers,
        "properties": {
            "delivery_mode": delivery_mode,
            "delivery_info": {"exchange": exchange, "routing_key": routing_key},
            "priority": 0, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    })


def database_of(redis: Any) -> int:
    """The Redis database ``redis`` uses, which names kombu's fanout channels (0 on a Redis
    Cluster, which has only that one)."""
    if is_cluster(redis):
        return 0
    return int(redis.connection_pool.connection_kwargs.get("db") or 0)


def mailbox_channel(db: int) -> str:
    """The pub/sub channel of Celery's remote-control broadcasts for Redis database ``db``."""
    return f"/{db}.{MAILBOX}"


def revoke_broadcast(task_ids: list[str], *, terminate: bool, signal: str = "SIGTERM") -> bytes:
    """The ``revoke`` broadcast ``app.control.revoke(...)`` sends: every Celery worker of the
    fleet (and every EarnORM consumer) acts on it."""
    body = {"method": "revoke", "destination": None, "pattern": None, "matcher": None,
            "arguments": {"task_id": task_ids[0] if len(task_ids) == 1 else task_ids,
                          "terminate": terminate, "signal": signal}}
    return _envelope(body, MAILBOX, "", {"clock": 1, "expires": time.time() + 300})


def revoked_in(raw: bytes) -> tuple[list[str], bool] | None:
    """The task ids and the terminate flag of a ``revoke`` broadcast; None for any other."""
    command = _body(raw)
    if not isinstance(command, dict) or command.get("method") != "revoke":
        return None
    arguments = command.get("arguments") or {}
    ids = arguments.get("task_id")
    ids = [ids] if isinstance(ids, str) else [str(i) for i in ids or ()]
    return ids, bool(arguments.get("terminate"))


def _body(raw: bytes) -> Any:
    envelope = orjson.loads(raw)
    body = envelope["body"]
    if (envelope.get("properties") or {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return orjson.loads(body)


class CeleryPresence:
    """One consumer as one Celery worker node: its events, and answers to remote control."""

    def __init__(
        self, redis: Redis, *, node_name: str, queue: str, concurrency: int, prefetch: int,
        task_names: Callable[[], Iterable[str]], on_shutdown: Callable[[], None],
        revoked_ids: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self.redis = redis
        self._prefix = f"/{database_of(redis)}."
        self.hostname = node_name
        self.queue = queue
        self.concurrency = concurrency
        self.prefetch = prefetch
        self._task_names = task_names
        self._on_shutdown = on_shutdown
        self._revoked_ids = revoked_ids
        self._clock = itertools.count(1)
        self._started = time.time()
        self.active: dict[str, dict[str, Any]] = {}  # task id -> what ``inspect active`` shows
        self.processed: Counter[str] = Counter()
        self._pending: list[tuple[str, bytes]] = []
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ events

    def _event(self, kind: str, **fields: Any) -> None:
        """Queue one event for the sender task (never blocks the handler that caused it)."""
        body = {"hostname": self.hostname, "utcoffset": -time.timezone // 3600,
                "pid": os.getpid(), "clock": next(self._clock), "timestamp": time.time(),
                "type": kind, **fields}
        channel = f"{self._prefix}{EVENTS}/{kind.replace('-', '.')}"
        self._pending.append((channel, _envelope(body, EVENTS, kind.replace("-", "."),
                                                 {"hostname": self.hostname})))
        self._wake.set()

    def _worker_event(self, kind: str) -> None:
        self._event(kind, freq=HEARTBEAT_S, active=len(self.active),
                    processed=sum(self.processed.values()), loadavg=list(os.getloadavg()),
                    sw_ident="earnorm", sw_ver=_version(), sw_sys=platform.system())

    def task_received(self, task_id: str, name: str, args: Any, kwargs: Any, retries: int,
                      root_id: str | None, parent_id: str | None) -> None:
        self._event("task-received", uuid=task_id, name=name, args=repr(args),
                    kwargs=repr(kwargs), retries=retries, root_id=root_id, parent_id=parent_id,
                    eta=None, expires=None)

    def task_started(self, task_id: str, name: str, args: Any, kwargs: Any) -> None:
        self.active[task_id] = {
            "id": task_id, "name": name, "args": list(args or ()), "kwargs": dict(kwargs or {}),
            "type": name, "hostname": self.hostname, "time_start": time.time(),
            "acknowledged": False, "worker_pid": os.getpid(),
            "delivery_info": {"exchange": "", "routing_key": self.queue, "priority": 0,
                              "redelivered": False},
        }
        self._event("task-started", uuid=task_id)

    def task_progress(self, task_id: str, state: str, info: dict[str, Any]) -> None:
        """A running task's report: ``task-progress`` (``task-<state>`` for a state of its
        own), which ``celery.events.state`` (Flower) takes as the task's state, with the
        report as the task's ``progress``."""
        self._event(f"task-{state.lower()}", uuid=task_id, progress=info)

    def task_finished(self, task_id: str, name: str, error: BaseException | None,
                      outcome: str, result: Any = None) -> None:
        """``outcome``: ``succeeded``, ``retried`` or ``failed``."""
        started = self.active.pop(task_id, {}).get("time_start", time.time())
        if outcome == "succeeded":
            self.processed[name] += 1
            self._event("task-succeeded", uuid=task_id, result=repr(result),
                        runtime=time.time() - started)
        else:
            self._event(f"task-{outcome}", uuid=task_id, exception=repr(error),
                        traceback="")

    def task_rejected(self, task_id: str) -> None:
        """Not run: it could not be decoded, nobody registered it, or its consumers kept
        dying (Celery's ``task-rejected``; the message is not requeued)."""
        self._event("task-rejected", uuid=task_id, requeue=False)

    def task_revoked(self, task_id: str, *, expired: bool, terminated: bool = False) -> None:
        """Not run because it was revoked, or expired before it could run, or cancelled
        while it ran (``task-revoked``, as Celery 5.7's worker sends them)."""
        self._event("task-revoked", uuid=task_id, terminated=terminated,
                    signum=15 if terminated else None, expired=expired)

    async def _send_events(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, []
            if pending:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for channel, envelope in pending:
                        pipe.publish(channel, envelope)
                    await pipe.execute()

    async def _heartbeats(self) -> None:
        while True:
            await anyio.sleep(HEARTBEAT_S)
            self._worker_event("worker-heartbeat")

    # ------------------------------------------------------------------ remote control

    def reply_for(self, method: str, arguments: dict[str, Any]) -> Any:
        """What Celery's worker answers to ``method`` (a subset: what ``celery status``,
        ``celery inspect`` and Flower ask); None for a command without a reply."""
        if method == "ping":
            return {"ok": "pong"}
        if method == "registered":
            return sorted(self._task_names())
        if method == "active":
            return list(self.active.values())
        if method == "revoke":  # acted on by the consumer's Revocations; this is the reply
            return {"ok": "tasks flagged as revoked"}
        if method == "revoked":  # the queue's, shared: every consumer knows them all
            return sorted(self._revoked_ids())
        if method in ("reserved", "scheduled"):
            return []
        if method == "active_queues":
            return [{"name": self.queue, "exchange": {"name": self.queue, "type": "direct"},
                     "routing_key": self.queue, "durable": True, "exclusive": False,
                     "auto_delete": False, "no_ack": False}]
        if method == "stats":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return {
                "total": dict(self.processed), "pid": os.getpid(),
                "clock": str(next(self._clock)), "uptime": int(time.time() - self._started),
                "pool": {"implementation": "earnorm:asyncio",
                         "max-concurrency": self.concurrency, "processes": [os.getpid()]},
                "broker": {"transport": "redis"}, "prefetch_count": self.prefetch,
                "rusage": {"utime": usage.ru_utime, "stime": usage.ru_stime,
                           "maxrss": usage.ru_maxrss},
                "sw_ident": "earnorm", "sw_ver": _version(),
            }
        if method == "conf":
            return {"broker_transport": "redis", "task_default_queue": self.queue}
        if method == "report":
            return {"ok": f"earnorm {_version()} consuming {self.queue}"}
        if method == "shutdown":
            self._on_shutdown()
            return None
        return {"error": f"No such control command: {method}"}

    async def _mailbox(self, pubsub: Any) -> None:
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None or message.get("type") != "pmessage":
                    continue
                try:
                    await self._answer(message["data"])
                except Exception as exc:  # a malformed command must not stop the mailbox
                    log.warning("remote-control command not answered: %r", exc)
        finally:
            await pubsub.aclose()

    async def _answer(self, raw: bytes) -> None:
        envelope = orjson.loads(raw)
        command = _body(raw)
        expires = (envelope.get("headers") or {}).get("expires")
        if isinstance(expires, (int, float)) and expires < time.time():
            return
        destination = command.get("destination")
        if destination and self.hostname not in destination:
            return
        reply = self.reply_for(str(command.get("method")), command.get("arguments") or {})
        reply_to = command.get("reply_to")
        if reply is None or not isinstance(reply_to, dict):
            return
        routing_key = reply_to.get("routing_key")
        members = await self.redis.smembers(kombu_binding(REPLY_EXCHANGE))
        bindings = [text(m).split(SEP) for m in members]
        queues = {b[2] for b in bindings if len(b) == 3 and b[0] == routing_key}
        body = {self.hostname: reply}
        for queue in queues:
            await self.redis.lpush(queue, _envelope(
                body, REPLY_EXCHANGE, str(routing_key),
                {"ticket": command.get("ticket"), "clock": next(self._clock)}))

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Announce the worker, send its heartbeats and events, answer its mailbox: until
        cancelled, when it says ``worker-offline``. Started (``task_status``) once the mailbox
        is subscribed: a command sent after that is answered."""
        pubsub = self.redis.pubsub()
        await pubsub.psubscribe(f"{self._prefix}{MAILBOX}")
        self._worker_event("worker-online")
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._send_events)
                tg.start_soon(self._heartbeats)
                tg.start_soon(self._mailbox, pubsub)
        finally:
            self._worker_event("worker-offline")
            pending, self._pending = self._pending, []
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                try:
                    for channel, envelope in pending:
                        await self.redis.publish(channel, envelope)
                except Exception as exc:
                    log.debug("worker-offline not sent: %r", exc)


def _version() -> str:
    return __version__

"""The shapes of what EarnORM stores and reports: a failed-job record and a queue snapshot.

Written in one place (``_failures.failure_record``, ``EventBus.stats``), read by the bus, the CLI
and users' code; these TypedDicts are the contract between them. They are plain dicts at run
time (JSON in Redis), typed for readers and type checkers.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class HandlerError(TypedDict):
    """One handler's last failure on a failed job."""

    handler: str
    error_type: str
    error: str
    traceback: str


class FailedJob(TypedDict):
    """A record of the failed store (``Q:failed``), as ``get_failed_jobs()`` returns it.

    ``reason`` is a ``FailureReason`` value. ``envelope`` holds the exact message (or
    ``envelope_base64`` when it was not UTF-8), so ``retry_job`` can put it back.
    """

    job_id: str
    reason: str
    detail: str
    name: str | None
    data: Any
    metadata: dict[str, Any]
    attempts: int
    first_failed_at: str
    last_failed_at: str
    failed_at_ms: float
    handlers: list[str]
    errors: list[HandlerError]
    error_type: str | None
    error: str | None
    traceback: str | None
    deliveries: NotRequired[int]  # delivery_limit: times delivered
    died_holding: NotRequired[list[str]]  # delivery_limit: consumers that died holding it
    size: NotRequired[int]  # too_large: the message's size in bytes
    sha1: NotRequired[str]  # too_large: its digest
    preview: NotRequired[str]  # too_large: its first bytes (non-ASCII shown as '?')
    envelope: NotRequired[str]
    envelope_base64: NotRequired[str]
    # stored only: a large message's data is not repeated beside its envelope; read_record
    # decodes it from there (get_failed_jobs() shows ``data`` as for any record)
    data_in_envelope: NotRequired[bool]
    # a large message dead-lettered while held in a key of its own is kept in Q:aside:<job id>
    # (renamed, never read by a script); ``envelope`` is read from there
    envelope_aside: NotRequired[bool]
    cursor: NotRequired[str]  # added by get_failed_jobs(): pass it back for the next page


class Counters(TypedDict):
    processed: int
    failed: int
    retried: int
    unhandled: int  # events nobody subscribes to, acknowledged (unhandled_events="skip")
    revoked: int  # revoked messages acked without running, or cancelled while they ran


class ProcessingSummary(TypedDict):
    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    window_s: float


class ConsumerInfo(TypedDict):
    id: str
    host: str | None
    pid: int | None
    alive: bool  # before its heartbeat deadline
    status: str  # alive, late (two heartbeats missed: probably dead), dead (past its deadline)
    last_heartbeat: str | None
    last_heartbeat_age_s: float | None
    concurrency: int | None
    running: int | None
    processed: int | None
    failed: int | None
    retried: int | None
    inflight_bytes: int | None  # bytes of the messages it holds (fetched, not settled)
    max_inflight_bytes: int | None  # its budget for those
    largest_message_bytes: int | None  # the largest message it fetched
    loop_blocks: int | None  # times a handler blocked its event loop past block_warn
    rate_waits: int | None  # events it sent to wait for their rate limit's slot
    key_waits: int | None  # events it sent to wait for a slot of their concurrency key


class ServerStats(TypedDict):
    """The Redis server as ``stats()`` saw it, and what consumers recorded of it."""

    run_id: str
    version: str
    uptime_s: int
    maxmemory_policy: str | None  # None: CONFIG GET refused (managed Redis)
    may_evict: bool  # a policy other than noeviction: queued events can vanish
    eviction_allowed: bool  # event_config["allow_eviction"]
    persistence: str  # aof, rdb, aof+rdb, none, unknown
    restarts: int  # restarts consumers saw (run_id changes)
    last_restart: str | None
    last_restart_lost_data: bool  # it restarted with persistence off


class QueueStats(TypedDict):
    """What ``EventBus.stats()`` returns (see its docstring for the meaning of each field)."""

    queue: str
    seen: bool  # False: no key of this queue exists in Redis (a typo in the name?)
    at: str
    ready: dict[int, int]
    ready_total: int
    delayed: int
    next_due_s: float | None  # seconds until the next delayed event is due (None: none)
    inflight: int
    failed: int
    counters: Counters
    counters_since: str | None  # when these counters started
    counters_reset_by_restart: bool  # they started again because Redis lost its data
    recovered: int  # taken back from dead consumers, waiting to run one at a time
    revoked: int  # revoked task ids in force (kept 3 hours), shared by every consumer
    celery_unacked: int  # entries in Celery's unacked store (every queue of this database)
    # Rate-limited event names -> seconds until the next free slot (0: none waiting): how far
    # behind the events waiting for their slots in the delayed set reach.
    rate_limited: dict[str, float]
    # Concurrency keys with events waiting for a slot (``<max_concurrent>:<key>``, the 20 with
    # the latest waits) -> how many wait.
    key_limited: dict[str, int]
    server: ServerStats
    processing_ms: ProcessingSummary
    latency_s: float | None
    consumers: list[ConsumerInfo]
    # With an outbox relay in this process: pending entries, the oldest one's age (the relay's
    # lag), entries it relayed, its errors and the last one.
    outbox: NotRequired[dict[str, Any]]

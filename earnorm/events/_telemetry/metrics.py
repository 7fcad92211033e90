"""Prometheus metrics for a consumer, named and labelled like celery-exporter's, so its Grafana
dashboards and alerts work unchanged (``prometheus-client``, the ``metrics`` extra).

Per-consumer counters come from this process: ``celery_task_{received,started,succeeded,failed,
retried,rejected,revoked}_total`` and ``celery_task_sent_total`` (canvas follow-ups it published),
labelled ``name``, ``hostname``, ``queue_name`` (and ``exception`` on failed), and the
``celery_task_runtime`` histogram in seconds. Queue-wide gauges come from Redis, refreshed on
every heartbeat, so every consumer reports the same truth: ``celery_queue_length``,
``celery_worker_up`` and ``celery_worker_tasks_active`` per consumer (with EarnORM's
``earnorm_inflight_bytes``, ``earnorm_max_inflight_bytes``, ``earnorm_largest_message_bytes``),
and EarnORM's own
``earnorm_failed_jobs``, ``earnorm_delayed``, ``earnorm_next_due_seconds``,
``earnorm_inflight``, ``earnorm_recovered_waiting``, ``earnorm_celery_unacked``; plus this
process's ``earnorm_dead_letters_total{reason}`` (``delivery_limit``: deliveries past the
limit), ``earnorm_unhandled_events_total{name}`` (events nobody subscribes to, skipped),
``earnorm_recoveries_total``, ``earnorm_loop_blocked_total{handler}`` and
``earnorm_loop_blocked_seconds_total`` (handlers that blocked the event loop) and
``earnorm_schedule_ticks_total{schedule,outcome}``
(periodic ticks it fired, caught up or skipped: each tick is counted by the one consumer that
claimed it, so the sum over consumers is the fleet's).
"""

from __future__ import annotations

import contextlib
from typing import Any

from earnorm._errors import ConfigError
from earnorm.events._wire.records import QueueStats

_TASK_LABELS = ("name", "hostname", "queue_name")


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigError(
            "metrics need prometheus-client: pip install 'earnorm[metrics]'"
        ) from None
    return prometheus_client


class Metrics:
    """One consumer's metrics in their own registry (``generate()`` renders them)."""

    def __init__(self, queue: str, hostname: str) -> None:
        prom = _prometheus()
        self.queue = queue
        self._waiting_keys: set[str] = set()  # key_waiting's label sets now set
        self.hostname = hostname
        self.registry = registry = prom.CollectorRegistry()
        counter, gauge = prom.Counter, prom.Gauge
        self.counters = {
            kind: counter(f"celery_task_{kind}", f"Tasks {kind} (celery-exporter's name).",
                          _TASK_LABELS, registry=registry)
            for kind in ("sent", "received", "started", "succeeded", "retried", "rejected",
                         "revoked")
        }
        self.failed = counter("celery_task_failed", "Tasks failed for good.",
                              (*_TASK_LABELS, "exception"), registry=registry)
        self.runtime = prom.Histogram("celery_task_runtime", "Task runtime in seconds.",
                                      _TASK_LABELS, registry=registry)
        self.dead_letters = counter("earnorm_dead_letters", "Messages this consumer moved to "
                                    "the failed store, by reason.", ("queue_name", "reason"),
                                    registry=registry)
        self.recoveries = counter("earnorm_recoveries", "Messages this consumer took back from "
                                  "consumers that died.", ("queue_name",), registry=registry)
        self.recoveries.labels(queue)  # exported at 0 from the start: alerts see it
        self.unhandled_events = counter(
            "earnorm_unhandled_events", "Events no handler subscribes to, acknowledged "
            "(event_config unhandled_events='skip'), by event name.", ("queue_name", "name"),
            registry=registry)
        self.schedule_ticks = counter(
            "earnorm_schedule_ticks", "Periodic ticks this consumer claimed: outcome fired (an "
            "on-time event), caught_up (missed ticks covered by one catch-up event) or skipped "
            "(missed ticks dropped).", ("queue_name", "schedule", "outcome"), registry=registry)
        self.loop_blocks = counter(
            "earnorm_loop_blocked", "Times the event loop did not run for longer than the "
            "consumer's block_warn, by the handler that blocked it ('' for code outside "
            "handlers).", ("queue_name", "handler"), registry=registry)
        self.loop_blocked_seconds = counter(
            "earnorm_loop_blocked_seconds", "Seconds the event loop spent blocked, in blocks "
            "longer than block_warn.", ("queue_name",), registry=registry)
        self.loop_blocked_seconds.labels(queue)
        self.rate_waits = counter(
            "earnorm_rate_waits", "Events this consumer sent to wait in the delayed set for "
            "their rate limit's slot, by event name.", ("queue_name", "name"),
            registry=registry)
        self.key_waits = counter(
            "earnorm_key_waits", "Events this consumer sent to wait in Redis for a slot of "
            "their concurrency key, by event name.", ("queue_name", "name"), registry=registry)
        self.key_waiting = gauge(
            "earnorm_key_waiting", "Events waiting for a slot of their concurrency key "
            "(max:key), for the keys with the latest waits.", ("queue_name", "key"),
            registry=registry)
        self.rate_limited = gauge(
            "earnorm_rate_limited_seconds", "Seconds until a rate-limited event name's next "
            "free slot: how far ahead the events waiting for it reach (0: none waiting).",
            ("queue_name", "name"), registry=registry)
        self.queue_length = gauge("celery_queue_length", "Messages waiting in the queue's "
                                  "ready lists.", ("queue_name",), registry=registry)
        self.worker_up = gauge("celery_worker_up", "1 while a consumer heartbeats.",
                               ("hostname",), registry=registry)
        self.tasks_active = gauge("celery_worker_tasks_active", "Tasks a consumer is running.",
                                  ("hostname",), registry=registry)
        self.inflight_bytes = {
            key: gauge(f"earnorm_{key}", help_text, ("hostname",), registry=registry)
            for key, help_text in (
                ("inflight_bytes", "Bytes of the messages a consumer holds (fetched, not "
                                   "settled)."),
                ("max_inflight_bytes", "A consumer's budget for those bytes."),
                ("largest_message_bytes", "The largest message a consumer fetched."),
            )
        }
        self.gauges = {
            name: gauge(name, help_text, ("queue_name",), registry=registry)
            for name, help_text in (
                ("earnorm_failed_jobs", "Jobs in the failed (dead-letter) store."),
                ("earnorm_delayed", "Delayed events and retries waiting."),
                ("earnorm_next_due_seconds", "Seconds until the next delayed event is due."),
                ("earnorm_inflight", "Messages held by consumers, not yet acked."),
                ("earnorm_recovered_waiting", "Messages taken back from dead consumers, "
                                              "waiting to run."),
                ("earnorm_celery_unacked", "Entries in Celery's unacked store."),
                ("earnorm_revoked", "Revoked task ids in force (kept 3 hours)."),
            )
        }

    def task(self, kind: str, name: str) -> None:
        self.counters[kind].labels(name, self.hostname, self.queue).inc()

    def task_failed(self, name: str, error: BaseException | None) -> None:
        exception = type(error).__name__ if error is not None else ""
        self.failed.labels(name, self.hostname, self.queue, exception).inc()

    def observe_runtime(self, name: str, seconds: float) -> None:
        self.runtime.labels(name, self.hostname, self.queue).observe(seconds)

    def recovered(self, count: int) -> None:
        self.recoveries.labels(self.queue).inc(count)

    def loop_blocked(self, handler: str | None) -> None:
        self.loop_blocks.labels(self.queue, handler or "").inc()

    def loop_unblocked(self, seconds: float) -> None:
        self.loop_blocked_seconds.labels(self.queue).inc(seconds)

    def unhandled(self, name: str) -> None:
        self.unhandled_events.labels(self.queue, name).inc()

    def dead_lettered(self, reason: str) -> None:
        self.dead_letters.labels(self.queue, reason).inc()

    def schedule_tick(self, schedule: str, outcome: str, count: int = 1) -> None:
        self.schedule_ticks.labels(self.queue, schedule, outcome).inc(count)

    def refresh(self, stats: QueueStats, node_of: dict[str, str]) -> None:
        """Set the queue-wide gauges from a ``stats()`` snapshot; ``node_of`` maps consumer
        ids to their node names (hostname labels)."""
        q = self.queue
        self.queue_length.labels(q).set(stats["ready_total"])
        for consumer in stats["consumers"]:
            node = node_of.get(consumer["id"], consumer["id"])
            self.worker_up.labels(node).set(1 if consumer["status"] == "alive" else 0)
            self.tasks_active.labels(node).set(consumer["running"] or 0)
            for key, metric in self.inflight_bytes.items():
                metric.labels(node).set(consumer.get(key) or 0)
        next_due = stats.get("next_due_s")
        values = {
            "earnorm_failed_jobs": stats["failed"], "earnorm_delayed": stats["delayed"],
            "earnorm_inflight": stats["inflight"], "earnorm_recovered_waiting":
            stats["recovered"], "earnorm_celery_unacked": stats["celery_unacked"],
            "earnorm_revoked": stats["revoked"],
            "earnorm_next_due_seconds": next_due if isinstance(next_due, (int, float)) else 0,
        }
        for name, value in values.items():
            self.gauges[name].labels(q).set(value)
        for name, seconds in stats.get("rate_limited", {}).items():
            self.rate_limited.labels(q, name).set(seconds)
        waiting = stats.get("key_limited", {})
        for labels in list(self._waiting_keys - waiting.keys()):  # gone: a label set less
            with contextlib.suppress(KeyError):
                self.key_waiting.remove(q, labels)
        for key, count in waiting.items():
            self.key_waiting.labels(q, key).set(count)
        self._waiting_keys = set(waiting)

    def rate_wait(self, name: str) -> None:
        self.rate_waits.labels(self.queue, name).inc()

    def key_wait(self, name: str) -> None:
        self.key_waits.labels(self.queue, name).inc()

    def generate(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        prom = _prometheus()
        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST


def merged_exposition(all_metrics: list[Metrics]) -> tuple[bytes, str]:
    """Several consumers' metrics as one page: families of one name merged, so every metric
    has one HELP and TYPE line (several queues in one process)."""
    prom = _prometheus()
    families: dict[str, Any] = {}
    for metrics in all_metrics:
        for family in metrics.registry.collect():
            kept = families.get(family.name)
            if kept is None:
                families[family.name] = family
            else:
                kept.samples.extend(family.samples)

    class _Merged:
        def collect(self) -> Any:
            return iter(families.values())

    registry = prom.CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return prom.generate_latest(registry), prom.CONTENT_TYPE_LATEST

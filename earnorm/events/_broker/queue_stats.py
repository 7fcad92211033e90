"""``EventBus.stats()``: one queue's keys and its server, read from Redis, as ``QueueStats``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from earnorm._config import EventConfig
from earnorm.events._broker.broker import Broker
from earnorm.events._telemetry.timings import merge, percentiles
from earnorm.events._wire.clock import iso_ms
from earnorm.events._wire.records import (
    ConsumerInfo,
    Counters,
    ProcessingSummary,
    QueueStats,
    ServerStats,
)


async def queue_stats(broker: Broker, config: EventConfig) -> QueueStats:
    """See ``EventBus.stats``."""
    snap = await broker.snapshot()
    info = await broker.server.info()
    now_ms: float = snap["now_ms"]
    consumers: list[ConsumerInfo] = []
    histograms: list[dict[str, int]] = []
    window = 0.0
    for cid, deadline in snap["consumers"].items():
        summary = _loads(snap["monitor"].get(cid)) or {}
        beat = summary.get("heartbeat_ms")
        consumers.append({
            "id": cid,
            "host": summary.get("host"),
            "pid": summary.get("pid"),
            "alive": deadline >= now_ms,
            "status": _status(deadline, beat, summary.get("heartbeat_interval_s"), now_ms),
            "last_heartbeat": iso_ms(beat) if beat else None,
            "last_heartbeat_age_s": round((now_ms - beat) / 1000, 3) if beat else None,
            "concurrency": summary.get("concurrency"),
            "running": summary.get("running"),
            "processed": summary.get("processed"),
            "failed": summary.get("failed"),
            "retried": summary.get("retried"),
            "inflight_bytes": summary.get("inflight_bytes"),
            "max_inflight_bytes": summary.get("max_inflight_bytes"),
            "largest_message_bytes": summary.get("largest_message_bytes"),
            "loop_blocks": summary.get("loop_blocks"),
            "rate_waits": summary.get("rate_waits"),
            "key_waits": summary.get("key_waits"),
        })
        if deadline >= now_ms and isinstance(summary.get("histogram"), dict):
            histograms.append(summary["histogram"])
            window = max(window, float(summary.get("window_s") or 0))
    totals = snap["counters"]
    recorded = snap["server"]
    last_restart_ms = float(recorded.get("last_restart_ms") or 0)
    server: ServerStats = {
        "run_id": info.run_id, "version": info.version, "uptime_s": info.uptime_s,
        "maxmemory_policy": info.maxmemory_policy, "may_evict": info.may_evict,
        "eviction_allowed": config.allow_eviction, "persistence": info.persistence,
        "restarts": int(recorded.get("restarts") or 0),
        "last_restart": iso_ms(last_restart_ms) if last_restart_ms else None,
        "last_restart_lost_data": recorded.get("last_restart_lost_data") == "1",
    }
    counters: Counters = {"processed": totals.get("processed", 0),
                          "failed": totals.get("failed", 0),
                          "retried": totals.get("retried", 0),
                          "unhandled": totals.get("unhandled", 0),
                          "revoked": totals.get("revoked", 0)}
    p = percentiles(merge(histograms))
    processing: ProcessingSummary = {
        "count": int(p["count"] or 0), "p50": p["p50"], "p95": p["p95"], "p99": p["p99"],
        "window_s": window,
    }
    stats: QueueStats = {
        "queue": config.queue_name,
        "seen": snap["seen"],
        "at": iso_ms(now_ms),
        "ready": snap["ready"],
        "ready_total": sum(snap["ready"].values()),
        "delayed": snap["delayed"],
        "next_due_s": (None if snap["next_delayed_ms"] is None
                       else round(max(snap["next_delayed_ms"] - now_ms, 0.0) / 1000, 3)),
        "inflight": snap["inflight"],
        "failed": snap["failed"],
        "counters": counters,
        "counters_since": iso_ms(totals["since_ms"]) if totals.get("since_ms") else None,
        "counters_reset_by_restart": "reset_by_restart_ms" in totals,
        "recovered": snap["recovered"],
        "revoked": snap["revoked"],
        "celery_unacked": snap["celery_unacked"],
        "rate_limited": {name: round(max(slot / 1000 - now_ms, 0.0) / 1000, 3)
                         for name, slot in sorted(snap["rate_slots_us"].items())},
        "key_limited": snap["key_waiting"],
        "server": server,
        "processing_ms": processing,
        "latency_s": _latency_s(snap, now_ms),
        "consumers": consumers,
    }
    return stats


def _loads(raw: bytes | None) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None


def _status(deadline: float, beat: Any, interval: Any, now_ms: float) -> str:
    """``alive``; ``late`` (two heartbeats missed: probably dead, its messages not yet handed
    back); ``dead`` (past its deadline: a live consumer recovers its messages).

    >>> _status(10_000, 9_000, 0.5, 9_500), _status(10_000, 8_000, 0.5, 9_500)
    ('alive', 'late')
    >>> _status(10_000, 8_000, 0.5, 10_001)
    'dead'
    """
    if deadline < now_ms:
        return "dead"
    if isinstance(beat, (int, float)) and isinstance(interval, (int, float)) and (
            now_ms - beat > 2 * interval * 1000):
        return "late"
    return "alive"


def _parse_iso(value: str) -> float | None:
    """Unix ms of an ISO-8601 header value (naive = UTC), None if it is not one."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
    except ValueError:
        return None
    if parsed is None:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp() * 1000


def _latency_s(snap: dict[str, Any], now_ms: float) -> float | None:
    """Age of the oldest event that is ready to run: the tail of each ready list (since its eta,
    or its publish time), and a due but not yet promoted delayed event."""
    since: list[float] = []
    for eta, timestamp in snap["oldest_ready"]:
        # e.g. from Celery's send_task, neither: nothing tells when it was sent
        for value in (eta, timestamp):
            stamp = _parse_iso(value)
            if stamp is not None:
                since.append(stamp)
                break
    due = snap["next_delayed_ms"]
    if due is not None and due <= now_ms:
        since.append(due)
    if not since:
        return None if not snap["oldest_ready"] else 0.0
    return round(max(now_ms - min(since), 0.0) / 1000, 3)

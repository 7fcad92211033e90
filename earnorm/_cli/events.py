"""``python -m earnorm.events``: queue stats and the failed-job store, for operators and scripts.

::

    python -m earnorm.events stats [--watch [--interval 2]]
    python -m earnorm.events failed list [--limit 50] [--event NAME] [--cursor C]
    python -m earnorm.events failed show JOB_ID
    python -m earnorm.events failed retry (JOB_ID | --all [--event NAME])
    python -m earnorm.events failed remove (JOB_ID | --all [--event NAME])
    python -m earnorm.events revoke JOB_ID... [--terminate]
    python -m earnorm.events health [--json]   # exit 0 ok, 1 degraded, 2 down
    python -m earnorm.events local-redis [--port 6379]   # a private server for development

Every command takes ``--redis-uri`` (``EARNORM_REDIS_URI`` / ``REDIS_URL``), ``--queue``
(``EARNORM_QUEUE``) and ``--json``. Exit codes: 0 done, 1 no such job (or, for ``stats``, a
queue never seen), 2 usage error, 3 Redis unreachable, 4 refused (a job whose message cannot be
decoded cannot be retried).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from earnorm._errors import BrokerConnectionError, EarnORMError, JobNotFound
from earnorm.events._broker.connect import mask_url, unreachable
from earnorm.events._broker.errors import TRANSIENT_ERRORS
from earnorm.events._bus import EventBus
from earnorm.events._tools.embedded import start_local_redis
from earnorm.events._wire.records import FailedJob, QueueStats

OK, NOT_FOUND, USAGE, UNREACHABLE, REFUSED = 0, 1, 2, 3, 4
_CLEAR = "\x1b[H\x1b[2J"


class _Usage(Exception):
    """A usage error found after parsing (argparse's own exit with 2 too)."""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: options may come before or after the command without the later parser
    # overwriting what the earlier one read.
    common.add_argument("--redis-uri", default=argparse.SUPPRESS,
                        help="redis:// or rediss:// URL [EARNORM_REDIS_URI, REDIS_URL]")
    common.add_argument("--queue", default=argparse.SUPPRESS,
                        help="queue name [EARNORM_QUEUE] (default: earnorm:events)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    common.add_argument("--mongo-uri", default=argparse.SUPPRESS,
                        help="MongoDB of the transactional outbox: stats then show its size "
                             "and lag [EARNORM_MONGO_URI, MONGODB_URI]")
    common.add_argument("--database", default=argparse.SUPPRESS,
                        help="MongoDB database [EARNORM_DATABASE]")
    parser = argparse.ArgumentParser(
        prog="python -m earnorm.events", parents=[common],
        description="Inspect an EarnORM queue: stats, and the failed-job (dead-letter) store.",
        epilog="exit codes: 0 done, 1 no such job or queue, 2 usage error, 3 Redis unreachable, "
               "4 refused (e.g. retrying a job whose message is undecodable)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stats = commands.add_parser("stats", parents=[common], help="queue sizes, counters, timings")
    stats.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
    stats.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    stats.add_argument("--count", type=int, default=None,
                       help="with --watch: stop after this many refreshes")

    commands.add_parser(
        "health", parents=[common],
        help="ok / degraded / down, as exit code 0 / 1 / 2 (with --json, the reasons)")

    dashboard = commands.add_parser(
        "dashboard", parents=[common],
        help="the web dashboard (needs the dashboard extra); off loopback it requires "
             "EARNORM_DASHBOARD_TOKEN")
    dashboard.add_argument("--port", type=int, default=8080)
    dashboard.add_argument("--host", default="127.0.0.1")

    local = commands.add_parser(
        "local-redis", help="run a private Redis-compatible server on 127.0.0.1 until Ctrl-C "
                            "(the embedded extra's valkey-server, or one on PATH)")
    local.add_argument("--port", type=int, default=6379)

    schedules = commands.add_parser(
        "schedules", parents=[common],
        help="periodic schedules: what each is, its last tick and its next")
    schedules.add_argument("--app", help="module that registers them (@periodic_event), to "
                                         "list schedules that never fired too [EARNORM_APP]")

    revoke = commands.add_parser(
        "revoke", parents=[common],
        help="revoke jobs: they never run (kept 3 hours, for every consumer of the queue); "
             "with --terminate a running one is cancelled")
    revoke.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    revoke.add_argument("--terminate", action="store_true",
                        help="also cancel the handler if it is running")

    failed = commands.add_parser("failed", parents=[common], help="the failed-job store")
    actions = failed.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="failed jobs, oldest first")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--event", help="only this event name")
    listing.add_argument("--cursor", help="continue after this cursor (printed by a page)")
    show = actions.add_parser("show", parents=[common], help="one failed job in full")
    show.add_argument("job_id")
    for name, what in (("retry", "put back on the queue"), ("remove", "delete")):
        action = actions.add_parser(name, parents=[common], help=f"{what}: one job or --all")
        action.add_argument("job_id", nargs="?")
        action.add_argument("--all", action="store_true", help="every failed job")
        action.add_argument("--event", help="with --all: only this event name")
    return parser


# ---------------------------------------------------------------------------- rendering

def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:g} ms"


def _outbox_line(outbox: dict[str, Any]) -> str:
    lag = outbox["oldest_pending_s"]
    line = (f"{outbox['pending']} pending (oldest {'-' if lag is None else f'{lag:g} s'}), "
            f"{outbox['relayed']} relayed, {outbox['errors']} relay error(s)")
    return line + (f"; last: {outbox['last_error']}" if outbox.get("last_error") else "")


def render_stats(stats: QueueStats) -> str:
    ready = ", ".join(f"p{step} {n}" for step, n in stats["ready"].items())
    counters = stats["counters"]
    timing = stats["processing_ms"]
    latency = stats["latency_s"]
    seen = "" if stats["seen"] else "  (never seen: none of its keys exist)"
    lines = [
        f"queue {stats['queue']}  at {stats['at']}{seen}",
        "",
        _table(["", ""], [
            ["ready", f"{stats['ready_total']}  ({ready})"],
            ["delayed", stats["delayed"]],
            ["in-flight", stats["inflight"]],
            ["failed", stats["failed"]],
            ["processed", f"{counters['processed']}  (total; dead-lettered {counters['failed']}, "
                          f"retries {counters['retried']})"],
            ["processing", f"p50 {_ms(timing['p50'])}  p95 {_ms(timing['p95'])}  "
                           f"p99 {_ms(timing['p99'])}  ({timing['count']} events, last "
                           f"{timing['window_s']:g} s)"],
            ["latency", "-" if latency is None else f"{latency:g} s (oldest waiting event)"],
            *([["outbox", _outbox_line(stats["outbox"])]] if "outbox" in stats else []),
        ]).split("\n", 1)[1],
        "",
    ]
    consumers = stats["consumers"]
    if not consumers:
        lines.append("no live consumers")
    else:
        lines.append(_table(
            ["CONSUMER", "HOST", "PID", "STATUS", "LAST HEARTBEAT", "RUNNING", "PROCESSED",
             "FAILED"],
            [[c["id"], c["host"], c["pid"], c["status"],
              "-" if c["last_heartbeat_age_s"] is None
              else f"{c['last_heartbeat_age_s']:.1f}s ago",
              c["running"], c["processed"], c["failed"]] for c in consumers],
        ))
    return "\n".join(lines)


def _when(job: FailedJob) -> str:
    ms = job.get("failed_at_ms")
    if not isinstance(ms, (int, float)):
        return str(job.get("last_failed_at") or "")
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(text: Any, width: int = 60) -> str:
    line = " ".join(str(text or "").split())
    return line if len(line) <= width else line[: width - 1] + "…"


def render_jobs(jobs: list[FailedJob], next_cursor: str | None) -> str:
    if not jobs:
        return "no failed jobs"
    out = _table(
        ["JOB ID", "EVENT", "REASON", "ATTEMPTS", "LAST FAILED (UTC)", "ERROR"],
        [[j["job_id"], j.get("name") or "-", j.get("reason"), j.get("attempts"), _when(j),
          _short(f"{j['error_type']}: {j.get('error')}" if j.get("error_type")
                 else j.get("detail"))] for j in jobs],
    )
    if next_cursor:
        out += f"\n\nmore: --cursor '{next_cursor}'"
    return out


def render_job(job: FailedJob) -> str:
    fields = [
        ("job id", job["job_id"]), ("event", job.get("name")), ("reason", job.get("reason")),
        ("detail", job.get("detail")), ("attempts", job.get("attempts")),
        ("handlers", ", ".join(job.get("handlers") or []) or "-"),
        ("first failed", job.get("first_failed_at")), ("last failed", job.get("last_failed_at")),
        ("data", orjson.dumps(job.get("data")).decode()),
        ("metadata", orjson.dumps(job.get("metadata")).decode()),
    ]
    out = [_table(["", ""], fields).split("\n", 1)[1]]
    for error in job.get("errors") or []:
        out += ["", f"--- {error['handler']}: {error['error_type']}: {error['error']}",
                error.get("traceback", "").rstrip()]
    return "\n".join(out)


# ---------------------------------------------------------------------------- commands

def _emit(out: TextIO, args: argparse.Namespace, data: Any, human: str) -> None:
    if args.json:
        out.write(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
    else:
        out.write(human + "\n")
    out.flush()


async def _stats(bus: EventBus, args: argparse.Namespace, out: TextIO) -> int:
    if not args.watch:
        stats = await bus.stats()
        waiting_in_outbox = "outbox" in stats and stats["outbox"]["pending"]
        if not stats["seen"] and not waiting_in_outbox:
            print(f"error: {_never_seen(stats, args)}", file=sys.stderr)
            return NOT_FOUND
        _emit(out, args, stats, render_stats(stats))
        return OK
    clear = out.isatty() and not args.json
    shown = 0
    while args.count is None or shown < args.count:
        if shown:
            await asyncio.sleep(args.interval)
        stats = await bus.stats()
        if clear:
            out.write(_CLEAR)
        elif shown and not args.json:
            out.write("\n")
        _emit(out, args, stats, render_stats(stats))
        shown += 1
    return OK


HEALTH_OK, HEALTH_DEGRADED, HEALTH_DOWN = 0, 1, 2


def health_of(stats: QueueStats) -> tuple[int, list[str]]:
    """(exit code, reasons): ok when a live consumer serves the queue; degraded when events
    wait with no live consumer, a consumer is late or dead, or Redis may evict or lost data."""
    reasons: list[str] = []
    alive = [c for c in stats["consumers"] if c["status"] == "alive"]
    waiting = stats["ready_total"] + stats["recovered"]
    if waiting and not alive:
        reasons.append(f"{waiting} event(s) waiting and no live consumer")
    reasons += [f"consumer {c['id']} is {c['status']}" for c in stats["consumers"]
                if c["status"] != "alive"]
    if stats["server"]["may_evict"]:
        reasons.append(f"Redis maxmemory-policy {stats['server']['maxmemory_policy']} may "
                       "evict queued events")
    if stats["counters_reset_by_restart"]:
        reasons.append("Redis restarted and lost its data")
    return (HEALTH_DEGRADED if reasons else HEALTH_OK), reasons


async def _health(bus: EventBus, args: argparse.Namespace, out: TextIO) -> int:
    stats = await bus.stats()
    code, reasons = health_of(stats)
    state = "ok" if code == HEALTH_OK else "degraded"
    alive = sum(c["status"] == "alive" for c in stats["consumers"])
    human = f"{state}: queue {stats['queue']}, {alive} live consumer(s)" + "".join(
        f"\n  - {r}" for r in reasons)
    _emit(out, args, {"status": state, "reasons": reasons, "queue": stats["queue"],
                      "live_consumers": alive}, human)
    return code


def _never_seen(stats: QueueStats, args: argparse.Namespace) -> str:
    return (f"queue {stats['queue']!r} has never been seen on {mask_url(args.redis_uri)}: "
            "none of its keys exist (check --queue / EARNORM_QUEUE)")


async def _failed(bus: EventBus, args: argparse.Namespace, out: TextIO) -> int:
    if args.action == "list":
        if args.limit < 1:
            raise _Usage("--limit must be >= 1")
        try:
            jobs = await bus.get_failed_jobs(args.limit, args.cursor, args.event)
        except EarnORMError as exc:  # a malformed --cursor
            raise _Usage(str(exc)) from exc
        more = jobs[-1]["cursor"] if len(jobs) == args.limit else None
        if more and not await bus.get_failed_jobs(1, more, args.event):
            more = None
        _emit(out, args, {"jobs": jobs, "next_cursor": more}, render_jobs(jobs, more))
        return OK
    if args.action == "show":
        job = await bus.get_failed_job(args.job_id)
        _emit(out, args, job, render_job(job))
        return OK
    if args.all == bool(args.job_id):
        raise _Usage(f"failed {args.action}: give a job id or --all (one of them)")
    if args.event and not args.all:
        raise _Usage("--event goes with --all")
    one: Callable[[str], Awaitable[object]]
    if args.action == "retry":
        bulk, one, done = bus.retry_failed, bus.retry_job, "retried"
    else:
        bulk, one, done = bus.purge_failed, bus.remove_job, "removed"
    if args.all:
        count = await bulk(args.event)
    else:
        await one(args.job_id)
        count = 1
    _emit(out, args, {done: count}, f"{done} {count} job(s)")
    return OK


async def _schedules(bus: EventBus, args: argparse.Namespace, out: TextIO) -> int:
    import importlib

    from earnorm.events._broker.schedule_store import ScheduleStore
    from earnorm.events._periodic import default_schedules

    app = args.app or os.environ.get("EARNORM_APP")
    if app:
        sys.path.insert(0, os.getcwd())
        importlib.import_module(app)
    known = {s.name: s for s in default_schedules.all()}
    recorded = await ScheduleStore(bus.redis, bus.broker.keys).info()
    now = bus.now_ms()
    rows: list[dict[str, Any]] = []
    for name in sorted(set(known) | set(recorded)):
        info, schedule = recorded.get(name, {}), known.get(name)
        last = info.get("last_tick_ms")
        nxt = schedule.next_after(now) if schedule is not None else info.get("next_ms")
        rows.append({
            "name": name,
            "schedule": schedule.describe() if schedule else info.get("schedule"),
            "missed": schedule.missed if schedule else info.get("missed_policy"),
            "last_tick": _utc(last) if last else None,
            "last_tick_fired": info.get("last_tick_fired") if last else None,
            "next": _utc(nxt) if nxt else None,
            "registered": schedule is not None,
        })
    human = _table(["NAME", "SCHEDULE", "MISSED", "LAST TICK", "FIRED", "NEXT"], [
        [r["name"], r["schedule"], r["missed"], r["last_tick"] or "never",
         {True: "yes", False: "skipped", None: "-"}[r["last_tick_fired"]], r["next"] or "-"]
        for r in rows]) if rows else "no schedules (give --app to list registered ones)"
    _emit(out, args, rows, human)
    return OK


def _utc(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    bus = await EventBus.connect(args.redis_uri, {"queue_name": args.queue})
    client = None
    try:
        if args.mongo_uri:  # the outbox's size and lag in stats (a relay that is not run)
            from earnorm._environment import connect_mongo
            from earnorm._outbox import OutboxRelay

            client, database = await connect_mongo(args.mongo_uri, args.database, 5.0)
            bus.outbox = OutboxRelay(bus, database)
        if args.command == "stats":
            return await _stats(bus, args, out)
        if args.command == "health":
            return await _health(bus, args, out)
        if args.command == "schedules":
            return await _schedules(bus, args, out)
        if args.command == "revoke":
            await bus.revoke(args.job_ids, terminate=args.terminate)
            _emit(out, args, {"revoked": len(args.job_ids), "terminate": args.terminate},
                  f"revoked {len(args.job_ids)} job(s)"
                  + (" (running ones are cancelled)" if args.terminate else ""))
            return OK
        return await _failed(bus, args, out)
    finally:
        if client is not None:
            await client.close()
        await bus.close()


def _dashboard(args: argparse.Namespace, out: TextIO) -> int:
    from earnorm.events._tools.dashboard import check_binding, dashboard_app

    token = os.environ.get("EARNORM_DASHBOARD_TOKEN") or None
    try:
        check_binding(args.host, token)
        import uvicorn
    except (EarnORMError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE

    async def serve() -> None:
        bus = await EventBus.connect(args.redis_uri, queue_name=args.queue)
        config = uvicorn.Config(dashboard_app(bus, token=token), host=args.host,
                                port=args.port, log_level="warning")
        print(f"dashboard for queue {args.queue} on http://{args.host}:{args.port}/",
              file=out, flush=True)
        try:
            await uvicorn.Server(config).serve()
        finally:
            await bus.close()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    except BrokerConnectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return UNREACHABLE
    return OK


class _Stopped(Exception):
    """SIGTERM or SIGHUP, handled like Ctrl-C: the server stops with us."""


def _stop_on_signal(signum: int, frame: object) -> None:
    raise _Stopped(signal.Signals(signum).name)


def _local_redis(port: int, out: TextIO) -> int:
    try:
        server = start_local_redis(port)
    except EarnORMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE
    stops = (signal.SIGTERM, signal.SIGHUP)
    try:  # a signal from here on (even before the line is out) stops the server with us
        for sig in stops:
            signal.signal(sig, _stop_on_signal)
        print(f"serving {server.url} (data is not kept; Ctrl-C, SIGTERM or SIGHUP stops it)",
              file=out, flush=True)
        code = server.process.wait()
    except (KeyboardInterrupt, _Stopped):
        return OK
    finally:
        for sig in stops:  # a second signal must not cut the server's stop short
            signal.signal(sig, signal.SIG_IGN)
        server.stop()
    print(f"error: the server exited by itself with code {code} (log: {server.log_file})",
          file=sys.stderr)
    return USAGE


def _unreachable(why: str, started: float, args: argparse.Namespace, out: TextIO) -> int:
    print(f"error: {why} (after {time.monotonic() - started:.1f}s)", file=sys.stderr)
    if args.command == "health":
        _emit(out, args, {"status": "down", "reasons": [why]}, f"down: {why}")
        return HEALTH_DOWN
    return UNREACHABLE


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = _parser().parse_args(argv)  # exits with 2 on a usage error
    # Not parser.set_defaults: it would write into the option objects the subcommands share.
    env = os.environ.get
    defaults = {"redis_uri": env("EARNORM_REDIS_URI") or env("REDIS_URL"),
                "queue": env("EARNORM_QUEUE", "earnorm:events"), "json": False,
                "mongo_uri": env("EARNORM_MONGO_URI") or env("MONGODB_URI"),
                "database": env("EARNORM_DATABASE")}
    for key, value in defaults.items():
        if not hasattr(args, key):
            setattr(args, key, value)
    if args.command == "local-redis":
        return _local_redis(args.port, out)
    if args.command == "dashboard" and args.redis_uri:
        return _dashboard(args, out)
    if not args.redis_uri:
        print("error: no Redis URL: give --redis-uri or set EARNORM_REDIS_URI (or REDIS_URL)",
              file=sys.stderr)
        return USAGE
    started = time.monotonic()
    try:
        return asyncio.run(_run(args, out))
    except _Usage as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE
    except JobNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return NOT_FOUND
    except BrokerConnectionError as exc:
        return _unreachable(str(exc), started, args, out)
    except TRANSIENT_ERRORS as exc:
        return _unreachable(str(unreachable(args.redis_uri, exc)), started, args, out)
    except EarnORMError as exc:  # e.g. a job whose message is undecodable cannot be retried
        print(f"error: {exc}", file=sys.stderr)
        return REFUSED
    except KeyboardInterrupt:  # stats --watch ends with Ctrl-C
        return OK

"""``python -m earnorm.events.consumer``: run a consumer for an application's handlers.

Every option has an environment variable. With no Redis URL at all, a private local server is
started (the ``embedded`` extra), so ``python -m earnorm.events.consumer --app examples.app``
works on a fresh machine.

Exit codes: 0 stopped on SIGTERM/SIGINT, 2 usage or configuration error, 3 Redis unreachable at
start, 4 the ``--app`` module could not be imported, 5 (``--processes``) a consumer process kept
dying; 6 a supervised child retired past ``--max-tasks-per-child`` / ``--max-memory-per-child``
(its supervisor replaces it; never the supervisor's own code). Each failure is one line on
stderr (the traceback too with ``--log-level DEBUG``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from earnorm._cli.app_settings import AppSettings, probe_redis_uri
from earnorm._config import EventConfig
from earnorm._errors import BrokerConnectionError, ConfigError, EarnORMError
from earnorm._runtime import close as earnorm_close
from earnorm._runtime import init as earnorm_init
from earnorm.events._handlers import default_registry
from earnorm.events._tools.embedded import LocalRedis, start_local_redis
from earnorm.events.consumer._consumer import Consumer
from earnorm.events.consumer._fetcher import MAX_INFLIGHT_BYTES
from earnorm.events.consumer._group import ConsumerGroup, parse_queue
from earnorm.events.consumer._supervisor import RETIRED, Supervisor, die_with_supervisor

log = logging.getLogger("earnorm.consumer")

OK, USAGE, UNREACHABLE, APP_FAILED = 0, 2, 3, 4


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="python -m earnorm.events.consumer",
        description="Consume EarnORM/Celery events from Redis and run the registered handlers.",
        epilog="exit codes: 0 stopped, 2 usage or configuration error, 3 Redis unreachable, "
               "4 --app could not be imported, 5 consumer processes kept dying, 6 a child "
               "retired (its supervisor replaces it)",
    )
    parser.add_argument("--app", default=env("EARNORM_APP"),
                        help="module that registers handlers, e.g. myproject.handlers; if it "
                             "defines EARNORM_SETTINGS (the keyword arguments the app gives "
                             "init()), the consumer uses its Redis, queue and event_config "
                             "unless an option here says otherwise [EARNORM_APP]")
    parser.add_argument("--redis-uri", default=env("EARNORM_REDIS_URI") or env("REDIS_URL"),
                        help="redis:// or rediss:// URL; without one (here or in the app's "
                             "EARNORM_SETTINGS) a private local server is started "
                             "[EARNORM_REDIS_URI, REDIS_URL]")
    parser.add_argument("--queue", action="append", default=None,
                        help="queue name, NAME or NAME=WEIGHT; repeat it for several queues "
                             "in one process, handler slots split by weight [EARNORM_QUEUE, "
                             "comma-separated] (default: the app's EARNORM_SETTINGS "
                             "event_config queue_name, else earnorm:events)")
    parser.add_argument("--processes", type=int,
                        default=int(env("EARNORM_PROCESSES", "1")),
                        help="consumer processes under one supervisor that restarts any that "
                             "dies [EARNORM_PROCESSES] (default: 1)")
    parser.add_argument("--max-restarts", type=int,
                        default=int(env("EARNORM_MAX_RESTARTS", "5")),
                        help="with --processes: a process that dies more often than this in a "
                             "minute stops them all, exit 5 [EARNORM_MAX_RESTARTS] (default: 5)")
    parser.add_argument("--max-tasks-per-child", type=int,
                        default=_env_number("EARNORM_MAX_TASKS_PER_CHILD", int),
                        help="a consumer process runs this many messages, then finishes them "
                             "and is replaced (under a supervisor even without --processes) "
                             "[EARNORM_MAX_TASKS_PER_CHILD] (default: no limit)")
    parser.add_argument("--max-memory-per-child", type=float,
                        default=_env_number("EARNORM_MAX_MEMORY_PER_CHILD", float),
                        help="a consumer process whose resident memory passes this many MB "
                             "(checked each second; Celery's option counts KiB) fetches no "
                             "more, finishes and is replaced [EARNORM_MAX_MEMORY_PER_CHILD] "
                             "(default: no limit)")
    parser.add_argument("--concurrency", type=int,
                        default=int(env("EARNORM_CONCURRENCY", "100")),
                        help="handlers running at once [EARNORM_CONCURRENCY] (default: 100)")
    parser.add_argument("--max-inflight-bytes", type=int,
                        default=int(env("EARNORM_MAX_INFLIGHT_BYTES", str(MAX_INFLIGHT_BYTES))),
                        help="memory the messages held at once (fetched, not yet settled) "
                             "may take, counted at 3x their size on the wire: no fetch while "
                             "it is spent, one message more at most "
                             "[EARNORM_MAX_INFLIGHT_BYTES] (default: 64 MiB)")
    parser.add_argument("--shutdown-timeout", type=float,
                        default=float(env("EARNORM_SHUTDOWN_TIMEOUT", "30")),
                        help="seconds running handlers get to finish on SIGTERM (default: 30)")
    parser.add_argument("--block-warn", type=float,
                        default=float(env("EARNORM_BLOCK_WARN", "1")),
                        help="seconds a handler may block the event loop before it is logged "
                             "by name, counted, and the consumer is not ready for a while "
                             "[EARNORM_BLOCK_WARN] (default: 1)")
    parser.add_argument("--block-limit", type=float,
                        default=_env_number("EARNORM_BLOCK_LIMIT", float),
                        help="with --processes: a process whose event loop stays blocked "
                             "past the handler's hard time limit, or this many seconds, is "
                             "replaced and its messages recovered [EARNORM_BLOCK_LIMIT] "
                             "(default: the heartbeat timeout)")
    parser.add_argument("--heartbeat-interval", type=float,
                        default=_env_number("EARNORM_HEARTBEAT_INTERVAL", float),
                        help="seconds between heartbeats [EARNORM_HEARTBEAT_INTERVAL]")
    parser.add_argument("--heartbeat-timeout", type=float,
                        default=_env_number("EARNORM_HEARTBEAT_TIMEOUT", float),
                        help="seconds without a heartbeat before a consumer's messages are "
                             "recovered by others [EARNORM_HEARTBEAT_TIMEOUT]")
    parser.add_argument("--serializer", default=env("EARNORM_SERIALIZER"),
                        choices=["json", "msgpack"])
    parser.add_argument("--max-deliveries", type=int,
                        default=_env_number("EARNORM_MAX_DELIVERIES", int),
                        help="deliveries to consumers that died holding a message before it "
                             "is dead-lettered [EARNORM_MAX_DELIVERIES] (default: 5)")
    parser.add_argument("--max-message-bytes", type=int,
                        default=_env_number("EARNORM_MAX_MESSAGE_BYTES", int),
                        help="larger messages go to the failed store without being fetched "
                             "[EARNORM_MAX_MESSAGE_BYTES] (default: 16 MiB)")
    parser.add_argument("--celery-visibility-timeout", type=float,
                        default=_env_number("EARNORM_CELERY_VISIBILITY_TIMEOUT", float),
                        help="Celery unacked entries older than this are restored "
                             "[EARNORM_CELERY_VISIBILITY_TIMEOUT] (default: 3600)")
    parser.add_argument("--allow-eviction", action="store_true",
                        default=True if env("EARNORM_ALLOW_EVICTION", "") in (
                            "1", "true", "yes") else None,
                        help="run even if Redis's maxmemory-policy may evict queued events "
                             "[EARNORM_ALLOW_EVICTION=1]")
    parser.add_argument("--unhandled-events", choices=["skip", "dead_letter"],
                        default=env("EARNORM_UNHANDLED_EVENTS"),
                        help="an event EarnORM published that no handler subscribes to: "
                             "skip (acknowledge, count, warn once per name) or dead_letter "
                             "(failed store); Celery tasks with no handler always go to the "
                             "failed store [EARNORM_UNHANDLED_EVENTS] (default: skip)")
    parser.add_argument("--result-backend", default=env("EARNORM_RESULT_BACKEND"),
                        help="redis:// URL: store handlers' results for Celery clients' "
                             "AsyncResult.get() [EARNORM_RESULT_BACKEND]")
    parser.add_argument("--celery-events", action="store_true",
                        default=env("EARNORM_CELERY_EVENTS", "") in ("1", "true", "yes"),
                        help="be seen as a Celery worker: send Celery's task and worker events "
                             "and answer remote control (celery inspect, Flower) "
                             "[EARNORM_CELERY_EVENTS=1]")
    parser.add_argument("--metrics-port", type=int,
                        default=int(env("EARNORM_METRICS_PORT", "0")) or None,
                        help="serve /metrics (Prometheus, celery-exporter's names), /healthz "
                             "and /readyz on this port [EARNORM_METRICS_PORT]")
    parser.add_argument("--metrics-host", default=env("EARNORM_METRICS_HOST", "127.0.0.1"),
                        help="address for --metrics-port (default: 127.0.0.1)")
    parser.add_argument("--mongo-uri", default=env("EARNORM_MONGO_URI") or env("MONGODB_URI"),
                        help="MongoDB for handlers that use the ORM; this process then also "
                             "relays committed outbox entries to Redis [EARNORM_MONGO_URI, "
                             "MONGODB_URI]")
    parser.add_argument("--database", default=env("EARNORM_DATABASE"),
                        help="MongoDB database (default: the URI's, else earnorm) "
                             "[EARNORM_DATABASE]")
    parser.add_argument("--log-level", default=env("EARNORM_LOG_LEVEL", "INFO"))
    return parser


def _env_number(name: str, kind: type[int] | type[float]) -> int | float | None:
    raw = os.environ.get(name)
    return None if raw is None else kind(raw)


def _queues(args: argparse.Namespace, app: AppSettings) -> list[str]:
    if args.queue:
        return list(args.queue)
    raw = os.environ.get("EARNORM_QUEUE") or app.queue_name or EventConfig.queue_name
    return [q.strip() for q in raw.split(",") if q.strip()]


def _event_config(args: argparse.Namespace, app: AppSettings, queue: str) -> EventConfig:
    """The app's event_config (EARNORM_SETTINGS), with what the command line or the
    environment says explicitly on top; EventConfig's defaults for the rest."""
    given = {
        "queue_name": queue, "serializer": args.serializer,
        "heartbeat_interval": args.heartbeat_interval,
        "heartbeat_timeout": args.heartbeat_timeout, "max_deliveries": args.max_deliveries,
        "max_message_bytes": args.max_message_bytes,
        "celery_visibility_timeout": args.celery_visibility_timeout,
        "allow_eviction": args.allow_eviction, "result_backend": args.result_backend or None,
        "unhandled_events": args.unhandled_events,
    }
    return app.event_config({k: v for k, v in given.items() if v is not None})


def _private_redis() -> LocalRedis:
    local = start_local_redis()
    log.warning("no Redis URL configured (--redis-uri, EARNORM_REDIS_URI, REDIS_URL, or "
                "redis_uri in the --app module's EARNORM_SETTINGS): started a private server "
                "at %s that only this process uses, so events your app publishes elsewhere "
                "are not served here; give --redis-uri to consume them", local.url)
    return local


async def _supervise(args: argparse.Namespace, argv: Sequence[str], app: AppSettings) -> int:
    child_args = list(argv)
    local: LocalRedis | None = None
    if not (args.redis_uri or app.redis_uri):
        local = _private_redis()
        child_args += ["--redis-uri", local.url]
    try:
        return await Supervisor(child_args, args.processes, metrics_port=args.metrics_port,
                                shutdown_timeout=args.shutdown_timeout,
                                max_restarts=args.max_restarts).run()
    finally:
        if local is not None:
            local.stop()


async def _serve(args: argparse.Namespace, app: AppSettings) -> int:
    local: LocalRedis | None = None
    queues = [parse_queue(q) for q in _queues(args, app)]
    config = _event_config(args, app, queues[0][0])
    url = args.redis_uri or app.redis_uri
    if not url:
        local = _private_redis()
        url = local.url
    consumer: Consumer | ConsumerGroup
    options: dict[str, Any] = {
        "config": config, "registry": default_registry, "concurrency": args.concurrency,
        "max_inflight_bytes": args.max_inflight_bytes,
        "shutdown_timeout": args.shutdown_timeout, "celery_events": args.celery_events,
        "metrics_port": args.metrics_port, "metrics_host": args.metrics_host,
        "block_warn": args.block_warn, "block_limit": args.block_limit,
    }
    if len(queues) == 1:
        consumer = Consumer(url, **options, max_tasks=args.max_tasks_per_child,
                            max_memory_mb=args.max_memory_per_child)
    else:
        consumer = ConsumerGroup(url, queues=queues, **options)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, consumer.stop)
    mongo_uri = args.mongo_uri or app.mongo_uri
    try:
        if mongo_uri:  # earnorm.env for handlers, and an outbox relay
            await earnorm_init(redis_uri=url, event_config=config, mongo_uri=mongo_uri,
                               database=args.database or app.database)
        await consumer.run()
    finally:
        await earnorm_close()
        if local is not None:
            local.stop()
    log.info("stopped: processed=%d failed=%d retried=%d unhandled=%d",
             consumer.processed, consumer.failed, consumer.retried, consumer.unhandled)
    return RETIRED if isinstance(consumer, Consumer) and consumer.retired else OK


def _fail(code: int, message: str, exc: BaseException) -> int:
    print(f"error: {message}", file=sys.stderr)
    log.debug("details", exc_info=exc)
    return code


def _recycles(args: argparse.Namespace) -> bool:
    """Whether a consumer process is to retire at a limit (and so needs a supervisor)."""
    return args.max_tasks_per_child is not None or args.max_memory_per_child is not None


def _recycling_refused(args: argparse.Namespace) -> str | None:
    """Why the recycling options cannot be used as given, if they cannot."""
    if args.max_tasks_per_child is not None and args.max_tasks_per_child < 1:
        return f"--max-tasks-per-child must be >= 1, got {args.max_tasks_per_child}"
    if args.max_memory_per_child is not None and not args.max_memory_per_child > 0:
        return f"--max-memory-per-child must be > 0 MB, got {args.max_memory_per_child}"
    if args.max_memory_per_child is not None and args.max_memory_per_child > 1_000_000:
        return (f"--max-memory-per-child is in MB (Celery's counts KiB): "
                f"{args.max_memory_per_child:g} MB is more than a terabyte")
    if _recycles(args) and args.queue and len(args.queue) > 1:
        return "--max-tasks-per-child / --max-memory-per-child take one --queue"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    supervised = die_with_supervisor()  # False unless started by a supervisor
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)  # exits with 2 on a usage error
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.processes < 1:
        return _fail(USAGE, f"--processes must be >= 1, got {args.processes}", ValueError())
    if (refused := _recycling_refused(args)) is not None:
        return _fail(USAGE, refused, ValueError())
    if args.processes > 1 or (_recycles(args) and not supervised):  # a retired child is replaced
        # The children import --app and report its errors (exit 4); this process only needs
        # to know whether the app declares a Redis (else it starts a private one for them).
        declared = AppSettings(redis_uri=probe_redis_uri(args.app)) if args.app else None
        try:
            for spec in _queues(args, declared or AppSettings()):
                parse_queue(spec)
            return asyncio.run(_supervise(args, argv, declared or AppSettings()))
        except EarnORMError as exc:
            return _fail(USAGE, str(exc), exc)
    app = AppSettings()
    if args.app:
        sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(args.app)
        except Exception as exc:
            return _fail(APP_FAILED, f"--app {args.app!r} could not be imported: "
                                     f"{type(exc).__name__}: {exc}", exc)
        try:
            app = AppSettings.of(module)
        except ConfigError as exc:
            return _fail(USAGE, str(exc), exc)
    try:
        for spec in _queues(args, app):
            parse_queue(spec)
    except EarnORMError as exc:
        return _fail(USAGE, str(exc), exc)
    if not len(default_registry):
        log.warning("no handlers registered: every message will go to the failed store "
                    "(give --app with a module that uses @event_handler)")
    try:
        return asyncio.run(_serve(args, app))
    except BrokerConnectionError as exc:
        return _fail(UNREACHABLE, str(exc), exc)
    except ConfigError as exc:
        return _fail(USAGE, str(exc), exc)
    except EarnORMError as exc:  # e.g. no local server could be started
        return _fail(USAGE, str(exc), exc)


if __name__ == "__main__":
    sys.exit(main())

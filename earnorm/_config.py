"""Typed, validated configuration built from the plain dict that ``init()`` receives.

Configuration is read here and only here; every other module receives these objects.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from earnorm._errors import ConfigError
from earnorm._rate import parse_rate

Serializer = Literal["json", "msgpack"]
Compression = Literal["zlib"] | None
DelayMode = Literal["redis", "eta"]
UnhandledEvents = Literal["skip", "dead_letter"]


def _number(section: str, key: str, value: Any, *, minimum: float, integer: bool = False) -> Any:
    name = f"{section}.{key}" if section else key
    wrong_kind = not isinstance(value, int) if integer else not isinstance(value, (int, float))
    if isinstance(value, bool) or wrong_kind:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
    number = float(value)
    if math.isnan(number) or number < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def _reject_unknown(section: str, given: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        where = f" in {section}" if section else ""
        raise ConfigError(
            f"unknown key(s){where}: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )


Strategy = Literal["interval", "exponential"]
_INTERVAL_KEYS = {"interval_start", "interval_step", "interval_max"}
_EXPONENTIAL_KEYS = {"base", "factor", "max_delay", "jitter"}


@dataclass(frozen=True)
class RetryPolicy:
    """Retry schedule, by interval steps (the default) or exponential backoff with jitter.

    ``interval``: attempt ``n`` (0-based) waits ``min(interval_start + n * interval_step,
    interval_max)`` seconds. ``exponential``: attempt ``n`` waits ``min(base * factor ** n,
    max_delay)`` seconds, less a random share of up to ``jitter`` (0..1) of it, so retries of
    many events that failed together spread out instead of arriving in lockstep.

    >>> RetryPolicy(max_retries=3, interval_start=1, interval_step=2, interval_max=4).delay(2)
    4.0
    >>> RetryPolicy(strategy="exponential", base=0.5, factor=2, max_delay=60).delay(3)
    4.0
    """

    max_retries: int = 3
    interval_start: float = 0.0
    interval_step: float = 1.0
    interval_max: float = 30.0
    strategy: Strategy = "interval"
    base: float = 1.0
    factor: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt`` (0-based)."""
        if self.strategy == "interval":
            return float(
                min(self.interval_start + attempt * self.interval_step, self.interval_max)
            )
        try:
            wait = min(self.base * self.factor ** attempt, self.max_delay)
        except OverflowError:
            wait = self.max_delay
        if self.jitter:
            wait -= wait * self.jitter * random.random()
        return float(wait)

    @classmethod
    def from_dict(cls, raw: Any, section: str = "retry_policy") -> RetryPolicy:
        if isinstance(raw, RetryPolicy):
            return raw
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{section} must be a dict, got {type(raw).__name__}")
        strategy = raw.get("strategy", cls.strategy)
        if strategy not in ("interval", "exponential"):
            raise ConfigError(
                f"{section}.strategy must be 'interval' or 'exponential', got {strategy!r}"
            )
        own = _INTERVAL_KEYS if strategy == "interval" else _EXPONENTIAL_KEYS
        _reject_unknown(section, raw, {"strategy", "max_retries", *own})

        def number(key: str, minimum: float, integer: bool = False) -> Any:
            return _number(section, key, raw.get(key, getattr(cls, key)),
                           minimum=minimum, integer=integer)

        values: dict[str, Any] = {
            "strategy": strategy, "max_retries": number("max_retries", 0, integer=True),
        }
        if strategy == "interval":
            values.update({key: number(key, 0) for key in sorted(_INTERVAL_KEYS)})
            return cls(**values)
        values.update({
            "base": number("base", 0), "factor": number("factor", 1),
            "max_delay": number("max_delay", 0), "jitter": number("jitter", 0),
        })
        if values["jitter"] > 1:
            raise ConfigError(f"{section}.jitter must be <= 1, got {values['jitter']!r}")
        return cls(**values)


@dataclass(frozen=True)
class EventConfig:
    """Event-system settings (``event_config`` in ``init()``)."""

    queue_name: str = "earnorm:events"
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    serializer: Serializer = "json"
    compression: Compression = None
    max_message_bytes: int = 16 * 1024 * 1024
    priority_steps: tuple[int, ...] = (0, 3, 6, 9)
    separator: str = "\x06\x16"
    heartbeat_interval: float = 2.0
    heartbeat_timeout: float = 15.0
    # "redis": delayed events wait in ``Q:delayed`` (durable; only EarnORM consumers promote it).
    # "eta": pushed at once with Celery's ``eta`` header, for queues stock Celery workers consume.
    delay_mode: DelayMode = "redis"
    # A message whose consumer died holding it this many times is dead-lettered
    # (``delivery_limit``) instead of being delivered again: a handler that kills its process
    # cannot take consumers down forever.
    max_deliveries: int = 5
    # Longest delay accepted on publish; a consumed Celery ``eta`` further away is dead-lettered
    # (``eta_out_of_range``) rather than kept forever.
    max_delay: float = 365 * 24 * 3600.0
    # Redis's maxmemory-policy must be noeviction (anything else may drop queued events without a
    # word) unless this is True.
    allow_eviction: bool = False
    # Celery's ``unacked`` entries older than this are restored to the queue by our consumers, as
    # kombu does (its default visibility_timeout).
    celery_visibility_timeout: float = 3600.0
    # A Redis URL: handlers' return values (or errors) are stored there in Celery's Redis result
    # backend format, for Celery clients' AsyncResult.get(). None: fire-and-forget.
    result_backend: str | None = None
    result_expires: float = 86400.0  # Celery's default: one day
    # Publishes wait (Redis WAIT) until this many replicas have the event, so an acknowledged
    # publish survives a failover; NotReplicated if they do not within min_replicas_timeout s.
    min_replicas_ack: int = 0
    min_replicas_timeout: float = 1.0
    # The transactional outbox (earnorm.transaction()): whether this process runs a relay, how
    # often it looks for committed entries another process wrote, how long a relay's claim on
    # an entry lasts, how long sent entries are kept (0: deleted once sent; more: marked sent
    # and deleted later, for inspection), and how long Redis remembers a relayed event id (a
    # second push of it within that time is dropped).
    outbox_relay: bool = True
    outbox_poll_interval: float = 1.0
    outbox_claim_timeout: float = 10.0
    outbox_retention: float = 0.0
    outbox_dedup_ttl: float = 86400.0
    # An event EarnORM published that no handler subscribes to (the spec's before_save events,
    # say): "skip" acknowledges it, counts it (stats' counters.unhandled, /metrics) and logs
    # one WARNING per event name; "dead_letter" keeps it in the failed store (no_handler). A
    # Celery task no handler knows always goes to the failed store: it was sent to be run.
    unhandled_events: UnhandledEvents = "skip"
    # Rate limits per event name across every consumer of the queue (``{"email.send":
    # "100/m"}``), in events per second; a handler's own ``rate_limit`` also applies (the
    # lower wins). Over the limit, an event waits in the delayed set for its slot.
    rate_limits: tuple[tuple[str, float], ...] = ()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | EventConfig | None) -> EventConfig:
        if raw is None:
            return cls()
        if isinstance(raw, EventConfig):
            return raw
        if not isinstance(raw, Mapping):
            raise ConfigError(f"event_config must be a dict, got {type(raw).__name__}")
        known = {
            "queue_name", "retry_policy", "serializer", "compression", "max_message_bytes",
            "priority_steps", "separator", "heartbeat_interval", "heartbeat_timeout",
            "delay_mode", "max_deliveries", "max_delay", "allow_eviction",
            "celery_visibility_timeout", "result_backend", "result_expires",
            "min_replicas_ack", "min_replicas_timeout", "outbox_relay", "outbox_poll_interval",
            "outbox_claim_timeout", "outbox_retention", "outbox_dedup_ttl", "unhandled_events",
            "rate_limits",
        }
        _reject_unknown("event_config", raw, known)
        queue = raw.get("queue_name", cls.queue_name)
        if not isinstance(queue, str) or not queue.strip() or len(queue) > 200:
            raise ConfigError(f"event_config.queue_name must be a non-empty string, got {queue!r}")
        serializer = raw.get("serializer", cls.serializer)
        if serializer not in ("json", "msgpack"):
            raise ConfigError(
                f"event_config.serializer must be 'json' or 'msgpack', got {serializer!r}"
            )
        compression = raw.get("compression", cls.compression)
        if compression not in (None, "zlib"):
            raise ConfigError(
                f"event_config.compression must be None or 'zlib', got {compression!r}"
            )
        delay_mode = raw.get("delay_mode", cls.delay_mode)
        if delay_mode not in ("redis", "eta"):
            raise ConfigError(
                f"event_config.delay_mode must be 'redis' or 'eta', got {delay_mode!r}"
            )
        steps = tuple(raw.get("priority_steps", cls.priority_steps))
        if (
            not steps or steps[0] != 0 or list(steps) != sorted(set(steps))
            or not all(isinstance(s, int) and 0 <= s <= 9 for s in steps)
        ):
            raise ConfigError(
                "event_config.priority_steps must be increasing integers in 0..9 starting at 0,"
                f" got {steps!r}"
            )
        separator = raw.get("separator", cls.separator)
        if not isinstance(separator, str) or not separator:
            raise ConfigError("event_config.separator must be a non-empty string")
        interval = _number(
            "event_config", "heartbeat_interval",
            raw.get("heartbeat_interval", cls.heartbeat_interval), minimum=0.05,
        )
        timeout = _number(
            "event_config", "heartbeat_timeout",
            raw.get("heartbeat_timeout", cls.heartbeat_timeout), minimum=0.1,
        )
        allow_eviction = raw.get("allow_eviction", cls.allow_eviction)
        if not isinstance(allow_eviction, bool):
            raise ConfigError(
                f"event_config.allow_eviction must be True or False, got {allow_eviction!r}"
            )
        result_backend = raw.get("result_backend", cls.result_backend)
        if result_backend is not None and (
                not isinstance(result_backend, str)
                or not result_backend.startswith(("redis://", "rediss://", "unix://"))):
            raise ConfigError(
                "event_config.result_backend must be a redis://, rediss:// or unix:// URL or "
                f"None, got {result_backend!r}"
            )
        unhandled = raw.get("unhandled_events", cls.unhandled_events)
        if unhandled not in ("skip", "dead_letter"):
            raise ConfigError("event_config.unhandled_events must be 'skip' or 'dead_letter', "
                              f"got {unhandled!r}")
        outbox_relay = raw.get("outbox_relay", cls.outbox_relay)
        if not isinstance(outbox_relay, bool):
            raise ConfigError(
                f"event_config.outbox_relay must be True or False, got {outbox_relay!r}")
        outbox = {
            key: float(_number("event_config", key, raw.get(key, getattr(cls, key)),
                               minimum=0.0 if key == "outbox_retention" else 0.01))
            for key in ("outbox_poll_interval", "outbox_claim_timeout", "outbox_retention",
                        "outbox_dedup_ttl")
        }
        if timeout <= interval:
            raise ConfigError(
                "event_config.heartbeat_timeout must be greater than heartbeat_interval"
            )
        rates = raw.get("rate_limits", {})
        if not isinstance(rates, Mapping) or not all(isinstance(k, str) and k for k in rates):
            raise ConfigError("event_config.rate_limits must map event names to rates "
                              f"('10/s', '100/m', '1000/h'), got {rates!r}")
        return cls(
            queue_name=queue,
            retry_policy=RetryPolicy.from_dict(raw.get("retry_policy", {})),
            serializer=serializer,
            compression=compression,
            max_message_bytes=_number(
                "event_config", "max_message_bytes",
                raw.get("max_message_bytes", cls.max_message_bytes), minimum=1024, integer=True,
            ),
            priority_steps=steps,
            separator=separator,
            heartbeat_interval=float(interval),
            heartbeat_timeout=float(timeout),
            delay_mode=delay_mode,
            max_deliveries=_number(
                "event_config", "max_deliveries", raw.get("max_deliveries", cls.max_deliveries),
                minimum=1, integer=True,
            ),
            max_delay=float(_number(
                "event_config", "max_delay", raw.get("max_delay", cls.max_delay), minimum=1,
            )),
            allow_eviction=allow_eviction,
            result_backend=result_backend,
            result_expires=float(_number(
                "event_config", "result_expires",
                raw.get("result_expires", cls.result_expires), minimum=1,
            )),
            min_replicas_ack=_number(
                "event_config", "min_replicas_ack",
                raw.get("min_replicas_ack", cls.min_replicas_ack), minimum=0, integer=True,
            ),
            min_replicas_timeout=float(_number(
                "event_config", "min_replicas_timeout",
                raw.get("min_replicas_timeout", cls.min_replicas_timeout), minimum=0.001,
            )),
            outbox_relay=outbox_relay,
            **outbox,
            unhandled_events=unhandled,
            rate_limits=tuple(sorted(
                (name, parse_rate(rate, f"event_config.rate_limits[{name!r}]"))
                for name, rate in rates.items())),
            celery_visibility_timeout=float(_number(
                "event_config", "celery_visibility_timeout",
                raw.get("celery_visibility_timeout", cls.celery_visibility_timeout), minimum=1,
            )),
        )

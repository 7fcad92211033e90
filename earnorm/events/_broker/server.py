"""What the Redis server is: its identity (``run_id``, to tell a restart), whether it may drop
data (eviction policy, persistence), and what EarnORM's consumers saw of it over time
(``Q:server``: restarts, whether a restart lost data)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from earnorm._errors import ConfigError
from earnorm.events._broker.keys import Keys, text
from earnorm.events._broker.topology import is_cluster

SAFE_POLICY = "noeviction"


@dataclass(frozen=True, slots=True)
class ServerInfo:
    run_id: str
    version: str
    uptime_s: int
    maxmemory_policy: str | None  # None: CONFIG GET refused (managed Redis)
    config_error: str | None  # why CONFIG GET was refused
    persistence: str  # "aof", "rdb", "aof+rdb", "none", or "unknown" (CONFIG refused, no AOF)

    @property
    def supports_script_flags(self) -> bool:
        try:
            return int(self.version.split(".")[0]) >= 7
        except ValueError:
            return False

    @property
    def may_evict(self) -> bool:
        return self.maxmemory_policy is not None and self.maxmemory_policy != SAFE_POLICY


def _persistence(aof: bool, save: str | None) -> str:
    """
    >>> _persistence(True, ""), _persistence(False, "3600 1"), _persistence(False, None)
    ('aof', 'rdb', 'unknown')
    """
    rdb = None if save is None else bool(save.strip())
    if aof:
        return "aof+rdb" if rdb else "aof"
    if rdb is None:
        return "unknown"
    return "rdb" if rdb else "none"


class ServerProbe:
    """Reads server facts in one round trip; remembers in ``Q:server`` what it saw."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def _read(self) -> list[Any]:
        if is_cluster(self.redis):
            # The master that serves the queue's slot: its run_id changes on a failover.
            cluster: Any = self.redis
            await cluster.initialize()
            node = cluster.get_node_from_key(self.keys.queue)
            replies: list[Any] = []
            for command, arg in (("INFO", "server"), ("INFO", "persistence"),
                                 ("CONFIG GET", "maxmemory-policy"), ("CONFIG GET", "save")):
                try:
                    replies.append(await cluster.execute_command(command, arg,
                                                                 target_nodes=node))
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.info("server")
            pipe.info("persistence")
            pipe.config_get("maxmemory-policy")
            pipe.config_get("save")
            return list(await pipe.execute(raise_on_error=False))

    async def info(self) -> ServerInfo:
        server, persistence, policy, save = await self._read()
        if isinstance(server, BaseException):
            raise server
        config_error = None
        policy_value: str | None = None
        save_value: str | None = None
        if isinstance(policy, ResponseError) or isinstance(save, ResponseError):
            config_error = str(policy if isinstance(policy, ResponseError) else save)
        else:
            policy_value = _config_value(policy, "maxmemory-policy")
            save_value = _config_value(save, "save")
        aof = not isinstance(persistence, BaseException) and bool(
            int(persistence.get("aof_enabled", 0)))
        return ServerInfo(
            run_id=str(server.get("run_id", "")),
            version=str(server.get("redis_version", "0")),
            uptime_s=int(server.get("uptime_in_seconds", 0)),
            maxmemory_policy=policy_value,
            config_error=config_error,
            persistence=_persistence(aof, save_value),
        )

    async def recorded_run_id(self) -> str | None:
        """The run_id a consumer last saw (None: never recorded, or lost with the data)."""
        value = await self.redis.hget(self.keys.server, "run_id")
        return None if value is None else text(value)

    async def record(self, info: ServerInfo, now_ms: float, *, restarted_from: str | None,
                     lost_data: bool) -> None:
        """Write what this consumer sees of the server; after a restart, count it."""
        mapping: dict[FieldT, EncodableT] = {
            "run_id": info.run_id, "persistence": info.persistence,
            "maxmemory_policy": info.maxmemory_policy or "unknown", "seen_ms": now_ms,
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            if restarted_from is not None:
                pipe.hincrby(self.keys.server, "restarts", 1)
                mapping.update(last_restart_ms=now_ms, last_restart_from=restarted_from,
                               last_restart_lost_data=1 if lost_data else 0)
            pipe.hset(self.keys.server, mapping=mapping)
            if lost_data:  # the counters that start again say so themselves
                pipe.hset(self.keys.stats, "reset_by_restart_ms", now_ms)
            await pipe.execute()


def _config_value(reply: Any, name: str) -> str | None:
    if isinstance(reply, dict):
        value = reply.get(name, reply.get(name.encode()))
        return None if value is None else text(value)
    return None


def eviction_refusal(info: ServerInfo, allow_eviction: bool) -> str | None:
    """Why EarnORM refuses to run on this server, or None.

    >>> info = ServerInfo("r", "7.2.4", 5, "allkeys-lru", None, "none")
    >>> print(eviction_refusal(info, allow_eviction=False))  # doctest: +ELLIPSIS
    Redis maxmemory-policy is 'allkeys-lru': at maxmemory it evicts keys, ... without an error...
    >>> eviction_refusal(info, allow_eviction=True) is None
    True
    """
    if not info.may_evict or allow_eviction:
        return None
    return (f"Redis maxmemory-policy is {info.maxmemory_policy!r}: at maxmemory it evicts keys, "
            "queued events among them, without an error; set it to 'noeviction' or pass "
            "event_config['allow_eviction']=True")


def check_eviction(info: ServerInfo, allow_eviction: bool, log: logging.Logger) -> None:
    """``ConfigError`` for a server that may evict queued events (unless allowed); a warning when
    it is allowed anyway, or when the policy cannot be read at all."""
    refusal = eviction_refusal(info, allow_eviction)
    if refusal is not None:
        raise ConfigError(refusal)
    if info.may_evict:
        log.warning("Redis maxmemory-policy is %r and event_config['allow_eviction'] is True: "
                    "queued events may be evicted without an error", info.maxmemory_policy)
    if info.config_error is not None:
        log.warning("cannot read Redis's maxmemory-policy and persistence settings (CONFIG GET "
                    "refused: %s): eviction and persistence are not checked", info.config_error)

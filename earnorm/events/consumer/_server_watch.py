"""The consumer's eye on the Redis server: an eviction policy that may drop queued events, a
server with persistence off, a restart (``run_id`` changed). One log line per change; what it
sees is written to ``Q:server`` for ``stats()``."""

from __future__ import annotations

import contextlib
import logging

from earnorm._config import EventConfig
from earnorm.events._broker.broker import Broker
from earnorm.events._broker.errors import REFUSED_ERRORS
from earnorm.events._broker.server import ServerInfo, check_eviction, eviction_refusal
from earnorm.events._wire.clock import ServerClock

log = logging.getLogger("earnorm.consumer")


class ServerWatch:
    def __init__(self, broker: Broker, config: EventConfig, clock: ServerClock) -> None:
        self.broker = broker
        self.config = config
        self.clock = clock
        self.info: ServerInfo | None = None

    async def start(self) -> ServerInfo:
        """The checks before consuming: ``ConfigError`` on an eviction policy (unless
        ``allow_eviction``); warnings for what may lose data."""
        info = await self.broker.server.info()
        self.broker.use_script_flags(info.supports_script_flags)
        if not info.supports_script_flags:
            log.warning("Redis %s has no script flags (Redis >= 7): at maxmemory it will "
                        "refuse this consumer's fetches and acks too", info.version)
        check_eviction(info, self.config.allow_eviction, log)
        self._warn_persistence(info)
        recorded = await self.broker.server.recorded_run_id()
        restarted = recorded if recorded is not None and recorded != info.run_id else None
        if restarted is not None:
            log.warning("Redis restarted while no consumer watched it (run_id %s -> %s); "
                        "persistence: %s", restarted[:8], info.run_id[:8], info.persistence)
        await self._record(info, restarted_from=restarted, lost_data=False)
        self.info = info
        return info

    async def check(self) -> None:
        """On each heartbeat: has the server restarted, or its policy changed?"""
        info = await self.broker.server.info()
        previous, self.info = self.info, info
        if previous is None:
            await self._record(info, restarted_from=None, lost_data=False)
            return
        restarted = info.run_id != previous.run_id
        if restarted:
            lost = info.persistence == "none"
            if await self._failed_over(previous, info):
                lost = False
                moved = ", or the queue's slot moved to another master" if (
                    self.broker.cluster) else ""
                log.warning("Redis master changed (run_id %s -> %s, up %d s): a replica took "
                            "over%s; writes it had not received yet are lost, and their "
                            "messages come again or not at all (see min_replicas_ack)",
                            previous.run_id[:8], info.run_id[:8], info.uptime_s, moved)
            elif lost:
                log.error("Redis restarted (run_id %s -> %s) with persistence off: every queued, "
                          "delayed, in-flight and failed event it held is lost, and the "
                          "counters start again", previous.run_id[:8], info.run_id[:8])
            else:
                log.error("Redis restarted (run_id %s -> %s); it reloaded its data from %s: "
                          "writes after its last save/fsync may be lost", previous.run_id[:8],
                          info.run_id[:8], info.persistence)
        if info.maxmemory_policy != previous.maxmemory_policy:
            refusal = eviction_refusal(info, self.config.allow_eviction)
            if refusal is not None:
                log.error("%s (it changed while this consumer ran)", refusal)
            else:
                log.warning("Redis maxmemory-policy is now %r", info.maxmemory_policy)
        if info.persistence != previous.persistence and not restarted:
            self._warn_persistence(info)
        if restarted:
            await self._record(info, restarted_from=previous.run_id, lost_data=lost)
        elif (info.maxmemory_policy, info.persistence) != (previous.maxmemory_policy,
                                                             previous.persistence):
            await self._record(info, restarted_from=None, lost_data=False)

    async def _failed_over(self, previous: ServerInfo, info: ServerInfo) -> bool:
        """A new run_id that kept our own record of the old one: a replica promoted by Sentinel
        or the cluster (or, on a cluster, the slot migrated), not a restart. A server that
        reloaded its data from disk keeps the record too; it tells itself apart by a short
        uptime, and only if it has persistence (without, the record could not have survived)."""
        with contextlib.suppress(*REFUSED_ERRORS):
            recorded = await self.broker.server.recorded_run_id()
            return recorded == previous.run_id and (info.persistence == "none" or (
                info.uptime_s > max(10, 3 * self.config.heartbeat_timeout)))
        return False

    def _warn_persistence(self, info: ServerInfo) -> None:
        if info.persistence == "none":
            log.warning("Redis persistence is off (no AOF, no RDB snapshots): a Redis restart "
                        "loses every queued, delayed and failed event")

    async def _record(self, info: ServerInfo, *, restarted_from: str | None,
                      lost_data: bool) -> None:
        with contextlib.suppress(*REFUSED_ERRORS):  # a full Redis: what we saw is logged
            await self.broker.server.record(info, self.clock.now_ms(),
                                            restarted_from=restarted_from, lost_data=lost_data)

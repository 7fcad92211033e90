"""A process that commits one create with its model event and is SIGKILLed right after the
commit, before its outbox relay could run (no await between the commit and the kill)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import earnorm
from earnorm import BaseModel, after_create, dispatch_model_event


class Account(BaseModel):
    _collection = "accounts"
    email: str

    @after_create
    async def announce(self) -> None:
        await dispatch_model_event(earnorm.event_bus, Account, "created", self.id, self)


async def main(mongo_uri: str, database: str, redis_uri: str, queue: str) -> None:
    await earnorm.init(mongo_uri=mongo_uri, database=database, redis_uri=redis_uri,
                       # this process dies before its relay runs: it has none
                       event_config={"queue_name": queue, "outbox_relay": False})
    async with earnorm.transaction():
        await Account(email="killed@example.com").create()
    os.kill(os.getpid(), signal.SIGKILL)  # committed; the relay task never got to run


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))

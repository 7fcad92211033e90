"""The wire: Celery's message protocol as bytes and values (decode, encode, Event, failure records,
canvas rules). Pure: no Redis, asyncio or anyio here, so every rule of the protocol is tested
without a server.
"""

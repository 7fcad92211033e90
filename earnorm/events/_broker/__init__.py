"""Redis: the only package that spells key names and sends Redis commands. ``Broker`` is the facade
over the queue's Lua scripts; beside it the connections and topologies (Cluster, Sentinel), the
stores (failed jobs, schedules, results, chords, idempotency marks) and what a Celery fleet
keeps in Redis.
"""

"""Redis key names of one queue, and how delayed-set members are laid out (docs/wire.md 1, 6).

Queue ``Q``'s keys, all prefixed by ``Q`` (a hash-tagged name keeps them in one Cluster slot):

- ``Q``, ``Q\\x06\\x163``, ``Q\\x06\\x166``, ``Q\\x06\\x169``: Celery's ready lists;
- ``Q:delayed``: zset of ``b"<ready list index>:" + envelope`` by due time (unix ms);
- ``Q:consumers``: zset of consumer id by heartbeat deadline (unix ms, Redis's clock);
- ``Q:inflight:<consumer>``: hash field -> envelope, what that consumer holds;
- ``Q:landing:<consumer>``: list the blocking wait moves one message into;
- ``Q:held:<consumer>:<field>``: a one-element list holding a large message that consumer
  holds (its in-flight field has ``HELD_MARK``), moved there inside Redis without ever being
  read by a script; ``Q:parked:<consumer>:<...>``: the same message handed back after that
  consumer died or stopped, named in ``Q:recovered`` by ``HELD_MARK`` + the key;
  ``Q:probe:<consumer>``: the fetch script's scratch list (sizes messages before reading them);
- ``Q:later:<token>``: a one-element list holding a large delayed message (a retry, or a
  publish with a delay, over ``LARGE_BYTES``), named in ``Q:delayed`` by ``HELD_MARK`` + the
  key, so the promote script moves it to its ready list natively, unread;
- ``Q:recovered``: list of ``b"<deliveries>:<ids of consumers that died holding it>:" +
  envelope``, messages taken back from dead consumers; served one at a time;
- ``Q:deliveries:<consumer>``: hash field -> ``"<deliveries>:<ids>"`` for the recovered
  messages that consumer holds;
- ``Q:failed`` (job id -> JSON record), ``Q:failed:index`` (zset by failure time);
  ``Q:aside:<job id>``: a one-element list holding a message too large to run (over
  ``max_message_bytes``), kept aside in Redis, and ``Q:aside`` the set of those job ids (so a
  purge finds them); ``Q:failed:oversized``: the hash earlier versions kept them in (read,
  requeued and removed, never written);
- ``Q:revoked``: zset of revoked task ids by the time the revoke expires (unix ms), shared by
  every consumer of the queue and kept across restarts; ``Q:revoked:terminate``: the same for
  those revoked with ``terminate=True``;
- ``Q:stats``: counters; ``Q:monitor``: consumer id -> summary; ``Q:server``: what consumers saw
  of the Redis server (restarts, persistence);
- ``Q:dedup:<key>``: a publish's ``dedup_key`` (the outbox relay's ``outbox:<event id>``),
  for its TTL; ``Q:done:<handler>:<event id>``: an idempotent handler handled that event;
- ``Q:rates``: event name -> the next free slot of its rate limit (us, Redis's clock), shared
  by every consumer of the queue;
- ``Q:lease:<max>:<key>``: zset of the handlers running for one concurrency key (members
  ``c:<consumer>:<field>``, alive while that consumer's heartbeat is; ``r:<job id>`` a slot
  kept for a waiter just released, scored by when it lapses, unix ms); ``Q:keywait:<max>:<key>``:
  list of ``b"<len(job id)>:<job id>" + envelope`` (or ``HELD_MARK`` + a parked key) waiting for
  a slot of that key; ``Q:keywait``: zset of ``<max>:<key>`` that have waiters, by when they
  last waited (unix ms), swept by every consumer;
- ``Q:progress:<job id>``: JSON of the progress a running handler last reported for that job
  (state, done, total, meta, when, by which consumer), for an hour or until the job ends;
- ``Q:debounce:<key>``: the delayed-set member of the latest publish with that
  ``debounce_key`` (the one that will run), for the quiet period and a minute more;
- ``Q:outbox``: the outbox relays' counters (relayed, errors, the last error);
- ``Q:cache:<key>``: ``env.cache`` entries (unless ``init()`` names another prefix);
- beside them, ``earnorm:app-queues`` (one hash for every queue): queue name -> when an app
  last called ``init()`` for it;
- ``Q:schedules``: schedule name -> the last tick fired (unix ms), the compare-and-set that lets
  one consumer fire each tick; ``Q:schedules:info``: name -> JSON (last fire, next tick, what
  the schedule is), for ``python -m earnorm.events schedules``.
"""

from __future__ import annotations

from dataclasses import dataclass

from earnorm._config import EventConfig

# Celery's own keys, written in Celery's formats so mixed fleets and Celery clients share them
# (docs/wire.md 7-8): results, chord groups, kombu's unacked store, its fanout bindings.
RESULT_PREFIX = "celery-task-meta-"  # + task id: the Redis result backend's key
GROUP_PREFIX = "celery-taskset-meta-"  # + group id + ".j" / ".t" / ".s" / ".d" / ".c": a chord
UNACKED = "unacked"  # delivery tag -> [envelope, exchange, routing key]
UNACKED_INDEX = "unacked_index"  # delivery tag -> unix seconds it was taken
UNACKED_MUTEX = "unacked_mutex"  # held while one worker restores old entries


def kombu_binding(exchange: str) -> str:
    """The set of queues bound to a kombu fanout ``exchange`` (``celeryev``, a pidbox reply)."""
    return f"_kombu.binding.{exchange}"


# In-flight hash value (and Q:recovered entry prefix) of a message held in a key of its own.
# No message starts with a NUL byte (Celery's are JSON objects, ours too).
HELD_MARK = "\x00earnorm-held\x00"

# Not a queue's key: the queues apps called init() for (queue -> unix ms of the latest), so a
# consumer can tell that the queue it was given was never used while others are.
APP_QUEUES = "earnorm:app-queues"


@dataclass(frozen=True, slots=True)
class Keys:
    """Redis key names for one queue."""

    queue: str
    ready: tuple[str, ...]
    steps: tuple[int, ...]
    delayed: str
    consumers: str
    failed: str
    failed_index: str
    stats: str
    monitor: str
    recovered: str
    oversized: str
    aside: str
    revoked: str
    revoked_terminate: str
    server: str
    schedules: str
    schedules_info: str
    outbox: str
    rates: str
    key_waiting: str
    cache_prefix: str
    done_prefix: str

    @classmethod
    def for_queue(cls, config: EventConfig) -> Keys:
        q = config.queue_name
        ready = tuple(q if step == 0 else f"{q}{config.separator}{step}"
                      for step in config.priority_steps)
        return cls(
            queue=q,
            ready=ready,
            steps=config.priority_steps,
            delayed=f"{q}:delayed",
            consumers=f"{q}:consumers",
            failed=f"{q}:failed",
            failed_index=f"{q}:failed:index",
            stats=f"{q}:stats",
            monitor=f"{q}:monitor",
            recovered=f"{q}:recovered",
            oversized=f"{q}:failed:oversized",
            aside=f"{q}:aside",
            revoked=f"{q}:revoked",
            revoked_terminate=f"{q}:revoked:terminate",
            server=f"{q}:server",
            schedules=f"{q}:schedules",
            schedules_info=f"{q}:schedules:info",
            outbox=f"{q}:outbox",
            rates=f"{q}:rates",
            key_waiting=f"{q}:keywait",
            cache_prefix=f"{q}:cache:",
            done_prefix=f"{q}:done:",
        )

    @property
    def telltales(self) -> tuple[str, ...]:
        """The keys one of which exists once the queue was used at all."""
        return (*self.ready, self.delayed, self.consumers, self.failed, self.stats,
                self.monitor)

    def inflight(self, consumer_id: str) -> str:
        return f"{self.queue}:inflight:{consumer_id}"

    def landing(self, consumer_id: str) -> str:
        return f"{self.queue}:landing:{consumer_id}"

    def held_prefix(self, consumer_id: str) -> str:
        """+ field: the key holding a large message that consumer holds."""
        return f"{self.queue}:held:{consumer_id}:"

    def held(self, consumer_id: str, field: int) -> str:
        return f"{self.held_prefix(consumer_id)}{field}"

    def parked_prefix(self, consumer_id: str) -> str:
        """+ a suffix: a large message handed back from that consumer, named in Q:recovered."""
        return f"{self.queue}:parked:{consumer_id}:"

    def aside_of(self, job_id: str) -> str:
        """The key keeping a too-large message aside (``aside`` + ``:`` + its job id: the
        scripts that divert a message name it so)."""
        return f"{self.aside}:{job_id}"

    def lease(self, limited: str) -> str:
        """The running handlers of ``limited`` (``<max>:<key>``, a member of ``key_waiting``)."""
        return f"{self.queue}:lease:{limited}"

    def key_wait(self, limited: str) -> str:
        """The messages waiting for a slot of ``limited`` (``<max>:<key>``)."""
        return f"{self.key_waiting}:{limited}"

    def debounce(self, key: str) -> str:
        """A debounced publish's key: the delayed-set member of its latest, pending event."""
        return f"{self.queue}:debounce:{key}"

    def progress(self, job_id: str) -> str:
        """The progress a running handler last reported for that job."""
        return f"{self.queue}:progress:{job_id}"

    def later(self, token: str) -> str:
        """A large delayed message's own key (named in the delayed set by reference)."""
        return f"{self.queue}:later:{token}"

    def probe(self, consumer_id: str) -> str:
        """The fetch script's scratch list for that consumer."""
        return f"{self.queue}:probe:{consumer_id}"

    def deliveries(self, consumer_id: str) -> str:
        return f"{self.queue}:deliveries:{consumer_id}"

    def dedup(self, key: str) -> str:
        """A publish's ``dedup_key`` (and the outbox relay's ``outbox:<event id>``)."""
        return f"{self.queue}:dedup:{key}"

    def done(self, handler: str, event_id: str) -> str:
        """An idempotent handler's mark that it handled this event."""
        return f"{self.done_prefix}{handler}:{event_id}"

    def ready_index(self, priority: int) -> int:
        """Celery's rule (wire.md 6): the largest step <= the priority clamped to 0..9."""
        if priority == 0:  # the publishing hot path
            return 0
        priority = min(max(priority, 0), 9)
        index = 0
        for i, step in enumerate(self.steps):
            if step <= priority:
                index = i
        return index


def delayed_member(raw: bytes, ready_index: int) -> bytes:
    return b"%d:%s" % (ready_index, raw)


def split_delayed_member(member: bytes) -> tuple[int, bytes]:
    index, _, raw = member.partition(b":")
    return int(index), raw


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

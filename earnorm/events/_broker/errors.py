"""Which Redis errors are worth waiting out, and which are Redis refusing a write for now."""

from __future__ import annotations

from redis.exceptions import (
    AskError,
    ClusterError,
    ExecAbortError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


class ReplyLost(RedisConnectionError):
    """A script was sent again (the client's own retry after a failed read) after its first
    run went through: that run's reply is lost. Transient: the caller reclaims what the lost
    reply held and tries again."""


# Errors that mean "Redis could not be reached or did not answer in time": the operation may
# succeed if tried again later, and callers back off and retry.
# On a cluster, a slot without a master during a failover (CLUSTERDOWN, TRYAGAIN, uncovered
# slots, redirections the client gave up following) is the same: wait and try again. So is
# ``RedisClusterException``: the cluster client raises it when it cannot reach any node to
# (re)load the slot map, at start and after every node went away (it is also its class for
# client-side mistakes such as a cross-slot command, which no script of ours sends).
# ``NoScriptError`` too: a Redis that restarted between redis-py's SCRIPT LOAD and its EVALSHA
# forgot the script again; the script did not run, and the next try loads it once more.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, OSError,
    ClusterError, TryAgainError, SlotNotCoveredError, AskError, RedisClusterException,
    NoScriptError,
)
# Redis answered but refused a write it may accept later: out of memory (maxmemory with
# noeviction), a replica during failover. A consumer backs off and retries; a publisher raises.
REFUSED_ERRORS: tuple[type[BaseException], ...] = (OutOfMemoryError, ReadOnlyError, ExecAbortError)
RETRYABLE_ERRORS = TRANSIENT_ERRORS + REFUSED_ERRORS


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection-level failure worth retrying (see ``TRANSIENT_ERRORS``).

    >>> is_transient(RedisConnectionError("refused")), is_transient(OutOfMemoryError("OOM"))
    (True, False)
    >>> is_transient(NoScriptError("NOSCRIPT No matching script"))  # Redis restarted meanwhile
    True
    """
    return isinstance(exc, TRANSIENT_ERRORS)


def is_refused(exc: BaseException) -> bool:
    """Whether Redis refused a write it may accept later (``REFUSED_ERRORS``).

    >>> is_refused(OutOfMemoryError("OOM command not allowed")), is_refused(ValueError())
    (True, False)
    """
    return isinstance(exc, REFUSED_ERRORS)

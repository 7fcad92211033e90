"""Redis deployments beyond one server, behind the same ``redis_uri`` setting: Redis Cluster
(redis-py's ``RedisCluster``) and Sentinel (redis-py's ``Sentinel``). docs/scaling.md tells the
story; here is how a URL becomes a client.

- ``redis+cluster://[user:password@]host:port[,host:port...][?options]`` (``rediss+cluster://``
  for TLS): any reachable nodes; the client learns the others and follows MOVED/ASK and failover.
- ``redis+sentinel://[user:password@]host:port[,host:port...]/<master>/<db>[?options]``
  (``rediss+sentinel://``: TLS to the master), and kombu's form, so a Celery app and ours share
  one setting: ``sentinel://[:password@]host:port[/db];sentinel://host:port...`` with the master
  named by ``?master_name=`` (Celery: ``broker_transport_options={"master_name": ...}``).
  ``?sentinel_password=`` authenticates to the sentinels themselves.

In a cluster every key of a queue must live in one slot, so the queue name carries a hash tag:
``orders`` is used as ``{orders}`` (a name that has a ``{tag}`` already is kept as it is).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from earnorm._config import EventConfig
from earnorm._errors import ConfigError

Kind = Literal["single", "cluster", "sentinel"]
_CLUSTER = ("redis+cluster", "rediss+cluster")
_SENTINEL = ("redis+sentinel", "rediss+sentinel", "sentinel")
# Query parameters read as numbers or booleans; the rest go to redis-py as text.
_FLOATS = {"socket_timeout", "socket_connect_timeout", "health_check_interval"}
_BOOLS = {"read_from_replicas", "ssl_check_hostname"}


def kind(url: str) -> Kind:
    """
    >>> kind("redis://h/0"), kind("redis+cluster://h:7000"), kind("sentinel://h:26379")
    ('single', 'cluster', 'sentinel')
    """
    scheme = url.split("://", 1)[0].lower() if isinstance(url, str) else ""
    if scheme in _CLUSTER:
        return "cluster"
    if scheme in _SENTINEL:
        return "sentinel"
    return "single"


def is_cluster(redis: object) -> bool:
    return isinstance(redis, RedisCluster)


def hash_tagged(queue: str) -> str:
    """The queue name whose keys all share one cluster slot.

    >>> hash_tagged("orders"), hash_tagged("{orders}:high"), hash_tagged("a{}b")
    ('{orders}', '{orders}:high', '{a{}b}')
    """
    start = queue.find("{")
    end = queue.find("}", start + 1) if start >= 0 else -1
    if start >= 0 and end > start + 1:
        return queue
    return "{" + queue + "}"


def for_cluster(config: EventConfig, cluster: bool) -> EventConfig:
    """``config`` with its queue name hash-tagged when the client is a cluster's."""
    if not cluster or hash_tagged(config.queue_name) == config.queue_name:
        return config
    return dataclasses.replace(config, queue_name=hash_tagged(config.queue_name))


def same_slot(a: str, b: str) -> bool:
    return bool(key_slot(a.encode()) == key_slot(b.encode()))


def _hosts(netloc: str, default_port: int) -> list[tuple[str, int]]:
    hosts: list[tuple[str, int]] = []
    for part in netloc.rpartition("@")[2].split(","):
        host, _, port = part.strip().rpartition(":")
        if not host:
            host, port = port, ""
        host = host.strip("[]")
        try:
            hosts.append((host, int(port) if port else default_port))
        except ValueError:
            raise ConfigError(f"invalid port {port!r} in redis_uri") from None
    if not hosts or not all(h for h, _ in hosts):
        raise ConfigError("redis_uri names no host")
    return hosts


def _options(query: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in _FLOATS:
            options[name] = float(value)
        elif name in _BOOLS:
            options[name] = value.lower() in ("1", "true", "yes", "on")
        else:
            options[name] = value
    return options


def _credentials(netloc: str) -> dict[str, Any]:
    userinfo = netloc.rpartition("@")[0]
    if not userinfo:
        return {}
    user, _, password = userinfo.partition(":")
    out: dict[str, Any] = {}
    if user:
        out["username"] = unquote(user)
    if password:
        out["password"] = unquote(password)
    return out


def open_cluster(url: str, **options: Any) -> Redis:
    """A ``RedisCluster`` for ``url``, typed as ``Redis``: it answers the same commands, and
    code that must tell them apart asks ``is_cluster``."""
    parts = urlsplit(url)
    tls = parts.scheme.lower() == "rediss+cluster"
    nodes = [ClusterNode(host, port) for host, port in _hosts(parts.netloc, 6379)]
    merged = {**options, **_credentials(parts.netloc), **_options(parts.query)}
    if tls:
        merged["ssl"] = True
    try:
        client = RedisCluster(startup_nodes=nodes, **merged)
    except TypeError as exc:
        raise ConfigError(f"invalid redis_uri option: {exc}") from None
    return cast(Redis, client)


class _Sentinels(Sentinel):
    """redis-py's ``Sentinel``, whose "no master found" error names each sentinel by its address
    and says in one line why it did not help (redis-py's own message repeats each sentinel's
    whole error text: ~1 KB a sentinel behind a password). Built on ``Sentinel``'s public
    ``sentinels``, ``sentinel_masters`` and ``check_master_state``."""

    def __init__(self, hosts: list[tuple[str, int]], **kwargs: Any) -> None:
        super().__init__(hosts, **kwargs)
        self.addresses = {id(s): f"{h}:{p}" for s, (h, p) in zip(self.sentinels, hosts,
                                                                 strict=True)}

    async def discover_master(self, service_name: str) -> Any:
        why: list[str] = []
        for index, sentinel in enumerate(self.sentinels):
            address = self.addresses.get(id(sentinel), "?")
            try:
                masters = cast(dict[str, Any], await sentinel.sentinel_masters())
            except (RedisConnectionError, ResponseError, RedisTimeoutError) as exc:
                first_line = str(exc).splitlines()[0] if str(exc) else ""
                why.append(f"sentinel {address} - {type(exc).__name__}: {first_line[:120]}")
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):
                self.sentinels[0], self.sentinels[index] = sentinel, self.sentinels[0]
                return state["ip"], state["port"]
            why.append(f"sentinel {address} - knows no healthy master {service_name!r}")
        raise MasterNotFoundError(f"no master {service_name!r} found: {'; '.join(why)}")


class SentinelRedis(Redis):
    """A master client found through Sentinel; closing it closes the sentinel connections too."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            await sentinel.aclose()


def _sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str | None, int, dict[str, Any],
                                       dict[str, Any], bool]:
    """(sentinels, master name, db, credentials, options, tls) of either URL form."""
    if url.lower().startswith("sentinel://"):
        hosts: list[tuple[str, int]] = []
        creds: dict[str, Any] = {}
        options: dict[str, Any] = {}
        db = 0
        for piece in url.split(";"):
            parts = urlsplit(piece.strip())
            hosts += _hosts(parts.netloc, 26379)
            creds = creds or _credentials(parts.netloc)
            options.update(_options(parts.query))
            path = parts.path.strip("/")
            if path.isdigit():
                db = int(path)
        return hosts, options.pop("master_name", None), db, creds, options, False
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    if not segments or len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
        raise ConfigError("a redis+sentinel:// URL needs /<master name>[/<db>] after the "
                          "sentinels, e.g. redis+sentinel://h:26379,h2:26379/mymaster/0")
    options = _options(parts.query)
    master = options.pop("master_name", None) or unquote(segments[0])
    db = int(segments[1]) if len(segments) == 2 else 0
    return (_hosts(parts.netloc, 26379), master, db, _credentials(parts.netloc), options,
            parts.scheme.lower() == "rediss+sentinel")


def open_sentinel(url: str, *, master_name: str | None = None, **options: Any) -> Redis:
    """The current master of a Sentinel-watched group, followed across failovers: a connection
    that finds the old master gone, or demoted to a replica, asks the sentinels again."""
    hosts, master, db, creds, query, tls = _sentinel_parts(url)
    master = master or master_name
    if not master:
        raise ConfigError("a sentinel:// redis_uri needs the master's name: add "
                          "?master_name=<name> (Celery: broker_transport_options master_name)")
    # A sentinel that does not answer is skipped for the next one, so asking it again (redis-py
    # retries with backoff by default: ~3.6 s for each refused password) only delays the error.
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": options.get("socket_connect_timeout", 5),
        "socket_timeout": options.get("socket_timeout", 5), "retry": Retry(NoBackoff(), 0)}
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query.pop("sentinel_password")
    merged = {**options, **creds, **query, "db": db}
    if tls:
        merged["ssl"] = True
    sentinel: Any = cast(Any, _Sentinels)(hosts, sentinel_kwargs=sentinel_kwargs, **merged)
    return cast(Redis, sentinel.master_for(master, redis_class=SentinelRedis))

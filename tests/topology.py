"""Real Redis topologies for tests, started on loopback and always stopped: a Redis Cluster of
masters with a replica each, and a master/replica pair watched by three Sentinels.

Both are Debian's ``redis-server`` (``--cluster-enabled yes``; ``--sentinel``), created the way an
operator would (``redis-cli --cluster create``, ``sentinel monitor``), with short timeouts so a
failover takes a couple of seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis
from redis.crc import key_slot

from earnorm.events._tools.embedded import LocalRedis, TLSFiles, free_port, start_local_redis

NODE_TIMEOUT_MS = 1000
# Debian's redis-server (what the brief names for clusters and sentinels); any server on PATH.
SERVER = shutil.which("redis-server") or shutil.which("valkey-server") or "redis-server"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} not within {timeout}s")


def _client(port: int, tls: TLSFiles | None = None) -> Redis:
    if tls is None:
        return Redis(host="127.0.0.1", port=port, socket_timeout=2)
    return Redis(host="127.0.0.1", port=port, socket_timeout=2, ssl=True, ssl_ca_certs=tls.ca,
                 ssl_certfile=tls.cert, ssl_keyfile=tls.key)


def _tls_options(tls: TLSFiles) -> str:
    """URL query of a client that trusts ``tls``'s CA (and shows the server's certificate)."""
    return f"ssl_ca_certs={tls.ca}&ssl_certfile={tls.cert}&ssl_keyfile={tls.key}"


@dataclass
class Cluster:
    nodes: list[LocalRedis]
    workdir: str
    tls: TLSFiles | None = None

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])
        if self.tls is not None:
            return f"rediss+cluster://{hosts}/?{_tls_options(self.tls)}"
        return f"redis+cluster://{hosts}"

    def client(self, port: int) -> Redis:
        return _client(port, self.tls)

    def slot_owner(self) -> dict[int, int]:
        """slot -> master port, read from the cluster itself."""
        owner: dict[int, int] = {}
        with self.client(self.nodes[0].port) as client:
            for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                for slot in range(start, end + 1):
                    owner[slot] = int(master[1])
        return owner

    def queues_on_distinct_masters(self, count: int) -> list[str]:
        """``count`` fresh queue names whose hash tags fall on different masters."""
        owner = self.slot_owner()
        tag = uuid.uuid4().hex[:6]
        chosen: dict[int, str] = {}
        for i in range(1000):
            name = f"q{tag}{i}"
            chosen.setdefault(owner[key_slot(("{" + name + "}").encode())], name)
            if len(chosen) == count:
                return list(chosen.values())
        raise AssertionError("no queue names found on distinct masters")

    def masters(self) -> dict[int, LocalRedis]:
        """Live masters by port."""
        out: dict[int, LocalRedis] = {}
        for node in self.nodes:
            if node.process.poll() is not None:
                continue
            with self.client(node.port) as client:
                if client.info("replication")["role"] == "master":
                    out[node.port] = node
        return out

    def master_for(self, key: str) -> LocalRedis:
        """The live master serving ``key``'s slot."""
        for port, node in self.masters().items():
            with self.client(port) as client:
                slot = int(client.execute_command("CLUSTER KEYSLOT", key))
                for start, end, *_ in client.execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end and _[0][1] == port:
                        return node
        raise LookupError(f"no live master serves {key!r}")

    def restart(self, node: LocalRedis) -> LocalRedis:
        """Start a stopped node again on its port with its cluster config file: it rejoins
        (a master that lost its slots comes back as a replica of its successor)."""
        again = start_local_redis(node.port, workdir=node.workdir, extra_args=node.extra_args,
                                  tls=node.tls, binary=SERVER)
        self.nodes[self.nodes.index(node)] = again
        return again

    def wait_healthy(self, timeout: float = 30) -> None:
        def ok() -> bool:
            live = [n for n in self.nodes if n.process.poll() is None]
            for node in live:
                with self.client(node.port) as client:
                    if client.cluster("INFO").get("cluster_state") != "ok":
                        return False
            return True
        wait_for(ok, timeout, "cluster_state:ok on every live node")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _parallel_start(count: int, workdir: str, extra: Callable[[int], tuple[str, ...]],
                    tls: TLSFiles | None = None) -> list[LocalRedis]:
    nodes: list[LocalRedis] = []
    try:
        for _ in range(count):
            port = free_port()
            nodes.append(start_local_redis(port, workdir=workdir, extra_args=extra(port),
                                           tls=tls, binary=SERVER))
    except BaseException:
        for node in nodes:
            node.kill()
        raise
    return nodes


@contextmanager
def redis_cluster(masters: int = 3, replicas: int = 1, tls: TLSFiles | None = None
                  ) -> Iterator[Cluster]:
    """With ``tls``, every port (clients, the cluster bus, replication) speaks TLS only."""
    workdir = tempfile.mkdtemp(prefix="earnorm-cluster-")
    secure = ("--tls-cluster", "yes", "--tls-replication", "yes") if tls else ()
    nodes = _parallel_start(masters * (1 + replicas), workdir, lambda port: (
        "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
        "--cluster-port", str(free_port()),  # not port + 10000: free ports run past 55535
        "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
        "--cluster-replica-validity-factor", "0", "--appendonly", "no", *secure,
    ), tls)
    cluster = Cluster(nodes, workdir, tls)
    cli_tls = ("--tls", "--cacert", tls.ca, "--cert", tls.cert, "--key", tls.key) if tls else ()
    try:
        if masters == 1 and replicas == 0:  # redis-cli wants 3 masters: one node takes all
            with cluster.client(nodes[0].port) as client:
                client.execute_command("CLUSTER ADDSLOTSRANGE", 0, 16383)
            cluster.wait_healthy()
            yield cluster
            return
        subprocess.run(
            ["redis-cli", *cli_tls, "--cluster", "create",
             *(f"127.0.0.1:{n.port}" for n in nodes),
             "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        cluster.wait_healthy()
        # Every replica attached and in sync, so a master's loss is covered.
        wait_for(lambda: sum(
            cluster.client(n.port).info("replication").get("master_link_status") == "up"
            for n in nodes) == masters * replicas, 30, "replicas in sync")
        yield cluster
    finally:
        cluster.stop()


@dataclass
class SentinelGroup:
    master: LocalRedis
    replica: LocalRedis
    sentinels: list[subprocess.Popen[bytes]]
    sentinel_ports: list[int]
    workdir: str
    name: str = "mymaster"
    servers: list[LocalRedis] = field(default_factory=list)
    tls: TLSFiles | None = None  # the master and replica speak TLS only; sentinels plain
    sentinel_password: str | None = None

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        query = [_tls_options(self.tls)] if self.tls else []
        if self.sentinel_password:
            query.append(f"sentinel_password={self.sentinel_password}")
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        return f"{scheme}://{hosts}/{self.name}/0" + ("?" + "&".join(query) if query else "")

    def sentinel(self, port: int) -> Redis:
        return Redis(host="127.0.0.1", port=port, socket_timeout=2,
                     password=self.sentinel_password)

    @property
    def kombu_url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{p}" for p in self.sentinel_ports)

    def current_master_port(self) -> int:
        with self.sentinel(self.sentinel_ports[0]) as client:
            _, port = client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", self.name)
            return int(port)

    def stop(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        self.master.kill()
        self.replica.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextmanager
def sentinel_group(sentinels: int = 3, *, tls: TLSFiles | None = None,
                   sentinel_password: str | None = None) -> Iterator[SentinelGroup]:
    """With ``tls`` the master and replica speak TLS only (the sentinels reach them over TLS,
    and clients over plain TCP); ``sentinel_password`` is the sentinels' ``requirepass``."""
    workdir = tempfile.mkdtemp(prefix="earnorm-sentinel-")
    secure = ("--tls-replication", "yes") if tls else ()
    master = start_local_redis(workdir=workdir, binary=SERVER, tls=tls, extra_args=secure)
    replica = start_local_redis(workdir=workdir, binary=SERVER, tls=tls, extra_args=(
        "--replicaof", "127.0.0.1", str(master.port), *secure))
    processes: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    group = SentinelGroup(master, replica, processes, ports, workdir, tls=tls,
                          sentinel_password=sentinel_password)
    extra = ""
    if tls:
        extra += (f"tls-replication yes\ntls-cert-file {tls.cert}\ntls-key-file {tls.key}\n"
                  f"tls-ca-cert-file {tls.ca}\n")
    if sentinel_password:
        extra += f"requirepass {sentinel_password}\n"
    try:
        for _ in range(sentinels):
            port = free_port()
            conf = Path(workdir) / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {workdir}\n"
                f"sentinel monitor {group.name} 127.0.0.1 {master.port} 2\n"
                f"sentinel down-after-milliseconds {group.name} {NODE_TIMEOUT_MS}\n"
                f"sentinel failover-timeout {group.name} 5000\n"
                f"sentinel parallel-syncs {group.name} 1\n" + extra
            )
            log = (Path(workdir) / f"sentinel-{port}.log").open("ab")
            processes.append(subprocess.Popen(
                [master.binary, str(conf), "--sentinel"], stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True))
            ports.append(port)
        wait_for(lambda: _client(replica.port, tls).info("replication")
                 .get("master_link_status") == "up", 30, "replica in sync")

        def all_see_everyone() -> bool:
            for port in ports:
                with group.sentinel(port) as client:
                    info = client.sentinel_master(group.name)
                    if int(info["num-other-sentinels"]) < sentinels - 1 or int(
                            info["num-slaves"]) < 1:
                        return False
            return True
        wait_for(all_see_everyone, 30, "sentinels that know each other and the replica")
        yield group
    finally:
        group.stop()

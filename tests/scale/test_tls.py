"""TLS on the scaled-out topologies: a Redis Cluster whose every port (clients, cluster bus,
replication) speaks TLS only, reached by ``rediss+cluster://``; and a Sentinel group whose
master and replica speak TLS only, reached by ``rediss+sentinel://`` through sentinels that
require a password (``sentinel_password``). Certificates come from a throwaway CA
(``trustme``), made for each run."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import trustme
from redis.crc import key_slot

from earnorm import (
    BrokerConnectionError,
    ConsumerGroup,
    Event,
    EventBus,
)
from earnorm.events._tools.embedded import TLSFiles, supports_tls
from tests.helpers import counting_registry, wait_until
from tests.topology import SERVER, redis_cluster, sentinel_group

pytestmark = pytest.mark.anyio

SENTINEL_PASSWORD = "sentinel-s3cret"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    if not supports_tls(SERVER):
        message = f"{SERVER} is built without TLS"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the TLS topology tests: {message}")
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("tls-topology")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(folder / "server.crt"))
    server.private_key_pem.write_to_path(str(folder / "server.key"))
    # The nodes connect to each other with the same pair (cluster bus, replication, sentinel).
    return TLSFiles(str(folder / "server.crt"), str(folder / "server.key"),
                    str(folder / "ca.pem"), require_client_cert=False)


async def test_a_tls_cluster_serves_three_queues_on_three_masters(tls: TLSFiles) -> None:
    with redis_cluster(masters=3, replicas=0, tls=tls) as cluster:
        assert cluster.url.startswith("rediss+cluster://")
        queues = cluster.queues_on_distinct_masters(3)
        ids: list[str] = []
        for queue in queues:
            bus = await EventBus.connect(cluster.url, queue_name=queue)
            ids += await bus.publish_batch([Event(name="tls.x", data={"i": i})
                                            for i in range(200)])
            await bus.close()
        handled: Counter[str] = Counter()
        registry = counting_registry("tls.*", handled)
        async with ConsumerGroup(cluster.url, queues=queues, registry=registry,
                                 concurrency=60) as group:
            await wait_until(lambda: len(handled) == len(ids), 60, interval=0.05,
                             message="every event handled over TLS")
            owner = cluster.slot_owner()
            assert len({owner[key_slot(c.config.queue_name.encode())] for c in group}) == 3
        assert set(handled) == set(ids) and max(handled.values()) == 1
        # The client ports speak TLS only: the same nodes without TLS are not reachable.
        plain = cluster.url.replace("rediss+cluster://", "redis+cluster://").split("/?")[0]
        with pytest.raises(BrokerConnectionError):
            await EventBus.connect(plain, queue_name=queues[0])


async def test_a_tls_master_behind_password_protected_sentinels(tls: TLSFiles) -> None:
    with sentinel_group(tls=tls, sentinel_password=SENTINEL_PASSWORD) as group:
        assert group.url.startswith("rediss+sentinel://") and "sentinel_password=" in group.url
        handled: Counter[str] = Counter()
        bus = await EventBus.connect(group.url, queue_name="tls-sentinel")
        registry = counting_registry("tls.*", handled)
        async with ConsumerGroup(bus=bus, queues=["tls-sentinel"], registry=registry):
            ids = await bus.publish_batch([Event(name="tls.y", data={"i": i})
                                           for i in range(300)])
            await wait_until(lambda: len(handled) == len(ids), 30, interval=0.05,
                             message="every event handled through Sentinel over TLS")
        await bus.close()
        assert set(handled) == set(ids) and max(handled.values()) == 1
        # Without the sentinels' password nobody tells the client where the master is.
        no_password = group.url.replace(f"&sentinel_password={SENTINEL_PASSWORD}", "")
        with pytest.raises(BrokerConnectionError) as refused:
            await EventBus.connect(no_password, queue_name="tls-sentinel")
        message = str(refused.value)
        # Each sentinel by address and why, one line each (redis-py's own message repeats the
        # server's whole error text: ~1 KB a sentinel).
        for port in group.sentinel_ports:
            assert f"sentinel 127.0.0.1:{port} - AuthenticationError: " in message, message
        assert len(message) < 1000, message

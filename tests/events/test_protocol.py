"""Pure protocol tests: golden vectors from real Celery, and the encoder against what a worker
needs. No Redis. Samples: ``tests/interop/samples``, written by ``scripts/capture_celery_wire.py``
from a real Celery (docs/wire.md)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu.utils import json as kombu_json

from earnorm._errors import EventValidationError, MessageDecodeError, SerializationError
from earnorm.events._wire import decode as protocol
from earnorm.events._wire import encode
from earnorm.events._wire.event import _NAME_RE, Event
from earnorm.events._wire.kombu_types import from_wire
from tests.interop.wire_rules import (
    STANDARD_HEADERS,
    STANDARD_PROPERTIES,
    decoded_call,
    worker_problems,
)

SAMPLES = Path(__file__).resolve().parents[1] / "interop" / "samples"
RAW_SAMPLES = sorted(p.name.removesuffix(".raw.json") for p in SAMPLES.glob("*.raw.json"))


def raw_sample(name: str) -> bytes:
    raw = (SAMPLES / f"{name}.raw.json").read_bytes()
    if name == "worker_unacked_entry":  # the `unacked` hash value: [envelope, exchange, key]
        return orjson.dumps(orjson.loads(raw)[0])
    return raw


def decoded_sample(name: str) -> dict[str, Any]:
    sample: dict[str, Any] = json.loads((SAMPLES / f"{name}.decoded.json").read_text())
    return sample


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def test_samples_are_present() -> None:
    assert len(RAW_SAMPLES) >= 27, RAW_SAMPLES


# ------------------------------------------------------------------ decoding golden vectors


@pytest.mark.parametrize("name", RAW_SAMPLES)
def test_sample_decodes_to_the_captured_call(name: str) -> None:
    expected = decoded_sample(name)
    headers = expected["envelope"]["headers"]
    body = expected["body"]["decoded"]
    message = protocol.decode(raw_sample(name))
    assert message.task == headers["task"]
    assert message.id == headers["id"]
    assert message.args == from_wire(body["args"])
    assert message.kwargs == from_wire(body["kwargs"])
    assert message.eta == _when(headers.get("eta"))
    assert message.expires == _when(headers.get("expires"))
    assert message.retries == (headers.get("retries") or 0)
    assert message.embed == body["embed"]


def test_json_special_types_decode_to_python_values() -> None:
    message = protocol.decode(raw_sample("send_task_json_special_types"))
    assert message.args == [
        "Zoë ✓",
        datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        Decimal("1.10"),
        b"raw-bytes",
    ]
    assert message.kwargs == {"when": date(2024, 1, 2)}


def test_priority_samples_keep_their_priority() -> None:
    assert [protocol.decode(raw_sample(f"send_task_priority{p}")).priority for p in (0, 5, 9)] \
        == [0, 5, 9]


def test_link_callbacks_are_kept_in_event_metadata_not_run() -> None:
    event = protocol.decode(raw_sample("apply_async_with_link")).to_event()
    callbacks = event.metadata["celery"]["callbacks"]
    assert [c["task"] for c in callbacks] == ["route.me"]
    assert callbacks[0]["args"] == ["linked"]


def test_group_members_carry_group_id_and_index_in_metadata() -> None:
    first = protocol.decode(raw_sample("group_member_index0")).to_event()
    second = protocol.decode(raw_sample("group_member_index1")).to_event()
    assert first.metadata["celery"]["group"] == second.metadata["celery"]["group"]
    assert (first.metadata["celery"]["group_index"], second.metadata["celery"]["group_index"]) \
        == (0, 1)


def test_plain_celery_call_adds_no_celery_metadata() -> None:
    assert protocol.decode(raw_sample("send_task_default")).to_event().metadata == {}


def test_retry_sample_counts_retries_and_keeps_the_original_id() -> None:
    original = protocol.decode(raw_sample("retry_original_message"))
    retry = protocol.decode(raw_sample("retry_countdown60"))
    assert (retry.id, retry.retries, retry.args) == (original.id, 1, original.args)
    assert retry.to_event().retries == 1


# ------------------------------------------------------------------ Celery call -> Event


def _message(args: list[Any], kwargs: dict[str, Any]) -> protocol.Message:
    body = base64.b64encode(orjson.dumps([args, kwargs, None])).decode()
    return protocol.decode(orjson.dumps({
        "body": body, "content-type": protocol.JSON, "content-encoding": "utf-8",
        "headers": {"task": "user.created", "id": "i-1"},
        "properties": {"body_encoding": "base64", "delivery_tag": "t",
                       "delivery_info": {"exchange": "", "routing_key": "q"}},
    }))


@pytest.mark.parametrize(("args", "kwargs", "data"), [
    ([{"id": 7}], {}, {"id": 7}),
    ([], {"plan": "pro"}, {"plan": "pro"}),
    ([], {}, {}),
    ([7, "bob"], {}, {"args": [7, "bob"], "kwargs": {}}),
    ([{"id": 7}], {"plan": "pro"}, {"args": [{"id": 7}], "kwargs": {"plan": "pro"}}),
])
def test_celery_call_maps_onto_event_data(
    args: list[Any], kwargs: dict[str, Any], data: dict[str, Any]
) -> None:
    event = _message(args, kwargs).to_event()
    assert event.data == data
    assert (event.args, event.kwargs) == (tuple(args), kwargs)


def _with_headers(**headers: Any) -> bytes:
    envelope = orjson.loads(raw_sample("handcrafted_minimal"))
    envelope["headers"].update(headers)
    return orjson.dumps(envelope)


@pytest.mark.parametrize("eta", [
    "2026-01-02T03:04:05+00:00", "2026-01-02T03:04:05Z", "2026-01-02T03:04:05",
])
def test_eta_forms_celery_accepts_all_mean_utc(eta: str) -> None:
    assert protocol.decode(_with_headers(eta=eta)).eta == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize("eta", ["tomorrow", 12, "2026-13-01T00:00:00"])
def test_invalid_eta_is_a_decode_error_naming_it(eta: Any) -> None:
    with pytest.raises(MessageDecodeError, match="eta"):
        protocol.decode(_with_headers(eta=eta))


# ------------------------------------------------------------------ encoding


def _event(**data: Any) -> Event:
    return Event(name="user.created", data=data or {"id": 7}, metadata={"source": "test"})


def test_encoded_envelope_has_every_field_celery_writes_in_celery_order() -> None:
    raw = encode.encode_event(_event(), "app:events", priority=5)
    envelope = json.loads(raw)
    assert list(envelope) == ["body", "content-encoding", "content-type", "headers", "properties"]
    assert set(STANDARD_HEADERS) <= set(envelope["headers"])
    assert set(STANDARD_PROPERTIES) <= set(envelope["properties"])
    assert envelope["properties"]["delivery_info"] == {"exchange": "", "routing_key": "app:events"}
    assert envelope["properties"]["body_encoding"] == "base64"
    assert envelope["properties"]["priority"] == 5
    assert envelope["headers"]["root_id"] == envelope["headers"]["id"]
    assert worker_problems(raw) == []


RICH: dict[str, Any] = {
    "text": "Zoë ✓ 日本語",
    "at": datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
    "naive": datetime(2026, 1, 2, 3, 4, 5),
    "day": date(2026, 1, 2),
    "clock": time(12, 30),
    "amount": Decimal("12.50"),
    "ref": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "blob": b"\x00\xff",
    "utf8_blob": b"plain",
    "nested": {"list": [1, 2.5, None, True, {"deep": [Decimal("1E+3")]}]},
}


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_json_event_reaches_a_celery_task_with_exact_python_types(
    compression: str | None,
) -> None:
    raw = encode.encode_event(_event(**RICH), "q", compression=compression)
    args, kwargs, embed = decoded_call(raw)
    assert args == [RICH]
    assert repr(args) == repr([RICH])  # same types, not just equal values
    assert (kwargs, embed) == ({}, protocol.EMBED)


def test_msgpack_event_gives_celery_tags_that_kombu_json_restores() -> None:
    """kombu's msgpack serializer has no type hook: a Celery task sees datetime, date, time,
    Decimal and UUID as ``{"__type__", "__value__"}`` dicts and bytes as bytes. One call to
    ``kombu.utils.json.loads(kombu.utils.json.dumps(x))`` restores the Python values."""
    raw = encode.encode_event(_event(**RICH), "q", serializer="msgpack")
    assert worker_problems(raw) == []
    (data,), _, _ = decoded_call(raw)
    assert data["at"] == {"__type__": "datetime", "__value__": RICH["at"].isoformat()}
    assert data["amount"] == {"__type__": "decimal", "__value__": "12.50"}
    assert data["blob"] == b"\x00\xff"
    assert data["text"] == RICH["text"]
    assert kombu_json.loads(kombu_json.dumps(data)) == RICH


def test_celery_msgpack_cannot_send_datetime_at_all() -> None:
    """Why tags are the best msgpack choice: kombu's msgpack packer refuses these types."""
    with pytest.raises(TypeError):
        msgpack.packb([datetime.now(UTC)], use_bin_type=True)


def test_delayed_event_carries_an_aware_iso_eta() -> None:
    due = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=9)))
    envelope = json.loads(encode.encode_event(_event(), "q", eta=due))
    assert envelope["headers"]["eta"] == "2026-01-01T18:04:05+00:00"


def test_retry_message_is_what_celery_self_retry_publishes() -> None:
    original = protocol.decode(encode.encode_event(_event(), "q"))
    due = datetime(2026, 1, 2, tzinfo=UTC)
    raw = encode.encode_retry(original, due)
    assert worker_problems(raw) == []
    retry = protocol.decode(raw)
    assert (retry.id, retry.retries, retry.eta, retry.headers["parent_id"]) == (
        original.id, 1, due, original.id)
    assert retry.properties["delivery_tag"] != original.properties["delivery_tag"]
    assert retry.args == original.args


@pytest.mark.parametrize(("data", "where"), [
    ({"x": {"__type__": "datetime", "__value__": "now"}}, "data.x"),
    ({"x": float("nan")}, "data.x"),
    ({"x": 2**64}, "data.x"),
    ({"x": {1: "a"}}, "data.x"),
    ({"x": {1, 2}}, "data.x"),
    ({"x": Decimal("Infinity")}, "data.x"),
    ({"x": "\ud800"}, "json"),
])
def test_encoder_refuses_what_a_worker_could_not_read(data: dict[str, Any], where: str) -> None:
    with pytest.raises(SerializationError, match=where.replace(".", r"\.")):
        encode.encode_event(Event(name="user.created", data=data), "q")


def test_encoder_refuses_tag_shaped_metadata_that_would_crash_kombu() -> None:
    event = Event(name="user.created", metadata={"m": {"__type__": "x", "__value__": 1}})
    with pytest.raises(SerializationError, match="metadata"):
        encode.encode_event(event, "q")


def test_encoder_refuses_priority_outside_0_to_9() -> None:
    with pytest.raises(EventValidationError, match="priority"):
        encode.encode_event(_event(), "q", priority=10)


# ------------------------------------------------------------------ property: encoder safety

_scalars = st.one_of(
    st.none(), st.booleans(), st.text(max_size=20),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)
_typed = st.one_of(
    # ``fold`` does not survive isoformat() in kombu either: it is not data.
    st.datetimes(timezones=st.sampled_from([None, UTC, timezone(timedelta(hours=-5))]))
    .map(lambda d: d.replace(fold=0)),
    st.dates(), st.times().map(lambda t: t.replace(fold=0)), st.uuids(), st.binary(max_size=20),
    st.decimals(allow_nan=False, allow_infinity=False),
)
_plain = st.recursive(
    _scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.text(max_size=8), kids, max_size=4), max_leaves=12,
)
_data = st.dictionaries(
    st.text(max_size=10),
    st.recursive(
        _scalars | _typed,
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
            st.text(max_size=8), kids, max_size=4),
        max_leaves=15,
    ),
    max_size=6,
)
_events = st.builds(
    Event,
    name=st.from_regex(_NAME_RE, fullmatch=True).filter(lambda n: len(n) <= 255),
    data=_data,
    id=st.uuids().map(str) | st.text(min_size=1, max_size=40),
    version=st.integers(min_value=-(2**31), max_value=2**31),
    metadata=st.dictionaries(st.text(max_size=8), _plain, max_size=4),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    event=_events,
    serializer=st.sampled_from(["json", "msgpack"]),
    compression=st.sampled_from([None, "zlib"]),
    priority=st.integers(min_value=0, max_value=9),
    eta=st.none() | st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2999, 1, 1), timezones=st.just(UTC)),
)
def test_encoder_never_emits_a_message_a_worker_would_crash_on_or_lose(
    event: Event, serializer: str, compression: str | None, priority: int, eta: datetime | None,
) -> None:
    try:
        raw = encode.encode_event(
            event, "q", serializer=serializer, compression=compression, eta=eta,
            priority=priority,
        )
    except SerializationError:
        return  # refused with a named field path: nothing reaches a worker
    assert worker_problems(raw) == []
    args, kwargs, _ = decoded_call(raw)
    if serializer == "msgpack":
        args = kombu_json.loads(kombu_json.dumps(args))
    assert args == [event.data]
    assert kwargs == {}
    decoded = protocol.decode(raw).to_event()
    assert decoded == event
    assert repr(decoded.data) == repr(event.data)


@pytest.mark.parametrize("kind", ["application/x-gzip", "application/x-bz2", "application/x-lzma"])
def test_compressed_body_within_limit_decodes_and_truncated_stream_is_refused(kind: str) -> None:
    import bz2
    import lzma
    import zlib

    from earnorm._errors import MessageDecodeError
    from earnorm.events._wire import decode as protocol

    compressors: dict[str, Callable[[bytes], bytes]] = {
        "application/x-gzip": zlib.compress, "application/x-bz2": bz2.compress,
        "application/x-lzma": lzma.compress,
    }
    compress = compressors[kind]
    body = b'[[{"k": "v"}], {}, {}]'
    envelope = {
        "body": base64.b64encode(compress(body)).decode(), "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {"task": "a.b", "id": "1", "compression": kind},
        "properties": {"body_encoding": "base64"},
    }
    assert protocol.decode(orjson.dumps(envelope), 1 << 20).args == [{"k": "v"}]
    envelope["body"] = base64.b64encode(compress(body)[:-4]).decode()
    with pytest.raises(MessageDecodeError, match="decompress"):
        protocol.decode(orjson.dumps(envelope), 1 << 20)


@pytest.mark.parametrize("label", ["utf-8", "UTF-8", "", None])
def test_a_plain_json_body_labelled_as_kombu_reads_text_is_decoded(label: str | None) -> None:
    """kombu's Channel.decode_body reads a missing, empty or "utf-8" body_encoding as plain
    text; some non-Python producers label plain JSON "utf-8"."""
    properties: dict[str, Any] = {"delivery_tag": "t"}
    if label is not None:
        properties["body_encoding"] = label
    envelope = {
        "body": '[[{"k": "v"}], {}, {}]', "content-type": "application/json",
        "content-encoding": "utf-8", "headers": {"task": "a.b", "id": "1"},
        "properties": properties,
    }
    assert protocol.decode(orjson.dumps(envelope)).args == [{"k": "v"}]


def test_a_body_encoding_kombu_does_not_know_is_refused() -> None:
    envelope = {
        "body": "[[], {}, {}]", "content-type": "application/json",
        "headers": {"task": "a.b", "id": "1"}, "properties": {"body_encoding": "rot13"},
    }
    with pytest.raises(MessageDecodeError, match="unsupported body_encoding 'rot13'"):
        protocol.decode(orjson.dumps(envelope))

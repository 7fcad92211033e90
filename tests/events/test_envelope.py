"""The byte-template envelope (the publish hot path) writes exactly what the dict path writes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from earnorm import Event
from earnorm._errors import SerializationError
from earnorm.events._wire import decode as protocol
from earnorm.events._wire import encode

CASES: list[dict[str, Any]] = [
    {},
    {"i": 1},
    {"user_id": 7, "email": "a@example.com", "tags": ["x", "y"], "ok": True, "none": None},
    {"text": 'quotes " and \\ backslashes, tabs\t and newlines\n', "emoji": "caf\u00e9 \U0001f600"},
    {"n": Decimal("1.10"), "at": datetime(2026, 12, 2, 12, 0, tzinfo=UTC), "id": uuid.uuid4()},
    {"nested": {"deep": [{"a": 1.5}, [1, 2, {"b": None}]]}, "big": "x" * 5000},
]


@pytest.fixture
def fixed_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encode, "new_uuid4", lambda: "11111111-2222-4333-8444-555555555555")


@pytest.mark.parametrize("data", CASES, ids=range(len(CASES)))
@pytest.mark.parametrize("priority", [0, 9])
def test_template_bytes_equal_the_dict_path(fixed_tag: None, data: dict[str, Any],
                                            priority: int) -> None:
    event = Event(name="order.line.added", data=data, id='odd "id" \\ 7', retries=3,
                  version=2)
    fast = encode.encode_event(event, "orders", priority=priority)
    slow = encode._dict_envelope(event, "orders", "json", None, None, priority, None)
    assert fast == slow
    assert orjson.loads(fast)["headers"]["id"] == 'odd "id" \\ 7'


def test_the_template_path_decodes_to_the_event(fixed_tag: None) -> None:
    event = Event(name="user.created", data={"user_id": 7})
    message = protocol.decode(encode.encode_event(event, "q"))
    assert (message.task, message.id, message.args) == ("user.created", event.id, [{"user_id": 7}])


def test_a_lone_surrogate_is_refused_on_both_paths() -> None:
    in_data = Event(name="user.created", data={"s": "\ud800"})
    with pytest.raises(SerializationError, match="cannot be serialized as json"):
        encode.encode_event(in_data, "q")
    in_id = Event(name="user.created", data={}, id="\ud800")
    with pytest.raises(SerializationError, match="cannot be encoded"):
        encode.encode_event(in_id, "q")

"""Fields from annotations: defaults, Optional, type checks naming the field. No database."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, Optional

import pytest

from earnorm import BaseModel, ConfigError, ValidationError


class Profile(BaseModel):
    _collection = "profiles"

    name: str
    age: int = 0
    score: float = 0.0
    active: bool = False
    tags: list[str] = []  # noqa: RUF012 - a field default, copied per instance
    extra: dict[str, Any] = {}  # noqa: RUF012
    kind: Literal["a", "b"] = "a"
    seen_at: Optional[datetime] = None  # noqa: UP045 - the spec's spelling must work
    nickname: str | None = None


def test_defaults_and_optional_fields_start_set() -> None:
    p = Profile(name="ann")
    assert (p.age, p.active, p.kind, p.seen_at, p.nickname) == (0, False, "a", None, None)


def test_mutable_defaults_are_copied_per_instance() -> None:
    first, second = Profile(name="a"), Profile(name="b")
    first.tags.append("x")
    assert second.tags == []
    assert Profile.tags == []


def test_wrong_type_on_assignment_names_the_field() -> None:
    p = Profile(name="ann")
    with pytest.raises(ValidationError, match=r"Profile\.age: expected int, got str '3'"):
        p.age = "3"  # type: ignore[assignment]
    assert p.age == 0


def test_wrong_type_in_constructor_names_the_field() -> None:
    with pytest.raises(ValidationError, match=r"Profile\.name: expected str"):
        Profile(name=5)


def test_bool_is_not_an_int_but_an_int_is_a_float() -> None:
    p = Profile(name="ann")
    with pytest.raises(ValidationError, match=r"Profile\.age"):
        p.age = True
    p.score = 3
    assert p.score == 3


def test_nested_list_and_literal_values_are_checked() -> None:
    p = Profile(name="ann")
    with pytest.raises(ValidationError, match=r"Profile\.tags: expected list\[str\]"):
        p.tags = ["ok", 2]  # type: ignore[list-item]
    with pytest.raises(ValidationError, match=r"Profile\.kind: expected one of 'a', 'b'"):
        p.kind = "c"  # type: ignore[assignment]


def test_optional_accepts_none_and_its_type() -> None:
    p = Profile(name="ann")
    p.seen_at = datetime.now(UTC)
    p.seen_at = None
    with pytest.raises(ValidationError, match=r"Profile\.seen_at: expected datetime \| None"):
        p.seen_at = "yesterday"  # type: ignore[assignment]


def test_unknown_field_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown field"):
        Profile(name="ann", emial="x")
    p = Profile(name="ann")
    with pytest.raises(AttributeError, match="no field 'emial'"):
        p.emial = "x"


def test_id_is_read_only_and_none_until_created() -> None:
    p = Profile(name="ann")
    assert p.id is None
    with pytest.raises(AttributeError):
        p.id = "x"  # type: ignore[misc]


def test_unset_required_field_reads_with_a_clear_error() -> None:
    class Stamped(BaseModel):
        created_at: datetime

    with pytest.raises(AttributeError, match=r"Stamped\.created_at has no value yet"):
        _ = Stamped().created_at


def test_type_mongo_cannot_round_trip_is_refused_at_class_definition() -> None:
    with pytest.raises(ConfigError, match=r"Price\.amount: type Decimal cannot be stored"):

        class Price(BaseModel):
            amount: Decimal


def test_id_cannot_be_declared() -> None:
    with pytest.raises(ConfigError, match="'id' is the document's ObjectId"):

        class Bad(BaseModel):
            id: str


def test_default_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"Bad\.count: expected int"):

        class Bad(BaseModel):
            count: int = "zero"  # type: ignore[assignment]


def test_collection_defaults_to_snake_case_class_name() -> None:
    class OrderLine(BaseModel):
        qty: int = 1

    assert OrderLine._collection == "order_line"
    assert Profile._collection == "profiles"


def test_get_changes_of_a_new_instance_has_none_as_old() -> None:
    p = Profile(name="ann", age=3)
    changes = p.get_changes()
    assert changes["name"] == (None, "ann")
    assert changes["age"] == (None, 3)
    assert "nickname" not in changes


def test_redefining_an_internal_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="redefines _finish_write: reserved by BaseModel"):

        class Bad(BaseModel):
            async def _finish_write(self) -> None: ...  # type: ignore[override]

"""A model that declares ``created_at`` / ``updated_at`` as datetimes has them kept, as Rails
does (the spec's lifecycle ``User`` declares both and sets only ``created_at``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from earnorm._environment import Environment
from earnorm.base import BaseModel

pytestmark = pytest.mark.anyio


class StampedNote(BaseModel):
    _collection = "stamped_notes"
    text: str
    created_at: datetime
    updated_at: datetime


class UnstampedNote(BaseModel):
    _collection = "unstamped_notes"
    text: str
    updated_at: str = "never"  # not a datetime: left alone


async def test_create_sets_both_and_an_update_moves_updated_at(orm: Environment) -> None:
    note = StampedNote(text="a")
    await note.create()
    created, first = note.created_at, note.updated_at
    assert abs(created - datetime.now(UTC)) < timedelta(seconds=5) and first == created
    await note.write({"text": "b"})
    assert note.created_at == created and note.updated_at > first
    stored = await StampedNote.get(note.id or "")
    assert stored is not None and stored.updated_at is not None
    assert abs(stored.updated_at - note.updated_at) < timedelta(milliseconds=1)


async def test_values_the_code_sets_are_kept(orm: Environment) -> None:
    chosen = datetime(2020, 1, 2, tzinfo=UTC)
    note = StampedNote(text="a", created_at=chosen, updated_at=chosen)
    await note.create()
    assert (note.created_at, note.updated_at) == (chosen, chosen)
    later = datetime(2021, 1, 2, tzinfo=UTC)
    await note.write({"text": "b", "updated_at": later})
    assert note.updated_at == later
    await note.save()  # nothing changed: no write, no stamp
    assert note.updated_at == later


async def test_a_field_of_another_type_is_not_stamped(orm: Environment) -> None:
    plain = UnstampedNote(text="a")
    await plain.create()
    await plain.write({"text": "b"})
    assert plain.updated_at == "never"

"""An events-only process imports only what it uses: no PyMongo, no msgpack, no ORM (their
memory and start-up time are what an events-only consumer's peak RSS is made of)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["earnorm", "earnorm.events.consumer"])
def test_an_events_only_import_loads_no_pymongo_no_msgpack(module: str) -> None:
    probe = (f"import sys, {module}; "
             "print(sorted(m for m in ('pymongo', 'bson', 'msgpack', 'earnorm.base') "
             "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_the_orm_names_still_come_from_earnorm() -> None:
    import earnorm

    assert earnorm.BaseModel.__name__ == "BaseModel"
    assert callable(earnorm.dispatch_model_event)
    assert "BaseModel" in dir(earnorm)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        earnorm.nope  # noqa: B018

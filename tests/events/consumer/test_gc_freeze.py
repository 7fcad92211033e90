"""A started consumer moves the objects alive then out of the cyclic collector's reach
(``gc.freeze()``, once per process), so a full collection no longer stops the event loop for
~20 ms mid-stream; ``gc_freeze=False`` leaves the process's collector as it is."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from earnorm import ConfigError, Consumer, EventBus, HandlerRegistry

pytestmark = pytest.mark.anyio


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.parametrize("freeze", [True, False])
async def test_a_started_consumer_freezes_the_objects_of_its_start_unless_told_not_to(
    bus: EventBus, unfrozen: None, freeze: bool,
) -> None:
    assert gc.get_freeze_count() == 0
    async with Consumer(bus=bus, registry=HandlerRegistry(), gc_freeze=freeze):
        frozen = gc.get_freeze_count()
    assert (frozen > 0) is freeze, frozen


async def test_a_second_consumer_does_not_freeze_again(bus: EventBus, unfrozen: None) -> None:
    async with Consumer(bus=bus, registry=HandlerRegistry()):
        assert gc.get_freeze_count() > 0
    made_since: list[int] = []  # alive while the second one starts
    async with Consumer(bus=bus, registry=HandlerRegistry()):
        # get_objects() lists what the collector still tracks: frozen objects are not in it
        assert any(o is made_since for o in gc.get_objects()), "frozen by the second start"


def test_gc_freeze_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match="gc_freeze must be True or False, got 'no'"):
        Consumer("redis://127.0.0.1:1/0", gc_freeze="no")  # type: ignore[arg-type]

"""A handler option nobody reads is refused, naming it and the known ones: a misspelled
``retry_polcy=`` or another queue's ``acks_late=`` used to register fine and do nothing."""

from __future__ import annotations

import pytest

from earnorm import ConfigError, Event, HandlerRegistry, event_handler, model_event_handler


async def _noop(event: Event) -> None: ...


@pytest.mark.parametrize("option", ["acks_late", "retry_polcy", "queue"])
def test_an_unknown_option_is_refused_naming_it_and_the_known_ones(option: str) -> None:
    registry = HandlerRegistry()
    with pytest.raises(ConfigError, match=rf"unknown handler option\(s\) for 'x': {option}"
                       ) as refused:
        event_handler("x", registry=registry, **{option: 1})(_noop)
    assert "known: batch_size, " in str(refused.value) and "retry_policy" in str(refused.value)
    assert len(registry) == 0


def test_a_typo_names_the_option_meant() -> None:
    with pytest.raises(ConfigError, match=r"retry_polcy \(did you mean retry_policy\?\)"):
        model_event_handler("User", "created", registry=HandlerRegistry(),
                            retry_polcy={"max_retries": 1})(_noop)


def test_metadata_is_the_place_for_labels_of_ones_own() -> None:
    registry = HandlerRegistry()
    event_handler("x", registry=registry, metadata={"team": "billing"})(_noop)
    assert registry.all()[0].metadata == {"team": "billing"}
    with pytest.raises(ConfigError, match="metadata must be a dict"):
        event_handler("y", registry=registry, metadata=["team"])(_noop)

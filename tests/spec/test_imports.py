"""Every import path the spec shows is public API for good: each resolves, to the same object
``earnorm`` exports; and ``earnorm.events`` (the spec's namespace for events) stays in step
with ``earnorm`` (in the spirit of httpx's exported-members test)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import earnorm
import earnorm.events
from tests.spec.blocks import spec_blocks


def test_every_import_the_spec_shows_is_the_object_earnorm_exports() -> None:
    shown = {(module, name) for block in spec_blocks() for module, name in block.imports()
             if module.split(".")[0] == "earnorm"}
    assert {name for _, name in shown} == {  # the spec's blocks were found and parsed
        "init", "event_bus", "Event", "event_handler", "model_event_handler", "BaseModel",
        "before_create", "after_write", "before_delete", "before_save", "after_save",
        "dispatch_model_event"}
    for module, name in sorted(shown):
        value = getattr(importlib.import_module(module), name)
        assert value is getattr(earnorm, name), f"from {module} import {name}"


def test_the_spec_imports_run_in_a_fresh_interpreter() -> None:
    lines = "\n".join(sorted({
        f"from {module} import {name}" for block in spec_blocks()
        for module, name in block.imports() if module.split(".")[0] == "earnorm"}))
    subprocess.run([sys.executable, "-c", lines], check=True, capture_output=True)


def test_earnorm_events_exports_what_a_user_of_events_looks_for() -> None:
    wanted = {"Event", "event_handler", "model_event_handler", "EventBus", "Consumer",
              "ConsumerGroup", "dispatch_model_event", "event_bus"}
    assert wanted <= set(earnorm.events.__all__)
    for name in earnorm.events.__all__:
        assert getattr(earnorm.events, name) is getattr(earnorm, name), name
        assert name in earnorm.__all__, f"earnorm.events.{name} is not in earnorm.__all__"
    assert set(earnorm.events.__all__) <= set(dir(earnorm.events))
    assert sorted(earnorm.events.__all__) == sorted(earnorm.events._WHERE)

"""Fault-test fixtures: a record file per test and a helper to publish the recorded event."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def record(tmp_path: Path) -> Path:
    """The file the recording app appends ``done <id>`` lines to."""
    return tmp_path / "handled.rec"

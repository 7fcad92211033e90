"""The committed pins (``constraints/``) agree with ``pyproject.toml``: every dependency is
pinned, each pin is allowed by its requirement, and ``lowest.txt`` is what
``scripts/lowest_constraints.py`` makes of today's lower bounds (so a changed bound that was not
re-locked, and so never run in the lowest environment, fails here)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def _pins(name: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints" / name).read_text().splitlines():
        if line and not line.startswith("#"):
            package, _, version = line.partition("==")
            assert version, f"constraints/{name}: {line!r} is not a '==' pin"
            pins[canonicalize_name(package)] = version
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        listed += extra
    return [Requirement(r) for r in listed]


def test_every_dependency_is_locked_at_an_allowed_version() -> None:
    locked = _pins("locked.txt")
    for requirement in _requirements():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is not in constraints/locked.txt"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"constraints/locked.txt pins {name}=={locked[name]}, outside {requirement}")
    assert "earnorm" not in locked


def test_the_lowest_pins_are_todays_lower_bounds() -> None:
    made = subprocess.run([sys.executable, str(ROOT / "scripts" / "lowest_constraints.py")],
                          capture_output=True, text=True, check=True).stdout
    assert made == (ROOT / "constraints" / "lowest.txt").read_text(), (
        "constraints/lowest.txt is stale: run 'bash scripts/lock.sh' and the lowest suite")

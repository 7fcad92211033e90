"""Print pip constraints that pin every dependency of pyproject.toml (runtime and the runtime
extras) to the lowest version it allows: ``constraints/lowest.txt``, which the "lowest"
environment installs from (``EARNORM_DEPS=lowest bash scripts/test.sh``), so each lower bound
we state is one we have run the suite on. The dev tools are not lowered (they are not what a
user installs). Run by ``scripts/lock.sh``; ``tests/test_install.py`` checks the file matches.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_EXTRAS = ("embedded", "metrics", "tracing", "dashboard", "periodic")
_LOWER = re.compile(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)")


def lower_bounds(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """``{package: lowest version}`` of the runtime dependencies and runtime extras."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in RUNTIME_EXTRAS:
        requirements += project["optional-dependencies"][extra]
    bounds: dict[str, str] = {}
    for requirement in requirements:
        match = _LOWER.match(requirement)
        if match is None:
            raise SystemExit(f"no '>=' lower bound in {requirement!r}: state one")
        bounds[match.group(1).lower()] = match.group(2)
    return bounds


def main() -> None:
    print("# Each dependency at the lowest version pyproject.toml allows: made by")
    print("# 'bash scripts/lock.sh' (scripts/lowest_constraints.py). Do not edit by hand.")
    for name, version in sorted(lower_bounds().items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    sys.exit(main())

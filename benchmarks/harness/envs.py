"""Per-peer virtual environments under ``benchmarks/.envs``, built from pinned requirements.

An environment is rebuilt only when its requirements file changed since it was built; the
``pip freeze`` of each is kept beside it and copied into the results for reproducibility.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.plan import ENVS_DIR, REQUIREMENTS_DIR

MARKER = ".bench-requirements"
FREEZE = ".bench-freeze"


def env_python(name: str) -> Path:
    return ENVS_DIR / name / "bin" / "python"


def ensure_env(name: str, log: bool = True) -> Path:
    """Create or refresh ``.envs/<name>`` from ``requirements/<name>.txt``; return its python."""
    requirements = REQUIREMENTS_DIR / f"{name}.txt"
    wanted = requirements.read_text()
    env = ENVS_DIR / name
    python = env_python(name)
    marker = env / MARKER
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    if log:
        print(f"  building venv {env.relative_to(ENVS_DIR.parent)} ...", file=sys.stderr)
    ENVS_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    result = subprocess.run(
        [*pip, "-r", str(requirements)], check=False, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"pip install for {name} failed:\n{result.stderr[-3000:]}")
    freeze = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    )
    (env / FREEZE).write_text(freeze.stdout)
    marker.write_text(wanted)
    return python


def ensure_envs(names: list[str]) -> dict[str, str]:
    """Build the environments in parallel; return ``{name: error}`` for those that failed."""
    errors: dict[str, str] = {}

    def build(name: str) -> None:
        try:
            ensure_env(name)
        except Exception as exc:
            errors[name] = str(exc)

    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(build, names))
    return errors


def frozen_versions(name: str) -> list[str]:
    path = ENVS_DIR / name / FREEZE
    return path.read_text().split() if path.exists() else []

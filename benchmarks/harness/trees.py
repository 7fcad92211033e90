"""EarnORM as of another git revision, for comparing with it (``run.py --baseline``,
``cpu_budget --baseline``): its ``earnorm/`` exported once under ``.envs/trees/<sha>``."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[2]
TREES_DIR = REPO_DIR / "benchmarks" / ".envs" / "trees"


def export_tree(revision: str) -> tuple[str, Path]:
    """(short sha, the directory holding that revision's ``earnorm/``)."""
    sha = subprocess.run(["git", "rev-parse", "--short", revision], cwd=REPO_DIR, check=True,
                         capture_output=True, text=True).stdout.strip()
    tree = TREES_DIR / sha
    if not (tree / "earnorm").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha, "earnorm"], cwd=REPO_DIR, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return sha, tree

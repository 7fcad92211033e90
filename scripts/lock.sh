#!/usr/bin/env bash
# Regenerate the pinned installs: constraints/locked.txt (every package the example and the test
# suite install, at the newest versions PyPI serves today) and constraints/lowest.txt (each
# dependency at the lowest version pyproject.toml allows). Run it, run the suite in all three
# environments (README, Development), and commit the files together:
#
#     bash scripts/lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
work=$(mktemp -d /tmp/earnorm-lock.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
# No constraints: the newest release of everything that pyproject.toml allows.
"$work/venv/bin/python" -m pip install --quiet ".[dev,embedded]"
{
  echo "# Every package 'scripts/bootstrap.sh' installs, pinned: made by 'bash scripts/lock.sh'"
  echo "# on $(date -u +%Y-%m-%d) with $("$work/venv/bin/python" -V). Do not edit by hand."
  "$work/venv/bin/python" -m pip freeze --exclude earnorm | LC_ALL=C sort -f
} > constraints/locked.txt
"$work/venv/bin/python" scripts/lowest_constraints.py > constraints/lowest.txt
echo "wrote constraints/locked.txt ($(grep -vc '^#' constraints/locked.txt) packages) and constraints/lowest.txt"

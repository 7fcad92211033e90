#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, types, then every test on real servers that the
# harness starts itself (Redis/Valkey, a MongoDB-wire server, Celery workers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check earnorm tests benchmarks examples scripts
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, types, then every test on real servers that the
# harness starts itself (Redis/Valkey, a MongoDB-wire server, Celery workers). Arguments go to
# pytest. EARNORM_DEPS=lowest|newest runs it on the lowest or newest allowed dependencies
# (scripts/bootstrap.sh) instead of the pinned ones.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(bash scripts/bootstrap.sh test | tail -n 1)
# The ORM tests' MongoDB-wire server (jongodb, a checksum-pinned npm package) installed up front
# so the first ORM test does not pay for it; MONGODB_URI=mongodb://... uses a real mongod.
if [ -z "${MONGODB_URI:-}" ]; then
  "$venv/bin/python" -c "from tests.orm.jongodb import ensure_binary; ensure_binary()"
fi
"$venv/bin/ruff" check earnorm tests benchmarks examples scripts
"$venv/bin/mypy"
exec "$venv/bin/python" -m pytest "$@"

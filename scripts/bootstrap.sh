#!/usr/bin/env bash
# Make (or refresh) a virtual environment with what one job needs, from the committed pins.
#
#     bash scripts/bootstrap.sh run    # the example: the package and its embedded server only
#     bash scripts/bootstrap.sh test   # the test suite: dev tools, Debian's redis-server and
#                                      # chromium, Node's npm for the MongoDB-wire server
#
# EARNORM_DEPS chooses the versions: "locked" (default: constraints/locked.txt, what CI ran),
# "lowest" (constraints/lowest.txt: every dependency at the lowest version pyproject.toml
# allows) or "newest" (no pins: whatever PyPI serves today). Each has its own venv (.venv,
# .venv-lowest, .venv-newest); the venv's path is printed last. Idempotent: it reinstalls only
# when pyproject.toml or the pins changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
job=${1:-test}
deps=${EARNORM_DEPS:-locked}
case "$job" in run | test) ;; *) echo "usage: bootstrap.sh run|test" >&2; exit 2 ;; esac
case "$deps" in
  locked) venv=.venv; pins=(-c constraints/locked.txt) ;;
  lowest) venv=.venv-lowest; pins=(-c constraints/lowest.txt) ;;
  newest) venv=.venv-newest; pins=() ;;
  *) echo "EARNORM_DEPS must be locked, lowest or newest, got '$deps'" >&2; exit 2 ;;
esac

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "EarnORM needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

if [ "$job" = test ]; then
  # The suite's servers and browser, from Debian when we are root with apt: redis-server (TLS,
  # cluster and Sentinel tests; the embedded wheel has no TLS), chromium (the dashboard's
  # browser test; Playwright never downloads one), npm (installs the MongoDB-wire server).
  missing=""
  command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
  command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
  if [ -z "${MONGODB_URI:-}" ] && ! command -v npm >/dev/null 2>&1; then
    missing="$missing npm"
  fi
  if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # shellcheck disable=SC2086
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends $missing; } >/dev/null 2>&1 || true
  fi
  still=""
  for tool in $missing; do command -v "$tool" >/dev/null 2>&1 || still="$still $tool"; done
  if [ -n "$still" ]; then
    echo "bootstrap: missing$still: the test suite needs Debian's redis-server and chromium" \
         "and Node.js's npm (or MONGODB_URI for a real mongod); install them, e.g." \
         "'apt-get install$still'" >&2
    exit 1
  fi
fi

[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
extras=embedded
[ "$job" = test ] && extras=dev,embedded
want=$(cat pyproject.toml constraints/*.txt | sha256sum | cut -d' ' -f1)
stamp=$venv/.earnorm-$job
# The test install is a superset of the run install: either stamp will do for "run".
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] && \
   { [ "$job" = test ] || [ "$(cat "$venv/.earnorm-test" 2>/dev/null)" != "$want" ]; }; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}" \
      --upgrade -e ".[$extras]"
  echo "$want" > "$stamp"
fi
echo "$venv"

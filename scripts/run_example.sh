#!/usr/bin/env bash
# The main job: the consumer with the bundled example app, a small publisher showing events
# flowing, on a private local Redis unless EARNORM_REDIS_URI / REDIS_URL is set. Ctrl-C stops it.
# Installs only the package and its embedded server (scripts/bootstrap.sh run).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(bash scripts/bootstrap.sh run | tail -n 1)
exec "$venv/bin/python" -m examples.demo "$@"

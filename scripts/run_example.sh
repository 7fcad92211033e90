#!/usr/bin/env bash
# The main job: the consumer with the bundled example app, a small publisher showing events
# flowing, on a private local Redis unless EARNORM_REDIS_URI / REDIS_URL is set. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m examples.demo "$@"

#!/usr/bin/env bash
# Set up (pinned) and run the embedded default: every service, a Celery worker and a private Redis on
# this machine, SQLite stores in ./data, a development issuer and demo content. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/lomas-mesh run "$@"

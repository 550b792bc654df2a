#!/usr/bin/env bash
# Set up (pinned) and run every check and test: contracts, generated code, lint, the whole suite.
# Exits with pytest's exit code when the checks pass.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
scripts/ensure-services.sh
scripts/check-protos.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
scripts/typecheck.sh
clients/go/test.sh
(cd clients/typescript && ../../node_modules/.bin/prettier --check .)
node --test clients/typescript/dist/test/
exec .venv/bin/pytest "$@"

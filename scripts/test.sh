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
# Two pytest workers (LOMAS_TEST_WORKERS), one test file at a time each: the suite's end-to-end meshes
# mostly wait on their processes, so both cores stay busy (every mesh picks free ports and its own
# Redis prefix and databases, so two never meet).
exec .venv/bin/pytest -n "${LOMAS_TEST_WORKERS:-2}" --dist loadfile "$@"

#!/usr/bin/env bash
# Regenerate src/gen from protos/ (committed; CI fails if regenerating changes it): buf with the
# local protoc-gen-es plugin, both pinned in the root package-lock.json, so nothing is fetched. The
# googleapis contracts the protos import come from the pinned googleapis-common-protos package, put
# in build/googleapis by scripts/googleapis.py as for the Python code.
# Usage: clients/typescript/scripts/generate.sh   (after scripts/setup.sh --dev and scripts/setup-typescript.sh)
set -euo pipefail
cd "$(dirname "$0")/../../.."
if [ ! -x node_modules/.bin/buf ] || [ ! -x node_modules/.bin/protoc-gen-es ]; then
  echo "buf or protoc-gen-es is missing: run scripts/setup-typescript.sh" >&2
  exit 1
fi
.venv/bin/python scripts/googleapis.py
node_modules/.bin/buf generate --template clients/typescript/buf.gen.yaml

#!/usr/bin/env bash
# Contract checks: buf lint and format, buf breaking against the previous commit, and generated code
# that matches the protos exactly.
set -euo pipefail
cd "$(dirname "$0")/.."
buf=node_modules/.bin/buf
"$buf" lint
"$buf" format --diff --exit-code
if git rev-parse -q --verify HEAD~1 >/dev/null && git cat-file -e HEAD~1:protos 2>/dev/null; then
  "$buf" breaking --against '.git#ref=HEAD~1'
fi
.venv/bin/python scripts/gen_protos.py >/dev/null
if [ -n "$(git status --porcelain -- clients/python/lomas)" ]; then
  echo "generated code differs from protos/: run 'make protos' and commit the result" >&2
  git status --porcelain -- clients/python/lomas >&2
  exit 1
fi

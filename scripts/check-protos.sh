#!/usr/bin/env bash
# Contract checks: buf lint and format, buf breaking against the previous commit, and generated code
# that matches the protos exactly. The googleapis contracts our protos import are put in
# build/googleapis from the pinned googleapis-common-protos package (scripts/googleapis.py).
set -euo pipefail
cd "$(dirname "$0")/.."
buf=node_modules/.bin/buf
.venv/bin/python scripts/googleapis.py
"$buf" lint
"$buf" format protos --diff --exit-code
if git rev-parse -q --verify HEAD~1 >/dev/null && git cat-file -e HEAD~1:protos 2>/dev/null; then
  # The previous commit's contracts, built as they were (with the same googleapis imports).
  previous=$(mktemp -d)
  trap 'rm -rf "$previous"' EXIT
  git archive HEAD~1 buf.yaml protos | tar -x -C "$previous"
  .venv/bin/python scripts/googleapis.py "$previous/build/googleapis"
  "$buf" build "$previous" -o "$previous/before.binpb"
  "$buf" build . -o "$previous/now.binpb"
  "$buf" breaking "$previous/now.binpb" --against "$previous/before.binpb"
fi
.venv/bin/python scripts/gen_protos.py >/dev/null
clients/go/generate.sh
clients/typescript/scripts/generate.sh
generated=(clients/python/lomas clients/go/lomas clients/typescript/src/gen)
if [ -n "$(git status --porcelain -- "${generated[@]}")" ]; then
  echo "generated code differs from protos/: run '.venv/bin/python scripts/gen_protos.py' and" \
    "'clients/go/generate.sh' and 'clients/typescript/scripts/generate.sh', and commit the result" >&2
  git status --porcelain -- "${generated[@]}" >&2
  exit 1
fi

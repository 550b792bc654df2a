#!/usr/bin/env bash
# Install the npm workspace exactly as package-lock.json pins it (buf, and the TypeScript client's
# dependencies and build tools), then build clients/typescript/dist. Idempotent and quick when done:
# npm runs only when the lock or a package.json changed since the last install, and `tsc --build`
# recompiles only what changed.
# Usage: scripts/setup-typescript.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# The lock records buf's binary for every platform, so `npm ci` accepts it as it is.
digest=$(cat package.json package-lock.json clients/typescript/package.json | sha256sum | cut -d' ' -f1)
stamp=node_modules/.lomas-lock-digest
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
  npm ci --no-audit --no-fund --loglevel=error
  echo "$digest" >"$stamp"
fi
node_modules/.bin/tsc --build clients/typescript

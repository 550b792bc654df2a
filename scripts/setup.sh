#!/usr/bin/env bash
# Create .venv with every Lomas mesh package (editable) and the pinned dependencies of constraints.txt.
# Usage: scripts/setup.sh [--dev]   (--dev adds the test and build tools, and buf from package-lock.json)
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${pip[@]}" install -c constraints.txt setuptools wheel
packages=(clients/python services/common services/testing services/admin services/budget services/executor services/gateway services/embedded)
editables=()
for p in "${packages[@]}"; do editables+=(-e "$p"); done
"${pip[@]}" install -c constraints.txt --no-build-isolation "${editables[@]}"
if [ "${1:-}" = "--dev" ]; then
  "${pip[@]}" install -c constraints.txt -r requirements-dev.txt
  scripts/setup-envoy.sh
  if [ ! -x node_modules/.bin/buf ]; then
    # npm ci refuses a lock that records only this platform's optional buf binary; install
    # exactly what package-lock.json pins, without rewriting it.
    npm install --no-audit --no-fund --no-save --loglevel=error
  fi
  # The other-language clients: Go from Debian's packages, offline (GOPATH mode).
  scripts/setup-go.sh
fi

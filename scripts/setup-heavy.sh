#!/usr/bin/env bash
# The heavy worker pool's environment, .venv-heavy: lomas-executor with SmartNoise-Synth's GAN
# synthesizers (PyTorch and Opacus, services/executor/requirements-heavy.txt, pinned in
# constraints.txt), apart from .venv, which never gets PyTorch. Then the pool's own tests
# (services/executor/heavy_tests: every GAN synthesizer fits and samples through the engine).
#
# Usage: scripts/setup-heavy.sh [--no-test]
#
# Run a heavy worker from it with the mesh's LOMAS_ settings, and tell the executor service that the
# heavy pool has the GANs (it prices queries without importing them):
#   LOMAS_WORKER_QUEUES=heavy .venv-heavy/bin/lomas-worker     # the heavy pool
#   LOMAS_SYNTH_GAN=on .venv/bin/lomas-executor                # the executor service
# On the development machines torch 2.13.0 is a CPU build that lies on disk; elsewhere pip may take
# a CUDA build of several GB.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
venv=${LOMAS_HEAVY_VENV:-.venv-heavy}
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install -c constraints.txt setuptools wheel
"${pip[@]}" install -c constraints.txt --no-build-isolation \
  -e clients/python -e services/common -e services/executor
# As in scripts/setup.sh: SmartNoise-Synth without the dependencies it declares; the GANs' own come
# from requirements-heavy.txt.
"${pip[@]}" install -c constraints.txt --no-deps smartnoise-synth
"${pip[@]}" install -c constraints.txt -r services/executor/requirements-heavy.txt
"${pip[@]}" install -c constraints.txt pytest pytest-timeout
"$venv/bin/python" -c 'import torch, opacus, snsynth.pytorch.nn.dpctgan; print("heavy pool: torch", torch.__version__, "opacus", opacus.__version__)'
if [ "${1:-}" != "--no-test" ]; then
  "$venv/bin/python" -m pytest services/executor/heavy_tests
fi

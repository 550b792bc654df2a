#!/usr/bin/env bash
# Install what Spark datasets need on a worker (and in development and CI): Debian's OpenJDK 17
# (headless) and pyspark, pinned in constraints.txt (see services/executor/lomas_executor/
# pushdown_spark.py). Idempotent; quick when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/apt.sh
source scripts/lib/apt.sh

apt_install_missing openjdk-17-jdk-headless
.venv/bin/python -m pip --disable-pip-version-check -q install -c constraints.txt pyspark

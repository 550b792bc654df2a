#!/usr/bin/env bash
# Install what Spark datasets need on a worker (and in development and CI): Debian's OpenJDK 17
# (headless) and pyspark, pinned in constraints.txt (see services/executor/lomas_executor/
# pushdown_spark.py). Idempotent; quick when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(openjdk-17-jdk-headless)
missing=()
for package in "${packages[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$package")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
.venv/bin/python -m pip --disable-pip-version-check -q install -c constraints.txt pyspark

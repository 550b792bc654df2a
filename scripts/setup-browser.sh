#!/usr/bin/env bash
# Install the browser the dashboard's tests drive (tests/e2e/test_dashboard_browser.py): Debian's
# `chromium` package, run headless by Playwright as /usr/bin/chromium. Playwright's own browser
# downloads are not used (they need the internet). Idempotent: apt runs only when it is missing.
set -euo pipefail

if [ "$(dpkg-query -W -f='${Status}' chromium 2>/dev/null)" != "install ok installed" ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -q
  # Recommends would pull in a desktop's worth of packages; headless needs none of them.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends chromium
fi
# Debian's launcher script may print a harmless shell warning (its /dev/shm probe); show the output
# only when the browser does not start.
if ! /usr/bin/chromium --version >/dev/null 2>&1; then
  /usr/bin/chromium --version
  exit 1
fi

#!/usr/bin/env bash
# Build the scenario runner to clients/go/bin/lomas-scenario (offline, from Debian's Go packages).
set -euo pipefail
source "$(dirname "$0")/goenv.sh"
go build -o "$here/bin/lomas-scenario" "$import_root/cmd/lomas-scenario"

#!/usr/bin/env bash
# Check the Go client: gofmt, go vet and the unit tests of every package (offline).
set -euo pipefail
source "$(dirname "$0")/goenv.sh"
unformatted=$(cd "$here" && gofmt -l lomas/*.go arrowipc cmd)
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted (run gofmt -w on them)" >&2
  exit 1
fi
mapfile -t packages < <(go_packages)
go vet "${packages[@]}"
go test "$@" "${packages[@]}"

#!/usr/bin/env bash
# Install the Go client's toolchain from Debian's packages (offline-friendly: no module proxy; see
# clients/go/README.md) and build clients/go/bin/lomas-scenario. Generates nothing: the generated
# code is checked in (clients/go/generate.sh). Idempotent; quick when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/apt.sh
source scripts/lib/apt.sh

packages=(
  golang-go                            # Go 1.19
  golang-google-grpc-dev               # google.golang.org/grpc
  golang-google-protobuf-dev           # google.golang.org/protobuf (APIv2)
  golang-github-golang-protobuf-1-5-dev # github.com/golang/protobuf, which genproto's code uses
  golang-google-genproto-dev           # googleapis/rpc/errdetails, rpc/code, api/annotations
  protobuf-compiler libprotobuf-dev    # protoc and the well-known .proto files (generate.sh)
  protoc-gen-go protoc-gen-go-grpc     # the code generators (generate.sh)
)
apt_install_missing "${packages[@]}"
clients/go/build.sh

#!/usr/bin/env bash
# Install the Go client's toolchain from Debian's packages (offline-friendly: no module proxy; see
# clients/go/README.md) and build clients/go/bin/lomas-scenario. Generates nothing: the generated
# code is checked in (clients/go/generate.sh). Idempotent; quick when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  golang-go                            # Go 1.19
  golang-google-grpc-dev               # google.golang.org/grpc
  golang-google-protobuf-dev           # google.golang.org/protobuf (APIv2)
  golang-github-golang-protobuf-1-5-dev # github.com/golang/protobuf, which genproto's code uses
  golang-google-genproto-dev           # googleapis/rpc/errdetails, rpc/code, api/annotations
  protobuf-compiler libprotobuf-dev    # protoc and the well-known .proto files (generate.sh)
  protoc-gen-go protoc-gen-go-grpc     # the code generators (generate.sh)
)
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
clients/go/build.sh

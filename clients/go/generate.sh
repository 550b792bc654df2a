#!/usr/bin/env bash
# Regenerate the Go code of protos/ into clients/go/lomas/<domain>/v1 (checked in; CI reruns this
# and fails if anything changes). Uses Debian's protoc, protoc-gen-go and protoc-gen-go-grpc
# (scripts/setup-go.sh installs them), so the output depends only on those package versions.
#
#     clients/go/generate.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# The import path of this directory (see README.md: it is built in GOPATH mode).
import_root=lomas-mesh/clients/go

# google/api and google/rpc contracts, from the same pinned googleapis-common-protos package the
# Python code is generated against. They are imported, not generated: their Go packages come from
# Debian's golang-google-genproto-dev (the go_package options in those files say where).
googleapis=$(mktemp -d)
trap 'rm -rf "$googleapis"' EXIT
"$root/.venv/bin/python" "$root/scripts/googleapis.py" "$googleapis"

cd "$root/protos"
mapfile -t files < <(find lomas -name '*.proto' | LC_ALL=C sort)
# Our protos carry no go_package option: map each file to its directory's package, named after
# domain and version (commonv1, gatewayv1...) so that two of them can be imported side by side.
mappings=()
for file in "${files[@]}"; do
  dir=$(dirname "$file")         # lomas/common/v1
  domain_version=${dir#lomas/}    # common/v1
  mappings+=("M$file=$import_root/$dir;${domain_version//\//}")
done
go_opts=$(IFS=,; echo "paths=source_relative,${mappings[*]}")

rm -f "$here"/lomas/*/v1/*.pb.go
protoc \
  --proto_path=. \
  --proto_path="$googleapis" \
  --proto_path=/usr/include \
  --go_out="$here" --go_opt="$go_opts" \
  --go-grpc_out="$here" --go-grpc_opt="$go_opts" \
  "${files[@]}"

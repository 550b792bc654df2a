# Sourced by build.sh and test.sh: the Go environment that builds this client offline.
#
# Debian's Go libraries (gRPC, protobuf, genproto) are source trees under /usr/share/gocode, laid out
# as a GOPATH; there is no module proxy here, so the build runs in GOPATH mode. This directory joins
# a second GOPATH entry, .gopath/, through a symlink at its import path, lomas-mesh/clients/go.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
import_root=lomas-mesh/clients/go
mkdir -p "$here/.gopath/src/lomas-mesh/clients"
ln -sfn ../../../.. "$here/.gopath/src/$import_root"
export GO111MODULE=off GOPROXY=off GOFLAGS=
export GOPATH="$here/.gopath:/usr/share/gocode"

# Import paths of this directory's packages (the go tool does not follow the symlink for `...`).
go_packages() {
  (cd "$here" && find . -name '*.go' -not -path './.gopath/*' -printf '%h\n') |
    LC_ALL=C sort -u | sed "s|^\.|$import_root|"
}

#!/usr/bin/env bash
# Build the Lomas mesh images from Debian's and PyPI's packages, with no container registry:
#   1. the base, localhost/lomas-debian:<Debian point release> (also tagged :12): a minimal Debian 12
#      made by debootstrap (minbase, python3, ca-certificates) and imported with `podman import`;
#   2. the build context, build/images/context: a wheelhouse of every Python package the images
#      install (dependencies resolved with constraints.txt by the base's Python), and pip's wheel;
#   3. localhost/lomas-mesh:TAG (images/Dockerfile) and localhost/lomas-mesh-heavy:TAG
#      (images/Dockerfile.heavy), built with `podman build --network=none --pull=never` FROM the
#      base pinned by digest, then their sizes.
# Usage, as root: images/build.sh [--rebuild-base] [TAG]          (TAG: dev by default)
# Environment: DEBIAN_MIRROR (http://deb.debian.org/debian), PYTHON (a Python with pip and setuptools,
# to build the Lomas wheels; .venv/bin/python by default), CA_BUNDLE (the CA file the download step
# trusts; /etc/ssl/certs/ca-certificates.crt), OCI_RUNTIME (crun or runc; see images/README.md).
# images/check.sh then starts the mesh from the image and asks the gateway for its health.
set -euo pipefail
cd "$(dirname "$0")/.."

rebuild_base=false
if [ "${1:-}" = "--rebuild-base" ]; then
  rebuild_base=true
  shift
fi
tag=${1:-dev}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
python=${PYTHON:-.venv/bin/python}
work=build/images
base_repo=localhost/lomas-debian
# The Lomas packages: their folders, and the distributions the images install (the heavy image
# takes lomas-executor alone).
mesh_packages=(./clients/python ./services/common ./services/admin ./services/budget ./services/executor ./services/gateway)
mesh_distributions=(lomas-gateway lomas-admin-store lomas-budget lomas-executor)

step() { printf '\n== %s\n' "$*"; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

ensure_debian_packages() {
  local missing=() package
  for package in "$@"; do installed "$package" || missing+=("$package"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

# crun refuses a cgroup v1 host whose cgroup v2 hierarchy also holds controllers ("cgroups in hybrid
# mode not supported"); runc runs there.
runtime=${OCI_RUNTIME:-}
if [ -z "$runtime" ] && [ -n "$(cat /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null)" ]; then
  runtime=runc
fi
step "tools: debootstrap, podman ${runtime:+and $runtime}"
ensure_debian_packages debootstrap podman ${runtime:+"$runtime"}

# podman asks the runtime for rlimits above the caller's own (nofile 1048576, nproc 4194304), which
# only a process with CAP_SYS_RESOURCE may set; without it, ask for what this process has (podman
# caps its own nproc at 32768).
ulimits=()
cap_eff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
if (((0x$cap_eff >> 24 & 1) == 0)); then
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
  ulimits=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
fi
build_flags=(--network=none --pull=never ${runtime:+--runtime "$runtime"} "${ulimits[@]}")

if $rebuild_base || ! podman image exists "$base_repo:12"; then
  step "base: debootstrap Debian 12 (bookworm, minbase) from $mirror"
  rm -rf "$work/rootfs"
  mkdir -p "$work"
  debootstrap --variant=minbase --include=python3,ca-certificates bookworm "$work/rootfs" "$mirror"
  # What no process reads at run time: package caches and lists, manuals, translations, documents
  # (each package's copyright file stays).
  rm -rf "$work"/rootfs/var/cache/apt/* "$work"/rootfs/var/lib/apt/lists/* \
    "$work"/rootfs/usr/share/man/* "$work"/rootfs/usr/share/locale/*
  find "$work/rootfs/usr/share/doc" -type f ! -name copyright -delete
  release=$(cat "$work/rootfs/etc/debian_version")
  tar --numeric-owner -C "$work/rootfs" -c . |
    podman import --change 'CMD ["/bin/bash"]' --message "debootstrap bookworm $mirror" - "$base_repo:$release"
  podman tag "$base_repo:$release" "$base_repo:12"
  rm -rf "$work/rootfs"
fi
base="$base_repo@$(podman image inspect --format '{{.Digest}}' "$base_repo:12")"
echo "base: $base"

# The context holds no source tree: the Lomas packages as wheels (pure Python, built here) and every
# dependency as a wheel resolved by the base's own Python with constraints.txt, because environment
# markers depend on the interpreter (redis needs async-timeout below Python 3.11.3; Debian 12 has
# 3.11.2). A dependency published as source only is built into a wheel there, with no compiler (the
# base has none): antlr4-python3-runtime is pure Python. This step alone uses the network (PyPI,
# trusting this host's CA bundle); the image builds run with --network=none.
step "context: wheels resolved with constraints.txt by the base's Python"
context="$work/context"
rm -rf "$context"
mkdir -p "$context/wheels" "$work/pip-cache"
cp constraints.txt "$context/"
pip=("$python" -m pip --disable-pip-version-check -q)
"${pip[@]}" download --no-deps --constraint constraints.txt --dest "$context" pip
mv "$context"/pip-*.whl "$context/pip.whl"
# SmartNoise-Synth without the dependencies it declares (they pull PyTorch, which the images do
# not carry): lomas-executor depends on what its marginal synthesizers import (scripts/setup.sh).
"${pip[@]}" download --no-deps --constraint constraints.txt --dest "$context/wheels" smartnoise-synth
"${pip[@]}" wheel --no-deps --no-build-isolation --wheel-dir "$context/wheels" "${mesh_packages[@]}"
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
podman ${runtime:+--runtime "$runtime"} run --rm "${ulimits[@]}" --network=host \
  --volume "$PWD/$context:/context" --volume "$PWD/$work/pip-cache:/root/.cache/pip" \
  ${ca_bundle:+--volume "$ca_bundle:/etc/ssl/certs/ca-certificates.crt:ro"} \
  --env 'HTTP*_PROXY' --env 'http*_proxy' --env 'NO_PROXY' --env 'no_proxy' --env 'PIP_INDEX_URL' \
  "$base" python3 /context/pip.whl/pip --disable-pip-version-check -q wheel \
  --constraint /context/constraints.txt --find-links /context/wheels \
  --wheel-dir /context/wheels "${mesh_distributions[@]}"

for image in lomas-mesh lomas-mesh-heavy; do
  dockerfile=images/Dockerfile
  if [ "$image" = lomas-mesh-heavy ]; then dockerfile=images/Dockerfile.heavy; fi
  step "build: localhost/$image:$tag ($dockerfile)"
  podman build "${build_flags[@]}" --build-arg "BASE_IMAGE=$base" \
    --file "$dockerfile" --tag "localhost/$image:$tag" "$context"
done

step "sizes"
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' --filter reference='localhost/lomas-*'

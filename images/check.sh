#!/usr/bin/env bash
# Start the mesh from the images that images/build.sh made, locked down as Kubernetes runs it
# (read-only root filesystem, the image's non-root user, no capabilities, no privilege escalation;
# /tmp and the SQLite directory are the only writable places), then check it:
#   - the gateway answers gRPC health checks with SERVING for the server itself (service "") and for
#     its API, which follows its peers: the admin store, the budget ledger and the executor answer;
#   - the health files of a light worker and of a heavy worker (the heavy image, started with its
#     default command), which the Kubernetes probes read, are fresh;
#   - nothing can write to the root filesystem, and the processes do not run as root.
# Everything it starts is removed at the end. The containers share the host's network and listen on
# 127.0.0.1 only.
# Usage, as root: images/check.sh [TAG]          (TAG: dev by default)
# Environment: LOMAS_REDIS_URL (redis://127.0.0.1:6379/0), CHECK_PORT_BASE (47051: the gateway's
# port; the admin store, the ledger and the executor take the next three), OCI_RUNTIME (as build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${1:-dev}
image=localhost/lomas-mesh:$tag
heavy_image=localhost/lomas-mesh-heavy:$tag
redis_url=${LOMAS_REDIS_URL:-redis://127.0.0.1:6379/0}
port=${CHECK_PORT_BASE:-47051}
prefix=lomas-image-check-$$
data=lomas-image-check-$$

# The same runtime choice and rlimits as images/build.sh (see there).
runtime=${OCI_RUNTIME:-}
if [ -z "$runtime" ] && [ -n "$(cat /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null)" ]; then
  runtime=runc
fi
podman=(podman ${runtime:+--runtime "$runtime"})
run_flags=(--detach --network=host --read-only --cap-drop=ALL --security-opt=no-new-privileges
  --tmpfs /tmp:rw,size=64m,mode=1777)
cap_eff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
if (((0x$cap_eff >> 24 & 1) == 0)); then
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
  run_flags+=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
fi
common_env=(--env "LOMAS_SERVICE_TOKEN=image-check-token" --env "LOMAS_REDIS_URL=$redis_url"
  --env "LOMAS_QUEUE_PREFIX=$prefix" --env "LOMAS_ADMIN_TARGET=127.0.0.1:$((port + 1))"
  --env "LOMAS_BUDGET_TARGET=127.0.0.1:$((port + 2))"
  --env "LOMAS_EXECUTOR_TARGET=127.0.0.1:$((port + 3))")

started=()
cleanup() {
  for name in "${started[@]}"; do
    if [ "${status:-1}" -ne 0 ]; then
      echo "--- $name logs"
      podman logs --tail 30 "$name" 2>&1 || true
    fi
    podman rm --force --volumes --time 5 "$name" >/dev/null 2>&1 || true
  done
  podman volume rm --force "$data" >/dev/null 2>&1 || true
}
trap cleanup EXIT

start() {
  local name=lomas-check-$1
  shift
  "${podman[@]}" run "${run_flags[@]}" --name "$name" "${common_env[@]}" "$@" >/dev/null
  started+=("$name")
  echo "started $name"
}

podman volume create "$data" >/dev/null
start admin --volume "$data:/var/lib/lomas" --env "LOMAS_LISTEN=127.0.0.1:$((port + 1))" \
  --env LOMAS_DATABASE_URL=sqlite:////var/lib/lomas/admin.db --env LOMAS_BOOTSTRAP_ADMIN=admin \
  "$image" lomas-admin-store
start budget --volume "$data:/var/lib/lomas" --env "LOMAS_LISTEN=127.0.0.1:$((port + 2))" \
  --env LOMAS_DATABASE_URL=sqlite:////var/lib/lomas/budget.db "$image" lomas-budget
start executor --env "LOMAS_LISTEN=127.0.0.1:$((port + 3))" "$image" lomas-executor
start worker --env LOMAS_WORKER_CONCURRENCY=1 --env LOMAS_WORKER_HEALTH_FILE=/tmp/lomas-worker-alive \
  "$image" lomas-worker
start heavy-worker --env LOMAS_WORKER_HEALTH_FILE=/tmp/lomas-worker-alive "$heavy_image"
start gateway --env LOMAS_AUTH_MODE=envoy --env "LOMAS_LISTEN=127.0.0.1:$port" "$image" lomas-gateway

# The health check runs inside the gateway's container, with the image's own gRPC libraries.
health_check='
import sys, time, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
target, deadline = sys.argv[1], time.monotonic() + 120
with grpc.insecure_channel(target) as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "lomas.gateway.v1.GatewayService"):
        while True:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
            except grpc.RpcError as error:
                status = error.code().name
            if status == health_pb2.HealthCheckResponse.SERVING:
                print(f"gateway health {service or chr(34) * 2}: SERVING")
                break
            if time.monotonic() > deadline:
                sys.exit(f"gateway health {service or chr(34) * 2}: {status}")
            time.sleep(1)
'
podman exec lomas-check-gateway python -c "$health_check" "127.0.0.1:$port"

# The workers' probe, as k8s/base/worker/ runs it.
probe="find /tmp/lomas-worker-alive -newermt '30 seconds ago' | grep -q ."
for worker in lomas-check-worker lomas-check-heavy-worker; do
  for _ in $(seq 120); do
    if podman exec "$worker" sh -c "$probe"; then break; fi
    sleep 1
  done
  podman exec "$worker" sh -c "$probe"
  echo "$worker: health file fresh"
done

for name in "${started[@]}"; do
  if podman exec "$name" sh -c 'touch /opt/lomas/written 2>/dev/null'; then
    echo "$name: the root filesystem is writable" >&2
    exit 1
  fi
  uid=$(podman exec "$name" id -u)
  if [ "$uid" = 0 ]; then
    echo "$name: runs as root" >&2
    exit 1
  fi
done
echo "read-only root filesystem and user $uid in every container"
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' --filter reference='localhost/lomas-*'
status=0

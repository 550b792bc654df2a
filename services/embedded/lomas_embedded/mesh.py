"""Start a whole mesh as separate processes: admin store, budget ledger, executor, Celery workers, gateway.

The embedded default and the tests use this; it runs each service exactly as an operator would, with
`LOMAS_` environment variables, so the embedded default and the mesh share one code path.

The budget ledger anchors its chains (`lomas_budget.anchoring`): unless the operator's settings name
their own, the mesh gives it a key it generates once into the data directory (`ledger-anchor.key`,
readable by its owner only) and a checkpoint file beside it (`ledger-checkpoints.jsonl`), both
outside the ledger's database.

Every process is supervised (`lomas_embedded.supervision`): one that exits unexpectedly is started
again on the same port with the same environment, with backoff, and the restart is logged. A gRPC
service is supervised from the moment it first serves (a service that cannot start at all fails
`start()` at once instead of looping); a worker from its start. `stop()` and `kill()` release the
supervision first, so they cause no restart (unless `kill(..., restart=True)`).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from lomas_common.peers import health_check
from lomas_embedded.ports import free_port
from lomas_embedded.supervision import Backoff, Watchdog

# The budget ledger's anchoring settings (`lomas_budget.main`): an operator who sets any of them
# sets them all, and the mesh leaves them alone.
ANCHOR_SETTINGS = (
    "LOMAS_LEDGER_ANCHOR_KEY",
    "LOMAS_LEDGER_ANCHOR_KEY_FILE",
    "LOMAS_LEDGER_CHECKPOINT_FILE",
)
ANCHOR_KEY_FILE = "ledger-anchor.key"
CHECKPOINT_FILE = "ledger-checkpoints.jsonl"


@dataclass
class MeshConfig:
    """Everything that differs between meshes. Unset ports are picked free."""

    data_dir: Path
    redis_url: str
    admin_database_url: str
    budget_database_url: str
    jwks: str
    issuer: str
    audience: str = "lomas"
    gateway_listen: str = ""
    queue_prefix: str = field(default_factory=lambda: f"lomas-{secrets.token_hex(4)}")
    service_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    bootstrap_admin: str = ""
    worker_count: int = 1
    worker_concurrency: int = 2
    # Workers of the heavy queue (DP ML, synthetic data); the `worker-N` ones consume the light one.
    heavy_worker_count: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    # Gateway authentication (lomas_gateway.settings.AuthSettings). Unset keeps the gateway's default:
    # `jwt` mode against `jwks` (the embedded default's development JWKS file). An empty `jwks` in
    # `jwt` mode means OIDC discovery from `issuer`; `envoy` mode trusts an Envoy sidecar's claims.
    auth_mode: str = ""
    gateway_env: dict[str, str] = field(default_factory=dict)  # e.g. LOMAS_JWKS_MAX_AGE_SECONDS
    # Restart processes that exit unexpectedly (see `lomas_embedded.supervision`).
    supervise: bool = True
    restart_backoff: Backoff = field(default_factory=Backoff)


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen[bytes]  # the current process (a restart replaces it)
    target: str  # host:port for gRPC services, "" for workers
    log_path: Path
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    watchdog: Watchdog | None = None

    @property
    def restarts(self) -> int:
        return self.watchdog.restarts if self.watchdog is not None else 0


class Mesh:
    """A running mesh. `gateway_target` is where clients connect."""

    def __init__(self, config: MeshConfig) -> None:
        self.config = config
        self.processes: list[ServiceProcess] = []
        self.logs = config.data_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.admin_target = f"127.0.0.1:{free_port()}"
        self.budget_target = f"127.0.0.1:{free_port()}"
        self.executor_target = f"127.0.0.1:{free_port()}"
        self.gateway_target = config.gateway_listen or f"127.0.0.1:{free_port()}"

    def _common_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOMAS_")}
        env.update(
            {
                "LOMAS_SERVICE_TOKEN": self.config.service_token,
                "LOMAS_REDIS_URL": self.config.redis_url,
                "LOMAS_QUEUE_PREFIX": self.config.queue_prefix,
                "LOMAS_ADMIN_TARGET": self.admin_target,
                "LOMAS_BUDGET_TARGET": self.budget_target,
                "LOMAS_EXECUTOR_TARGET": self.executor_target,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.config.extra_env)
        return env

    def _spawn(self, name: str, module: str, target: str, env: dict[str, str]) -> ServiceProcess:
        argv = [sys.executable, "-m", module]
        log_path = self.logs / f"{name}.log"
        service = ServiceProcess(name, _popen(argv, env, log_path), target, log_path, argv, env)
        self.processes.append(service)
        if not target:
            self._supervise(service)
        return service

    def _supervise(self, service: ServiceProcess) -> None:
        """Watch `service` from now on (once; nothing if the mesh is not supervised)."""
        if not self.config.supervise or service.watchdog is not None:
            return

        def spawn() -> subprocess.Popen[bytes]:
            with service.log_path.open("ab") as log_file:
                log_file.write(b"--- restarted by the launcher after an unexpected exit ---\n")
            return _popen(service.argv, service.env, service.log_path)

        def replaced(process: subprocess.Popen[bytes]) -> None:
            service.process = process

        service.watchdog = Watchdog(
            service.name,
            service.process,
            spawn,
            backoff=self.config.restart_backoff,
            ready=(lambda: _serving(service.target)) if service.target else None,
            reap=_reap_group,
            on_restart=replaced,
        )

    def _release(self, service: ServiceProcess) -> None:
        """End the supervision of `service` (its current process is in `service.process`)."""
        if service.watchdog is not None:
            service.process = service.watchdog.release()

    def start_service(
        self, name: str, *, listen: str = "", gateway_env: Mapping[str, str] | None = None
    ) -> ServiceProcess:
        """Start one service. A gateway may be named `gateway-...` to run beside the main one, with its
        own `listen` address and `gateway_env` (for example another LOMAS_AUTH_MODE)."""
        env = self._common_env()
        if name == "admin":
            env |= {
                "LOMAS_LISTEN": self.admin_target,
                "LOMAS_DATABASE_URL": self.config.admin_database_url,
                "LOMAS_BOOTSTRAP_ADMIN": self.config.bootstrap_admin,
            }
            return self._spawn(name, "lomas_admin.main", self.admin_target, env)
        if name == "budget":
            env |= {
                "LOMAS_LISTEN": self.budget_target,
                "LOMAS_DATABASE_URL": self.config.budget_database_url,
            }
            if not any(env.get(setting) for setting in ANCHOR_SETTINGS):
                env |= {
                    "LOMAS_LEDGER_ANCHOR_KEY_FILE": str(anchor_key_file(self.config.data_dir)),
                    "LOMAS_LEDGER_CHECKPOINT_FILE": str(self.config.data_dir / CHECKPOINT_FILE),
                }
            return self._spawn(name, "lomas_budget.main", self.budget_target, env)
        if name == "executor":
            env |= {"LOMAS_LISTEN": self.executor_target}
            return self._spawn(name, "lomas_executor.main", self.executor_target, env)
        if name.startswith("worker"):
            env |= {"LOMAS_WORKER_CONCURRENCY": str(self.config.worker_concurrency)}
            return self._spawn(name, "lomas_executor.worker", "", env)
        if name.startswith("heavy-worker"):
            env |= {"LOMAS_WORKER_CONCURRENCY": "1", "LOMAS_WORKER_QUEUES": "heavy"}
            return self._spawn(name, "lomas_executor.worker", "", env)
        if name == "gateway" or name.startswith("gateway-"):
            target = listen or self.gateway_target
            env |= {
                "LOMAS_LISTEN": target,
                "LOMAS_JWKS": self.config.jwks,
                "LOMAS_JWT_ISSUER": self.config.issuer,
                "LOMAS_JWT_AUDIENCE": self.config.audience,
            }
            if self.config.auth_mode:
                env["LOMAS_AUTH_MODE"] = self.config.auth_mode
            env |= self.config.gateway_env
            env |= gateway_env or {}
            return self._spawn(name, "lomas_gateway.main", target, env)
        raise ValueError(f"unknown service {name}")

    def start(self, timeout: float = 60.0) -> Mesh:
        try:
            backends = [self.start_service(n) for n in ("admin", "budget", "executor")]
            for index in range(self.config.worker_count):
                self.start_service(f"worker-{index}")
            for index in range(self.config.heavy_worker_count):
                self.start_service(f"heavy-worker-{index}")
            for service in backends:
                self.wait_healthy(service, timeout)
            self.wait_healthy(self.start_service("gateway"), timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, service: ServiceProcess, timeout: float) -> None:
        """Wait until `service` reports SERVING, then supervise it; fail at once if it exits."""
        self._wait_first_serving(service, timeout)
        self._supervise(service)

    def wait_serving(self, name: str, timeout: float) -> ServiceProcess:
        """Wait until the service `name` reports SERVING, through any restarts of its process."""
        service = self.service(name)
        deadline = time.monotonic() + timeout
        while not _serving(service.target):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} is not serving; see {service.log_path}")
            time.sleep(0.05)
        return service

    def _wait_first_serving(self, service: ServiceProcess, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(service.target) as channel:
            check = health_check(channel)
            while True:
                if service.process.poll() is not None:
                    raise RuntimeError(
                        f"{service.name} exited with {service.process.returncode}; "
                        f"see {service.log_path}:\n{self.tail(service)}"
                    )
                try:
                    response = check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{service.name} did not become healthy; see {service.log_path}"
                    )
                time.sleep(0.1)

    @staticmethod
    def tail(service: ServiceProcess, lines: int = 30) -> str:
        try:
            return "\n".join(service.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def service(self, name: str) -> ServiceProcess:
        return next(s for s in self.processes if s.name == name)

    def kill(self, name: str, sig: int = signal.SIGKILL, *, restart: bool = False) -> None:
        """Send a signal to one service and wait until every process of its group has exited, a
        Celery worker's children included (tests use it to crash processes).

        By default the service stays dead and leaves the mesh (`start_service(name)` starts it
        again); with `restart=True` it stays supervised and is restarted like after a crash (wait
        for it with `wait_serving`)."""
        service = self.service(name)
        if restart and service.watchdog is None:
            raise RuntimeError(f"{name} is not supervised: it would not be restarted")
        if not restart:
            self._release(service)
        process = service.process
        os.killpg(process.pid, sig)
        process.wait(30)
        _wait_for_group_exit(process.pid, 30.0)
        if not restart:
            self.processes.remove(service)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM everything (gateway first, so no new work arrives), then SIGKILL stragglers.
        Supervision ends first: nothing stopped here is restarted."""
        for service in self.processes:
            self._release(service)
        for service in reversed(self.processes):
            if service.process.poll() is None:
                try:
                    os.killpg(service.process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for service in self.processes:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                service.process.wait(remaining)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(service.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                service.process.wait()
        for service in self.processes:
            if service.watchdog is not None:
                service.watchdog.join(5.0)
        self.processes.clear()


def anchor_key_file(data_dir: Path) -> Path:
    """The data directory's ledger anchor key, generated on first use (owner-only file)."""
    path = data_dir / ANCHOR_KEY_FILE
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
    return path


def _popen(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            argv,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal reaches the launcher, which stops us in order
        )


def _serving(target: str) -> bool:
    """Whether the gRPC server at `target` answers its health check with SERVING."""
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_check(channel)(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def _reap_group(process: subprocess.Popen[bytes]) -> None:
    """After a service's main process exited: kill what is left of its group (a dead Celery
    worker's children still hold the broker connection) and wait until all of it is gone."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _wait_for_group_exit(process.pid, 30.0)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies have closed their files: they count as
    exited). Without /proc, any process the kernel still knows counts."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # Fields after the command name (which may hold spaces): state, ppid, pgrp, ...
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            return True
    return False


def _wait_for_group_exit(pgid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process group {pgid} still runs {timeout:.0f} s after its kill")
        time.sleep(0.02)

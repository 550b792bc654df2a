"""A service that dies is restarted; while it is down, callers get UNAVAILABLE + BACKEND_UNAVAILABLE
with retry advice and nothing is charged.

One embedded mesh (SQLite stores, the launcher's private Redis, every process supervised) with a
short task time limit, so a killed worker's task is redelivered within seconds. Each step SIGKILLs
one process from outside, as a crash would, and checks that the launcher brings it back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc
import pytest
import redis
from google.rpc import error_details_pb2
from mesh_testing import status_of
from test_execution_workers import (
    ACCESS,
    COMMIT,
    GROUP_COUNT,
    RESERVATION,
    SLOW_METADATA,
    archived,
    entries,
    kinds,
    wait_for,
    write_slow_dataset,
)

from lomas.budget.v1 import budget_pb2
from lomas.client import Client, LomasError
from lomas.client.admin import approx_dp, local_source
from lomas.common.v1 import archive_pb2, dataset_pb2
from lomas.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from lomas_embedded import demo
from lomas_embedded.local import LocalMesh, local_mesh
from lomas_embedded.supervision import Backoff, Watchdog

T = TypeVar("T")
COUNT = "SELECT COUNT(*) AS n FROM df"
RESTART_SECONDS = 30.0  # generous on 2 busy cores; a restart takes a few seconds


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    tmp = tmp_path_factory.mktemp("supervision")
    env = {
        # The slow query takes 1-2 s (soft limit 7 s); a crashed worker's task is redelivered 13 s
        # after its first delivery.
        "LOMAS_TASK_TIME_LIMIT_SECONDS": "12",
        "LOMAS_QUEUE_VISIBILITY_TIMEOUT_SECONDS": "13",
    }
    with local_mesh(
        tmp,
        worker_concurrency=1,
        extra_env=env,
        restart_backoff=Backoff(initial_seconds=0.5, max_seconds=2.0),
    ) as mesh:
        slow = write_slow_dataset(tmp / "slow.csv", 250_000)
        with mesh.admin() as admin:
            admin.add_dataset(
                "SLOW", local_source(slow), SLOW_METADATA, dataset_pb2.DATA_FORMAT_CSV
            )
        yield mesh


def researcher(running: LocalMesh, dataset: str = demo.DATASET) -> tuple[str, Client]:
    name = f"supervised-{uuid.uuid4().hex[:8]}"
    with running.admin() as admin:
        admin.add_user(name)
        admin.grant(name, dataset, approx_dp("100", "0.01"))
    return name, running.client(name, dataset)


def crash(running: LocalMesh, name: str) -> int:
    """SIGKILL a service's main process from outside, as a crash would; returns its pid."""
    pid = running.mesh.service(name).process.pid
    os.kill(pid, signal.SIGKILL)
    return pid


def eventually(
    call: Callable[[], T],
    timeout: float = RESTART_SECONDS,
    retry_on: tuple[str, ...] = ("UNAVAILABLE",),
) -> T:
    """`call()`'s result once it stops failing with a code in `retry_on` (the service is back)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except LomasError as error:
            if error.code not in retry_on or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def refusal(error: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo, float]:
    """The ErrorInfo and the RetryInfo delay of a gateway refusal."""
    info, delay = None, None
    for detail in status_of(error).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    assert info is not None and delay is not None, error
    return info, delay


def raw_gateway_call(running: LocalMesh, user: str, method: str, request: object) -> grpc.RpcError:
    """Call the gateway with the generated stub (the client keeps no RetryInfo); expect a refusal."""
    with grpc.insecure_channel(running.target) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        try:
            getattr(stub, method)(
                request, metadata=[("authorization", f"Bearer {running.token(user)}")], timeout=10
            )
        except grpc.RpcError as error:
            return error
    raise AssertionError(f"{method} succeeded while its backend was down")


def test_a_killed_executor_is_restarted_and_meanwhile_calls_are_unavailable(
    running: LocalMesh,
) -> None:
    user, client = researcher(running)
    spent = client.get_total_spent_budget()
    old = crash(running, "executor")

    # Down: every call that needs the executor is UNAVAILABLE, BACKEND_UNAVAILABLE, nothing charged.
    with pytest.raises(LomasError) as estimate:
        client.smartnoise_sql.cost(COUNT, epsilon=0.25, delta=0)
    with pytest.raises(LomasError) as execute:
        client.smartnoise_sql.query(COUNT, epsilon=0.5, delta=0)
    for refused in (estimate.value, execute.value):
        assert (refused.code, refused.reason) == ("UNAVAILABLE", "BACKEND_UNAVAILABLE"), refused
        assert refused.metadata == {"peer": "executor"}
    dummy = raw_gateway_call(
        running,
        user,
        "GetDummyDataset",
        gateway_pb2.GetDummyDatasetRequest(dataset=demo.DATASET, row_count=5, seed=1),
    )
    assert dummy.code() == grpc.StatusCode.UNAVAILABLE
    info, retry_after = refusal(dummy)
    assert (info.reason, dict(info.metadata)) == ("BACKEND_UNAVAILABLE", {"peer": "executor"})
    assert retry_after > 0
    assert client.get_total_spent_budget() == spent

    # Back on the same port, serving, with a new process.
    service = running.mesh.wait_serving("executor", RESTART_SECONDS)
    assert service.process.pid != old and service.restarts >= 1
    cost = eventually(lambda: client.smartnoise_sql.cost(COUNT, epsilon=0.25, delta=0))
    assert cost["epsilon"] > 0
    release = client.smartnoise_sql.query(COUNT, epsilon=0.5, delta=0)
    assert len(release) == 1
    assert [e.kind for e in entries(running.mesh, running.issuer, user, demo.DATASET)].count(
        COMMIT
    ) == 1


def test_a_worker_killed_mid_query_is_restarted_and_the_query_completes_once(
    running: LocalMesh,
) -> None:
    mesh, issuer = running.mesh, running.issuer
    user, client = researcher(running, "SLOW")
    cost = client.smartnoise_sql.cost(GROUP_COUNT, epsilon=1.0, delta=1e-8)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(
            client.smartnoise_sql.query, GROUP_COUNT, 1.0, 1e-8, request_id="crashed-worker"
        )
        # The worker marked the reservation accessed: it is loading the data. Crash it.
        wait_for(lambda: ACCESS in kinds(entries(mesh, issuer, user, "SLOW")), 30, "data access")
        old = crash(running, "worker-0")
        # Charged with the access mark (no refund after data access), and crashed mid-query:
        # nothing is archived yet.
        assert COMMIT in kinds(entries(mesh, issuer, user, "SLOW"))
        assert archived(mesh, issuer, user) == [], "killed mid-query"
        # The launcher starts a new worker by itself; the task is redelivered to it.
        wait_for(lambda: mesh.service("worker-0").process.pid != old, RESTART_SECONDS, "restart")
        release = pending.result(timeout=45)

    query_id = release.attrs["query_id"]
    broker = redis.Redis.from_url(mesh.config.redis_url)
    try:
        attempts = broker.hget(f"{mesh.config.queue_prefix}:query-attempts:{query_id}", "0")
    finally:
        broker.close()
    assert attempts == b"2"  # two deliveries, one run to completion
    mine = [e.kind for e in entries(mesh, issuer, user, "SLOW") if e.query_id == query_id]
    assert mine.count(RESERVATION) == 1 and mine.count(COMMIT) == 1
    assert budget_pb2.LEDGER_ENTRY_KIND_RELEASE not in mine  # no refund after data access
    assert client.get_total_spent_budget() == {
        "total_spent_epsilon": cost["epsilon"],
        "total_spent_delta": cost["delta"],
    }
    stored = archived(mesh, issuer, user)
    assert [q.query_id for q in stored] == [query_id]
    assert stored[0].status == archive_pb2.QUERY_STATUS_SUCCEEDED


def test_a_killed_budget_ledger_and_gateway_come_back(running: LocalMesh) -> None:
    user, client = researcher(running)
    remaining = client.get_remaining_budget()

    old = crash(running, "budget")
    with pytest.raises(LomasError) as down:
        client.get_remaining_budget()
    assert (down.value.code, down.value.reason) == ("UNAVAILABLE", "BACKEND_UNAVAILABLE")
    assert down.value.metadata == {"peer": "budget"}
    info, _ = refusal(
        raw_gateway_call(
            running, user, "GetBudget", gateway_pb2.GetBudgetRequest(dataset=demo.DATASET)
        )
    )
    assert (info.reason, dict(info.metadata)) == ("BACKEND_UNAVAILABLE", {"peer": "budget"})
    assert running.mesh.wait_serving("budget", RESTART_SECONDS).process.pid != old
    assert eventually(client.get_remaining_budget) == remaining

    # `kill(..., restart=True)`: the whole process group dies, supervision brings it back.
    old = running.mesh.service("gateway").process.pid
    running.mesh.kill("gateway", restart=True)
    with pytest.raises(LomasError) as gateway_down:
        client.get_remaining_budget()
    assert gateway_down.value.code == "UNAVAILABLE"
    assert running.mesh.wait_serving("gateway", RESTART_SECONDS).process.pid != old
    assert eventually(client.get_remaining_budget) == remaining
    release = eventually(lambda: client.smartnoise_sql.query(COUNT, epsilon=0.5, delta=0))
    assert len(release) == 1


def test_kill_without_restart_leaves_a_service_dead(running: LocalMesh) -> None:
    """What `test_execution_workers` relies on: `kill()` takes a worker out for good."""
    mesh = running.mesh
    mesh.kill("worker-0")
    assert all(s.name != "worker-0" for s in mesh.processes)
    mesh.start_service("worker-0")
    _, client = researcher(running)
    assert len(client.smartnoise_sql.query(COUNT, epsilon=0.5, delta=0)) == 1


def test_the_private_redis_is_restarted_and_queries_run_again(running: LocalMesh) -> None:
    assert running.redis is not None
    old = running.redis.pid
    os.kill(old, signal.SIGKILL)
    broker = redis.Redis.from_url(running.mesh.config.redis_url, socket_timeout=1)
    try:

        def answers() -> bool:
            try:
                return bool(broker.ping())
            except redis.RedisError:
                return False

        wait_for(answers, RESTART_SECONDS, "the private Redis")
    finally:
        broker.close()
    assert running.redis.pid != old
    # The gateway's first Redis command on a connection the old server closed fails: the caller
    # gets UNAVAILABLE (retry advice), never INTERNAL; then the mesh works on the restarted Redis.
    _, client = eventually(lambda: researcher(running), retry_on=("UNAVAILABLE",))
    release = eventually(
        lambda: client.smartnoise_sql.query(COUNT, epsilon=0.5, delta=0),
        retry_on=("UNAVAILABLE",),
    )
    assert len(release) == 1


def test_a_watchdog_restarts_with_backoff_and_never_after_release() -> None:
    """The supervision alone, on a sleeping child: restarts on exit, none after `release()`."""

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    watchdog = Watchdog(
        "sleeper", spawn(), spawn, backoff=Backoff(initial_seconds=0.2, max_seconds=0.4)
    )
    try:
        for restarts in (1, 2):
            first = watchdog.process
            first.kill()

            def restarted(n: int = restarts) -> bool:
                return watchdog.restarts == n

            wait_for(restarted, 10, f"restart {restarts}")
            assert watchdog.process.pid != first.pid and watchdog.process.poll() is None
    finally:
        last = watchdog.release()
    last.kill()
    last.wait()
    time.sleep(0.6)  # longer than the longest backoff
    assert watchdog.restarts == 2 and watchdog.process is last

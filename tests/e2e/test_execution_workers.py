"""Safe workers, end to end: a worker killed mid-query, time and memory limits, recycled processes.

Each test runs a whole mesh (PostgreSQL stores, the machine's Redis) with short limits given through
`MeshConfig.extra_env`, and drives it through the real clients. A generated dataset large enough to
take a few seconds to load and prepare stands in for a slow query.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
import redis

from lomas.budget.v1 import budget_pb2
from lomas.client import Client, LomasError, TimeLimitExceeded
from lomas.client.admin import AdminClient, approx_dp, local_source
from lomas.common.v1 import archive_pb2, dataset_pb2
from lomas_embedded import demo
from lomas_embedded.devkeys import DevIssuer
from lomas_embedded.local import SYSTEM_REDIS_URL, local_mesh
from lomas_embedded.mesh import Mesh

SLOW_METADATA = {
    "max_ids": 1,
    "rows": 1_000_000,
    "row_privacy": True,
    "columns": {
        "g": {"type": "string", "cardinality": 3, "categories": ["a", "b", "c"]},
        "x": {"type": "float", "precision": 64, "lower": 0.0, "upper": 100.0},
    },
}
GROUP_COUNT = "SELECT g, COUNT(*) AS n FROM df GROUP BY g"


def write_slow_dataset(path: Path, rows: int) -> Path:
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "g": pa.array(np.array(["a", "b", "c"])[rng.integers(0, 3, rows)]),
            "x": pa.array(rng.uniform(0, 100, rows)),
        }
    )
    pa_csv.write_csv(table, path)
    return path


@contextmanager
def running_mesh(tmp: Path, extra_env: dict[str, str]) -> Iterator[tuple[Mesh, DevIssuer]]:
    with local_mesh(
        tmp,
        stores="postgresql",
        redis_url=SYSTEM_REDIS_URL,
        worker_concurrency=1,
        extra_env=extra_env,
    ) as running:
        yield running.mesh, running.issuer


def researcher(mesh: Mesh, issuer: DevIssuer, dataset: str) -> tuple[str, Client]:
    name = f"researcher-{uuid.uuid4().hex[:8]}"
    with AdminClient(mesh.gateway_target, token=issuer.token(demo.ADMIN)) as admin:
        admin.add_user(name)
        admin.grant(name, dataset, approx_dp("100", "0.01"))
    return name, Client(mesh.gateway_target, token=issuer.token(name), dataset=dataset)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def entries(mesh: Mesh, issuer: DevIssuer, user: str, dataset: str) -> list[budget_pb2.LedgerEntry]:
    with AdminClient(mesh.gateway_target, token=issuer.token(demo.ADMIN)) as admin:
        return admin.ledger_history(user, dataset)


def archived(mesh: Mesh, issuer: DevIssuer, user: str) -> list[archive_pb2.ArchivedQuery]:
    with AdminClient(mesh.gateway_target, token=issuer.token(demo.ADMIN)) as admin:
        return admin.archive(user=user)


def kinds(history: list[budget_pb2.LedgerEntry]) -> list[int]:
    return [e.kind for e in history if e.query_id]


COMMIT = budget_pb2.LEDGER_ENTRY_KIND_COMMIT
RESERVATION = budget_pb2.LEDGER_ENTRY_KIND_RESERVATION
ACCESS = budget_pb2.LEDGER_ENTRY_KIND_ACCESS


def test_a_worker_killed_mid_query_is_replaced_and_the_query_completes_once(
    tmp_path: Path,
) -> None:
    slow = write_slow_dataset(tmp_path / "slow.csv", 400_000)
    env = {
        # Soft limit 10 s (the query takes ~3 s), redelivery 18 s after the first delivery.
        "LOMAS_TASK_TIME_LIMIT_SECONDS": "15",
        "LOMAS_QUEUE_VISIBILITY_TIMEOUT_SECONDS": "18",
    }
    with running_mesh(tmp_path, env) as (mesh, issuer):
        with AdminClient(mesh.gateway_target, token=issuer.token(demo.ADMIN)) as admin:
            admin.add_dataset(
                "SLOW", local_source(slow), SLOW_METADATA, dataset_pb2.DATA_FORMAT_CSV
            )
        user, client = researcher(mesh, issuer, "SLOW")
        cost = client.smartnoise_sql.cost(GROUP_COUNT, epsilon=1.0, delta=1e-8)

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(
                client.smartnoise_sql.query, GROUP_COUNT, 1.0, 1e-8, request_id="killed-once"
            )
            # The worker has marked the reservation accessed: it is loading the data. Kill it.
            wait_for(
                lambda: ACCESS in kinds(entries(mesh, issuer, user, "SLOW")), 60, "data access"
            )
            mesh.kill("worker-0")
            # Charged with the access mark (no refund after data access), and killed mid-query:
            # nothing is archived yet.
            assert COMMIT in kinds(entries(mesh, issuer, user, "SLOW"))
            assert archived(mesh, issuer, user) == []
            mesh.start_service("worker-0")
            release = pending.result(timeout=120)

        assert sorted(release["g"]) == ["a", "b", "c"]
        assert abs(int(release["n"].sum()) - 400_000) < 1000
        query_id = release.attrs["query_id"]
        # Redelivered once: two deliveries of the task, one run to completion.
        broker = redis.Redis.from_url(SYSTEM_REDIS_URL)
        try:
            attempts = broker.hget(f"{mesh.config.queue_prefix}:query-attempts:{query_id}", "0")
        finally:
            broker.close()
        assert attempts == b"2"
        # One charge in the ledger, one release in the archive.
        mine = [e for e in entries(mesh, issuer, user, "SLOW") if e.query_id == query_id]
        assert [e.kind for e in mine].count(RESERVATION) == 1
        assert [e.kind for e in mine].count(COMMIT) == 1
        assert client.get_total_spent_budget() == {
            "total_spent_epsilon": cost["epsilon"],
            "total_spent_delta": cost["delta"],
        }
        stored = archived(mesh, issuer, user)
        assert [q.query_id for q in stored] == [query_id]
        assert stored[0].status == archive_pb2.QUERY_STATUS_SUCCEEDED
        # A retry of the same request returns that release, uncharged.
        again = client.smartnoise_sql.query(GROUP_COUNT, 1.0, 1e-8, request_id="killed-once")
        assert again.equals(release)
        assert client.get_total_spent_budget()["total_spent_epsilon"] == cost["epsilon"]


def test_a_task_the_queue_lost_is_sent_again_and_the_query_completes_once(
    tmp_path: Path,
) -> None:
    # Without the gateway's re-send, the query would fail with QUERY_TIMEOUT after 60 s.
    with running_mesh(tmp_path, {"LOMAS_QUERY_TIMEOUT_SECONDS": "60"}) as (mesh, issuer):
        user, client = researcher(mesh, issuer, demo.DATASET)
        cost = client.smartnoise_sql.cost("SELECT COUNT(*) AS n FROM df", epsilon=1.0, delta=0)
        mesh.kill("worker-0")
        prefix = mesh.config.queue_prefix
        broker = redis.Redis.from_url(SYSTEM_REDIS_URL)
        try:
            with ThreadPoolExecutor(max_workers=1) as pool:
                pending = pool.submit(
                    client.smartnoise_sql.query, "SELECT COUNT(*) AS n FROM df", 1.0, 0
                )
                # Play a dead worker whose pending BRPOP took the task: it is gone from the queue,
                # held by nobody and never started.
                popped: list[bytes] = []

                def take_the_task() -> bool:
                    item = broker.rpop(f"{prefix}:{prefix}.light")
                    if isinstance(item, bytes):
                        popped.append(item)
                    return item is not None

                wait_for(take_the_task, 30, "the task in the queue")
                mesh.start_service("worker-0")
                release = pending.result(timeout=120)
            query_id = release.attrs["query_id"]
            assert [json.loads(m)["headers"]["id"] for m in popped] == [query_id]
            # The gateway sent the task again; the new worker ran it once.
            assert broker.hget(f"{prefix}:query-attempts:{query_id}", "0") == b"1"
        finally:
            broker.close()
        mine = [e.kind for e in entries(mesh, issuer, user, demo.DATASET) if e.query_id == query_id]
        assert mine.count(RESERVATION) == 1 and mine.count(COMMIT) == 1
        assert client.get_total_spent_budget()["total_spent_epsilon"] == cost["epsilon"]
        assert [q.query_id for q in archived(mesh, issuer, user)] == [query_id]


def test_time_and_memory_limits_keep_the_charge_and_workers_are_recycled(tmp_path: Path) -> None:
    slow = write_slow_dataset(tmp_path / "slow.csv", 2_000_000)
    env = {
        # Soft limit 2 s: loading and preparing two million rows takes longer (one million once
        # finished in time on a quiet machine).
        "LOMAS_TASK_TIME_LIMIT_SECONDS": "7",
        "LOMAS_QUEUE_VISIBILITY_TIMEOUT_SECONDS": "10",
        "LOMAS_WORKER_MAX_TASKS_PER_CHILD": "1",
    }
    with running_mesh(tmp_path, env) as (mesh, issuer):
        with AdminClient(mesh.gateway_target, token=issuer.token(demo.ADMIN)) as admin:
            admin.add_dataset(
                "SLOW", local_source(slow), SLOW_METADATA, dataset_pb2.DATA_FORMAT_CSV
            )
        worker = psutil.Process(mesh.service("worker-0").process.pid)

        def child() -> int:
            children = worker.children()
            return children[0].pid if len(children) == 1 else 0

        # Recycling: with one task per child, every query gets a fresh process.
        _, penguin = researcher(mesh, issuer, demo.DATASET)
        seen = []
        for epsilon in (1.0, 2.0):
            wait_for(lambda: child() != 0 and child() not in seen, 30, "a fresh worker child")
            seen.append(child())
            penguin.smartnoise_sql.query("SELECT COUNT(*) AS n FROM df", epsilon=epsilon, delta=0)
        wait_for(lambda: child() != 0 and child() not in seen, 30, "a fresh worker child")
        assert len(set(seen)) == 2

        # Time limit: the query fails with its own reason (not "not ready yet") and its cost stays
        # charged.
        user, client = researcher(mesh, issuer, "SLOW")
        cost = client.smartnoise_sql.cost(GROUP_COUNT, epsilon=1.0, delta=1e-8)
        with pytest.raises(TimeLimitExceeded) as timed_out:
            client.smartnoise_sql.query(GROUP_COUNT, epsilon=1.0, delta=1e-8)
        assert (timed_out.value.code, timed_out.value.reason) == (
            "RESOURCE_EXHAUSTED",
            "QUERY_TIME_LIMIT_EXCEEDED",
        )
        assert timed_out.value.charged == {"epsilon": cost["epsilon"], "delta": cost["delta"]}
        assert "charged" in timed_out.value.message
        assert client.get_total_spent_budget() == {
            "total_spent_epsilon": cost["epsilon"],
            "total_spent_delta": cost["delta"],
        }
        history = entries(mesh, issuer, user, "SLOW")
        assert kinds(history).count(COMMIT) == 1
        assert budget_pb2.LEDGER_ENTRY_KIND_RELEASE not in kinds(history)

        # Memory limit: measure a warm child (runner and a small dataset loaded), restart the
        # worker with an address-space limit a little above that, and load a million rows.
        mesh.kill("worker-0")
        mesh.config.extra_env |= {
            "LOMAS_WORKER_MAX_TASKS_PER_CHILD": "100",
            "LOMAS_TASK_TIME_LIMIT_SECONDS": "60",
            "LOMAS_QUEUE_VISIBILITY_TIMEOUT_SECONDS": "70",
        }
        worker = psutil.Process(mesh.start_service("worker-0").process.pid)
        penguin.smartnoise_sql.query("SELECT COUNT(*) AS n FROM df", epsilon=3.0, delta=0)
        warm_mb = psutil.Process(child()).memory_info().vms // 2**20
        mesh.kill("worker-0")
        mesh.config.extra_env["LOMAS_TASK_MEMORY_LIMIT_MB"] = str(warm_mb + 64)
        worker = psutil.Process(mesh.start_service("worker-0").process.pid)
        user, client = researcher(mesh, issuer, "SLOW")
        with pytest.raises(LomasError) as out_of_memory:
            client.smartnoise_sql.query(GROUP_COUNT, epsilon=1.0, delta=1e-8)
        assert out_of_memory.value.reason == "QUERY_EXECUTION_FAILED", out_of_memory.value
        assert "memory" in out_of_memory.value.message and "charged" in out_of_memory.value.message
        assert client.get_total_spent_budget()["total_spent_epsilon"] == cost["epsilon"]
        assert kinds(entries(mesh, issuer, user, "SLOW")).count(COMMIT) == 1

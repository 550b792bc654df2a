"""The worker re-checks the cost of what it is about to run against the reservation, before it
touches any data: the real QueryRunner against real admin store and budget ledger servers (SQLite),
the machine's Redis, and a dataset served over HTTP that counts its reads.

A task whose `cost` is lower than its query's real cost (a stale or tampered gateway, the comment
trick of the hostile review) is refunded, stored as failed at zero cost with COST_MISMATCH, and no
data is read. The same query with its real cost runs and is charged, so the test can fail.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from google.protobuf import json_format

from lomas.admin.v1 import admin_store_pb2, admin_store_pb2_grpc
from lomas.budget.v1 import budget_pb2, budget_pb2_grpc
from lomas.common.v1 import archive_pb2, dataset_pb2, privacy_pb2, query_pb2
from lomas.executor.v1 import task_pb2
from lomas_admin.main import AdminSettings
from lomas_admin.main import start as start_admin
from lomas_budget.main import BudgetSettings
from lomas_budget.main import start as start_budget
from lomas_common.convert import now_timestamp
from lomas_common.peers import PeerSettings, SyncPeer
from lomas_common.settings import ServerSettings
from lomas_executor.demo import penguin_metadata
from lomas_executor.execution import QueryRunner
from lomas_executor.settings import WorkerSettings
from lomas_testing.data_servers import HttpFileServer
from lomas_testing.databases import sqlite_url

REDIS_URL = "redis://127.0.0.1:6379/0"
DATASET = "PENGUIN"
# One COUNT once white space is collapsed (what the old gateway cache keyed on); three aggregates
# as the SQL parser reads it.
THREE_AGGREGATES = (
    "SELECT COUNT(*) AS n --\n, SUM(bill_length_mm) AS s1, SUM(body_mass_g) AS s2 FROM df"
)


def approx(epsilon: str, delta: str) -> privacy_pb2.PrivacyLoss:
    return privacy_pb2.PrivacyLoss(approx_dp=privacy_pb2.ApproxDp(epsilon=epsilon, delta=delta))


@dataclass
class Mesh:
    """The worker's peers and its runner, as a worker process has them."""

    runner: QueryRunner
    admin: SyncPeer[Any]
    budget: SyncPeer[Any]
    files: HttpFileServer
    settings: WorkerSettings
    descriptor: dataset_pb2.DatasetDescriptor


@pytest.fixture
def mesh(tmp_path: Path, penguin_csv: Path) -> Iterator[Mesh]:
    token = secrets.token_urlsafe(16)
    server = ServerSettings(
        listen="127.0.0.1:0",
        max_message_bytes=64 * 1024 * 1024,
        grace_seconds=0.5,
        otel_exporter="none",
        log_level="INFO",
        service_token=token,
        threads=4,
    )
    admin_server, admin_db = start_admin(
        AdminSettings(server, sqlite_url(tmp_path / "admin.db"), bootstrap_admin="")
    )
    budget_service = start_budget(BudgetSettings(server, sqlite_url(tmp_path / "budget.db")))
    files = HttpFileServer(penguin_csv.parent).start()
    prefix = f"lomas-recheck-{secrets.token_hex(4)}"
    settings = WorkerSettings.from_env(
        {
            "LOMAS_REDIS_URL": REDIS_URL,
            "LOMAS_QUEUE_PREFIX": prefix,
            "LOMAS_ADMIN_TARGET": f"127.0.0.1:{admin_server.port}",
            "LOMAS_BUDGET_TARGET": f"127.0.0.1:{budget_service.server.port}",
            "LOMAS_SERVICE_TOKEN": token,
        }
    )
    peers = PeerSettings(service_token=token)
    admin = SyncPeer(
        f"127.0.0.1:{admin_server.port}", admin_store_pb2_grpc.AdminStoreServiceStub, peers
    )
    budget = SyncPeer(
        f"127.0.0.1:{budget_service.server.port}", budget_pb2_grpc.BudgetServiceStub, peers
    )
    runner = QueryRunner(settings)
    descriptor = dataset_pb2.DatasetDescriptor(
        name=DATASET,
        version=1,
        source=dataset_pb2.DataSource(url=dataset_pb2.UrlSource(url=files.url(penguin_csv.name))),
        format=dataset_pb2.DATA_FORMAT_CSV,
        metadata_json=json.dumps(penguin_metadata().to_dict()),
    )
    try:
        yield Mesh(runner, admin, budget, files, settings, descriptor)
    finally:
        runner.close()
        admin.close()
        budget.close()
        files.stop()
        budget_service.server.stop()
        budget_service.close()
        admin_server.stop()
        admin_db.close()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
        client.close()


def sql(text: str) -> query_pb2.Query:
    return query_pb2.Query(
        smartnoise_sql=query_pb2.SmartnoiseSqlQuery(sql=text, epsilon="1", delta="0.00001")
    )


def run_task(mesh: Mesh, user: str, query: query_pb2.Query, cost: privacy_pb2.PrivacyLoss) -> Any:
    """Reserve `cost` as the gateway does, hand the task to the runner; return the announcement."""
    query_id = str(uuid.uuid4())
    mesh.budget.call(
        "ReserveBudget",
        budget_pb2.ReserveBudgetRequest(
            query_id=query_id, user=user, dataset=DATASET, cost=cost, actor=user
        ),
    )
    task = task_pb2.ExecuteQueryTask(
        query_id=query_id,
        user=user,
        dataset=mesh.descriptor,
        query=query,
        cost=cost,
        submit_time=now_timestamp(),
        fingerprint="f",
    )
    client = redis.Redis.from_url(REDIS_URL)
    listener = redis.client.PubSub(client.connection_pool)  # what the untyped `pubsub()` builds
    try:
        listener.subscribe(mesh.settings.queue.done_channel(query_id))
        listener.get_message(timeout=5)  # the subscription confirmation
        mesh.runner.execute(json_format.MessageToJson(task), attempt=1, first_delivery=True)
        message = listener.get_message(timeout=5)
    finally:
        listener.close()
        client.close()
    assert message is not None and message["type"] == "message", "no completion announced"
    announced = archive_pb2.ArchivedQuery.FromString(message["data"])
    stored = mesh.admin.call(
        "GetArchivedQuery", admin_store_pb2.GetArchivedQueryRequest(query_id=query_id)
    ).query
    assert announced == stored
    return stored


def ledger(mesh: Mesh, user: str) -> Any:
    return mesh.budget.call(
        "GetLedger", budget_pb2.GetLedgerRequest(user=user, dataset=DATASET)
    ).ledger


def entry_kinds(mesh: Mesh, user: str) -> list[int]:
    entries = mesh.budget.call(
        "ListLedgerEntries", budget_pb2.ListLedgerEntriesRequest(user=user, dataset=DATASET)
    ).entries
    return [entry.kind for entry in entries]


def open_ledger(mesh: Mesh) -> str:
    user = f"user-{uuid.uuid4().hex[:8]}"
    mesh.budget.call(
        "OpenLedger",
        budget_pb2.OpenLedgerRequest(
            user=user, dataset=DATASET, allocation=approx("10", "0.001"), actor="admin"
        ),
    )
    return user


def test_a_task_cheaper_than_its_query_is_refunded_before_any_data_access(
    mesh: Mesh, penguin_csv: Path
) -> None:
    user = open_ledger(mesh)
    # The stale gateway's cost: one COUNT (epsilon 1), where the query holds three aggregates.
    stored = run_task(mesh, user, sql(THREE_AGGREGATES), approx("1", "0.00001"))
    assert stored.status == archive_pb2.QUERY_STATUS_FAILED
    assert stored.error_reason == "COST_MISMATCH"
    assert stored.cost == approx("0", "0") and not stored.release
    balance = ledger(mesh, user)
    assert (balance.spent, balance.reserved) == (approx("0", "0"), approx("0", "0"))
    assert balance.remaining == approx("10", "0.001")
    assert entry_kinds(mesh, user)[-2:] == [
        budget_pb2.LEDGER_ENTRY_KIND_RESERVATION,
        budget_pb2.LEDGER_ENTRY_KIND_RELEASE,
    ]
    assert mesh.files.count(penguin_csv.name) == 0  # no data read
    assert mesh.runner.engine.cache.get((DATASET, 1)) is None

    # The same query with its real cost runs, is charged, and reads the data (three pure Laplace
    # mechanisms: no delta, although the query passes one).
    ran = run_task(mesh, user, sql(THREE_AGGREGATES), approx("3", "0"))
    assert ran.status == archive_pb2.QUERY_STATUS_SUCCEEDED and ran.release
    assert ledger(mesh, user).spent == approx("3", "0")
    assert mesh.files.count(penguin_csv.name) == 1


def test_a_query_the_worker_refuses_is_refunded_with_its_reason(
    mesh: Mesh, penguin_csv: Path
) -> None:
    user = open_ledger(mesh)
    stored = run_task(mesh, user, sql("SELECT SUM(no_such_column) AS s FROM df"), approx("1", "0"))
    assert stored.status == archive_pb2.QUERY_STATUS_FAILED
    assert stored.error_reason == "QUERY_INVALID"
    assert stored.cost == approx("0", "0")
    assert ledger(mesh, user).remaining == approx("10", "0.001")
    assert mesh.files.count(penguin_csv.name) == 0

"""`ledger verify` reconciles the budget ledger with the query archive, on a real mesh in both
deployment modes: every way a query ends (a release, a failure refunded before data access, a job
cancelled before it ran) reconciles; then a release deleted from the archive, a charge committed
with no archived outcome, and an archived release that nothing charged are each reported with their
query ids."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import yaml
from mesh_testing import RunningMesh, start_mode

from lomas.budget.v1 import budget_pb2, budget_pb2_grpc
from lomas.client import Client, QueryCancelled, SourceUnavailable
from lomas.client.admin import approx_dp, local_source
from lomas.common.v1 import dataset_pb2, privacy_pb2
from lomas_common.db import Database, Transaction
from lomas_common.peers import PeerSettings, SyncPeer
from lomas_embedded import demo
from lomas_executor.demo import penguin_metadata_text

T = TypeVar("T")
SQL = "SELECT COUNT(*) AS n FROM df WHERE bill_length_mm > {}"


@pytest.fixture(scope="module", params=["embedded", "mesh"])
def reconciled_mesh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningMesh]:
    """A mesh of its own (this module deletes and forges archive rows)."""
    yield from start_mode(request.param, tmp_path_factory.mktemp(f"reconcile-{request.param}"))


def in_database(url: str, work: Callable[[Transaction], T]) -> T:
    db = Database.from_url(url, max_connections=1)
    try:
        return db.run(work)
    finally:
        db.close()


def problems(mesh: RunningMesh) -> list[str]:
    with mesh.admin() as admin:
        return list(admin.verify_ledgers().problems)


def every_ending(mesh: RunningMesh, user: str) -> list[str]:
    """Releases, a refunded failure and a cancelled job for `user`; returns the released ids."""
    gone = mesh.data_dir / f"gone-{user}.csv"
    shutil.copy(mesh.data_dir / "datasets" / "penguin.csv", gone)
    with mesh.admin() as admin:
        admin.add_user(user)
        admin.grant(user, demo.DATASET, approx_dp("10", "0.001"))
        metadata = yaml.safe_load(penguin_metadata_text())
        admin.add_dataset(f"GONE-{user}", local_source(gone), metadata, dataset_pb2.DATA_FORMAT_CSV)
        admin.grant(user, f"GONE-{user}", approx_dp("10", "0.001"))
    with Client(mesh.target, demo.DATASET, token=mesh.token(user)) as client:
        released = [
            client.smartnoise_sql.query(SQL.format(n), epsilon=0.5, delta=0).attrs["query_id"]
            for n in (1, 2, 3)
        ]
        # A job cancelled before any worker could take it: refunded, never archived.
        mesh.mesh.kill("worker-0")
        job = client.smartnoise_sql.submit(SQL.format(4), epsilon=0.5, delta=0)
        job.cancel()
        mesh.mesh.start_service("worker-0")
        with pytest.raises(QueryCancelled):
            job.result(timeout=60)
    # A failure before data access (the file is gone): refunded, archived at zero cost.
    gone.unlink()
    with Client(mesh.target, f"GONE-{user}", token=mesh.token(user)) as client:
        with pytest.raises(SourceUnavailable):
            client.smartnoise_sql.query(SQL.format(5), epsilon=0.5, delta=0)
    return released


def charge_without_outcome(mesh: RunningMesh, user: str) -> str:
    """Reserve, access and commit a query on the ledger directly, as a mesh peer could, and
    archive nothing (what a worker that charged and then lost the outcome would leave)."""
    query_id = str(uuid.uuid4())
    settings = PeerSettings(service_token=mesh.mesh.config.service_token)
    budget: SyncPeer[Any] = SyncPeer(
        mesh.mesh.budget_target, budget_pb2_grpc.BudgetServiceStub, settings
    )
    try:
        cost = privacy_pb2.PrivacyLoss(approx_dp=privacy_pb2.ApproxDp(epsilon="0.25", delta="0"))
        budget.call(
            "ReserveBudget",
            budget_pb2.ReserveBudgetRequest(
                query_id=query_id, user=user, dataset=demo.DATASET, cost=cost, actor=user
            ),
        )
        budget.call(
            "MarkReservationAccessed", budget_pb2.MarkReservationAccessedRequest(query_id=query_id)
        )
        budget.call("CommitReservation", budget_pb2.CommitReservationRequest(query_id=query_id))
    finally:
        budget.close()
    return query_id


def forge_release(mesh: RunningMesh, copied: str) -> str:
    """An archived release under a new query id that no ledger ever charged."""
    forged = str(uuid.uuid4())
    in_database(
        mesh.admin_database_url,
        lambda tx: tx.execute(
            "INSERT INTO archive (query_id, user_name, dataset, query_json, definition, epsilon,"
            " delta, rho, succeeded, release, error_reason, error_message, submitted_at,"
            " completed_at, fingerprint) SELECT ?, user_name, dataset, query_json, definition,"
            " epsilon, delta, rho, succeeded, release, error_reason, error_message,"
            " submitted_at, completed_at, fingerprint FROM archive WHERE query_id = ?",
            (forged, copied),
        ),
    )
    return forged


def test_every_ending_reconciles_and_mismatches_are_reported(
    reconciled_mesh: RunningMesh,
) -> None:
    mesh = reconciled_mesh
    user = f"reconciled-{uuid.uuid4().hex[:8]}"
    first, deleted, _ = every_ending(mesh, user)
    assert problems(mesh) == []

    removed = in_database(
        mesh.admin_database_url,
        lambda tx: tx.execute("DELETE FROM archive WHERE query_id = ?", (deleted,)).rowcount,
    )
    assert removed == 1
    uncharged = forge_release(mesh, first)
    unarchived = charge_without_outcome(mesh, user)
    where = f"{user} on {demo.DATASET}"
    assert problems(mesh) == sorted(
        [
            f"query {deleted}: charged in the ledger of {where} but no outcome is archived",
            f"query {unarchived}: charged in the ledger of {where} but no outcome is archived",
            f"query {uncharged}: released for {user} on {demo.DATASET} but never charged",
        ]
    )

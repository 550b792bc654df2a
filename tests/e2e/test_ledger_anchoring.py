"""Ledger anchoring on a real mesh, in both deployment modes (SQLite and PostgreSQL): the budget
ledger MACs each chain's head with the key the launcher generated into the data directory and
appends checkpoints to a file beside it, outside the database. Someone with write access to the
database who rewrites a chain consistently (every hash recomputed with the project's own
`chain_hash`, balances and reservation rows adjusted) passes the chain and accounting checks, but
`ledger verify` reports the rewrite against the latest checkpoint."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from mesh_testing import RunningMesh, start_mode

from lomas.client import Client
from lomas.client.admin import approx_dp
from lomas_budget import tables
from lomas_budget.journal import chain_hash, chain_prefix
from lomas_common.db import Database, Transaction, to_db_decimal
from lomas_common.privacy import format_decimal
from lomas_embedded import demo
from lomas_embedded.mesh import ANCHOR_KEY_FILE, CHECKPOINT_FILE

T = TypeVar("T")
COUNT = "SELECT COUNT(*) AS n FROM df"
# Checkpoint rounds every half second (default 10 s), so the test need not wait long for one.
FAST_CHECKPOINTS = {"LOMAS_LEDGER_CHECKPOINT_INTERVAL_SECONDS": "0.5"}


@pytest.fixture(scope="module", params=["embedded", "mesh"])
def anchored_mesh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningMesh]:
    """A mesh of its own (this module rewrites its ledger database)."""
    tmp = tmp_path_factory.mktemp(f"anchoring-{request.param}")
    yield from start_mode(request.param, tmp, extra_env=FAST_CHECKPOINTS)


def checkpoints(mesh: RunningMesh) -> list[dict[str, Any]]:
    lines = (mesh.data_dir / CHECKPOINT_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def in_database(url: str, work: Callable[[Transaction], T]) -> T:
    """Run `work` in one transaction of the database at `url`, directly, as its owner could."""
    db = Database.from_url(url, max_connections=1)
    try:
        return db.run(work)
    finally:
        db.close()


def ledger_id(mesh: RunningMesh, user: str) -> str:
    row = in_database(
        mesh.budget_database_url,
        lambda tx: tx.fetchone("SELECT id FROM ledgers WHERE user_name = ?", (user,)),
    )
    assert row is not None
    return str(row["id"])


def wait_until_anchored(mesh: RunningMesh, user: str, dataset: str) -> dict[str, Any]:
    """The checkpoint of the ledger's current head, once a round has written it."""
    with mesh.admin() as admin:
        head = admin.ledger(user, dataset).head_hash
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [c for c in checkpoints(mesh) if c["head_hash"] == head]
        if found:
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint of {user}'s ledger head {head}")


def without_append_only_triggers(tx: Transaction) -> None:
    """What an attacker with database rights does first."""
    if tx.dialect == "postgresql":
        tx.execute("SET LOCAL session_replication_role = replica")
    else:
        tx.execute("DROP TRIGGER IF EXISTS ledger_entries_no_update")


def rewrite_charge(database_url: str, ledger: str, query_id: str, epsilon: Decimal) -> None:
    """Charge `query_id` `epsilon` instead, consistently: its reservation and commit entries, every
    hash from the first changed entry on (with `chain_hash`), the ledger's head and spent balance,
    and the reservation row."""

    def work(tx: Transaction) -> None:
        without_append_only_triggers(tx)
        row = tx.fetchone(f"SELECT {tables.LEDGER_COLUMNS} FROM ledgers WHERE id = ?", (ledger,))
        assert row is not None
        balance = tables.balance(row)
        prefix = chain_prefix(ledger, balance.user, balance.dataset, balance.definition.value)
        rows = tx.fetchall(
            f"SELECT {tables.ENTRY_COLUMNS} FROM ledger_entries WHERE ledger_id = ? ORDER BY seq",
            (ledger,),
        )
        entries = [tables.entry(r) for r in rows]
        first = next(e.seq for e in entries if e.query_id == query_id)
        prev = entries[first - 2].hash
        spent = sum(
            (e.epsilon for e in entries[: first - 1] if e.kind.value == "commit"), Decimal(0)
        )
        for entry in entries[first - 1 :]:
            amount = entry.epsilon
            if entry.query_id == query_id and entry.kind.value in ("reservation", "commit"):
                amount = epsilon
            if entry.kind.value == "commit":
                spent += amount
            digest = chain_hash(
                prefix, entry.seq, entry.kind.value, format_decimal(amount),
                format_decimal(entry.delta), format_decimal(entry.rho), entry.query_id,
                entry.actor, entry.reason, entry.created_at, prev,
            )  # fmt: skip
            tx.execute(
                "UPDATE ledger_entries SET epsilon = ?, prev_hash = ?, hash = ? "
                "WHERE ledger_id = ? AND seq = ?",
                (to_db_decimal(amount), prev, digest, ledger, entry.seq),
            )
            prev = digest
        tx.execute(
            "UPDATE ledgers SET spent_epsilon = ?, head_hash = ? WHERE id = ?",
            (to_db_decimal(spent), prev, ledger),
        )
        tx.execute(
            "UPDATE reservations SET epsilon = ? WHERE query_id = ?",
            (to_db_decimal(epsilon), query_id),
        )

    in_database(database_url, work)


def test_a_consistent_rewrite_in_the_database_is_caught_by_the_checkpoints(
    anchored_mesh: RunningMesh,
) -> None:
    mesh = anchored_mesh
    key_file, checkpoint_file = mesh.data_dir / ANCHOR_KEY_FILE, mesh.data_dir / CHECKPOINT_FILE
    assert key_file.stat().st_mode & 0o077 == 0  # readable by its owner only
    user = f"anchored-{uuid.uuid4().hex[:8]}"
    with mesh.admin() as admin:
        admin.add_user(user)
        admin.grant(user, demo.DATASET, approx_dp("10", "0.001"))
    with Client(mesh.target, demo.DATASET, token=mesh.token(user)) as client:
        first = client.smartnoise_sql.query(COUNT, epsilon=1.0, delta=0).attrs["query_id"]
        client.smartnoise_sql.query(COUNT, epsilon=0.5, delta=0)
    anchored = wait_until_anchored(mesh, user, demo.DATASET)
    ledger = ledger_id(mesh, user)
    assert anchored["ledger_id"] == ledger and anchored["entry_count"] == 7
    assert key_file.read_text().strip() not in checkpoint_file.read_text()
    with mesh.admin() as admin:
        assert list(admin.verify_ledgers().problems) == []

    rewrite_charge(mesh.budget_database_url, ledger, first, Decimal("0.1"))
    with mesh.admin() as admin:
        assert admin.ledger(user, demo.DATASET).spent.approx_dp.epsilon == "0.6"  # it took
        problems = list(admin.verify_ledgers().problems)
    # The chain hashes right and the accounting adds up: only the checkpoint, and the archive
    # (which still holds what the query was charged), tell.
    assert problems == [
        f"ledger {ledger}: entry 7 does not match its checkpoint of {anchored['time']} "
        "(history rewritten)",
        f"query {first}: archived cost epsilon 1, delta 0 but epsilon 0.1, delta 0 held in the "
        "ledger",
    ]

    # Checkpoint rounds go on (the service anchors other ledgers), but never bless the rewrite.
    time.sleep(1.5)
    assert [c for c in checkpoints(mesh) if c["ledger_id"] == ledger][-1] == anchored


def test_a_forged_checkpoint_is_reported(anchored_mesh: RunningMesh) -> None:
    """Whoever writes to the checkpoint file without the key cannot make a checkpoint that verifies."""
    mesh = anchored_mesh
    latest = checkpoints(mesh)[-1]
    forged = {**latest, "entry_count": latest["entry_count"] + 1, "head_hash": "f" * 64}
    path = mesh.data_dir / CHECKPOINT_FILE
    with path.open("a") as file:
        file.write(json.dumps(forged) + "\n")
    number = len(path.read_text().splitlines())
    with mesh.admin() as admin:
        problems = list(admin.verify_ledgers().problems)
    assert f"checkpoint file {path} line {number}: the MAC does not verify (altered)" in problems

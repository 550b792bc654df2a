"""Checkpoints MACed outside the database (`lomas_budget.anchoring`) catch what the hash chain
alone cannot: a chain rewritten consistently, with every hash recomputed, by someone with write
access to the database but not the anchor key."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal as D
from pathlib import Path

import pytest
from budget_testing import FakeClock

from lomas_budget.anchoring import AnchorKeys, Checkpoint, CheckpointFile, LedgerAnchor
from lomas_budget.journal import chain_hash, chain_prefix
from lomas_budget.ledger import BudgetLedger
from lomas_budget.main import AnchorSettings
from lomas_budget.model import LedgerBalance
from lomas_budget.store import LedgerStore
from lomas_budget.verify import verify_snapshot
from lomas_common.db import Database
from lomas_common.privacy import PrivacyLoss, format_decimal

KEY = "k" * 32
NEW_KEY = "n" * 40


@pytest.fixture
def checkpoints(tmp_path: Path) -> CheckpointFile:
    return CheckpointFile(tmp_path / "anchors" / "ledger-checkpoints.jsonl")


def anchored_ledger(
    database: Database, clock: FakeClock, checkpoints: CheckpointFile, keys: str = KEY
) -> BudgetLedger:
    store = LedgerStore(database)
    store.create_schema()
    anchor = LedgerAnchor(AnchorKeys.parse(keys), checkpoints, clock=clock)
    return BudgetLedger(store, clock=clock, anchor=anchor)


@pytest.fixture
def anchored(database: Database, clock: FakeClock, checkpoints: CheckpointFile) -> BudgetLedger:
    return anchored_ledger(database, clock, checkpoints)


@pytest.fixture
def alice(anchored: BudgetLedger, clock: FakeClock) -> LedgerBalance:
    """Alice's ledger, 6 entries (allocation; q1 reserved, accessed, committed; q2 reserved,
    committed), and Bob's: both checkpointed."""
    balance = anchored.open_ledger(
        "alice", "penguins", PrivacyLoss.approx_dp(D(10), D("0.001")), None, "admin"
    )
    anchored.open_ledger("bob", "penguins", PrivacyLoss.pure_dp(D(1)), None, "admin")
    for query_id, epsilon in (("q1", "2"), ("q2", "1")):
        cost = PrivacyLoss.approx_dp(D(epsilon), D(0))
        anchored.reserve(query_id, "alice", "penguins", cost, "gateway")
        if query_id == "q1":
            anchored.mark_accessed(query_id)
        anchored.commit(query_id)
    clock.advance(10)
    assert len(anchored.checkpoint()) == 2
    assert anchored.verify_all() == []
    return balance


def latest(ledger: BudgetLedger, balance: LedgerBalance) -> Checkpoint:
    assert ledger.anchor is not None
    return ledger.anchor.anchors().latest[balance.ledger_id]


def unanchored_problems(database: Database) -> list[str]:
    """What verification finds without the checkpoints (the hash chain and the accounting)."""
    report = LedgerStore(database).run(lambda session: verify_snapshot(session), readonly=True)
    return list(report.problems)


def rewrite_charge(
    ledger: BudgetLedger,
    tamper: Callable[..., int],
    balance: LedgerBalance,
    query_id: str,
    epsilon: str,
) -> None:
    """Charge `query_id` `epsilon` instead, as someone with database rights could: its reservation
    and commit entries, every hash from there on, the ledger's head and spent balance and the
    reservation row, all consistent."""
    _, entries, _ = ledger.list_entries(balance.user, balance.dataset)
    prefix = chain_prefix(balance.ledger_id, balance.user, balance.dataset, "approx_dp")
    first = next(e.seq for e in entries if e.query_id == query_id)
    prev = entries[first - 2].hash
    spent = sum((e.epsilon for e in entries[: first - 1] if e.kind.value == "commit"), D(0))
    for entry in entries[first - 1 :]:
        amount = entry.epsilon
        if entry.query_id == query_id and entry.kind.value != "access":
            amount = D(epsilon)
        if entry.kind.value == "commit":
            spent += amount
        digest = chain_hash(
            prefix, entry.seq, entry.kind.value, format_decimal(amount),
            format_decimal(entry.delta), format_decimal(entry.rho), entry.query_id, entry.actor,
            entry.reason, entry.created_at, prev,
        )  # fmt: skip
        tamper(
            "UPDATE ledger_entries SET epsilon = ?, prev_hash = ?, hash = ? "
            "WHERE ledger_id = ? AND seq = ?",
            (format_decimal(amount), prev, digest, balance.ledger_id, entry.seq),
        )
        prev = digest
    tamper(
        "UPDATE ledgers SET spent_epsilon = ?, head_hash = ? WHERE id = ?",
        (format_decimal(spent), prev, balance.ledger_id),
    )
    tamper("UPDATE reservations SET epsilon = ? WHERE query_id = ?", (epsilon, query_id))


def test_a_consistent_rewrite_is_caught_by_the_checkpoint_alone(
    anchored: BudgetLedger, database: Database, tamper: Callable[..., int], alice: LedgerBalance
) -> None:
    checkpoint = latest(anchored, alice)
    rewrite_charge(anchored, tamper, alice, "q1", "0.5")
    assert anchored.get_balance("alice", "penguins").spent.epsilon == D("1.5")
    assert unanchored_problems(database) == []
    assert anchored.verify_all() == [
        f"ledger {alice.ledger_id}: entry 6 does not match its checkpoint of {checkpoint.time} "
        "(history rewritten)"
    ]
    assert anchored.verify_ledger(alice.ledger_id) == anchored.verify_all()

    # The next round does not anchor the rewritten chain: it stays reported.
    anchored.reserve("q3", "alice", "penguins", PrivacyLoss.approx_dp(D(1), D(0)), "gateway")
    assert anchored.checkpoint() == []
    assert latest(anchored, alice) == checkpoint
    assert len(anchored.verify_all()) == 1


def test_entries_after_a_checkpoint_are_anchored_by_the_next_round(
    anchored: BudgetLedger, clock: FakeClock, alice: LedgerBalance
) -> None:
    before = latest(anchored, alice)
    anchored.reserve("q3", "alice", "penguins", PrivacyLoss.approx_dp(D(1), D(0)), "gateway")
    clock.advance(1)
    (written,) = anchored.checkpoint()  # only Alice's chain moved
    assert (written.ledger_id, written.entry_count) == (alice.ledger_id, before.entry_count + 1)
    assert written.head_hash == anchored.get_balance("alice", "penguins").head_hash
    assert anchored.checkpoint() == []  # nothing moved since
    assert anchored.verify_all() == []


def test_removed_entries_and_a_deleted_ledger_are_reported(
    anchored: BudgetLedger, database: Database, tamper: Callable[..., int], alice: LedgerBalance
) -> None:
    bob = anchored.get_balance("bob", "penguins")
    tamper("DELETE FROM ledger_entries WHERE ledger_id = ?", (bob.ledger_id,))
    tamper("DELETE FROM ledgers WHERE id = ?", (bob.ledger_id,))
    # Alice's q2 never happened, consistently: its entries, its reservation and its charge.
    _, entries, _ = anchored.list_entries("alice", "penguins")
    tamper("DELETE FROM ledger_entries WHERE ledger_id = ? AND seq > 4", (alice.ledger_id,))
    tamper(
        "UPDATE ledgers SET entry_count = 4, head_hash = ?, spent_epsilon = '2' WHERE id = ?",
        (entries[3].hash, alice.ledger_id),
    )
    tamper("DELETE FROM reservations WHERE query_id = 'q2'")
    assert unanchored_problems(database) == []
    when = latest(anchored, alice).time
    assert anchored.verify_all() == [
        f"ledger {alice.ledger_id}: 6 entries at its checkpoint of {when} but only 4 stored "
        "(entries removed)",
        f"ledger {bob.ledger_id} (bob, penguins): in a checkpoint of {when} but not in the "
        "database (ledger deleted)",
    ]


def test_an_altered_or_forged_checkpoint_is_reported_and_ignored(
    anchored: BudgetLedger, checkpoints: CheckpointFile, alice: LedgerBalance
) -> None:
    genuine = latest(anchored, alice)
    altered = replace(genuine, entry_count=3)
    forged = replace(genuine, entry_count=2).signed(AnchorKeys.parse("f" * 32))
    with checkpoints.path.open("a") as file:
        file.write(f"{altered.line()}\n{forged.line()}\n{{not json\n")
    name = f"checkpoint file {checkpoints.path}"
    assert anchored.verify_all() == [
        f"{name} line 3: the MAC does not verify (altered)",
        f"{name} line 5: not a checkpoint",
        f"{name} line 4: the latest checkpoint of ledger {alice.ledger_id} names a key not "
        f"configured ({forged.key_id}): forged, or the key is missing",
    ]
    assert latest(anchored, alice) == genuine  # the latest authentic one still counts


def test_a_ledger_left_out_of_the_checkpoints_is_reported(
    anchored: BudgetLedger, checkpoints: CheckpointFile, clock: FakeClock, alice: LedgerBalance
) -> None:
    bob = anchored.get_balance("bob", "penguins")
    kept = [line for line in checkpoints.path.read_text().splitlines() if bob.ledger_id not in line]
    checkpoints.path.write_text("".join(f"{line}\n" for line in kept))
    newest = latest(anchored, alice).time
    assert anchored.verify_all() == [
        f"ledger {bob.ledger_id}: opened at {bob.created_at} but in no checkpoint (newest {newest})"
    ]
    # A ledger opened after the newest round is not missed yet.
    carol = anchored.open_ledger("carol", "penguins", PrivacyLoss.pure_dp(D(1)), None, "admin")
    assert not any(carol.ledger_id in problem for problem in anchored.verify_all())


def test_a_new_key_reanchors_every_ledger_and_then_verifies_alone(
    anchored: BudgetLedger,
    database: Database,
    checkpoints: CheckpointFile,
    clock: FakeClock,
    alice: LedgerBalance,
) -> None:
    old = latest(anchored, alice)
    # Rotation: the new key first, the old one kept to verify what it MACed.
    rotated = anchored_ledger(database, clock, checkpoints, f"{NEW_KEY}\n{KEY}\n")
    assert rotated.verify_all() == []
    clock.advance(1)
    written = rotated.checkpoint()  # nothing moved, but every ledger is MACed anew
    assert len(written) == 2
    assert {c.key_id for c in written} == {AnchorKeys.parse(NEW_KEY).signing_id} != {old.key_id}
    assert rotated.checkpoint() == []
    # Now the new key alone verifies: the old lines are superseded.
    alone = anchored_ledger(database, clock, checkpoints, NEW_KEY)
    assert alone.verify_all() == []
    assert alone.checkpoint() == []
    # ... and the old key alone no longer does.
    assert len(anchored.verify_all()) == 2


def test_a_line_cut_short_by_a_crash_is_reported_and_the_next_lines_are_whole(
    database: Database, checkpoints: CheckpointFile, clock: FakeClock, alice: LedgerBalance
) -> None:
    with checkpoints.path.open("a") as file:
        file.write('{"format":"lomas-ledger-checkp')
    restarted = anchored_ledger(database, clock, checkpoints)
    restarted.reserve("q3", "alice", "penguins", PrivacyLoss.approx_dp(D(1), D(0)), "gateway")
    assert len(restarted.checkpoint()) == 1
    assert restarted.verify_all() == [
        f"checkpoint file {checkpoints.path} line 3: not a checkpoint"
    ]
    assert latest(restarted, alice).entry_count == 7


def test_a_missing_checkpoint_file_is_reported(
    anchored: BudgetLedger, checkpoints: CheckpointFile, alice: LedgerBalance
) -> None:
    checkpoints.path.unlink()
    assert anchored.verify_all() == [
        f"checkpoint file {checkpoints.path}: cannot be read (No such file or directory)"
    ]


def test_anchor_settings(tmp_path: Path) -> None:
    assert AnchorSettings.from_env({}) is None
    key_file = tmp_path / "anchor.key"
    key_file.write_text(f"{KEY}\n")
    settings = AnchorSettings.from_env(
        {
            "LOMAS_LEDGER_ANCHOR_KEY_FILE": str(key_file),
            "LOMAS_LEDGER_CHECKPOINT_FILE": str(tmp_path / "c.jsonl"),
            "LOMAS_LEDGER_CHECKPOINT_INTERVAL_SECONDS": "2.5",
        }
    )
    assert settings is not None
    assert (settings.keys.signing, settings.interval_seconds) == (KEY.encode(), 2.5)
    for env, message in (
        ({"LOMAS_LEDGER_ANCHOR_KEY": KEY}, "go together"),
        ({"LOMAS_LEDGER_CHECKPOINT_FILE": "c.jsonl"}, "go together"),
        (
            {"LOMAS_LEDGER_ANCHOR_KEY": "short", "LOMAS_LEDGER_CHECKPOINT_FILE": "c.jsonl"},
            "at least 32 characters",
        ),
        (
            {
                "LOMAS_LEDGER_ANCHOR_KEY_FILE": str(tmp_path / "missing"),
                "LOMAS_LEDGER_CHECKPOINT_FILE": "c.jsonl",
            },
            "cannot be read",
        ),
    ):
        with pytest.raises(SystemExit, match=message):
            AnchorSettings.from_env(env)

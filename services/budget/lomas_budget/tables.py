"""The ledger tables' columns and how their rows map to the value model, both ways.

Decimals are TEXT in SQLite and NUMERIC(38, 18) in PostgreSQL (`lomas_common.db` converts);
timestamps are ISO-8601 UTC text, so that what the hash chain covers reads back byte for byte in
both.
"""

from __future__ import annotations

from typing import Any, TypedDict

from lomas_budget import model
from lomas_common.db import Row, from_db_decimal, to_db_decimal
from lomas_common.privacy import PrivacyDefinition, PrivacyLoss

BALANCES = ("allocation", "spent", "reserved")
COMPONENTS = ("epsilon", "delta", "rho")
BALANCE_COLUMNS = [f"{balance}_{name}" for balance in BALANCES for name in COMPONENTS]
LEDGER_FIELDS = [
    "id",
    "user_name",
    "dataset_name",
    "definition",
    *BALANCE_COLUMNS,
    "entry_count",
    "head_hash",
    "frozen",
    "capped",
    "created_at",
]
LEDGER_COLUMNS = ", ".join(LEDGER_FIELDS)
L_COLUMNS = ", ".join(f"l.{name}" for name in LEDGER_FIELDS)
ENTRY_FIELDS = [
    "ledger_id",
    "seq",
    "kind",
    "epsilon",
    "delta",
    "rho",
    "query_id",
    "actor",
    "reason",
    "created_at",
    "prev_hash",
    "hash",
]
ENTRY_COLUMNS = ", ".join(ENTRY_FIELDS)
RESERVATION_FIELDS = [
    "query_id",
    "ledger_id",
    "epsilon",
    "delta",
    "rho",
    "state",
    "owner",
    "expires_at",
    "created_at",
    "updated_at",
]
RESERVATION_COLUMNS = ", ".join(RESERVATION_FIELDS)


def reservation_columns(ledger: str) -> str:
    """What `reservation` reads: a reservation (aliased `r`) joined with its own ledger (aliased
    `ledger`), as r_* columns plus the ledger's identity as rl_* columns."""
    own = ", ".join(f"r.{name} AS r_{name}" for name in RESERVATION_FIELDS)
    return (
        f"{own}, {ledger}.user_name AS rl_user_name, {ledger}.dataset_name AS rl_dataset_name, "
        f"{ledger}.definition AS rl_definition"
    )


RESERVATION_SELECT = (
    f"SELECT {reservation_columns('rl')} FROM reservations r JOIN ledgers rl ON rl.id = r.ledger_id"
)
DATASET_COLUMNS = (
    "dataset_name, cap_definition, cap_epsilon, cap_delta, cap_rho, "
    "used_epsilon, used_delta, used_rho, actor, reason, updated_at"
)
USER_COLUMNS = "user_name, frozen, actor, reason, updated_at"


def placeholders(count: int) -> str:
    return "(" + ", ".join("?" * count) + ")"


INSERT_ENTRIES = f"INSERT INTO ledger_entries ({ENTRY_COLUMNS}) VALUES "
INSERT_RESERVATION = (
    f"INSERT INTO reservations ({RESERVATION_COLUMNS}) "
    f"VALUES {placeholders(len(RESERVATION_FIELDS))}"
)
UPDATE_RESERVATION = "UPDATE reservations SET state = ?, updated_at = ? WHERE query_id = ?"
UPDATE_USED = (
    "UPDATE ledger_datasets SET used_epsilon = ?, used_delta = ?, used_rho = ? "
    "WHERE dataset_name = ?"
)
UPDATE_LEDGER = (
    "UPDATE ledgers SET "
    + ", ".join(f"{column} = ?" for column in BALANCE_COLUMNS)
    + ", entry_count = ?, head_hash = ?, frozen = ? WHERE id = ?"
)


def kinds_list() -> str:
    """The entry kinds as an SQL list of literals."""
    return ", ".join(f"'{kind.value}'" for kind in model.EntryKind)


def open_states_list() -> str:
    """The states of a reservation the sweep settles, as an SQL list of literals."""
    return f"'{model.ReservationState.RESERVED.value}', '{model.ReservationState.ACCESSED.value}'"


# --- rows -> values -------------------------------------------------------------------------------


def loss(definition: PrivacyDefinition, row: Row, prefix: str = "") -> PrivacyLoss:
    return PrivacyLoss(
        definition,
        epsilon=from_db_decimal(row[f"{prefix}epsilon"]),
        delta=from_db_decimal(row[f"{prefix}delta"]),
        rho=from_db_decimal(row[f"{prefix}rho"]),
    )


def balance(row: Row) -> model.LedgerBalance:
    definition = PrivacyDefinition(row["definition"])
    return model.LedgerBalance(
        ledger_id=row["id"],
        user=row["user_name"],
        dataset=row["dataset_name"],
        definition=definition,
        allocation=loss(definition, row, "allocation_"),
        spent=loss(definition, row, "spent_"),
        reserved=loss(definition, row, "reserved_"),
        created_at=row["created_at"],
        entry_count=int(row["entry_count"]),
        head_hash=row["head_hash"],
        frozen=bool(row["frozen"]),
        capped=bool(row["capped"]),
    )


def entry(row: Row) -> model.LedgerEntry:
    return model.LedgerEntry(
        ledger_id=row["ledger_id"],
        seq=int(row["seq"]),
        kind=model.EntryKind(row["kind"]),
        epsilon=from_db_decimal(row["epsilon"]),
        delta=from_db_decimal(row["delta"]),
        rho=from_db_decimal(row["rho"]),
        query_id=row["query_id"],
        actor=row["actor"],
        reason=row["reason"],
        created_at=row["created_at"],
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


def reservation(row: Row) -> model.Reservation:
    """From a row of `reservation_columns` (r_* columns and the reservation's own ledger)."""
    return model.Reservation(
        query_id=row["r_query_id"],
        ledger_id=row["r_ledger_id"],
        user=row["rl_user_name"],
        dataset=row["rl_dataset_name"],
        cost=loss(PrivacyDefinition(row["rl_definition"]), row, "r_"),
        state=model.ReservationState(row["r_state"]),
        created_at=row["r_created_at"],
        updated_at=row["r_updated_at"],
        owner=row["r_owner"],
        expires_at=row["r_expires_at"],
    )


class LastChange(TypedDict):
    """Who last changed a user's freeze or a dataset's cap, why and when: the columns that end
    both rows (`USER_COLUMNS`, `DATASET_COLUMNS`) and the fields that end both values."""

    actor: str
    reason: str
    updated_at: str


def last_change(row: Row) -> LastChange:
    return LastChange(actor=row["actor"], reason=row["reason"], updated_at=row["updated_at"])


def dataset(row: Row) -> model.DatasetCap:
    if row["cap_definition"] is None:
        cap = used = None
    else:
        definition = PrivacyDefinition(row["cap_definition"])
        cap, used = loss(definition, row, "cap_"), loss(definition, row, "used_")
    return model.DatasetCap(dataset=row["dataset_name"], cap=cap, used=used, **last_change(row))


def user(row: Row) -> model.UserState:
    return model.UserState(user=row["user_name"], frozen=bool(row["frozen"]), **last_change(row))


# --- values -> statement parameters ---------------------------------------------------------------


def amounts(value: PrivacyLoss) -> list[str]:
    return [to_db_decimal(value.epsilon), to_db_decimal(value.delta), to_db_decimal(value.rho)]


def entry_values(value: model.LedgerEntry) -> list[Any]:
    return [
        value.ledger_id,
        value.seq,
        value.kind.value,
        to_db_decimal(value.epsilon),
        to_db_decimal(value.delta),
        to_db_decimal(value.rho),
        value.query_id,
        value.actor,
        value.reason,
        value.created_at,
        value.prev_hash,
        value.hash,
    ]


def reservation_values(value: model.Reservation) -> list[Any]:
    return [
        value.query_id,
        value.ledger_id,
        *amounts(value.cost),
        value.state.value,
        value.owner,
        value.expires_at,
        value.created_at,
        value.updated_at,
    ]


def ledger_insert_values(value: model.LedgerBalance, request_id: str | None) -> list[Any]:
    """The values of `LEDGER_FIELDS`, then the request id that opened the ledger."""
    return [
        value.ledger_id,
        value.user,
        value.dataset,
        value.definition.value,
        *amounts(value.allocation),
        *amounts(value.spent),
        *amounts(value.reserved),
        value.entry_count,
        value.head_hash,
        int(value.frozen),
        int(value.capped),
        value.created_at,
        request_id,
    ]


def ledger_update_values(value: model.LedgerBalance) -> list[Any]:
    """The parameters of `UPDATE_LEDGER`."""
    return [
        *amounts(value.allocation),
        *amounts(value.spent),
        *amounts(value.reserved),
        value.entry_count,
        value.head_hash,
        int(value.frozen),
        value.ledger_id,
    ]

"""The journal: the append-only, hash-chained entries of each ledger, and how appending one moves the
ledger's cached balances.

Each entry's hash is SHA-256 over the canonical JSON text of its fields (decimals as
`format_decimal` text), the identity of its ledger and the previous entry's hash: changing any
stored field, the ledger's owner or definition, or the order of the entries breaks the chain.
`lomas_budget.verify` recomputes every hash with `chain_hash`, rendering each ledger's
`chain_prefix` once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

from lomas_budget.accounting import plus
from lomas_budget.model import EFFECTS, Amount, EntryKind, LedgerBalance, LedgerEntry
from lomas_common.privacy import PrivacyLoss

HASH_VERSION = "lomas-ledger-entry/v1"

_json_string = json.encoder.encode_basestring  # what json.dumps(..., ensure_ascii=False) uses


def _json_value(value: str | None) -> str:
    return "null" if value is None else _json_string(value)


def chain_prefix(ledger_id: str, user: str, dataset: str, definition: str) -> str:
    """The part of every entry's canonical text that identifies its ledger."""
    return (
        f'["{HASH_VERSION}",{_json_string(ledger_id)},{_json_string(user)},'
        f"{_json_string(dataset)},{_json_string(definition)},"
    )


def chain_hash(
    prefix: str,
    seq: int,
    kind: str,
    epsilon: str,
    delta: str,
    rho: str,
    query_id: str | None,
    actor: str,
    reason: str,
    created_at: str,
    prev_hash: str,
) -> str:
    """SHA-256 over the canonical JSON text of one entry, its ledger's identity (`prefix`, from
    `chain_prefix`) and the previous hash.

    The text is exactly `json.dumps([HASH_VERSION, ledger_id, user, dataset, definition, seq, ...,
    prev_hash], separators=(",", ":"), ensure_ascii=False)`, built directly because verification
    hashes millions of entries (and renders each ledger's prefix once).
    """
    canonical = (
        f"{prefix}{int(seq)},{_json_string(kind)},{_json_string(epsilon)},"
        f"{_json_string(delta)},{_json_string(rho)},{_json_value(query_id)},"
        f"{_json_string(actor)},{_json_string(reason)},{_json_string(created_at)},"
        f"{_json_string(prev_hash)}]"
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Pending:
    """The entries one operation appends to a ledger and the ledger row they lead to, written
    together at the end of the operation (`LedgerSession.write`)."""

    ledger: LedgerBalance
    entries: list[LedgerEntry] = field(default_factory=list)

    def append(
        self,
        kind: EntryKind,
        amount: Amount,
        query_id: str | None,
        actor: str,
        reason: str,
        now: str,
    ) -> None:
        """Append one entry, moving the cached balances, the freeze flag and the chain head."""
        balance = self.ledger
        seq = balance.entry_count + 1
        epsilon, delta, rho = amount.texts()
        digest = chain_hash(
            chain_prefix(
                balance.ledger_id, balance.user, balance.dataset, balance.definition.value
            ),
            seq,
            kind.value,
            epsilon,
            delta,
            rho,
            query_id,
            actor,
            reason,
            now,
            balance.head_hash,
        )
        self.entries.append(
            LedgerEntry(
                ledger_id=balance.ledger_id,
                seq=seq,
                kind=kind,
                epsilon=amount.epsilon,
                delta=amount.delta,
                rho=amount.rho,
                query_id=query_id,
                actor=actor,
                reason=reason,
                created_at=now,
                prev_hash=balance.head_hash,
                hash=digest,
            )
        )
        on_allocation, on_spent, on_reserved = EFFECTS[kind]
        frozen = balance.frozen
        if kind is EntryKind.FREEZE:
            frozen = True
        elif kind is EntryKind.UNFREEZE:
            frozen = False
        self.ledger = replace(
            balance,
            allocation=_moved(balance.allocation, amount, on_allocation),
            spent=_moved(balance.spent, amount, on_spent),
            reserved=_moved(balance.reserved, amount, on_reserved),
            entry_count=seq,
            head_hash=digest,
            frozen=frozen,
        )


def _moved(base: PrivacyLoss, amount: Amount, sign: int) -> PrivacyLoss:
    if sign == 0:
        return base
    return PrivacyLoss(
        base.definition,
        epsilon=plus(base.epsilon, amount.epsilon, sign),
        delta=plus(base.delta, amount.delta, sign),
        rho=plus(base.rho, amount.rho, sign),
    )


__all__ = [
    "HASH_VERSION",
    "Pending",
    "chain_hash",
    "chain_prefix",
]

"""The body of one OS process in the multi-process concurrency test.

A module of its own (not the test module) because `spawn` children import their target by
module name, and pytest's importlib mode does not make test modules importable; the test puts
this directory on `sys.path` before it starts the processes.
"""

from __future__ import annotations

from typing import Any

from lomas_budget.ledger import BudgetLedger
from lomas_budget.store import LedgerStore
from lomas_common.db import Database
from lomas_common.errors import BudgetExhausted
from lomas_common.privacy import PrivacyLoss


def run(url: str, worker: int, attempts: int, cost: PrivacyLoss, start: Any, results: Any) -> None:
    """Open a Database of this process's own, wait for the other processes, then reserve `cost`
    for alice on penguins `attempts` times, putting 'reserved' or 'exhausted' on `results`."""
    db = Database.from_url(url)
    try:
        ledger = BudgetLedger(LedgerStore(db))
        start.wait()
        for index in range(attempts):
            try:
                ledger.reserve(f"process-{worker}-{index}", "alice", "penguins", cost, "gateway")
                results.put("reserved")
            except BudgetExhausted:
                results.put("exhausted")
    finally:
        db.close()


def race(url: str, plan: list[tuple[str, str, str, PrivacyLoss]], start: Any, results: Any) -> None:
    """Open a Database of this process's own, wait for the other processes, then make every
    reservation of `plan` (query id, user, dataset, cost), putting (dataset, outcome) on `results`
    with the outcome 'reserved' or the refusal's reason."""
    db = Database.from_url(url)
    try:
        ledger = BudgetLedger(LedgerStore(db))
        start.wait()
        for query_id, user, dataset, cost in plan:
            try:
                ledger.reserve(query_id, user, dataset, cost, "gateway")
                results.put((dataset, "reserved"))
            except BudgetExhausted as error:
                results.put((dataset, error.reason))
    finally:
        db.close()

"""Concurrent reservations never overspend a ledger: threads, and separate OS processes."""

from __future__ import annotations

import importlib
import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal as D
from pathlib import Path

import pytest

from lomas_budget.ledger import BudgetLedger
from lomas_budget.model import ReservationState
from lomas_common.errors import BudgetExhausted, FailedPrecondition
from lomas_common.privacy import PrivacyLoss

ATTEMPTS = 50
AFFORDABLE = 10
PROCESSES = 5
ALLOCATION = PrivacyLoss.approx_dp(D(1), D("0.00001"))
COST = PrivacyLoss.approx_dp(D("0.1"), D("0.000001"))  # exactly AFFORDABLE fit
ZERO = PrivacyLoss.approx_dp(D(0), D(0))


def _assert_exactly_affordable_succeeded(ledger: BudgetLedger, outcomes: list[str]) -> None:
    assert len(outcomes) == ATTEMPTS
    assert outcomes.count("reserved") == AFFORDABLE
    assert outcomes.count("exhausted") == ATTEMPTS - AFFORDABLE
    balance = ledger.get_balance("alice", "penguins")
    assert balance.reserved == ALLOCATION
    assert balance.remaining == ZERO
    assert ledger.verify_all() == []


def test_concurrent_threads_never_overspend(ledger: BudgetLedger) -> None:
    ledger.open_ledger("alice", "penguins", ALLOCATION, None, actor="admin")
    start = threading.Barrier(ATTEMPTS)

    def attempt(index: int) -> str:
        start.wait()
        try:
            ledger.reserve(f"thread-{index}", "alice", "penguins", COST, actor="gateway")
        except BudgetExhausted:
            return "exhausted"
        return "reserved"

    with ThreadPoolExecutor(max_workers=ATTEMPTS) as pool:
        outcomes = list(pool.map(attempt, range(ATTEMPTS)))
    _assert_exactly_affordable_succeeded(ledger, outcomes)


def test_concurrent_processes_never_overspend(
    ledger: BudgetLedger, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger.open_ledger("alice", "penguins", ALLOCATION, None, actor="admin")
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # spawn children import the worker
    worker = importlib.import_module("budget_process_worker")
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES)
    results = context.Queue()
    processes = [
        context.Process(
            target=worker.run,
            args=(database_url, index, ATTEMPTS // PROCESSES, COST, start, results),
        )
        for index in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in range(ATTEMPTS)]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    _assert_exactly_affordable_succeeded(ledger, outcomes)


def test_concurrent_opens_of_one_ledger_agree(ledger: BudgetLedger) -> None:
    start = threading.Barrier(10)

    def open_once(_: int) -> str:
        start.wait()
        return ledger.open_ledger("alice", "penguins", ALLOCATION, None, "admin").ledger_id

    with ThreadPoolExecutor(max_workers=10) as pool:
        ledger_ids = set(pool.map(open_once, range(10)))
    assert len(ledger_ids) == 1
    assert ledger.verify_all() == []


def test_concurrent_commits_and_releases_settle_once(ledger: BudgetLedger) -> None:
    ledger.open_ledger("alice", "penguins", ALLOCATION, None, "admin")
    ledger.reserve("q1", "alice", "penguins", COST, actor="gateway")
    start = threading.Barrier(20)

    def settle(index: int) -> str:
        start.wait()
        try:
            if index % 2:
                return ledger.commit("q1").state.value
            return ledger.release("q1").state.value
        except FailedPrecondition as error:  # the losers of the race see the winner's state
            return error.reason

    with ThreadPoolExecutor(max_workers=20) as pool:
        outcomes = set(pool.map(settle, range(20)))
    balance = ledger.get_balance("alice", "penguins")
    if ledger.get_reservation("q1").state is ReservationState.COMMITTED:
        assert outcomes == {"committed", "DATA_ACCESSED"}
        assert balance.spent == COST
    else:
        assert outcomes == {"released", "RESERVATION_RELEASED"}
        assert balance.spent == ZERO
    assert balance.reserved == ZERO
    assert ledger.verify_all() == []

"""The race of the issue: 200 concurrent reservations from several OS processes at a ledger that
affords 37 of them, while, in the same race, 200 more reservations by four users, whose own ledgers
afford all of them, hit a dataset cap that affords 37. On SQLite and PostgreSQL: exactly 37 and 37
succeed, and every ledger and the cap verify."""

from __future__ import annotations

import importlib
import multiprocessing
import random
from collections import Counter
from decimal import Decimal as D

from lomas_budget.ledger import BudgetLedger
from lomas_common.privacy import PrivacyLoss

PROCESSES = 4
ATTEMPTS = 200
AFFORDABLE = 37
COST = PrivacyLoss.approx_dp(D("0.1"), D("0.000001"))
LEDGER = PrivacyLoss.approx_dp(D("3.7"), D("0.000037"))  # exactly 37 x COST
CAPPED_USERS = ["bob", "carol", "dave", "erin"]
CAPPED_COST = PrivacyLoss.pure_dp(D("0.2"))  # rho = 0.02 against the zCDP cap
CAPPED_LEDGER = PrivacyLoss.pure_dp(D("40"))  # 200 x CAPPED_COST: the users' own ledgers never bind
CAP = PrivacyLoss.rho_zcdp(D("0.74"))  # exactly 37 x 0.02


def test_two_hundred_concurrent_reservations_from_processes(
    ledger: BudgetLedger, database_url: str
) -> None:
    ledger.open_ledger("alice", "penguins", LEDGER, None, "admin")
    ledger.set_dataset_cap("penguins", PrivacyLoss.approx_dp(D(100), D(1)), "admin")  # not binding
    for user in CAPPED_USERS:
        ledger.open_ledger(user, "iris", CAPPED_LEDGER, None, "admin")
    ledger.set_dataset_cap("iris", CAP, "admin")

    plan = [(f"a{i}", "alice", "penguins", COST) for i in range(ATTEMPTS)]
    plan += [(f"c{i}", CAPPED_USERS[i % 4], "iris", CAPPED_COST) for i in range(ATTEMPTS)]
    random.Random(37).shuffle(plan)
    worker = importlib.import_module("budget_process_worker")  # conftest put it on sys.path
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES)
    results = context.Queue()
    processes = [
        context.Process(
            target=worker.race, args=(database_url, plan[index::PROCESSES], start, results)
        )
        for index in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    outcomes = Counter(results.get(timeout=120) for _ in plan)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    assert outcomes == {
        ("penguins", "reserved"): AFFORDABLE,
        ("penguins", "PRIVACY_BUDGET_EXHAUSTED"): ATTEMPTS - AFFORDABLE,
        ("iris", "reserved"): AFFORDABLE,
        ("iris", "DATASET_CAP_EXHAUSTED"): ATTEMPTS - AFFORDABLE,
    }
    alice = ledger.get_balance("alice", "penguins")
    assert alice.reserved == LEDGER and alice.remaining == PrivacyLoss.approx_dp(D(0), D(0))
    iris = ledger.get_dataset_cap("iris")
    assert iris.used == CAP
    held = sum((ledger.get_balance(user, "iris").reserved.epsilon for user in CAPPED_USERS), D(0))
    assert held == AFFORDABLE * CAPPED_COST.epsilon
    report = ledger.verify()
    assert report.problems == ()
    assert report.entries_checked == 1 + 4 + 2 * AFFORDABLE

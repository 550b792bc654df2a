"""Crash safety: SIGKILL the budget service at random points of a reservation storm, restart it,
and find every ledger consistent, nothing lost and nothing charged twice.

A real `python -m lomas_budget.main` on each store; eight gRPC clients reserve (and commit every
other reservation), retrying with the same query id whenever the service is down, as the gateway
and the workers do. A killer thread SIGKILLs the service at random moments and restarts it.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import grpc
from budget_testing import FAST_RECONNECT, BudgetProcess, approx

from lomas.budget.v1 import budget_pb2, budget_pb2_grpc
from lomas_budget.ledger import BudgetLedger
from lomas_budget.model import EntryKind
from lomas_budget.store import LedgerStore
from lomas_common.db import Database
from lomas_common.errors import BackendUnavailable, LomasError
from lomas_common.privacy import PrivacyLoss
from lomas_common.rpc_errors import from_rpc_error

CLIENTS = 8
QUERIES = 240
AFFORDABLE = 150
KILLS = 4
COST = approx("0.01", "0.0000001")
ALLOCATION = approx("1.5", "0.000015")  # exactly AFFORDABLE x COST


class Client:
    """One storm client: retries every call with the same ids until the service answers."""

    def __init__(self, service: BudgetProcess) -> None:
        self._channel = grpc.insecure_channel(service.target, options=FAST_RECONNECT)
        self._stub = budget_pb2_grpc.BudgetServiceStub(self._channel)
        self._metadata = (("x-lomas-service-token", service.token),)

    def call(self, method: str, request: Any) -> Any:
        deadline = time.monotonic() + 60
        while True:
            try:
                return getattr(self._stub, method)(request, metadata=self._metadata, timeout=5)
            except grpc.RpcError as error:
                failure = from_rpc_error(error)
                if not isinstance(failure, BackendUnavailable) or time.monotonic() > deadline:
                    raise failure from None
                time.sleep(0.02)

    def close(self) -> None:
        self._channel.close()


def test_sigkill_during_a_reservation_storm_loses_nothing_and_charges_nothing_twice(
    database_url: str, tmp_path: Path
) -> None:
    service = BudgetProcess(database_url, tmp_path / "budget.log").start()
    rng = random.Random(20240611)
    acknowledged: set[str] = set()
    committed: set[str] = set()
    exhausted: set[str] = set()
    lock = threading.Lock()
    storm_over = threading.Event()
    kills = 0
    done = [0]  # calls answered so far
    try:
        setup = Client(service)
        setup.call(
            "OpenLedger",
            budget_pb2.OpenLedgerRequest(
                user="alice", dataset="penguins", allocation=ALLOCATION, actor="admin"
            ),
        )
        setup.close()

        def storm(index: int) -> None:
            client = Client(service)
            try:
                for number in range(index, QUERIES, CLIENTS):
                    query_id = f"storm-{number}"
                    try:
                        client.call(
                            "ReserveBudget",
                            budget_pb2.ReserveBudgetRequest(
                                query_id=query_id,
                                user="alice",
                                dataset="penguins",
                                cost=COST,
                                actor="gateway",
                            ),
                        )
                    except LomasError as error:
                        assert error.reason == "PRIVACY_BUDGET_EXHAUSTED", error
                        with lock:
                            exhausted.add(query_id)
                            done[0] += 1
                        continue
                    with lock:
                        acknowledged.add(query_id)
                        done[0] += 1
                    if number % 2 == 0:
                        client.call(
                            "CommitReservation",
                            budget_pb2.CommitReservationRequest(query_id=query_id),
                        )
                        with lock:
                            committed.add(query_id)
                            done[0] += 1
            finally:
                client.close()

        def killer() -> None:
            """SIGKILL the service after a random number of answered calls (so always in the
            middle of the storm), at a random moment, then restart it."""
            nonlocal kills
            threshold = rng.randint(10, 35)
            while kills < KILLS and not storm_over.is_set():
                if done[0] < threshold:
                    time.sleep(0.002)
                    continue
                time.sleep(rng.uniform(0, 0.02))
                service.kill()
                kills += 1
                threshold = done[0] + rng.randint(10, 35)
                service.start()

        kill_thread = threading.Thread(target=killer)
        kill_thread.start()
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(storm, range(CLIENTS)))
        storm_over.set()
        kill_thread.join()
        if service.process is None:
            service.start()

        assert kills == KILLS
        assert len(acknowledged) + len(exhausted) == QUERIES
        assert len(acknowledged) == AFFORDABLE  # every affordable query got in, exactly once
        verifier = Client(service)
        report = verifier.call("VerifyLedgers", budget_pb2.VerifyLedgersRequest())
        verifier.close()
        assert list(report.problems) == []
    finally:
        service.kill()

    # The store itself: each acknowledged reservation is there once, each commit charged once.
    db = Database.from_url(database_url)
    try:
        ledger = BudgetLedger(LedgerStore(db))
        _, entries, _ = ledger.list_entries("alice", "penguins", limit=10_000)
        kinds = Counter((e.query_id, e.kind) for e in entries if e.query_id)
        assert {q for q, kind in kinds if kind is EntryKind.RESERVATION} == acknowledged
        assert {q for q, kind in kinds if kind is EntryKind.COMMIT} == committed
        assert set(kinds.values()) == {1}
        balance = ledger.get_balance("alice", "penguins")
        cost = PrivacyLoss.approx_dp(D("0.01"), D("0.0000001"))
        assert balance.spent.epsilon == len(committed) * cost.epsilon
        assert balance.reserved.epsilon == (AFFORDABLE - len(committed)) * cost.epsilon
        assert balance.remaining == PrivacyLoss.approx_dp(D(0), D(0))
        assert ledger.verify_all() == []
    finally:
        db.close()

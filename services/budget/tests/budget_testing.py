"""Helpers of the budget tests: a controllable clock and a real budget service process.

A module of its own (conftest puts this directory on `sys.path`) because test modules and spawned
processes import it by name.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from lomas.budget.v1 import budget_pb2, budget_pb2_grpc
from lomas.common.v1 import privacy_pb2
from lomas_common.errors import Code, LomasError
from lomas_common.peers import PeerSettings, SyncPeer, health_check

Peer = SyncPeer[Any]

# Reconnect within milliseconds to a restarted service (gRPC waits a second by default).
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 100),
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeClock:
    """A clock that moves 1 microsecond per reading and jumps when told (thread-safe)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self._now += timedelta(microseconds=1)
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)


def approx(epsilon: str, delta: str) -> privacy_pb2.PrivacyLoss:
    return privacy_pb2.PrivacyLoss(approx_dp=privacy_pb2.ApproxDp(epsilon=epsilon, delta=delta))


def pure(epsilon: str) -> privacy_pb2.PrivacyLoss:
    return privacy_pb2.PrivacyLoss(pure_dp=privacy_pb2.PureDp(epsilon=epsilon))


def zcdp(rho: str) -> privacy_pb2.PrivacyLoss:
    return privacy_pb2.PrivacyLoss(rho_zcdp=privacy_pb2.RhoZcdp(rho=rho))


class BudgetProcess:
    """`python -m lomas_budget.main` as an operator runs it, on a fixed port across restarts."""

    def __init__(self, database_url: str, log_path: Path, **settings: str) -> None:
        self.target = f"127.0.0.1:{free_port()}"
        self.token = secrets.token_urlsafe(16)
        self.log_path = log_path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LOMAS_")}
        self.env.update(
            {
                "LOMAS_LISTEN": self.target,
                "LOMAS_DATABASE_URL": database_url,
                "LOMAS_SERVICE_TOKEN": self.token,
                "LOMAS_LOG_LEVEL": "WARNING",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env.update({f"LOMAS_{key.upper()}": value for key, value in settings.items()})
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> BudgetProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lomas_budget.main"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target, options=FAST_RECONNECT) as channel:
            health = health_check(channel)
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the budget service exited:\n{self.log()}")
                try:
                    response = health(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the budget service did not start:\n{self.log()}")
                time.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def peer(self) -> SyncPeer[Any]:
        """A client of the service that raises `LomasError`s with the server's code and reason."""
        return SyncPeer(
            self.target,
            budget_pb2_grpc.BudgetServiceStub,
            PeerSettings(service_token=self.token),
        )


def open_ledger(budget: Peer, user: str, dataset: str, allocation: Any) -> budget_pb2.Ledger:
    request = budget_pb2.OpenLedgerRequest(
        user=user, dataset=dataset, allocation=allocation, actor="admin"
    )
    response: budget_pb2.OpenLedgerResponse = budget.call("OpenLedger", request)
    return response.ledger


def reserve(budget: Peer, query_id: str, user: str, cost: Any, **fields: Any) -> Any:
    request = budget_pb2.ReserveBudgetRequest(
        query_id=query_id, user=user, dataset="penguins", cost=cost, actor="gateway", **fields
    )
    return budget.call("ReserveBudget", request).reservation


def refused(call: Any, code: Code, reason: str) -> dict[str, str]:
    with pytest.raises(LomasError) as error:
        call()
    assert (error.value.code, error.value.reason) == (code, reason), error.value
    return error.value.metadata


__all__ = [
    "FAST_RECONNECT",
    "BudgetProcess",
    "FakeClock",
    "Peer",
    "approx",
    "open_ledger",
    "pure",
    "refused",
    "reserve",
    "zcdp",
]

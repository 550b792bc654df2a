"""Run the budget ledger: `lomas-budget` (configured by LOMAS_ environment variables).

Settings (besides the server's `LOMAS_LISTEN`, `LOMAS_SERVICE_TOKEN`, ...):

* `LOMAS_DATABASE_URL`: `sqlite:///path.db` or `postgresql://...` (required);
* `LOMAS_RESERVATION_TTL_SECONDS`: how long a reservation lives before the sweep settles it
  (default 900 s: longer than a task can wait for redelivery, 2 x 300 s + 60 s);
* `LOMAS_SWEEP_INTERVAL_SECONDS`: how often the service sweeps expired reservations (default 30 s;
  it also sweeps once on start-up, so a restart resumes where a crash left off);
* `LOMAS_REQUEST_RETENTION_SECONDS`: how long the first answer to a request id is kept for replays
  (default 7 days; the sweep forgets older ones).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from lomas.budget.v1 import budget_pb2_grpc
from lomas_budget.api import BudgetServicer
from lomas_budget.ledger import BudgetLedger
from lomas_budget.model import (
    DEFAULT_REQUEST_RETENTION_SECONDS,
    DEFAULT_RESERVATION_TTL_SECONDS,
    MAX_RESERVATION_TTL_SECONDS,
)
from lomas_budget.store import LedgerStore
from lomas_common.blocking_server import (
    BlockingServer,
    serve_blocking_until_signalled,
    start_blocking_server,
)
from lomas_common.db import Database
from lomas_common.server import Service, configure_logging
from lomas_common.settings import ServerSettings, env_float, env_int, env_required

log = logging.getLogger(__name__)

DEFAULT_PORT = 50053
DEFAULT_SWEEP_INTERVAL_SECONDS = 30.0


@dataclass(frozen=True)
class BudgetSettings:
    server: ServerSettings
    database_url: str
    reservation_ttl_seconds: int = DEFAULT_RESERVATION_TTL_SECONDS
    sweep_interval_seconds: float = DEFAULT_SWEEP_INTERVAL_SECONDS
    request_retention_seconds: int = DEFAULT_REQUEST_RETENTION_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BudgetSettings:
        env = os.environ if env is None else env
        settings = cls(
            server=ServerSettings.from_env(env, default_port=DEFAULT_PORT),
            database_url=env_required(env, "DATABASE_URL"),
            reservation_ttl_seconds=env_int(
                env, "RESERVATION_TTL_SECONDS", DEFAULT_RESERVATION_TTL_SECONDS
            ),
            sweep_interval_seconds=env_float(
                env, "SWEEP_INTERVAL_SECONDS", DEFAULT_SWEEP_INTERVAL_SECONDS
            ),
            request_retention_seconds=env_int(
                env, "REQUEST_RETENTION_SECONDS", DEFAULT_REQUEST_RETENTION_SECONDS
            ),
        )
        if not 0 < settings.reservation_ttl_seconds <= MAX_RESERVATION_TTL_SECONDS:
            raise SystemExit(
                f"LOMAS_RESERVATION_TTL_SECONDS must be between 1 and {MAX_RESERVATION_TTL_SECONDS}"
            )
        if settings.sweep_interval_seconds <= 0:
            raise SystemExit("LOMAS_SWEEP_INTERVAL_SECONDS must be positive")
        if settings.request_retention_seconds <= settings.reservation_ttl_seconds:
            raise SystemExit(
                "LOMAS_REQUEST_RETENTION_SECONDS must exceed LOMAS_RESERVATION_TTL_SECONDS"
            )
        return settings


def sweep_until(stop: threading.Event, ledger: BudgetLedger, interval_seconds: float) -> None:
    """Sweep now, then every `interval_seconds`, until `stop` is set (a failed sweep is logged and
    retried at the next tick: the state it works on is all in the database)."""
    while True:
        try:
            report = ledger.sweep()
            if report.released or report.committed:
                log.info(
                    "sweep released %d and committed %d expired reservations",
                    len(report.released),
                    len(report.committed),
                )
        except Exception:
            log.exception("reservation sweep failed; retrying in %.0f s", interval_seconds)
        if stop.wait(interval_seconds):
            return


@dataclass
class BudgetService:
    """A started budget service: the server, its database and its sweeper."""

    server: BlockingServer
    db: Database
    ledger: BudgetLedger
    sweeper: threading.Thread
    stop_sweeping: threading.Event

    def close(self) -> None:
        self.stop_sweeping.set()
        self.sweeper.join()
        self.db.close()


def start(settings: BudgetSettings) -> BudgetService:
    db = Database.from_url(settings.database_url, max_connections=settings.server.threads)
    store = LedgerStore(db)
    store.create_schema(reservation_ttl_seconds=settings.reservation_ttl_seconds)
    ledger = BudgetLedger(
        store,
        reservation_ttl_seconds=settings.reservation_ttl_seconds,
        request_retention_seconds=settings.request_retention_seconds,
    )
    server = start_blocking_server(
        settings.server,
        [
            Service(
                budget_pb2_grpc.add_BudgetServiceServicer_to_server,
                BudgetServicer(ledger),
                "lomas.budget.v1.BudgetService",
            )
        ],
        threads=settings.server.threads,
    )
    stop_sweeping = threading.Event()
    sweeper = threading.Thread(
        target=sweep_until,
        args=(stop_sweeping, ledger, settings.sweep_interval_seconds),
        name="sweeper",
        daemon=True,
    )
    sweeper.start()
    return BudgetService(server, db, ledger, sweeper, stop_sweeping)


def main() -> None:
    settings = BudgetSettings.from_env()
    configure_logging(settings.server.log_level)
    service = start(settings)
    serve_blocking_until_signalled(service.server, on_stop=[service.close])


if __name__ == "__main__":
    main()

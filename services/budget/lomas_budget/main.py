"""Run the budget ledger: `lomas-budget` (configured by LOMAS_ environment variables).

Settings (besides the server's `LOMAS_LISTEN`, `LOMAS_SERVICE_TOKEN`, ...):

* `LOMAS_DATABASE_URL`: `sqlite:///path.db` or `postgresql://...` (required);
* `LOMAS_DATABASE_POOL_SIZE`: PostgreSQL connections, and threads running ledger calls (default 32);
* `LOMAS_RESERVATION_TTL_SECONDS`: how long a reservation lives before the sweep settles it
  (default 900 s: longer than a task can wait for redelivery, 2 x 300 s + 60 s);
* `LOMAS_SWEEP_INTERVAL_SECONDS`: how often the service sweeps expired reservations (default 30 s;
  it also sweeps once on start-up, so a restart resumes where a crash left off);
* `LOMAS_REQUEST_RETENTION_SECONDS`: how long the first answer to a request id is kept for replays
  (default 7 days; the sweep forgets older ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from lomas.budget.v1 import budget_pb2_grpc
from lomas_budget.api import BudgetServicer
from lomas_budget.ledger import (
    DEFAULT_REQUEST_RETENTION_SECONDS,
    DEFAULT_RESERVATION_TTL_SECONDS,
    BudgetLedger,
)
from lomas_budget.store import LedgerStore
from lomas_common.db import Database
from lomas_common.server import (
    RunningServer,
    Service,
    configure_logging,
    serve_until_signalled,
    start_server,
)
from lomas_common.settings import ServerSettings, env_float, env_int, env_required

log = logging.getLogger(__name__)

DEFAULT_PORT = 50053
DEFAULT_SWEEP_INTERVAL_SECONDS = 30.0
DEFAULT_POOL_SIZE = 32


@dataclass(frozen=True)
class BudgetSettings:
    server: ServerSettings
    database_url: str
    pool_size: int = DEFAULT_POOL_SIZE
    reservation_ttl_seconds: int = DEFAULT_RESERVATION_TTL_SECONDS
    sweep_interval_seconds: float = DEFAULT_SWEEP_INTERVAL_SECONDS
    request_retention_seconds: int = DEFAULT_REQUEST_RETENTION_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BudgetSettings:
        env = os.environ if env is None else env
        settings = cls(
            server=ServerSettings.from_env(env, default_port=DEFAULT_PORT),
            database_url=env_required(env, "DATABASE_URL"),
            pool_size=env_int(env, "DATABASE_POOL_SIZE", DEFAULT_POOL_SIZE),
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
        if settings.pool_size < 1:
            raise SystemExit("LOMAS_DATABASE_POOL_SIZE must be at least 1")
        if not 0 < settings.reservation_ttl_seconds <= 7 * 24 * 3600:
            raise SystemExit("LOMAS_RESERVATION_TTL_SECONDS must be between 1 and 604800")
        if settings.sweep_interval_seconds <= 0:
            raise SystemExit("LOMAS_SWEEP_INTERVAL_SECONDS must be positive")
        if settings.request_retention_seconds <= settings.reservation_ttl_seconds:
            raise SystemExit(
                "LOMAS_REQUEST_RETENTION_SECONDS must exceed LOMAS_RESERVATION_TTL_SECONDS"
            )
        return settings


async def sweep_forever(ledger: BudgetLedger, interval_seconds: float) -> None:
    """Sweep now, then every `interval_seconds`, until cancelled (a failed sweep is logged and
    retried at the next tick: the state it works on is all in the database)."""
    while True:
        try:
            report = await asyncio.to_thread(ledger.sweep)
            if report.released or report.committed:
                log.info(
                    "sweep released %d and committed %d expired reservations",
                    len(report.released),
                    len(report.committed),
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reservation sweep failed; retrying in %.0f s", interval_seconds)
        await asyncio.sleep(interval_seconds)


@dataclass
class BudgetService:
    """A started budget service: the server, its database and its sweeper."""

    running: RunningServer
    db: Database
    ledger: BudgetLedger
    sweeper: asyncio.Task[None]
    executor: ThreadPoolExecutor

    async def close(self) -> None:
        self.sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.sweeper
        self.db.close()
        self.executor.shutdown(wait=False)


async def start(settings: BudgetSettings) -> BudgetService:
    # The ledger's calls block on the database; they run on a pool as large as the database's.
    executor = ThreadPoolExecutor(settings.pool_size, thread_name_prefix="ledger")
    asyncio.get_running_loop().set_default_executor(executor)
    db = Database.from_url(settings.database_url, max_connections=settings.pool_size)
    store = LedgerStore(db)
    await asyncio.to_thread(
        store.create_schema, reservation_ttl_seconds=settings.reservation_ttl_seconds
    )
    ledger = BudgetLedger(
        store,
        reservation_ttl_seconds=settings.reservation_ttl_seconds,
        request_retention_seconds=settings.request_retention_seconds,
    )
    running = await start_server(
        settings.server,
        [
            Service(
                budget_pb2_grpc.add_BudgetServiceServicer_to_server,
                BudgetServicer(ledger),
                "lomas.budget.v1.BudgetService",
            )
        ],
    )
    sweeper = asyncio.create_task(sweep_forever(ledger, settings.sweep_interval_seconds))
    return BudgetService(running, db, ledger, sweeper, executor)


async def run(settings: BudgetSettings) -> None:
    service = await start(settings)
    await serve_until_signalled(service.running, on_stop=[service.close])


def main() -> None:
    settings = BudgetSettings.from_env()
    configure_logging(settings.server.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()

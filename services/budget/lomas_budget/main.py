"""Run the budget ledger: `lomas-budget` (configured by LOMAS_ environment variables)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass

from lomas.budget.v1 import budget_pb2_grpc
from lomas_budget.api import BudgetServicer
from lomas_budget.ledger import BudgetLedger
from lomas_budget.store import LedgerStore
from lomas_common.db import Database
from lomas_common.server import (
    RunningServer,
    Service,
    configure_logging,
    serve_until_signalled,
    start_server,
)
from lomas_common.settings import ServerSettings, env_required

DEFAULT_PORT = 50053


@dataclass(frozen=True)
class BudgetSettings:
    server: ServerSettings
    database_url: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BudgetSettings:
        env = os.environ if env is None else env
        return cls(
            server=ServerSettings.from_env(env, default_port=DEFAULT_PORT),
            database_url=env_required(env, "DATABASE_URL"),
        )


async def start(settings: BudgetSettings) -> tuple[RunningServer, Database]:
    db = Database.from_url(settings.database_url, max_connections=20)
    store = LedgerStore(db)
    store.create_schema()
    ledger = BudgetLedger(store)
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
    return running, db


async def run(settings: BudgetSettings) -> None:
    running, db = await start(settings)
    await serve_until_signalled(running, on_stop=[db.close])


def main() -> None:
    settings = BudgetSettings.from_env()
    configure_logging(settings.server.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()

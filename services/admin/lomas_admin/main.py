"""Run the admin store: `lomas-admin-store` (configured by LOMAS_ environment variables)."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass

from lomas.admin.v1 import admin_store_pb2_grpc
from lomas_admin.api import AdminStoreServicer
from lomas_admin.archive import QueryArchive
from lomas_admin.idempotency import DEFAULT_RETENTION, RequestLog
from lomas_admin.store import AdminStore
from lomas_common.blocking_server import (
    BlockingServer,
    run_blocking_service,
    start_blocking_server,
)
from lomas_common.db import Database
from lomas_common.server import Service
from lomas_common.settings import ServerSettings, env_float, env_required, env_str

DEFAULT_PORT = 50052


@dataclass(frozen=True)
class AdminSettings:
    server: ServerSettings
    database_url: str
    bootstrap_admin: str  # subject made admin at start-up ("" for none)
    # How long first answers to calls with a request id are kept for retries.
    request_retention: dt.timedelta = DEFAULT_RETENTION

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AdminSettings:
        env = os.environ if env is None else env
        return cls(
            server=ServerSettings.from_env(env, default_port=DEFAULT_PORT),
            database_url=env_required(env, "DATABASE_URL"),
            bootstrap_admin=env_str(env, "BOOTSTRAP_ADMIN", ""),
            request_retention=dt.timedelta(
                seconds=env_float(
                    env, "REQUEST_RETENTION_SECONDS", DEFAULT_RETENTION.total_seconds()
                )
            ),
        )


def start(settings: AdminSettings) -> tuple[BlockingServer, Database]:
    db = Database.from_url(settings.database_url, max_connections=settings.server.threads)
    requests = RequestLog(db, settings.request_retention)
    store = AdminStore(db, requests)
    archive = QueryArchive(db, requests)
    if settings.bootstrap_admin:
        store.ensure_admin(settings.bootstrap_admin)
    server = start_blocking_server(
        settings.server,
        [
            Service(
                admin_store_pb2_grpc.add_AdminStoreServiceServicer_to_server,
                AdminStoreServicer(store, archive),
                "lomas.admin.v1.AdminStoreService",
            )
        ],
        threads=settings.server.threads,
    )
    return server, db


def main() -> None:
    run_blocking_service(AdminSettings.from_env, start)


if __name__ == "__main__":
    main()

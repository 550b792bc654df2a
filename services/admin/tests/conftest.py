"""Admin store tests run against real storage (a SQLite file and a fresh PostgreSQL database), through
the real gRPC servicer on a real server on port 0, and directly on the store."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # admin_testing

from admin_testing import FakeClock

from lomas.admin.v1 import admin_store_pb2_grpc
from lomas_admin.archive import QueryArchive
from lomas_admin.idempotency import RequestLog
from lomas_admin.store import AdminStore
from lomas_common.db import Database
from lomas_testing.admin_store import running_admin_store
from lomas_testing.databases import (
    KINDS,
    open_database,
    scratch_database,
)


@pytest.fixture(params=KINDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of each kind (the PostgreSQL one is dropped afterwards)."""
    yield from scratch_database(request.param, tmp_path, "lomas_admin_test")


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    yield from open_database(database_url)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def requests(database: Database, clock: FakeClock) -> RequestLog:
    return RequestLog(database, clock=clock)


@pytest.fixture
def store(database: Database, requests: RequestLog) -> AdminStore:
    return AdminStore(database, requests)


@pytest.fixture
def archive(database: Database, requests: RequestLog) -> QueryArchive:
    return QueryArchive(database, requests)


@pytest.fixture
def stub(database_url: str) -> Iterator[admin_store_pb2_grpc.AdminStoreServiceStub]:
    """A client of `lomas_admin.main.start` (the production wiring) listening on a free port."""
    with running_admin_store(database_url, bootstrap_admin="root") as target:
        channel = grpc.insecure_channel(target)
        try:
            yield admin_store_pb2_grpc.AdminStoreServiceStub(channel)
        finally:
            channel.close()

"""Test helpers for every service: real databases, never mocks.

PostgreSQL runs on every development and CI machine (127.0.0.1:5432, trust auth). Each test that
needs it gets a database of its own, created here and dropped afterwards, so tests never see each
other's rows.
`LOMAS_TEST_POSTGRES_URL` overrides the maintenance connection (default
`postgresql://postgres@127.0.0.1:5432/postgres`).

The fixture pattern (a service's `tests/conftest.py`); this module does not import pytest:

    from collections.abc import Iterator
    from pathlib import Path

    import pytest

    from lomas_common.db import Database
    from lomas_common.testing import fresh_postgres_url, sqlite_url


    @pytest.fixture(params=["sqlite", "postgresql"])
    def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
        if request.param == "sqlite":
            yield sqlite_url(tmp_path / "test.db")
            return
        url, drop = fresh_postgres_url()
        try:
            yield url
        finally:
            drop()


    @pytest.fixture
    def database(database_url: str) -> Iterator[Database]:
        db = Database.from_url(database_url)
        try:
            yield db
        finally:
            db.close()      # before the drop above, which runs later (fixture teardown order)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

POSTGRES_URL_ENV = "LOMAS_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def postgres_maintenance_url() -> str:
    """The URL used to create and drop test databases."""
    return os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL)


def fresh_postgres_url(prefix: str = "lomas_test") -> tuple[str, Callable[[], None]]:
    """Create a uniquely named, empty PostgreSQL database.

    Returns its URL and a function that drops it (closing any connection still open on it); calling
    the function twice is harmless.
    """
    maintenance = postgres_maintenance_url()
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(maintenance, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlunsplit(urlsplit(maintenance)._replace(path=f"/{name}"))

    def drop() -> None:
        with psycopg.connect(maintenance, autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    return url, drop


def sqlite_url(path: Path) -> str:
    """The URL of a SQLite file (made absolute, so it does not depend on the working directory)."""
    return f"sqlite:///{path.resolve()}"

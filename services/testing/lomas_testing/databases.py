"""Databases for tests: a fresh PostgreSQL database per test, SQLite files by URL.

PostgreSQL runs on every development and CI machine (127.0.0.1:5432, trust auth). Each test that
needs it gets a database of its own, created here and dropped afterwards, so tests never see each
other's rows. `LOMAS_TEST_POSTGRES_URL` overrides the maintenance connection (see
`lomas_common.scratch_db`, which the local mesh shares, hence its home in production code).

A service's `tests/conftest.py` parametrises its database fixture over both kinds with
`scratch_database` and `open_database`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lomas_common.db import Database
from lomas_common.scratch_db import fresh_postgres_url, postgres_maintenance_url

__all__ = [
    "KINDS",
    "fresh_postgres_url",
    "open_database",
    "postgres_maintenance_url",
    "scratch_database",
    "sqlite_url",
]

# The database kinds every store test runs on (a fixture's `params`).
KINDS = ("sqlite", "postgresql")


def sqlite_url(path: Path) -> str:
    """The URL of a SQLite file (made absolute, so it does not depend on the working directory)."""
    return f"sqlite:///{path.resolve()}"


def scratch_database(kind: str, directory: Path, name: str) -> Iterator[str]:
    """The URL of an empty database of `kind` named after `name` (a SQLite file in `directory`, or a
    fresh PostgreSQL database dropped when the generator closes). Yield from it in a fixture."""
    if kind == "sqlite":
        yield sqlite_url(directory / f"{name}.db")
        return
    url, drop = fresh_postgres_url(name)
    try:
        yield url
    finally:
        drop()


def open_database(url: str) -> Iterator[Database]:
    """A `Database` on `url`, closed when the generator closes (before the scratch database is
    dropped: fixture teardown runs in reverse order)."""
    database = Database.from_url(url)
    try:
        yield database
    finally:
        database.close()

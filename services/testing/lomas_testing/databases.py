"""Databases for tests: a fresh PostgreSQL database per test, SQLite files by URL.

PostgreSQL runs on every development and CI machine (127.0.0.1:5432, trust auth). Each test that
needs it gets a database of its own, created here and dropped afterwards, so tests never see each
other's rows. `LOMAS_TEST_POSTGRES_URL` overrides the maintenance connection (see
`lomas_common.scratch_db`, which the local mesh shares, hence its home in production code).

The fixture pattern (a service's `tests/conftest.py`):

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

from pathlib import Path

from lomas_common.scratch_db import fresh_postgres_url, postgres_maintenance_url

__all__ = ["fresh_postgres_url", "postgres_maintenance_url", "sqlite_url"]


def sqlite_url(path: Path) -> str:
    """The URL of a SQLite file (made absolute, so it does not depend on the working directory)."""
    return f"sqlite:///{path.resolve()}"

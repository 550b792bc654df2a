"""Throwaway PostgreSQL databases: a uniquely named empty database, and a function that drops it.

Production code uses this too, which is why it is not in the test-support package: the local mesh
in its "mesh" mode (`lomas_embedded.local`, which the `lomas-mesh` command, the end-to-end tests
and the benchmarks share) gives each store a fresh database on the machine's PostgreSQL and drops
it when the mesh stops. Tests reach it through `lomas_testing.databases`.

`LOMAS_TEST_POSTGRES_URL` overrides the maintenance connection that creates and drops them
(default `postgresql://postgres@127.0.0.1:5432/postgres`, the server every development and CI
machine runs).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

POSTGRES_URL_ENV = "LOMAS_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def postgres_maintenance_url() -> str:
    """The URL used to create and drop the databases."""
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

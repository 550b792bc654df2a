"""A real admin store (`lomas_admin.main.start`, the production wiring) for tests that need one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from lomas_admin.main import AdminSettings, start
from lomas_common.settings import ServerSettings


@contextmanager
def running_admin_store(database_url: str, bootstrap_admin: str = "") -> Iterator[str]:
    """An admin store on `database_url`, listening on a free local port; yields its address."""
    settings = AdminSettings(
        server=ServerSettings(
            listen="127.0.0.1:0",
            max_message_bytes=4 * 1024 * 1024,
            grace_seconds=0.0,
            otel_exporter="none",
            log_level="WARNING",
            service_token="",
            threads=4,
        ),
        database_url=database_url,
        bootstrap_admin=bootstrap_admin,
    )
    server, db = start(settings)
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop()
        db.close()

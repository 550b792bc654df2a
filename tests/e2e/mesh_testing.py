"""What end-to-end tests share besides fixtures: the running mesh type, importable by bare name
(pytest.ini puts tests/e2e on the path) so tests can annotate the `platform` fixture, and set-ups
that several test files need."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.rpc import status_pb2
from grpc_status import rpc_status

from lomas.client import Client
from lomas.client.admin import approx_dp, local_source
from lomas.common.v1 import dataset_pb2
from lomas_embedded import demo
from lomas_embedded.local import LocalMesh, mode_mesh
from lomas_executor.demo import penguin_metadata_text


class RunningMesh(LocalMesh):
    """A LocalMesh that knows which mode it runs in."""

    mode: str = ""


def start_mode(mode: str, data_dir: Path, **config: Any) -> Iterator[RunningMesh]:
    """A mesh in one of the two modes, its demo content seeded (`config`: see `local_mesh`)."""
    with mode_mesh(mode, data_dir, **config) as running:
        platform = RunningMesh(**vars(running))
        platform.mode = mode
        yield platform


def status_of(error: grpc.RpcError) -> status_pb2.Status:
    """The google.rpc.Status a refusal carries in its trailers (an empty one when it carries none).

    Errors raised by a channel are also `grpc.Call`s, which is what `rpc_status` reads."""
    status: status_pb2.Status | None = (
        rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    )
    return status or status_pb2.Status()


def dataset_without_its_file(platform: RunningMesh, prefix: str) -> str:
    """A copy of the demo penguin CSV registered as a new dataset (`prefix` and a random suffix),
    then its file deleted: costs and dummy runs still work, only a real run notices. Its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:6].upper()}"
    path = platform.data_dir / f"{name}.csv"
    shutil.copy(platform.data_dir / "datasets" / "penguin.csv", path)
    with platform.admin() as admin:
        admin.add_dataset(
            name,
            local_source(path),
            yaml.safe_load(penguin_metadata_text()),
            dataset_pb2.DATA_FORMAT_CSV,
        )
    path.unlink()
    return name


def new_researcher(platform: RunningMesh, prefix: str, dataset: str = demo.DATASET) -> Client:
    """The client of a new user (`prefix` and a random suffix) granted (10, 0.005) on `dataset`."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    with platform.admin() as admin:
        admin.add_user(name)
        admin.grant(name, dataset, approx_dp("10", "0.005"))
    return platform.client(name, dataset)

"""What end-to-end tests share besides fixtures: the running mesh type, importable by bare name
(pytest.ini puts tests/e2e on the path) so tests can annotate the `platform` fixture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from google.rpc import status_pb2
from grpc_status import rpc_status

from lomas_embedded.local import LocalMesh, mode_mesh


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

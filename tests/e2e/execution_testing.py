"""The mesh of the DP execution tests (`test_execution_queries.py`, `test_execution_refusals.py`) and
their helpers.

One mesh per test module (PostgreSQL stores, the machine's Redis) with datasets on a local S3 server
(moto, which checks request signatures), on a local HTTP server and on local files, in CSV and
Parquet.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import opendp.prelude as dp
import yaml

from lomas.client import Client, LomasError
from lomas.client.admin import AdminClient, approx_dp, local_source, s3_source, url_source
from lomas.common.v1 import dataset_pb2, privacy_pb2
from lomas_embedded import demo
from lomas_embedded.devkeys import DevIssuer
from lomas_embedded.local import SYSTEM_REDIS_URL, local_mesh
from lomas_embedded.mesh import Mesh
from lomas_executor.demo import make_penguin_like, penguin_metadata_text
from lomas_testing.data_servers import HttpFileServer, S3Server

COUNT = "SELECT COUNT(*) AS n FROM df"
BUCKET = "lomas-datasets"
CREDENTIALS = "moto-store"
CSV, PARQUET = dataset_pb2.DATA_FORMAT_CSV, dataset_pb2.DATA_FORMAT_PARQUET

dp.enable_features("contrib")


class Researcher(Client):
    """A client that knows the user it acts for (ledgers are looked up by user and dataset)."""

    def __init__(self, target: str, *, user: str, token: str, dataset: str) -> None:
        super().__init__(target, token=token, dataset=dataset)
        self.user = user


@dataclass
class Platform:
    mesh: Mesh
    issuer: DevIssuer
    http: HttpFileServer
    s3: S3Server
    data_dir: Path
    metadata: dict[str, Any]

    def admin(self) -> AdminClient:
        return AdminClient(self.mesh.gateway_target, token=self.issuer.token(demo.ADMIN))

    def researcher(
        self, dataset: str, allocation: privacy_pb2.PrivacyLoss | None = None
    ) -> Researcher:
        """A fresh researcher with a grant on `dataset` (each test owns its budget)."""
        name = f"researcher-{uuid.uuid4().hex[:8]}"
        with self.admin() as admin:
            admin.add_user(name)
            admin.grant(name, dataset, allocation or approx_dp("50", "0.01"))
        return Researcher(
            self.mesh.gateway_target, user=name, token=self.issuer.token(name), dataset=dataset
        )


def start_platform(tmp: Path) -> Iterator[Platform]:
    """The mesh with every dataset registered: LOCAL_, S3_ and HTTP_ CSV and PARQUET, and WATCHED
    (served over HTTP, whose reads the hostile tests count)."""
    frame = make_penguin_like()
    files = tmp / "files"
    files.mkdir()
    frame.to_csv(files / "penguin.csv", index=False)
    frame.to_parquet(files / "penguin.parquet", index=False)
    frame.to_csv(files / "watched.csv", index=False)  # hostile tests count reads of this one
    metadata = yaml.safe_load(penguin_metadata_text())

    with S3Server(tmp / "moto.log") as s3, HttpFileServer(files) as http:
        s3.put(BUCKET, "penguin.csv", (files / "penguin.csv").read_bytes())
        s3.put(BUCKET, "nested/penguin.parquet", (files / "penguin.parquet").read_bytes())
        credentials = s3.write_credentials_file(tmp / "s3-credentials.json", CREDENTIALS)
        with local_mesh(
            tmp,
            stores="postgresql",
            redis_url=SYSTEM_REDIS_URL,
            extra_env={"LOMAS_S3_CREDENTIALS_FILE": str(credentials)},
        ) as running:
            platform = Platform(running.mesh, running.issuer, http, s3, tmp, metadata)
            with platform.admin() as admin:
                for name, source, fmt in (
                    ("LOCAL_CSV", local_source(files / "penguin.csv"), CSV),
                    ("LOCAL_PARQUET", local_source(files / "penguin.parquet"), PARQUET),
                    ("S3_CSV", s3_source(BUCKET, "penguin.csv", s3.endpoint_url, CREDENTIALS), CSV),
                    (
                        "S3_PARQUET",
                        s3_source(BUCKET, "nested/penguin.parquet", s3.endpoint_url, CREDENTIALS),
                        PARQUET,
                    ),
                    ("HTTP_CSV", url_source(http.url("penguin.csv")), CSV),
                    ("HTTP_PARQUET", url_source(http.url("penguin.parquet")), PARQUET),
                    ("WATCHED", url_source(http.url("watched.csv")), CSV),
                ):
                    admin.add_dataset(name, source, metadata, fmt)
            yield platform


def budget_state(client: Client) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    return client.get_total_spent_budget(), client.get_remaining_budget()


def ledger_kinds(platform: Platform, client: Researcher) -> list[int]:
    with platform.admin() as admin:
        return [e.kind for e in admin.ledger_history(client.user, client.dataset)]


def assert_refused(error: LomasError, code: str, reason: str, *fragments: str) -> None:
    assert (error.code, error.reason) == (code, reason), error
    for fragment in fragments:
        assert fragment in error.message, error.message

"""Administrators' dataset work through the real `lomas-admin` CLI: updates that bump the version (and
so invalidate caches and replays), and bulk registration from Lomas collection files."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from mesh_testing import RunningMesh

from lomas.admin_cli import main as lomas_admin
from lomas.client.admin import approx_dp
from lomas.common.v1 import dataset_pb2
from lomas_embedded import demo
from lomas_executor.demo import make_penguin_like, penguin_metadata_text
from lomas_executor.dummy import make_dummy_frame
from lomas_executor.metadata import DatasetMetadata
from lomas_testing.data_servers import HttpFileServer

FORMATS = Path(__file__).parent / "lomas_formats"
COUNT = "SELECT COUNT(*) AS n FROM df"


def cli(platform: RunningMesh, *args: str) -> int:
    return lomas_admin(["--target", platform.target, "--token", platform.token(demo.ADMIN), *args])


@pytest.mark.parametrize("platform", ["embedded"], indirect=True)
def test_updating_a_dataset_bumps_its_version_and_queries_see_the_new_data(
    platform: RunningMesh, tmp_path: Path
) -> None:
    name = f"PENGUIN_{uuid.uuid4().hex[:6].upper()}"
    metadata_path = tmp_path / "penguin_metadata.yaml"
    metadata_path.write_text(penguin_metadata_text())
    big, small = tmp_path / "big.csv", tmp_path / "small.csv"
    make_penguin_like(rows=344, seed=1).to_csv(big, index=False)
    make_penguin_like(rows=40, seed=2).to_csv(small, index=False)

    assert (
        cli(platform, "datasets", "add", name, "--path", str(big), "--metadata", str(metadata_path))
        == 0
    )
    researcher = f"updater-{uuid.uuid4().hex[:6]}"
    with platform.admin() as admin:
        admin.add_user(researcher)
        admin.grant(researcher, name, approx_dp("1000", "0.001"))
    client = platform.client(researcher, dataset=name)
    # epsilon 100: little noise, so 344 rows and 40 rows cannot be confused.
    before = client.smartnoise_sql.query(COUNT, epsilon=100, delta=0)
    assert 334 <= int(before["n"].iloc[0]) <= 354

    assert (
        cli(
            platform,
            "datasets",
            "update",
            name,
            "--path",
            str(small),
            "--metadata",
            str(metadata_path),
        )
        == 0
    )
    with platform.admin() as admin:
        assert {d.name: d.version for d in admin.list_datasets()}[name] == 2
    after = client.smartnoise_sql.query(COUNT, epsilon=100, delta=0)
    assert after.attrs["replay"] is False  # a new version is new data: no replay of the old release
    assert 30 <= int(after["n"].iloc[0]) <= 50  # the worker's cache did not serve the old table


@pytest.mark.parametrize("platform", ["embedded"], indirect=True)
def test_bulk_registration_from_lomas_collection_files(
    platform: RunningMesh, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every source exists and matches its metadata (the platform refuses any other): data drawn
    from each Lomas metadata file, on local paths and one served over HTTP."""
    data = tmp_path / "data"
    data.mkdir()
    entries = [
        ("IRIS", "iris", "iris.csv"),
        ("PUMS", "pums", "data/pums.csv"),
        ("BIRTHDAYS", "birthday", "data/birthdays.csv"),
        ("TITANIC", "titanic", "data/titanic.parquet"),
        ("FSO_INCOME_SYNTHETIC", "fso_income_synthetic", "data/income_synthetic_data.parquet"),
    ]
    for _, stem, location in entries:
        metadata = DatasetMetadata.from_yaml_text(
            (FORMATS / "metadata" / f"{stem}_metadata.yaml").read_text()
        )
        frame = make_dummy_frame(metadata, rows=50, seed=3)
        path = tmp_path / location
        if location.endswith(".parquet"):
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
    with HttpFileServer(tmp_path) as http:
        _register_collections(platform, tmp_path, http, entries, capsys)


def _register_collections(
    platform: RunningMesh,
    tmp_path: Path,
    http: HttpFileServer,
    entries: list[tuple[str, str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    def access(location: str) -> dict[str, str]:
        path = http.url(location) if location == "iris.csv" else location
        return {"database_type": "PATH_DB", "path": path}

    collection = {
        "datasets": [
            {
                "dataset_name": name,
                "dataset_access": access(location),
                "metadata_access": {
                    "database_type": "PATH_DB",
                    "path": str(FORMATS / "metadata" / f"{stem}_metadata.yaml"),
                },
            }
            for name, stem, location in entries
        ]
    }
    collection_path = tmp_path / "dataset_collection.yaml"
    collection_path.write_text(yaml.safe_dump(collection))

    assert cli(platform, "load", "datasets", str(collection_path)) == 0
    assert cli(platform, "load", "users", str(FORMATS / "user_collection.yaml")) == 0
    assert cli(platform, "load", "users", str(FORMATS / "user_collection.yaml")) == 0  # idempotent
    capsys.readouterr()

    with platform.admin() as admin:
        datasets = {d.name: d for d in admin.list_datasets()}
        assert {name for name, _, _ in entries} <= set(datasets)
        assert datasets["IRIS"].source.url.url == http.url("iris.csv")
        assert datasets["PUMS"].source.local.path == str(tmp_path / "data" / "pums.csv")
        assert datasets["TITANIC"].format == dataset_pb2.DATA_FORMAT_PARQUET
        users = {u.name: u for u in admin.list_users()}
        assert {"Alice", "Bob", "Jack", "Dr. FSO", "Dr. Antartica"} <= set(users)
        ledgers = {ledger.dataset: ledger for ledger in admin.budgets("Alice")}
    # Alice's PENGUIN budget: 5 / 0.0005 granted, 0.2 / 0.0000001 already spent in Lomas.
    penguin = ledgers["PENGUIN"]
    assert Decimal(penguin.allocation.approx_dp.epsilon) == Decimal("5")
    assert Decimal(penguin.spent.approx_dp.epsilon) == Decimal("0.2")
    assert Decimal(penguin.spent.approx_dp.delta) == Decimal("0.0000001")
    assert Decimal(penguin.remaining.approx_dp.epsilon) == Decimal("4.8")
    alice = platform.client("Alice")
    assert alice.get_remaining_budget()["remaining_epsilon"] == Decimal("4.8")

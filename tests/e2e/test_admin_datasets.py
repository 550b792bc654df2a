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
from lomas_embedded import demo
from lomas_executor.demo import make_penguin_like, penguin_metadata_text

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
    data = tmp_path / "data"
    data.mkdir()
    make_penguin_like(rows=50, seed=3).to_csv(data / "penguin.csv", index=False)
    entries = [
        ("IRIS", {"database_type": "PATH_DB", "path": "https://example.org/iris.csv"}, "iris"),
        ("PUMS", {"database_type": "PATH_DB", "path": "data/pums.csv"}, "pums"),
        ("BIRTHDAYS", {"database_type": "PATH_DB", "path": "data/birthdays.csv"}, "birthday"),
        ("TITANIC", {"database_type": "PATH_DB", "path": "data/titanic.parquet"}, "titanic"),
        (
            "FSO_INCOME_SYNTHETIC",
            {
                "database_type": "S3_DB",
                "bucket": "example",
                "key": "data/income_synthetic_data.csv",
                "endpoint_url": "http://localhost:9000",
                "credentials_name": "local_minio",
            },
            "fso_income_synthetic",
        ),
    ]
    collection = {
        "datasets": [
            {
                "dataset_name": name,
                "dataset_access": access,
                "metadata_access": {
                    "database_type": "PATH_DB",
                    "path": str(FORMATS / "metadata" / f"{stem}_metadata.yaml"),
                },
            }
            for name, access, stem in entries
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
        assert datasets["IRIS"].source.url.url == "https://example.org/iris.csv"
        assert datasets["PUMS"].source.local.path == str(data / "pums.csv")
        assert datasets["FSO_INCOME_SYNTHETIC"].source.s3.credentials_name == "local_minio"
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

"""Lomas collection files through `lomas-admin`: the reference files of `lomas_formats/` (Lomas'
add_datasets_via_yaml and add_users_via_yaml inputs) loaded into a platform, everything exported to
Lomas-format YAML (the collection dump), imported into a second platform, exported again: the two
platforms hold the same users, budgets, datasets and caps, and the two exports are the same files.
Then Lomas' drop_collection: users and datasets go, ledgers stay, and an import restores them.

Two fresh embedded platforms (no demo content) with S3 credentials, one after the other: an export
covers a whole platform, so the session's shared platform, which other tests fill, cannot serve."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import admin_cli_testing
import yaml
from admin_cli_testing import cli

from lomas.admin.v1 import resources_pb2
from lomas.client.admin_values import loss_components
from lomas_embedded.local import LocalMesh, local_mesh
from lomas_executor.dummy import make_dummy_frame
from lomas_executor.metadata import DatasetMetadata
from lomas_testing.data_servers import HttpFileServer, S3Server

FORMATS = Path(__file__).parent / "lomas_formats"
REMOTE = ("https://", "http://localhost:9000")
COUNT = "SELECT COUNT(*) AS n FROM df"


def ok(platform: LocalMesh, *args: str) -> str:
    """What a command that must succeed printed."""
    return admin_cli_testing.ok(platform, *args).out


@contextmanager
def fresh_platform(data_dir: Path, credentials: Path) -> Iterator[LocalMesh]:
    with local_mesh(
        data_dir,
        seed_demo=False,
        worker_concurrency=1,
        extra_env={"LOMAS_S3_CREDENTIALS_FILE": str(credentials)},
    ) as running:
        yield running


# -- the Lomas files, served from this machine -----------------------------------------------------


def lomas_site(site: Path, http: HttpFileServer, s3: S3Server) -> tuple[Path, Path]:
    """The two Lomas dataset collections, unchanged but for what leaves the machine (remote URLs
    to the local HTTP server, same file name; the S3 endpoint and keys to the local S3 server).
    Every file they name is written where they point, with data drawn from its metadata."""
    main = _site_collection(FORMATS / "dataset_collection.yaml", site / "main", http, s3)
    with_s3 = _site_collection(FORMATS / "dataset_collection_s3.yaml", site / "s3", http, s3)
    return main, with_s3


def _site_collection(original: Path, folder: Path, http: HttpFileServer, s3: S3Server) -> Path:
    document = yaml.safe_load(original.read_text())
    for number, entry in enumerate(document["datasets"]):
        metadata_text = _place_metadata(entry["metadata_access"], folder, s3)
        frame = make_dummy_frame(DatasetMetadata.from_yaml_text(metadata_text), 60, seed=number)
        _place_data(entry["dataset_access"], frame.to_csv(index=False).encode(), folder, http, s3)
    folder.mkdir(parents=True, exist_ok=True)
    collection = folder / original.name
    collection.write_text(yaml.safe_dump(document, sort_keys=False))
    return collection


def _place_metadata(access: dict[str, Any], folder: Path, s3: S3Server) -> str:
    """Put the metadata file where `access` points (rewriting an S3 location); returns its text."""
    text = (FORMATS / "metadata" / Path(str(access.get("path") or access["key"])).name).read_text()
    if access["database_type"] == "S3_DB":
        access.update(
            endpoint_url=s3.endpoint_url,
            access_key_id=s3.access_key_id,
            secret_access_key=s3.secret_access_key,
        )
        s3.put(access["bucket"], access["key"], text.encode())
    else:
        path = folder / access["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return text


def _place_data(
    access: dict[str, Any], data: bytes, folder: Path, http: HttpFileServer, s3: S3Server
) -> None:
    """Put the data where `access` points; an entry sharing a file with an earlier one keeps it."""
    if access["database_type"] == "S3_DB":
        access["endpoint_url"] = s3.endpoint_url
        s3.put(access["bucket"], access["key"], data)
        return
    location = str(access["path"])
    if location.startswith(REMOTE):
        name = location.rsplit("/", 1)[-1]
        access["path"] = http.url(name)
        path = http.root / name
    else:
        path = folder / location
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(data)


# -- what a platform holds -------------------------------------------------------------------------


def holdings(platform: LocalMesh) -> dict[str, Any]:
    """Everything an export must keep, in comparable form (budgets as exact decimals)."""
    with platform.admin() as admin:
        users = {u.name: (u.role, u.may_query) for u in admin.list_users()}
        granted = {(g.user, g.dataset) for g in admin.list_grants()}
        budgets = {}
        for user in sorted({user for user, _ in granted}):
            for ledger in admin.budgets(user):
                if (user, ledger.dataset) in granted:
                    budgets[(user, ledger.dataset)] = (
                        ledger.definition,
                        loss_components(ledger.allocation),
                        loss_components(ledger.spent),
                        loss_components(ledger.reserved),
                    )
        datasets = {
            d.name: (d.source.SerializeToString(), d.format, json.loads(d.metadata_json))
            for d in admin.list_datasets()
        }
        caps = {name: loss_components(admin.dataset_cap(name).cap) for name in datasets}
    return {"users": users, "budgets": budgets, "datasets": datasets, "caps": caps}


def files_of(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): path.read_text()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# -- the round trip --------------------------------------------------------------------------------


def test_lomas_collections_load_export_import_and_drop_without_loss(tmp_path: Path) -> None:
    (tmp_path / "web").mkdir()
    with S3Server(tmp_path / "moto.log") as s3, HttpFileServer(tmp_path / "web") as http:
        credentials = s3.write_credentials_file(tmp_path / "s3.json", "local_minio")
        main, with_s3 = lomas_site(tmp_path / "site", http, s3)
        exported, again = tmp_path / "exported", tmp_path / "exported-again"
        with fresh_platform(tmp_path / "a", credentials) as first:
            load_the_lomas_files(first, main, with_s3)
            add_what_lomas_files_cannot_say(first, tmp_path)
            before = holdings(first)
            dumped = ok(first, "collections", "export", str(exported))
            assert dumped == f"exported 9 users (10 budgets) and 8 datasets to {exported}\n"
        check_the_export_is_lomas_format(exported)

        with fresh_platform(tmp_path / "b", credentials) as second:
            imported = ok(second, "collections", "import", str(exported))
            assert imported.splitlines() == [
                "8 datasets added: BIRTHDAYS, FSO_INCOME_SYNTHETIC, IRIS, PARQUET_TITANIC, "
                "PENGUIN, PUMS, TINTIN_S3_TEST, TITANIC",
                "1 dataset cap added: IRIS",
                "8 users added: Alice, Bob, Dr. Antartica, Dr. FSO, Dr. Pure, Dr. Zed, Jack, "
                "second-admin",
                "1 user already there: admin",
                "10 budgets added: Alice/IRIS, Alice/PENGUIN, Bob/IRIS, Dr. Antartica/BIRTHDAYS, "
                "Dr. Antartica/PENGUIN, Dr. Antartica/PUMS, Dr. FSO/FSO_INCOME_SYNTHETIC, "
                "Dr. Pure/TITANIC, Dr. Zed/PUMS, Jack/TITANIC",
            ]
            assert holdings(second) == before
            ok(second, "collections", "export", str(again))
            assert files_of(again) == files_of(exported)
            # Importing again changes nothing.
            report = json.loads(ok(second, "collections", "import", str(exported), "--json"))
            assert all(not outcome["added"] for outcome in report.values())
            assert all(not outcome["differing"] for outcome in report.values())
            assert len(report["grants"]["unchanged"]) == 10
            drop_and_restore(second, exported, before)


def load_the_lomas_files(platform: LocalMesh, main: Path, with_s3: Path) -> None:
    loaded = ok(platform, "datasets", "import", str(main))
    assert loaded == ("5 datasets added: IRIS, PENGUIN, TITANIC, FSO_INCOME_SYNTHETIC, BIRTHDAYS\n")
    # The S3 collection names three of them again: PENGUIN the same way; IRIS with the penguin
    # metadata (as Lomas' own test file does) and BIRTHDAYS from another file, which are kept.
    loaded = ok(platform, "load", "datasets", str(with_s3))
    assert loaded.splitlines() == [
        "2 datasets added: PUMS, TINTIN_S3_TEST",
        "1 dataset already there: PENGUIN",
        "2 datasets exist with other values and were left as they are: IRIS, BIRTHDAYS",
    ]
    users = ok(platform, "users", "import", str(FORMATS / "user_collection.yaml"))
    assert users.splitlines() == [
        "5 users added: Alice, Dr. Antartica, Dr. FSO, Bob, Jack",
        "8 budgets added: Alice/IRIS, Alice/PENGUIN, Dr. Antartica/PENGUIN, Dr. Antartica/PUMS, "
        "Dr. Antartica/BIRTHDAYS, Dr. FSO/FSO_INCOME_SYNTHETIC, Bob/IRIS, Jack/TITANIC",
    ]
    # The TINTIN_S3_TEST data were read from S3 with the workers' named credentials.
    ok(platform, *"users add Tintin --dataset TINTIN_S3_TEST --epsilon 1 --delta 0.0001".split())
    with platform.client("Tintin", dataset="TINTIN_S3_TEST") as tintin:
        assert int(tintin.smartnoise_sql.query(COUNT, epsilon=0.5, delta=0)["n"].iloc[0]) >= 0
    ok(platform, "users", "remove", "Tintin")


def add_what_lomas_files_cannot_say(platform: LocalMesh, tmp_path: Path) -> None:
    """Spend from queries, a frozen user, other privacy definitions, an administrator, a budget
    beyond what a float holds, a cap, and a Parquet file whose name does not say so."""
    with platform.client("Alice", dataset="PENGUIN") as alice:
        alice.smartnoise_sql.query(COUNT, epsilon=0.25, delta=0)
    ok(platform, "users", "freeze", "Bob", "--reason", "left")
    ok(platform, "users", "add", "Dr. Zed", "--dataset", "PUMS", "--rho", "0.5")
    ok(platform, "users", "add", "Dr. Pure", "--dataset", "TITANIC", "--epsilon", "2", "--pure")
    ok(platform, "users", "add", "second-admin", "--admin")
    ok(platform, "ledger", "adjust", "Jack", "TITANIC", "--epsilon", "45.123456789012345678")
    ok(platform, "caps", "set", "IRIS", "--epsilon", "100", "--delta", "0.01")
    metadata = FORMATS / "metadata" / "titanic_metadata.yaml"
    parquet = tmp_path / "titanic.data"
    titanic = DatasetMetadata.from_yaml_text(metadata.read_text())
    make_dummy_frame(titanic, 60, seed=7).to_parquet(parquet, index=False)
    add = ["datasets", "add", "PARQUET_TITANIC", "--path", str(parquet), "--format", "parquet"]
    ok(platform, *add, "--metadata", str(metadata))


def check_the_export_is_lomas_format(exported: Path) -> None:
    users = {
        u["user_name"]: u
        for u in yaml.safe_load((exported / "user_collection.yaml").read_text())["users"]
    }
    alice = users["Alice"]
    assert list(alice) == ["user_name", "may_query", "datasets_list"]
    penguin = next(b for b in alice["datasets_list"] if b["dataset_name"] == "PENGUIN")
    assert penguin == {
        "dataset_name": "PENGUIN",
        "initial_epsilon": 5.0,
        "initial_delta": 0.0005,
        "total_spent_epsilon": 0.45,
        "total_spent_delta": 1e-07,
    }
    assert users["Bob"]["may_query"] is False
    assert users["second-admin"]["role"] == "admin"
    zed = users["Dr. Zed"]["datasets_list"][0]
    assert zed == {
        "dataset_name": "PUMS",
        "privacy_definition": "rho_zcdp",
        "initial_rho": 0.5,
        "total_spent_rho": 0.0,
    }
    assert users["Dr. Pure"]["datasets_list"][0]["privacy_definition"] == "pure_dp"
    # Beyond a float's precision, the exact decimal is written as text.
    assert users["Jack"]["datasets_list"][0]["initial_epsilon"] == "45.123456789012345678"
    datasets = {
        d["dataset_name"]: d
        for d in yaml.safe_load((exported / "dataset_collection.yaml").read_text())["datasets"]
    }
    assert datasets["TINTIN_S3_TEST"]["dataset_access"] == {
        "database_type": "S3_DB",
        "bucket": "example",
        "key": "data/test_penguin.csv",
        "endpoint_url": datasets["TINTIN_S3_TEST"]["dataset_access"]["endpoint_url"],
        "credentials_name": "local_minio",
    }
    assert datasets["PARQUET_TITANIC"]["dataset_access"]["format"] == "parquet"
    assert "format" not in datasets["TITANIC"]["dataset_access"]
    assert datasets["IRIS"]["privacy_cap"] == {
        "privacy_definition": "approx_dp",
        "epsilon": 100.0,
        "delta": 0.01,
    }
    metadata_path = exported / datasets["IRIS"]["metadata_access"]["path"]
    assert datasets["IRIS"]["metadata_access"] == {
        "database_type": "PATH_DB",
        "path": "metadata/IRIS_metadata.yaml",
    }
    iris = yaml.safe_load(metadata_path.read_text())
    original = yaml.safe_load((FORMATS / "metadata" / "iris_metadata.yaml").read_text())
    assert list(iris["columns"]) == list(original["columns"])


def drop_and_restore(platform: LocalMesh, exported: Path, before: dict[str, Any]) -> None:
    """Lomas drop_collection: every researcher, then every dataset; the ledgers keep their history,
    so importing the export again restores the same budgets (nothing is reset by a drop)."""
    assert cli(platform, "collections", "drop", "users").code == 2  # not without --yes
    dropped = ok(platform, "collections", "drop", "users", "--yes")
    assert dropped.startswith("removed 7 users: ") and dropped.endswith("(administrators stay)\n")
    with platform.admin() as admin:
        assert {u.role for u in admin.list_users()} == {resources_pb2.ROLE_ADMIN}
    assert ok(platform, "collections", "drop", "datasets", "--yes").startswith("removed 8 datasets")
    assert ok(platform, "datasets", "list").endswith("0 datasets\n")
    ok(platform, "collections", "import", str(exported))
    assert holdings(platform) == before

"""Datasets that stay where they are, end to end: a PostgreSQL table and a Spark folder registered by
the admin API and queried by a researcher through the public API (metadata, cost, dummy, real query,
budget, archive), with hostile SQL refused before it reaches the database.

One mesh ("mesh" mode: the machine's Redis and PostgreSQL) whose workers hold the table's
credentials; one worker process, so one Spark session serves every Spark query.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pytest
import yaml
from admin_cli_testing import cli, ok
from mesh_testing import RunningMesh, start_mode
from opendp.extras.polars import dp_len

from lomas.client import Client, InvalidQuery, LomasError
from lomas.client.admin import approx_dp, postgres_source, spark_source
from lomas.common.v1 import dataset_pb2
from lomas_executor.demo import make_penguin_like, penguin_metadata_text
from lomas_testing.pushdown_data import (
    TEST_SPARK_DRIVER_MEMORY,
    PostgresTable,
    parquet_folder,
    postgres_table,
    spark_conf_env,
)

COUNT = "SELECT COUNT(*) AS n FROM df"
GROUP_AVG = "SELECT species, AVG(bill_length_mm) AS avg_bill FROM df GROUP BY species"
FILTERED_SUM = "SELECT SUM(body_mass_g) AS mass FROM df WHERE island = 'Biscoe'"
WAREHOUSE, LAKE = "WAREHOUSE", "LAKE"


class Pushdown:
    def __init__(self, platform: RunningMesh, table: PostgresTable, folder: Path) -> None:
        self.platform = platform
        self.table = table
        self.folder = folder

    def researcher(self, dataset: str, epsilon: str = "10", delta: str = "0.001") -> Client:
        name = f"researcher-{uuid.uuid4().hex[:8]}"
        with self.platform.admin() as admin:
            admin.add_user(name)
            admin.grant(name, dataset, approx_dp(epsilon, delta))
        return Client(self.platform.target, token=self.platform.token(name), dataset=dataset)


@pytest.fixture(scope="module")
def pushdown(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushdown]:
    root = tmp_path_factory.mktemp("pushdown")
    metadata = yaml.safe_load(penguin_metadata_text())
    frame = make_penguin_like(rows=344, seed=3)
    types = {name: column["type"] for name, column in metadata["columns"].items()}
    folder = parquet_folder(frame, root / "lake", files=3)
    with postgres_table(frame, types) as table:
        credentials = root / "postgres-credentials.yaml"
        credentials.write_text(yaml.safe_dump({"warehouse": table.credentials()}))
        env = {
            "LOMAS_POSTGRES_CREDENTIALS_FILE": str(credentials),
            "LOMAS_SPARK_MASTER": "local[1]",
            "LOMAS_SPARK_DRIVER_MEMORY": TEST_SPARK_DRIVER_MEMORY,
            "LOMAS_SPARK_CONF": spark_conf_env(),
        }
        for platform in start_mode("mesh", root / "mesh", extra_env=env, worker_concurrency=1):
            with platform.admin() as admin:
                admin.add_dataset(
                    WAREHOUSE,
                    postgres_source("warehouse", table.schema, table.table),
                    metadata,
                    dataset_pb2.DATA_FORMAT_TABLE,
                )
                admin.add_dataset(
                    LAKE, spark_source(folder), metadata, dataset_pb2.DATA_FORMAT_PARQUET
                )
            yield Pushdown(platform, table, folder)


def spent(client: Client) -> dict[str, Decimal]:
    return client.get_total_spent_budget()


@pytest.mark.parametrize("dataset", [WAREHOUSE, LAKE])
def test_the_researcher_scenario_runs_where_the_data_is(pushdown: Pushdown, dataset: str) -> None:
    client = pushdown.researcher(dataset)
    metadata = client.get_dataset_metadata()
    assert metadata["rows"] == 344 and "species" in metadata["columns"]
    nothing = spent(client)

    cost = client.smartnoise_sql.cost(GROUP_AVG, epsilon=0.5, delta=1e-5)
    assert cost == {"epsilon": Decimal("1.0"), "delta": Decimal(0)}
    dummy = client.smartnoise_sql.query(GROUP_AVG, epsilon=0.5, delta=1e-5, dummy=True, nb_rows=50)
    assert set(dummy.columns) == {"species", "avg_bill"}
    assert spent(client) == nothing

    scans = pushdown.table.scans()
    release = client.smartnoise_sql.query(GROUP_AVG, epsilon=0.5, delta=1e-5)
    assert sorted(release["species"]) == ["Adelie", "Chinstrap", "Gentoo"]
    assert release["avg_bill"].between(30, 65).all()
    count = client.smartnoise_sql.query(COUNT, epsilon=1.0, delta=0)
    assert abs(int(count["n"][0]) - 344) < 30
    mass = client.smartnoise_sql.query(FILTERED_SUM, epsilon=1.0, delta=0)
    assert list(mass.columns) == ["mass"]
    # The PostgreSQL table is scanned by its own queries only.
    assert pushdown.table.scans() == scans + (3 if dataset == WAREHOUSE else 0)

    assert spent(client) == {
        "total_spent_epsilon": Decimal("3.0"),
        "total_spent_delta": Decimal(0),
    }
    archive = client.get_previous_queries()
    assert [entry["query"]["smartnoise_sql"]["sql"] for entry in archive] == [
        FILTERED_SUM,
        COUNT,
        GROUP_AVG,
    ]
    pd.testing.assert_frame_equal(archive[-1]["result"], release, check_like=True)


HOSTILE = [
    "SELECT COUNT(*) AS n FROM secret",
    "SELECT COUNT(*) AS n FROM pg_catalog.pg_user",
    "SELECT COUNT(*) AS n FROM {schema}.secret",
    "SELECT COUNT(*) AS n FROM df WHERE species IN (SELECT usename FROM pg_user)",
    "SELECT COUNT(*) AS n FROM df WHERE pg_sleep(3) IS NULL",
    "SELECT COUNT(*) AS n FROM df WHERE species = pg_read_file('/etc/passwd')",
    "SELECT COUNT(*) AS n FROM df; DROP TABLE df",
    "SELECT COUNT(*) AS n FROM df /* c */ UNION SELECT COUNT(*) FROM secret",
    "SELECT COUNT(*) AS n FROM df WHERE species = 'x\\' OR 1=1) UNION ALL SELECT 1 -- '",
    "SELECT COUNT(*) AS n FROM df WHERE species::text = 'Adelie'",
]


def test_hostile_sql_never_reaches_the_database(pushdown: Pushdown) -> None:
    client = pushdown.researcher(WAREHOUSE)
    before = (pushdown.table.scans(), pushdown.table.scans("secret"), spent(client))
    for text in HOSTILE:
        with pytest.raises(InvalidQuery) as refused:
            client.smartnoise_sql.query(
                text.format(schema=pushdown.table.schema), epsilon=1.0, delta=0
            )
        assert refused.value.code == "INVALID_ARGUMENT", text
    after = (pushdown.table.scans(), pushdown.table.scans("secret"), spent(client))
    assert after == before
    assert client.get_previous_queries() == []


def test_opendp_on_a_database_is_refused_free(pushdown: Pushdown) -> None:
    client = pushdown.researcher(WAREHOUSE)
    plan = pl.LazyFrame(schema={"bill_length_mm": pl.Float64}).select(dp_len(scale=2.0))
    for dummy in (True, False):
        with pytest.raises(LomasError) as refused:
            client.opendp.query(plan, dummy=dummy)
        error: Any = refused.value
        assert (error.code, error.reason) == (
            "FAILED_PRECONDITION",
            "QUERY_KIND_UNSUPPORTED_BY_SOURCE",
        )
    assert spent(client) == {"total_spent_epsilon": Decimal(0), "total_spent_delta": Decimal(0)}


def test_registration_checks_the_database_and_the_folder(
    pushdown: Pushdown, tmp_path: Path
) -> None:
    metadata = yaml.safe_load(penguin_metadata_text())
    table = pushdown.table
    with pushdown.platform.admin() as admin:
        for source, fmt, reason in (
            (
                postgres_source("warehouse", table.schema, "missing"),
                "TABLE",
                "DATASET_SOURCE_UNAVAILABLE",
            ),
            (
                postgres_source("warehouse", table.schema, "secret"),
                "TABLE",
                "DATASET_SOURCE_UNAVAILABLE",
            ),
            (
                postgres_source("nobody", table.schema, table.table),
                "TABLE",
                "DATASET_SOURCE_UNAVAILABLE",
            ),
            (
                postgres_source("warehouse", table.schema, table.table),
                "CSV",
                "DATASET_FORMAT_INVALID",
            ),
            (spark_source(tmp_path / "nowhere"), "PARQUET", "DATASET_SOURCE_UNAVAILABLE"),
        ):
            with pytest.raises(LomasError) as refused:
                admin.add_dataset(
                    f"BAD_{uuid.uuid4().hex[:6]}",
                    source,
                    metadata,
                    dataset_pb2.DataFormat.Value(f"DATA_FORMAT_{fmt}"),
                )
            assert refused.value.reason == reason, source
        wider = {
            **metadata,
            "columns": {**metadata["columns"], "age": {"type": "int", "lower": 0, "upper": 9}},
        }
        with pytest.raises(LomasError) as unknown_column:
            admin.add_dataset(
                "BAD_COLUMNS",
                postgres_source("warehouse", table.schema, table.table),
                wider,
                dataset_pb2.DATA_FORMAT_TABLE,
            )
        assert unknown_column.value.reason == "METADATA_INVALID"


def test_lomas_admin_registers_a_table_and_a_folder(pushdown: Pushdown, tmp_path: Path) -> None:
    platform, table = pushdown.platform, pushdown.table
    metadata = tmp_path / "penguin_metadata.yaml"
    metadata.write_text(penguin_metadata_text())
    suffix = uuid.uuid4().hex[:6].upper()
    warehouse, lake = f"CLI_WAREHOUSE_{suffix}", f"CLI_LAKE_{suffix}"
    relation = f"{table.schema}.{table.table}"
    added = ok(
        platform,
        *("datasets", "add", warehouse, "--postgres-table", relation),
        *("--postgres-credentials", "warehouse", "--metadata", str(metadata)),
    )
    where = f"postgres://warehouse/{relation}"
    assert added.out == f"added dataset '{warehouse}' (version 1): table at {where}, 7 columns\n"
    shown = ok(platform, "datasets", "show", warehouse).out.splitlines()
    assert shown[1:3] == ["format     table", f"source     {where}"]
    folder = pushdown.folder.resolve()
    added = ok(
        platform,
        *("datasets", "add", lake, "--spark-folder", str(folder), "--metadata", str(metadata)),
    )
    assert (
        added.out == f"added dataset '{lake}' (version 1): parquet at spark:{folder}, 7 columns\n"
    )
    for dataset in (warehouse, lake):
        count = pushdown.researcher(dataset).smartnoise_sql.query(COUNT, epsilon=1.0, delta=0)
        assert abs(int(count["n"][0]) - 344) < 30

    # The platform checks the source before it registers anything (exit 1, its reason).
    unreadable = cli(
        platform,
        *("datasets", "add", f"CLI_SECRET_{suffix}", "--postgres-table", f"{table.schema}.secret"),
        *("--postgres-credentials", "warehouse", "--metadata", str(metadata)),
    )
    assert (unreadable.code, unreadable.out) == (1, "")
    assert "FAILED_PRECONDITION DATASET_SOURCE_UNAVAILABLE" in unreadable.err
    # Usage errors: exit 2, nothing sent.
    for args, message in [
        (("--postgres-table", "penguins", "--postgres-credentials", "w"), "takes SCHEMA.TABLE"),
        (("--postgres-table", relation), "needs --postgres-credentials"),
        (("--spark-folder", str(folder), "--postgres-credentials", "w"), "goes with"),
        (("--spark-folder", str(folder), "--path", "x.csv"), "not allowed with"),
    ]:
        ran = cli(platform, "datasets", "add", f"CLI_BAD_{suffix}", *args, "--metadata", "m.yaml")
        assert (ran.code, ran.out) == (2, ""), (args, ran)
        assert message in ran.err, (args, ran.err)
    with platform.admin() as admin:
        names = {dataset.name for dataset in admin.list_datasets()}
    assert {warehouse, lake} <= names
    assert not {f"CLI_SECRET_{suffix}", f"CLI_BAD_{suffix}"} & names

"""Datasets that stay where they are: PostgreSQL tables and Spark folders (SmartNoise-SQL runs there,
only aggregates come back), and large Parquet files scanned lazily by OpenDP Polars plans.

The PostgreSQL table is a real one (127.0.0.1:5432, database `test`), read by a role that may SELECT
on it only; every SQL text the worker sends is recorded where it leaves the engine
(`pushdown_postgres.run_sql`), and PostgreSQL's own scan counters show what touched which table.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import opendp.prelude as dp
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from opendp.extras.polars import DPExpr, dp_len
from polars.testing import assert_frame_equal

from lomas.common.v1 import dataset_pb2
from lomas_common.errors import FailedPrecondition, InvalidArgument, InvalidMetadata, InvalidQuery
from lomas_executor import convert, pushdown, pushdown_postgres
from lomas_executor.cache import DatasetCache
from lomas_executor.engine import DatasetRef, QueryEngine
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.opendp_model import OpenDpMeasurementQuery, OpenDpPolarsQuery
from lomas_executor.opendp_queries import prepare_polars
from lomas_executor.pushdown_sql import PushdownSqlRefused, check_sent_sql
from lomas_executor.settings import SparkSettings
from lomas_executor.smartnoise_sql import SmartnoiseSqlQuery
from lomas_executor.source_validation import check_dataset_source
from lomas_executor.sources import (
    DataFormat,
    DataSource,
    PostgresCredentials,
    SourceSecrets,
)
from lomas_testing.pushdown_data import (
    TEST_SPARK_CONF,
    TEST_SPARK_DRIVER_MEMORY,
    PostgresTable,
    parquet_folder,
    postgres_table,
)

CREDENTIALS = "warehouse"


@pytest.fixture(scope="module")
def table(penguin_frame: pd.DataFrame, penguin_md: DatasetMetadata) -> Iterator[PostgresTable]:
    types = {name: penguin_md.column_type(name) for name in penguin_md.column_names}
    with postgres_table(penguin_frame, types) as made:
        yield made


@pytest.fixture(scope="module")
def secrets(table: PostgresTable) -> SourceSecrets:
    return SourceSecrets(postgres={CREDENTIALS: PostgresCredentials(**table.credentials())})


@pytest.fixture(scope="module")
def engine(secrets: SourceSecrets) -> Iterator[QueryEngine]:
    spark = SparkSettings("local[1]", TEST_SPARK_DRIVER_MEMORY, TEST_SPARK_CONF)
    engine = QueryEngine(DatasetCache(max_bytes=10**9), secrets, spark=spark, lazy_parquet_bytes=0)
    yield engine
    engine._places.spark.stop()


@pytest.fixture()
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SQL text sent to PostgreSQL from now on."""
    texts: list[str] = []
    send = pushdown_postgres.run_sql

    def recording(credentials: PostgresCredentials, sql: str) -> list[object]:
        texts.append(sql)
        return send(credentials, sql)

    monkeypatch.setattr(pushdown_postgres, "run_sql", recording)
    return texts


def pg_dataset(table: PostgresTable, md: DatasetMetadata, name: str = "") -> DatasetRef:
    source = DataSource.postgres(CREDENTIALS, table.schema, name or table.table)
    return DatasetRef("WAREHOUSE", 1, source, DataFormat.TABLE, md)


def sql(text: str) -> SmartnoiseSqlQuery:
    return SmartnoiseSqlQuery(text, Decimal("1"), Decimal("0.00001"))


def test_postgres_queries_run_in_the_database_and_only_aggregates_come_back(
    engine: QueryEngine, table: PostgresTable, penguin_md: DatasetMetadata, sent: list[str]
) -> None:
    dataset = pg_dataset(table, penguin_md)
    engine.preflight(dataset)
    before = table.scans()
    count = engine.run(sql("SELECT COUNT(*) AS n FROM df"), dataset)
    assert list(count.columns) == ["n"] and abs(int(count["n"][0]) - 344) < 40
    means = engine.run(
        sql("SELECT species, AVG(bill_length_mm) AS b FROM df GROUP BY species"), dataset
    )
    assert list(means["species"]) == ["Adelie", "Chinstrap", "Gentoo"]
    total = engine.run(
        sql("SELECT SUM(body_mass_g) AS s FROM df WHERE island = 'Biscoe' AND df.sex = 'MALE'"),
        dataset,
    )
    assert list(total.columns) == ["s"]
    assert table.scans() == before + 3
    relation = f'"{table.schema}"."{table.table}" AS df'
    assert len(sent) == 3
    for text in sent:  # one aggregate SELECT over the registered table, nothing else
        assert text.startswith("SELECT ") and ") AS per_key_all" in text
        assert text.count(" FROM ") == 2 and relation in text
        assert any(f"{agg}(" in text for agg in ("COUNT", "SUM"))
    assert "GROUP BY species" in sent[1]
    # Nothing of a database dataset is held in the worker's cache.
    assert engine.cache.stats().entries == 0 and engine.cache.stats().bytes == 0


HOSTILE = [
    "SELECT COUNT(*) AS n FROM secret",
    "SELECT COUNT(*) AS n FROM pg_catalog.pg_user",
    "SELECT COUNT(*) AS n FROM {schema}.secret",
    "SELECT COUNT(*) AS n FROM {schema}.penguins",
    "SELECT COUNT(*) AS n FROM df WHERE species IN (SELECT usename FROM pg_user)",
    "SELECT COUNT(*) AS n FROM df JOIN secret ON df.species = secret.species",
    "SELECT COUNT(*) AS n FROM df WHERE pg_sleep(5) IS NULL",
    "SELECT COUNT(*) AS n FROM df WHERE species = pg_read_file('/etc/passwd')",
    "SELECT pg_sleep(5)",
    "SELECT COUNT(*) AS n FROM df; DROP TABLE df",
    "SELECT COUNT(*) AS n FROM df; SELECT * FROM secret",
    "SELECT COUNT(*) AS n FROM df /* x */ UNION SELECT COUNT(*) FROM secret",
    "SELECT COUNT(*) AS n FROM df WHERE species = 'x\\' OR 1=1) UNION ALL SELECT 1 -- '",
    "SELECT COUNT(*) AS n FROM df WHERE species = E'\\x41'",
    "SELECT COUNT(*) AS n FROM df WHERE species::text = 'Adelie'",
    "SELECT COUNT(*) AS n FROM df WHERE species = $$Adelie$$",
    'SELECT COUNT(*) AS n FROM df AS "x\\" FROM secret --"',
    "SELECT current_user AS u, COUNT(*) AS n FROM df GROUP BY current_user",
    "SELECT species, COUNT(*) AS n FROM df GROUP BY species; COPY df TO '/tmp/x'",
    "WITH s AS (SELECT * FROM secret) SELECT COUNT(*) AS n FROM s",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_sql_is_refused_before_it_reaches_the_database(
    engine: QueryEngine,
    table: PostgresTable,
    penguin_md: DatasetMetadata,
    sent: list[str],
    text: str,
) -> None:
    dataset = pg_dataset(table, penguin_md)
    query = sql(text.format(schema=table.schema))
    before, secret = table.scans(), table.scans("secret")
    with pytest.raises(InvalidQuery) as refused:
        engine.estimate_cost(query, dataset)
    assert refused.value.code.name == "INVALID_ARGUMENT"
    with pytest.raises(InvalidQuery):
        engine.run(query, dataset)
    assert sent == []
    assert (table.scans(), table.scans("secret")) == (before, secret)


def test_comments_never_reach_the_database(
    engine: QueryEngine, table: PostgresTable, penguin_md: DatasetMetadata, sent: list[str]
) -> None:
    text = "SELECT COUNT(*) AS n FROM df -- ; DROP TABLE df\n/* pg_sleep(5) */"
    engine.run(sql(text), pg_dataset(table, penguin_md))
    assert len(sent) == 1 and "--" not in sent[0] and "/*" not in sent[0]
    assert "DROP" not in sent[0] and "pg_sleep" not in sent[0]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('SELECT COUNT(*) FROM "s"."t" AS df; SELECT 1', "character"),
        ('SELECT COUNT(*) FROM "s"."t" AS df -- x', "comment"),
        ('SELECT COUNT(*) FROM "s"."t" AS df /* x */', "comment"),
        ('SELECT COUNT(*) FROM "s"."t" AS df WHERE x = \'a\\\'', "backslash"),
        ('SELECT COUNT(*) FROM "s"."other" AS df', "other than"),
        ('SELECT COUNT(*) FROM "s"."t"."u" AS df', "other than"),
        ('SELECT COUNT(*) FROM "s"."t" AS df WHERE pg_sleep(1) IS NULL', "pg_sleep"),
        ('SELECT COUNT(*) FROM "s"."t" AS df WHERE x = E\'a\'', "prefixed"),
        ("SELECT COUNT(*) FROM \"s\".\"t\" AS df WHERE x = 'it''s'", "doubled"),
        ('SELECT COUNT(*) FROM "s"."t" AS df WHERE x = $1', "character"),
        ('DELETE FROM "s"."t"', "not a SELECT"),
    ],
)
def test_the_sql_sent_is_checked_with_the_databases_lexical_rules(text: str, why: str) -> None:
    with pytest.raises(PushdownSqlRefused, match=why):
        check_sent_sql(text, ('"s"', '"t"'))
    check_sent_sql('SELECT COUNT(*) AS n FROM ( SELECT * FROM "s"."t" AS df ) AS k', ('"s"', '"t"'))


def test_backslashes_in_literals_are_refused_for_every_engine(
    engine: QueryEngine, tmp_path: Path, penguin_csv: Path, penguin_md: DatasetMetadata
) -> None:
    """The injection the rule closes worked on the in-memory SQLite engine too."""
    dataset = DatasetRef("P", 1, DataSource.local(penguin_csv), DataFormat.CSV, penguin_md)
    hostile = "SELECT COUNT(*) AS n FROM df WHERE species = 'x\\' OR 1=1) UNION ALL SELECT 1 -- '"
    with pytest.raises(InvalidQuery, match="backslash"):
        engine.estimate_cost(sql(hostile), dataset)


def test_opendp_is_refused_on_a_database_before_any_charge(
    engine: QueryEngine, table: PostgresTable, penguin_md: DatasetMetadata, sent: list[str]
) -> None:
    plan = pl.LazyFrame(schema={"bill_length_mm": pl.Float64}).select(dp_len(scale=2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        query = OpenDpPolarsQuery(plan.serialize(format="json"))
    with pytest.raises(FailedPrecondition) as refused:
        engine.estimate_cost(query, pg_dataset(table, penguin_md))
    assert refused.value.reason == "QUERY_KIND_UNSUPPORTED_BY_SOURCE"
    assert refused.value.metadata == {"source": "postgres"}
    assert sent == []


def test_registration_checks_the_table(
    table: PostgresTable, secrets: SourceSecrets, penguin_md: DatasetMetadata
) -> None:
    source = pg_dataset(table, penguin_md).source
    check_dataset_source(source, DataFormat.TABLE, penguin_md, secrets)
    missing = DataSource.postgres(CREDENTIALS, table.schema, "nowhere")
    with pytest.raises(FailedPrecondition, match="does not exist") as absent:
        check_dataset_source(missing, DataFormat.TABLE, penguin_md, secrets)
    assert absent.value.reason == "DATASET_SOURCE_UNAVAILABLE"
    forbidden = DataSource.postgres(CREDENTIALS, table.schema, "secret")
    with pytest.raises(FailedPrecondition, match="may not read"):
        check_dataset_source(forbidden, DataFormat.TABLE, penguin_md, secrets)
    extra = penguin_md.to_dict()
    extra["columns"]["age"] = {"type": "int", "lower": 0, "upper": 50}
    with pytest.raises(InvalidMetadata, match="'age'"):
        check_dataset_source(source, DataFormat.TABLE, DatasetMetadata.from_dict(extra), secrets)
    retyped = penguin_md.to_dict()
    retyped["columns"]["body_mass_g"] = {"type": "boolean"}
    with pytest.raises(InvalidMetadata, match=r"body_mass_g.*float8.*boolean"):
        check_dataset_source(source, DataFormat.TABLE, DatasetMetadata.from_dict(retyped), secrets)
    unknown = DataSource.postgres("nobody", table.schema, table.table)
    with pytest.raises(FailedPrecondition, match="no PostgreSQL credentials named 'nobody'"):
        check_dataset_source(unknown, DataFormat.TABLE, penguin_md, secrets)
    closed = SourceSecrets(
        postgres={CREDENTIALS: PostgresCredentials("127.0.0.1", "test", table.role, port=9)}
    )
    with pytest.raises(FailedPrecondition, match="cannot be reached") as down:
        check_dataset_source(source, DataFormat.TABLE, penguin_md, closed)
    assert down.value.reason == "DATASET_SOURCE_UNAVAILABLE"


def test_preflight_refuses_a_database_that_does_not_answer(
    table: PostgresTable, penguin_md: DatasetMetadata
) -> None:
    closed = SourceSecrets(
        postgres={CREDENTIALS: PostgresCredentials("127.0.0.1", "test", table.role, port=9)}
    )
    engine = QueryEngine(DatasetCache(max_bytes=0), closed)
    with pytest.raises(FailedPrecondition) as refused:
        engine.preflight(pg_dataset(table, penguin_md))
    assert refused.value.reason == "DATASET_SOURCE_UNAVAILABLE"
    with pytest.raises(FailedPrecondition, match="no PostgreSQL credentials"):
        QueryEngine(DatasetCache(max_bytes=0)).preflight(pg_dataset(table, penguin_md))


def test_sources_from_protos_and_secrets_files(tmp_path: Path, penguin_md: DatasetMetadata) -> None:
    descriptor = dataset_pb2.DatasetDescriptor(
        name="W",
        source=dataset_pb2.DataSource(
            postgres=dataset_pb2.PostgresSource(credentials_name="w", schema="s", table="t")
        ),
        format=dataset_pb2.DATA_FORMAT_TABLE,
        metadata_json=json.dumps(penguin_md.to_dict()),
    )
    dataset = convert.dataset_from_proto(descriptor)
    assert dataset.source == DataSource.postgres("w", "s", "t") and dataset.fmt is DataFormat.TABLE
    descriptor.format = dataset_pb2.DATA_FORMAT_CSV
    with pytest.raises(InvalidArgument, match="TABLE for a PostgreSQL source"):
        convert.dataset_from_proto(descriptor)
    descriptor.source.CopyFrom(dataset_pb2.DataSource(spark=dataset_pb2.SparkSource(path="/d")))
    with pytest.raises(InvalidArgument, match="must be PARQUET"):
        convert.dataset_from_proto(descriptor)
    descriptor.format = dataset_pb2.DATA_FORMAT_PARQUET
    assert convert.dataset_from_proto(descriptor).source == DataSource.spark("/d")
    for schema, table in (("S", "t"), ("s", 't"; DROP'), ("", "t"), ("s", "1t")):
        with pytest.raises(InvalidArgument) as invalid:
            DataSource.postgres("w", schema, table)
        assert invalid.value.reason == "DATASET_SOURCE_INVALID"
    secrets_file = tmp_path / "postgres.yaml"
    secrets_file.write_text("w:\n  host: db\n  dbname: lake\n  user: reader\n  password: pw\n")
    loaded = SourceSecrets().with_postgres_file(secrets_file).postgres["w"]
    assert (loaded.host, loaded.port, loaded.dbname, loaded.user) == ("db", 5432, "lake", "reader")
    assert "pw" not in repr(loaded)
    secrets_file.write_text("w:\n  host: db\n")
    with pytest.raises(ValueError, match="lack 'dbname'"):
        SourceSecrets().with_postgres_file(secrets_file)


# -- Spark and lazy Parquet -------------------------------------------------------------------------


def test_spark_folder_queries_run_in_one_reused_session(
    engine: QueryEngine,
    tmp_path: Path,
    penguin_frame: pd.DataFrame,
    penguin_md: DatasetMetadata,
    secrets: SourceSecrets,
) -> None:
    folder = parquet_folder(penguin_frame, tmp_path / "lake")
    source = DataSource.spark(folder)
    check_dataset_source(source, DataFormat.PARQUET, penguin_md, secrets)
    dataset = DatasetRef("LAKE", 1, source, DataFormat.PARQUET, penguin_md)
    engine.preflight(dataset)
    count = engine.run(sql("SELECT COUNT(*) AS n FROM df"), dataset)
    assert abs(int(count["n"][0]) - 344) < 40
    session = engine._places.spark.session()
    means = engine.run(
        sql("SELECT species, AVG(bill_length_mm) AS b FROM df GROUP BY species"), dataset
    )
    assert list(means["species"]) == ["Adelie", "Chinstrap", "Gentoo"]
    assert engine._places.spark.session() is session  # started once, reused
    with pytest.raises(InvalidQuery):
        engine.estimate_cost(
            sql("SELECT COUNT(*) AS n FROM df WHERE reflect('a', 'b') = 1"), dataset
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        counted = (
            dp.t.make_split_dataframe(",", list(penguin_md.column_names))
            >> dp.t.make_select_column("species", str)
            >> dp.t.then_count()
            >> dp.m.then_laplace(2.0)
        )
    measurement = OpenDpMeasurementQuery(dp.serialize(counted))
    with pytest.raises(FailedPrecondition) as refused:
        engine.estimate_cost(measurement, dataset)
    assert refused.value.reason == "QUERY_KIND_UNSUPPORTED_BY_SOURCE"
    assert engine.cache.stats().entries == 0

    retyped = penguin_md.to_dict()
    retyped["columns"]["species"] = {"type": "int", "lower": 0, "upper": 5}
    with pytest.raises(InvalidMetadata, match="species"):
        check_dataset_source(
            source, DataFormat.PARQUET, DatasetMetadata.from_dict(retyped), secrets
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgument, match="no Parquet file"):
        check_dataset_source(
            DataSource.spark(tmp_path / "empty"), DataFormat.PARQUET, penguin_md, secrets
        )
    with pytest.raises(FailedPrecondition, match="folder was not found"):
        engine.preflight(
            DatasetRef("X", 1, DataSource.spark(tmp_path / "no"), DataFormat.PARQUET, penguin_md)
        )


def test_a_spark_session_whose_jvm_died_starts_again_before_any_data_access(
    engine: QueryEngine, tmp_path: Path, penguin_frame: pd.DataFrame, penguin_md: DatasetMetadata
) -> None:
    folder = parquet_folder(penguin_frame, tmp_path / "lake")
    dataset = DatasetRef("LAKE", 1, DataSource.spark(folder), DataFormat.PARQUET, penguin_md)
    engine.preflight(dataset)
    first = engine._places.spark.session()
    jvm = first.sparkContext._gateway.proc
    jvm.kill()  # as the kernel's out-of-memory killer would
    jvm.wait()
    engine.preflight(dataset)
    assert engine._places.spark.session() is not first
    count = engine.run(sql("SELECT COUNT(*) AS n FROM df"), dataset)
    assert abs(int(count["n"][0]) - 344) < 40


# Run in a process of its own: PySpark keeps one JVM per process, which a session that cannot
# start must not find.
_SPARK_CANNOT_START = """
import sys
from lomas_common.errors import LomasError
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.pushdown import DataPlaces
from lomas_executor.settings import SparkSettings
from lomas_executor.sources import DataSource, SourceSecrets

places = DataPlaces(SourceSecrets(), SparkSettings("local[1]", "no-such-size"))
try:
    places.preflight(DataSource.spark(sys.argv[1]))
except LomasError as error:
    print(error.code.name, error.reason)
"""


def test_a_spark_session_that_cannot_start_is_refused_before_any_data_access(
    tmp_path: Path, penguin_frame: pd.DataFrame
) -> None:
    folder = parquet_folder(penguin_frame, tmp_path / "lake")
    done = subprocess.run(
        [sys.executable, "-c", _SPARK_CANNOT_START, str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert done.stdout.split() == ["FAILED_PRECONDITION", "DATASET_SOURCE_UNAVAILABLE"]
    assert "could not start (attempt 2 of 2)" in done.stderr  # tried twice, then refused


def test_a_failed_spark_start_is_tried_once_more_with_pyspark_reset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A JVM launched on a saturated machine can exit before handing PySpark its port; the second
    # launch must not find the first one's half-made gateway.
    from lomas_executor import pushdown_spark

    starts: list[str] = []
    resets: list[str] = []

    def start(self: pushdown_spark.SparkSessions) -> object:
        starts.append("start")
        if len(starts) == 1:
            raise RuntimeError("Java gateway process exited before sending its port number")
        return "the session"

    monkeypatch.setattr(pushdown_spark.SparkSessions, "_start", start)
    monkeypatch.setattr(pushdown_spark, "_reset_pyspark", lambda: resets.append("reset"))
    monkeypatch.setattr(pushdown_spark, "_RETRY_PAUSE_SECONDS", 0.0)
    sessions = pushdown_spark.SparkSessions(SparkSettings("local[1]"))
    assert sessions.session() == "the session"
    assert sessions.session() == "the session"  # kept: started once
    assert starts == ["start", "start"]
    assert resets == ["reset"]


def test_opendp_polars_scans_large_parquet_lazily(
    engine: QueryEngine,
    tmp_path: Path,
    penguin_frame: pd.DataFrame,
    penguin_md: DatasetMetadata,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = parquet_folder(penguin_frame, tmp_path / "lake", files=3)
    plan = pl.LazyFrame(schema={"bill_length_mm": pl.Float64}).select(
        DPExpr(pl.col("bill_length_mm").fill_null(40.0)).sum((30.0, 65.0), scale=1.0),
        dp_len(scale=1.0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        query = OpenDpPolarsQuery(plan.serialize(format="json"))
    # Only SmartNoise-SQL runs in Spark: an OpenDP plan on a Spark folder starts no JVM.
    fresh = QueryEngine(DatasetCache(max_bytes=0), lazy_parquet_bytes=0)
    lake = DatasetRef("BIG", 1, DataSource.spark(folder), DataFormat.PARQUET, penguin_md)
    fresh.preflight(lake, query)
    fresh.run(query, lake)
    assert not fresh._places.spark.started
    # The Polars inside OpenDP says which engine ran the plan: the streaming one, pulling batches
    # from the scan's IO plugin.
    monkeypatch.setenv("POLARS_VERBOSE", "1")
    for source in (DataSource.spark(folder), DataSource.local(folder / "part-00000.parquet")):
        dataset = DatasetRef("BIG", 1, source, DataFormat.PARQUET, penguin_md)
        engine.estimate_cost(query, dataset)
        capfd.readouterr()
        release = engine.run(query, dataset)
        assert "polars-stream: running multi-scan[io_plugin]" in capfd.readouterr().err
        rows = 344 if source.kind.pushdown else 115
        assert abs(int(release["len"][0]) - rows) < 20
    assert engine.cache.stats().entries == 0  # a scan is a plan: nothing cached


def test_the_lazy_scan_reads_what_polars_asks_as_a_loaded_table_would(
    tmp_path: Path, penguin_frame: pd.DataFrame, penguin_md: DatasetMetadata
) -> None:
    folder = parquet_folder(penguin_frame, tmp_path / "lake", files=3)
    # A NaN (not a null) in a float column: null once read, as in a loaded table.
    extra = penguin_frame.head(1).copy()
    pq.write_table(
        pa.Table.from_pandas(extra, preserve_index=False).set_column(
            2, "bill_length_mm", pa.array([float("nan")], from_pandas=False)
        ),
        folder / "part-00003.parquet",
    )
    expected = pd.concat(
        [penguin_frame, extra.assign(bill_length_mm=float("nan"))], ignore_index=True
    )
    scan = pushdown.scan_parquet(DataSource.spark(folder), penguin_md)
    loaded = prepare_polars(pa.Table.from_pandas(expected, preserve_index=False), penguin_md)
    assert scan.collect_schema() == loaded.schema
    for engine in ("in-memory", "streaming"):
        everything = scan.collect(engine=engine)
        assert_frame_equal(everything, loaded)
        assert everything["bill_length_mm"].null_count() == 3  # two nulls and the NaN
        # The filter is the scan's to apply (Polars hands it over and trusts the rows it gets).
        biscoe = (
            scan.filter(pl.col("island") == "Biscoe").select("body_mass_g").collect(engine=engine)
        )
        wanted = expected.loc[expected["island"] == "Biscoe", "body_mass_g"]
        assert biscoe.height == len(wanted)
        assert biscoe["body_mass_g"].sum() == pytest.approx(wanted.sum())
        assert scan.head(7).collect(engine=engine).height == 7
        assert scan.select(pl.len()).collect(engine=engine).item() == 345

"""DP execution end to end, through the real client: every query kind, source and format, with
its true cost charged and archived (the refusals are in `test_execution_refusals.py`).

The mesh and its datasets are `execution_testing.start_platform`'s.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from functools import partial

import opendp.prelude as dp
import pandas as pd
import polars as pl
import pytest
from execution_testing import (
    BUCKET,
    COUNT,
    CREDENTIALS,
    CSV,
    Platform,
    assert_refused,
    budget_state,
    ledger_kinds,
    start_platform,
)
from opendp.extras.polars import Margin, dp_len

from lomas.budget.v1 import budget_pb2
from lomas.client import LomasError
from lomas.client.admin import local_source, rho_zcdp, s3_source
from lomas_embedded import demo
from lomas_executor.demo import make_penguin_like
from lomas_testing.opendp_pipelines import mean_bill, species_plan


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("execution"))


@dataclass(frozen=True)
class Kind:
    """One query of one kind, bound to a client: its cost, and its run (options as keywords)."""

    cost: Callable[[], dict[str, Decimal]]
    run: Callable[..., pd.DataFrame]


# -- every kind ------------------------------------------------------------------------------------


def test_every_query_kind_costs_runs_on_dummy_data_and_charges_its_true_cost(
    platform: Platform,
) -> None:
    client = platform.researcher(demo.DATASET)
    columns = list(platform.metadata["columns"])
    sql = "SELECT species, AVG(bill_length_mm) AS bill FROM df GROUP BY species"
    kinds = {
        "smartnoise_sql": Kind(
            partial(client.smartnoise_sql.cost, sql, epsilon=0.5, delta=1e-5),
            partial(client.smartnoise_sql.query, sql, epsilon=0.5, delta=1e-5),
        ),
        "opendp_measurement": Kind(
            partial(client.opendp.cost, mean_bill(columns)),
            partial(client.opendp.query, mean_bill(columns)),
        ),
        "opendp_polars": Kind(
            partial(client.opendp.cost, species_plan()),
            partial(client.opendp.query, species_plan()),
        ),
    }
    spent = {"total_spent_epsilon": Decimal(0), "total_spent_delta": Decimal(0)}
    for kind, query in kinds.items():
        before = budget_state(client)
        cost = query.cost()
        assert cost["epsilon"] > 0, kind
        dummy = query.run(dummy=True, nb_rows=300, seed=3)
        assert len(dummy) >= 1 and dummy.attrs["cost"] == cost, kind
        assert budget_state(client) == before, f"{kind}: cost and dummy queries are free"

        release = query.run()
        assert release.attrs["cost"] == cost, kind
        spent["total_spent_epsilon"] += cost["epsilon"]
        spent["total_spent_delta"] += cost["delta"]
        assert client.get_total_spent_budget() == spent, kind
        archived = next(
            q for q in client.get_previous_queries() if q["query_id"] == release.attrs["query_id"]
        )
        pd.testing.assert_frame_equal(archived["result"], release, check_like=True)

    archive = client.get_previous_queries()
    assert sorted(q["query_kind"] for q in archive) == ["opendp", "opendp", "smartnoise_sql"]
    forms = {next(iter(q["query"]["opendp"])) for q in archive if q["query_kind"] == "opendp"}
    assert {"measurement_json", "polars"} <= forms


def test_opendp_releases_have_the_shapes_of_their_pipelines(platform: Platform) -> None:
    client = platform.researcher(demo.DATASET)
    columns = list(platform.metadata["columns"])
    mean = client.opendp.query(mean_bill(columns))
    assert list(mean.columns) == ["value"] and len(mean) == 1
    assert 30 <= mean["value"][0] <= 65

    frame = client.opendp.query(species_plan())
    assert list(frame.columns) == ["species", "len", "bill_length_mm"]
    assert sorted(frame["species"]) == ["Adelie", "Chinstrap", "Gentoo"]
    # The same plan built through OpenDP's Context (a LazyFrameQuery) is accepted as well.
    context = dp.Context.compositor(
        data=pl.LazyFrame(schema={"species": pl.String, "bill_length_mm": pl.Float64}),
        privacy_unit=dp.unit_of(contributions=1),
        privacy_loss=dp.loss_of(epsilon=1.0),
        split_evenly_over=1,
        margins=[Margin(by=[], max_length=1000)],
    )
    query = context.query().select(dp_len(scale=4.0))
    assert client.opendp.cost(query) == {"epsilon": Decimal("0.25"), "delta": Decimal(0)}


def test_zcdp_costs_follow_the_ledger_and_fixed_delta(platform: Platform) -> None:
    approx = platform.researcher(demo.DATASET)
    columns = list(platform.metadata["columns"])
    gaussian = mean_bill(columns, "gaussian")
    before = budget_state(approx)
    with pytest.raises(
        LomasError
    ) as mismatch:  # a rho cannot be charged to an (epsilon, delta) ledger
        approx.opendp.query(gaussian)
    assert_refused(mismatch.value, "INVALID_ARGUMENT", "PRIVACY_DEFINITION_MISMATCH")
    assert budget_state(approx) == before

    at_delta = approx.opendp.query(gaussian, fixed_delta=1e-6)
    assert at_delta.attrs["cost"]["delta"] == Decimal("0.000001")

    zcdp = platform.researcher(demo.DATASET, rho_zcdp("2"))
    release = zcdp.opendp.query(gaussian)
    rho = release.attrs["cost"]["rho"]
    assert 0 < rho < 1
    assert zcdp.get_total_spent_budget() == {"total_spent_rho": rho}


# -- every source and format -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "dataset", ["LOCAL_CSV", "LOCAL_PARQUET", "S3_CSV", "S3_PARQUET", "HTTP_CSV", "HTTP_PARQUET"]
)
def test_every_source_and_format_is_read(platform: Platform, dataset: str) -> None:
    client = platform.researcher(dataset)
    counted = client.smartnoise_sql.query(COUNT, epsilon=5.0, delta=0)
    assert abs(int(counted["n"][0]) - 344) < 40
    by_species = client.opendp.query(species_plan())
    assert sorted(by_species["species"]) == ["Adelie", "Chinstrap", "Gentoo"]
    assert abs(int(by_species["len"].sum()) - 344) < 40
    assert len(client.get_previous_queries()) == 2


def test_s3_credentials_stay_on_the_workers(platform: Platform) -> None:
    with platform.admin() as admin:
        stored = {d.name: d for d in admin.list_datasets()}["S3_CSV"]
    text = str(stored)
    assert CREDENTIALS in text
    assert platform.s3.secret_access_key not in text
    assert platform.s3.access_key_id not in text
    # Credentials the platform does not hold: the dataset is refused at registration, naming only
    # the credentials' name, and nothing is registered.
    with platform.admin() as admin, pytest.raises(LomasError) as unknown:
        admin.add_dataset(
            "S3_UNKNOWN_CREDENTIALS",
            s3_source(BUCKET, "penguin.csv", platform.s3.endpoint_url, "nobody"),
            platform.metadata,
            CSV,
        )
    assert_refused(
        unknown.value,
        "FAILED_PRECONDITION",
        "DATASET_SOURCE_UNAVAILABLE",
        "no S3 credentials named",
    )
    assert platform.s3.secret_access_key not in unknown.value.message
    with platform.admin() as admin:
        assert "S3_UNKNOWN_CREDENTIALS" not in {d.name for d in admin.list_datasets()}


def test_a_missing_data_file_fails_before_data_access_and_is_refunded(platform: Platform) -> None:
    # Registration checks the file; one removed afterwards is found missing by the worker.
    vanishing = platform.data_dir / "files" / "vanishing.csv"
    shutil.copy(platform.data_dir / "files" / "penguin.csv", vanishing)
    with platform.admin() as admin:
        admin.add_dataset("MISSING_FILE", local_source(vanishing), platform.metadata, CSV)
    vanishing.unlink()
    client = platform.researcher("MISSING_FILE")
    before = budget_state(client)
    with pytest.raises(LomasError) as missing:
        client.smartnoise_sql.query(COUNT, epsilon=1.0, delta=0)
    assert_refused(missing.value, "FAILED_PRECONDITION", "DATASET_SOURCE_UNAVAILABLE", "not found")
    assert budget_state(client) == before
    # The refund is in the ledger's history: a reservation and its release, no charge.
    kinds = ledger_kinds(platform, client)
    assert budget_pb2.LEDGER_ENTRY_KIND_RELEASE in kinds
    assert budget_pb2.LEDGER_ENTRY_KIND_COMMIT not in kinds


# -- SmartNoise-SQL, complete ----------------------------------------------------------------------


def test_smartnoise_sql_mechanisms_postprocess_group_by_and_true_cost(platform: Platform) -> None:
    client = platform.researcher(demo.DATASET)
    # True cost: AVG is a SUM and a COUNT, each charged epsilon.
    avg = "SELECT species, AVG(bill_length_mm) AS bill FROM df GROUP BY species"
    assert client.smartnoise_sql.cost(avg, epsilon=0.5, delta=1e-5)["epsilon"] == Decimal("1")
    # Per-statistic mechanisms change what is charged (Gaussian counts spend delta).
    laplace = client.smartnoise_sql.cost(avg, epsilon=1.0, delta=1e-5)
    gaussian = client.smartnoise_sql.cost(
        avg, epsilon=1.0, delta=1e-5, mechanisms={"sum_float": "gaussian"}
    )
    assert laplace != gaussian and gaussian["delta"] > laplace["delta"]

    grouped = client.smartnoise_sql.query(
        "SELECT island, sex, COUNT(*) AS n FROM df GROUP BY island, sex ORDER BY island",
        epsilon=1.0,
        delta=1e-5,
    )
    assert list(grouped.columns) == ["island", "sex", "n"]
    assert set(grouped["island"]) <= {"Torgersen", "Biscoe", "Dream"}
    assert list(grouped["island"]) == sorted(grouped["island"])

    raw = client.smartnoise_sql.query(
        "SELECT COUNT(*) AS n, SUM(body_mass_g) AS mass FROM df",
        epsilon=1.0,
        delta=1e-5,
        mechanisms={"count": "gaussian"},
        postprocess=False,
    )
    assert list(raw.columns)[:2] == ["res_0", "res_1"]
    spent = client.get_total_spent_budget()
    charged = sum((q["cost"]["epsilon"] for q in client.get_previous_queries()), Decimal(0))
    assert spent["total_spent_epsilon"] == charged


def test_private_id_metadata_bounds_each_individual(platform: Platform) -> None:
    rng_frame = make_penguin_like(rows=600, seed=5)
    rng_frame.insert(0, "bird_id", [i // 3 for i in range(len(rng_frame))])
    path = platform.data_dir / "files" / "birds.csv"
    rng_frame.to_csv(path, index=False)
    metadata = json.loads(json.dumps(platform.metadata))
    metadata.update(row_privacy=False, max_ids=3, rows=600)
    metadata["columns"] = {"bird_id": {"type": "int", "private_id": True}, **metadata["columns"]}
    with platform.admin() as admin:
        admin.add_dataset("BIRDS", local_source(path), metadata, CSV)
    client = platform.researcher("BIRDS")
    release = client.smartnoise_sql.query(
        "SELECT COUNT(DISTINCT bird_id) AS birds FROM df", epsilon=2.0, delta=1e-5
    )
    assert abs(int(release["birds"][0]) - 200) < 60
    # OpenDP charges at max_ids: three rows per bird triple the cost of a row count.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        count = (
            dp.t.make_split_dataframe(",", list(metadata["columns"]))
            >> dp.t.make_select_column("species", str)
            >> dp.t.then_count()
            >> dp.m.then_laplace(3.0)
        )
    assert client.opendp.cost(count) == {"epsilon": Decimal("1"), "delta": Decimal(0)}


def test_ledger_records_one_reservation_and_one_commit_per_query(platform: Platform) -> None:
    client = platform.researcher("HTTP_PARQUET")
    release = client.opendp.query(species_plan())
    with platform.admin() as admin:
        history = admin.ledger_history(client.user, "HTTP_PARQUET")
    mine = [e.kind for e in history if e.query_id == release.attrs["query_id"]]
    assert mine == [
        budget_pb2.LEDGER_ENTRY_KIND_RESERVATION,
        budget_pb2.LEDGER_ENTRY_KIND_ACCESS,
        budget_pb2.LEDGER_ENTRY_KIND_COMMIT,
    ]

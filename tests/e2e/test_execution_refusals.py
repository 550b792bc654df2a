"""DP execution end to end, refused: every refusal with its code and reason, no budget change
when nothing ran, and hostile pipelines refused before any data access (the queries that run are in
`test_execution_queries.py`).

The mesh and its datasets are `execution_testing.start_platform`'s.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Callable, Iterator
from decimal import Decimal
from functools import partial
from typing import Any

import opendp.prelude as dp
import polars as pl
import pytest
from execution_testing import (
    CSV,
    Platform,
    assert_refused,
    budget_state,
    ledger_kinds,
    start_platform,
)
from opendp.extras.polars import DPExpr, dp_len

from lomas.client import LomasError
from lomas.client.admin import local_source, url_source
from lomas.common.v1 import query_pb2
from lomas_embedded import demo
from lomas_testing.opendp_pipelines import mean_bill


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("execution"))


# -- refusals --------------------------------------------------------------------------------------


def test_refusals_carry_code_and_reason_and_change_no_budget(platform: Platform) -> None:
    client = platform.researcher(demo.DATASET)
    columns = list(platform.metadata["columns"])
    before = budget_state(client)
    entries = ledger_kinds(platform, client)
    unscaled = pl.LazyFrame(schema={"body_mass_g": pl.Float64}).select(
        DPExpr(pl.col("body_mass_g").fill_null(4000.0)).sum((2000.0, 7000.0))
    )
    curve = dp.c.make_zCDP_to_approxDP(mean_bill(columns, "gaussian"))
    cases: list[tuple[Callable[[], object], str, str, str]] = [
        # SmartNoise-SQL: what it cannot do
        (
            lambda: client.smartnoise_sql.query("SELECT MAX(body_mass_g) FROM df", 1.0, 0),
            "INVALID_ARGUMENT",
            "QUERY_INVALID",
            "don't know how to rewrite aggregate function",
        ),
        (
            lambda: client.smartnoise_sql.query("SELECT SUM(wings) FROM df", 1.0, 0),
            "INVALID_ARGUMENT",
            "QUERY_INVALID",
            "Column cannot be found",
        ),
        (
            lambda: client.smartnoise_sql.query(
                "SELECT AVG(bill_length_mm) FROM df", epsilon="0.000000001", delta=1e-5
            ),
            "INVALID_ARGUMENT",
            "QUERY_INVALID",
            "Noise scale is too large",
        ),
        # OpenDP: a curve needs a delta, a plan needs scales, unknown constructors are refused
        (lambda: client.opendp.query(curve), "INVALID_ARGUMENT", "QUERY_INVALID", "fixed_delta"),
        (
            lambda: client.opendp.query(unscaled),
            "INVALID_ARGUMENT",
            "QUERY_INVALID",
            "OpenDP refused the Polars plan",
        ),
        (
            lambda: client.opendp.query(unscaled, mechanism="uniform"),
            "",
            "",
            "mechanism must be one of",
        ),
    ]
    for index, (call, code, reason, text) in enumerate(cases):
        if not code:
            with pytest.raises(ValueError, match=text):
                call()
            continue
        with pytest.raises(LomasError) as refused:
            call()
        assert_refused(refused.value, code, reason, text)
        assert budget_state(client) == before, index
    assert ledger_kinds(platform, client) == entries  # not even a reservation


def test_unbounded_columns_are_refused_before_data_access(platform: Platform) -> None:
    metadata = json.loads(json.dumps(platform.metadata))
    del metadata["columns"]["body_mass_g"]["lower"], metadata["columns"]["body_mass_g"]["upper"]
    with platform.admin() as admin:
        admin.add_dataset("UNBOUNDED", url_source(platform.http.url("watched.csv")), metadata, CSV)
    client = platform.researcher("UNBOUNDED")
    reads = platform.http.count("watched.csv")
    with pytest.raises(LomasError) as refused:
        client.smartnoise_sql.query("SELECT AVG(body_mass_g) AS m FROM df", 1.0, 1e-5)
    assert_refused(
        refused.value, "INVALID_ARGUMENT", "QUERY_INVALID", "without bounds", "body_mass_g"
    )
    assert platform.http.count("watched.csv") == reads
    assert client.get_total_spent_budget() == {
        "total_spent_epsilon": Decimal(0),
        "total_spent_delta": Decimal(0),
    }


# -- hostile pipelines -----------------------------------------------------------------------------


def test_hostile_pipelines_are_refused_before_any_data_access(platform: Platform) -> None:
    """Untrusted OpenDP JSON and Polars plans, sent as raw protobuf through the real client."""
    client = platform.researcher("WATCHED")
    columns = list(platform.metadata["columns"])
    before = budget_state(client)
    entries = ledger_kinds(platform, client)
    # Registration read the source's header once; nothing below may read it again.
    reads = platform.http.count("watched.csv")

    def node(name: str, module: str, **kwargs: Any) -> dict[str, Any]:
        return {
            "__function__": name,
            "__module__": module,
            "__kwargs__": kwargs,
            "__version__": dp.__version__,
        }

    honest = json.loads(dp.serialize(mean_bill(columns)))
    smuggled = json.loads(json.dumps(honest))
    smuggled["__kwargs__"]["transformation0"] = node(
        "make_user_transformation", "transformations", function="os.system"
    )
    vector_space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()
    lying_domain = (
        vector_space >> dp.t.then_clamp((0.0, 1.0)) >> dp.t.then_sum() >> dp.m.then_laplace(1.0)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        udf_plan = (
            pl.LazyFrame(schema={"bill_length_mm": pl.Float64})
            .select(
                DPExpr(pl.col("bill_length_mm").map_batches(lambda s: s * 2)).sum(
                    (0.0, 1.0), scale=1.0
                )
            )
            .serialize(format="json")
        )
        wrong_schema = (
            pl.LazyFrame(schema={"species": pl.Float64})
            .select(dp_len(scale=1.0))
            .serialize(format="json")
        )

    cases: list[tuple[query_pb2.OpenDpQuery, str, str]] = [
        (
            query_pb2.OpenDpQuery(
                measurement_json=json.dumps(
                    node("enable_features", "mod", features=["honest-but-curious"])
                )
            ),
            "OPENDP_PIPELINE_REFUSED",
            "enable_features",
        ),
        (
            query_pb2.OpenDpQuery(
                measurement_json=json.dumps(node("make_sequential_composition", "combinators"))
            ),
            "OPENDP_PIPELINE_REFUSED",
            "not on the executor's allow-list",
        ),
        (
            query_pb2.OpenDpQuery(measurement_json=json.dumps(smuggled)),
            "OPENDP_PIPELINE_REFUSED",
            "user-defined function",
        ),
        (
            query_pb2.OpenDpQuery(polars=query_pb2.OpenDpPolarsQuery(plan_json=udf_plan)),
            "OPENDP_PIPELINE_REFUSED",
            "AnonymousFunction",
        ),
        (
            query_pb2.OpenDpQuery(measurement_json=dp.serialize(lying_domain)),
            "OPENDP_INPUT_DOMAIN_MISMATCH",
            "input domain must be the dataset as CSV text",
        ),
        (
            query_pb2.OpenDpQuery(polars=query_pb2.OpenDpPolarsQuery(plan_json=wrong_schema)),
            "OPENDP_INPUT_DOMAIN_MISMATCH",
            "'species' is Float64, but the metadata says string",
        ),
    ]
    for opendp, reason, text in cases:
        query = query_pb2.Query(opendp=opendp)
        attempts: list[Callable[[], object]] = [
            partial(client._estimate, query),
            partial(client._execute, query, {}),
            partial(client._execute, query, {"dummy": True, "nb_rows": 50, "seed": 1}),
        ]
        for call in attempts:
            with pytest.raises(LomasError) as refused:
                call()
            assert_refused(refused.value, "INVALID_ARGUMENT", reason, text)

    assert platform.http.count("watched.csv") == reads, "no hostile pipeline may read data"
    assert budget_state(client) == before
    assert ledger_kinds(platform, client) == entries
    assert client.get_previous_queries() == []


# -- metadata validation at registration -----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda md: md.pop("max_ids"), "missing required field(s): max_ids"),
        (
            lambda md: md["columns"]["bill_length_mm"].update(lower=70.0),
            "lower bound cannot be larger",
        ),
        (lambda md: md["columns"]["species"].update(cardinality=4), "must equal cardinality"),
        (lambda md: md.update(row_privacy=False), "one column must have private_id"),
        (lambda md: md["columns"]["sex"].update(type="text"), "unknown type 'text'"),
    ],
)
def test_invalid_metadata_is_refused_at_registration(
    platform: Platform, change: Callable[[dict[str, Any]], object], message: str
) -> None:
    metadata = json.loads(json.dumps(platform.metadata))
    change(metadata)
    name = f"BAD_{uuid.uuid4().hex[:6].upper()}"
    with platform.admin() as admin:
        with pytest.raises(LomasError) as refused:
            admin.add_dataset(
                name, local_source(platform.data_dir / "files" / "penguin.csv"), metadata, CSV
            )
        assert_refused(refused.value, "INVALID_ARGUMENT", "METADATA_INVALID", message)
        assert name not in {d.name for d in admin.list_datasets()}

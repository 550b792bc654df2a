"""OpenDP queries: the allow-list walk, domains from metadata, exact costs, execution.

Hostile pipelines are built the way an attacker would send them: as JSON text, not through OpenDP's
Python API (which would refuse to serialize some of them).
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path

import opendp.prelude as dp
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from opendp.extras.polars import DPExpr, dp_len

from lomas_common.errors import ExecutionFailed, InvalidQuery
from lomas_common.privacy import PrivacyLoss, engine_cost
from lomas_executor import opendp_model, opendp_polars
from lomas_executor import opendp_queries as oq
from lomas_executor.cache import DatasetCache
from lomas_executor.engine import OPENDP_CSV, OPENDP_POLARS, DatasetRef, QueryEngine
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.opendp_model import OpenDpMeasurementQuery, OpenDpPolarsQuery
from lomas_executor.sources import DataFormat, DataSource

dp.enable_features("contrib")


def mean_bill(md: DatasetMetadata, noise: str = "laplace", scale: float = 1.0) -> dp.Measurement:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pipeline = (
            dp.t.make_split_dataframe(",", list(md.column_names))
            >> dp.t.make_select_column("bill_length_mm", str)
            >> dp.t.then_cast_default(float)
            >> dp.t.then_impute_constant(40.0)
            >> dp.t.then_clamp((30.0, 65.0))
            >> dp.t.then_resize(344, 40.0)
            >> dp.t.then_mean()
        )
    measurement: dp.Measurement = pipeline >> (
        dp.m.then_laplace(scale) if noise == "laplace" else dp.m.then_gaussian(scale)
    )
    return measurement


def count_rows(md: DatasetMetadata) -> dp.Measurement:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        measurement: dp.Measurement = (
            dp.t.make_split_dataframe(",", list(md.column_names))
            >> dp.t.make_select_column("species", str)
            >> dp.t.then_count()
            >> dp.m.then_laplace(2.0)
        )
    return measurement


def plan_json(plan: pl.LazyFrame) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return plan.serialize(format="json")


SPECIES = ["Adelie", "Chinstrap", "Gentoo"]


def grouped_plan(lf: pl.LazyFrame | None = None) -> pl.LazyFrame:
    """Sum and count by species: its keys would come from the data (a threshold must hide them)."""
    lf = lf if lf is not None else pl.LazyFrame(schema=PENGUIN_SCHEMA)
    return lf.group_by("species").agg(
        DPExpr(pl.col("bill_length_mm").fill_null(40.0)).sum((30.0, 65.0), scale=100.0),
        dp_len(scale=2.0),
    )


def with_keys(plan: pl.LazyFrame, keys: Mapping[str, Sequence[object]]) -> pl.LazyFrame:
    """What OpenDP's `LazyFrameQuery.with_keys` sends: the public keys left-joined with the plan."""
    frame = pl.LazyFrame(keys, schema={k: PENGUIN_SCHEMA.get(k, pl.String) for k in keys})
    return frame.join(plan, how="left", on=list(keys), nulls_equal=True)


PENGUIN_SCHEMA = {"species": pl.String, "bill_length_mm": pl.Float64}


def penguin_plan() -> pl.LazyFrame:
    """Sum and count for every species, listed by the analyst (the keys are public)."""
    return with_keys(grouped_plan(), {"species": SPECIES})


def refused(error: pytest.ExceptionInfo[InvalidQuery], reason: str, text: str) -> None:
    assert error.value.reason == reason, error.value
    assert text in error.value.message, error.value.message


# -- costs -----------------------------------------------------------------------------------------


def test_measurement_costs_follow_the_privacy_measure(penguin_md: DatasetMetadata) -> None:
    laplace = OpenDpMeasurementQuery(dp.serialize(mean_bill(penguin_md)))
    epsilon = oq.estimate_cost(laplace, penguin_md)
    assert epsilon.definition.value == "pure_dp"
    # mean of 344 clamped values in [30, 65], Laplace scale 1: sensitivity 35/344 (OpenDP rounds up)
    assert Decimal("0.1017") < epsilon.epsilon < Decimal("0.1018")
    assert oq.estimate_cost(
        OpenDpMeasurementQuery(dp.serialize(count_rows(penguin_md))), penguin_md
    ) == (PrivacyLoss.pure_dp(Decimal("0.5")))

    gaussian = mean_bill(penguin_md, "gaussian")
    rho = oq.estimate_cost(OpenDpMeasurementQuery(dp.serialize(gaussian)), penguin_md)
    assert rho.definition.value == "rho_zcdp"
    assert rho.rho == engine_cost(gaussian.map(1), name="rho")

    fixed = oq.estimate_cost(
        OpenDpMeasurementQuery(dp.serialize(gaussian), fixed_delta=Decimal("1e-6")), penguin_md
    )
    assert fixed.definition.value == "approx_dp" and fixed.delta == Decimal("0.000001")
    profile = dp.c.make_zCDP_to_approxDP(gaussian).map(1)
    assert fixed.epsilon == engine_cost(profile.epsilon(delta=1e-6), name="epsilon")

    curve = dp.serialize(dp.c.make_zCDP_to_approxDP(gaussian))
    with pytest.raises(InvalidQuery, match="curve: give fixed_delta") as no_delta:
        oq.estimate_cost(OpenDpMeasurementQuery(curve), penguin_md)
    assert no_delta.value.reason == "QUERY_INVALID"
    at_delta = oq.estimate_cost(OpenDpMeasurementQuery(curve, Decimal("1e-6")), penguin_md)
    assert at_delta == fixed

    approx = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(gaussian), 1e-7)
    loss = oq.estimate_cost(OpenDpMeasurementQuery(dp.serialize(approx)), penguin_md)
    assert loss.definition.value == "approx_dp" and loss.delta == Decimal("1E-7")


def test_cost_is_taken_at_max_ids(penguin_md: DatasetMetadata) -> None:
    doubled = DatasetMetadata.from_dict({**penguin_md.to_dict(), "max_ids": 2})
    query = OpenDpMeasurementQuery(dp.serialize(count_rows(penguin_md)))
    assert oq.estimate_cost(query, doubled) == PrivacyLoss.pure_dp(Decimal("1"))


def test_polars_costs_and_margins_come_from_the_metadata(penguin_md: DatasetMetadata) -> None:
    laplace = OpenDpPolarsQuery(plan_json(penguin_plan()))
    # sum: 65 * max_ids / 100 (keys are public: the analyst lists them); len: 1 / 2
    epsilon = oq.estimate_cost(laplace, penguin_md)
    assert epsilon.definition.value == "pure_dp"
    assert Decimal("1.15") <= epsilon.epsilon < Decimal("1.1500001")  # OpenDP rounds up
    gaussian = OpenDpPolarsQuery(plan_json(penguin_plan()), mechanism="gaussian")
    assert oq.estimate_cost(gaussian, penguin_md).definition.value == "rho_zcdp"

    # Keys from the data need a threshold (approximate DP), with or without censor_dims.
    for md in (
        penguin_md,
        DatasetMetadata.from_dict({**penguin_md.to_dict(), "censor_dims": True}),
    ):
        with pytest.raises(InvalidQuery) as error:
            oq.estimate_cost(OpenDpPolarsQuery(plan_json(grouped_plan())), md)
        refused(error, opendp_model.GROUP_KEYS_NOT_PUBLIC, "OpenDP refused the Polars plan")
        thresholded = OpenDpPolarsQuery(plan_json(grouped_plan()), threshold=50)
        loss = oq.estimate_cost(thresholded, md)
        assert loss.definition.value == "approx_dp" and 0 < loss.delta < Decimal("1e-9")
        assert loss.epsilon == epsilon.epsilon
    gaussian_keys = OpenDpPolarsQuery(plan_json(grouped_plan()), "gaussian", threshold=50)
    with pytest.raises(InvalidQuery, match="give fixed_delta"):
        oq.estimate_cost(gaussian_keys, penguin_md)
    at_delta = OpenDpPolarsQuery(
        plan_json(grouped_plan()), "gaussian", threshold=50, fixed_delta=Decimal("1e-6")
    )
    loss = oq.estimate_cost(at_delta, penguin_md)
    assert Decimal("1e-6") < loss.delta < Decimal("1.001e-6")

    unscaled = pl.LazyFrame(schema={"body_mass_g": pl.Float64}).select(
        DPExpr(pl.col("body_mass_g").fill_null(4000.0)).sum((2000.0, 7000.0))
    )
    with pytest.raises(InvalidQuery, match="OpenDP refused"):
        oq.estimate_cost(OpenDpPolarsQuery(plan_json(unscaled)), penguin_md)
    # OpenDP's global_scale multiplies each expression's sensitivity: epsilon is 1 / global_scale.
    scaled = OpenDpPolarsQuery(plan_json(unscaled), global_scale=4.0)
    assert Decimal("0.25") <= oq.estimate_cost(scaled, penguin_md).epsilon < Decimal("0.2500001")


def test_polars_measurements_take_only_the_columns_a_plan_names(
    penguin_md: DatasetMetadata, penguin_frame: pd.DataFrame
) -> None:
    """OpenDP copies its whole input: a plan gets the columns it names, at the same cost as over
    every column; a plan that may pick columns otherwise (a wildcard, a regex) gets them all."""
    lf = pl.LazyFrame(schema={name: pl.Float64 for name in ("bill_length_mm", "body_mass_g")})
    table = pa.Table.from_pandas(penguin_frame, schema=penguin_md.arrow_schema())
    frame = oq.prepare_polars(table, penguin_md)
    narrowed = {
        "count": (lf.select(dp_len(scale=1.0)), ["bill_length_mm"]),  # the cheapest: no string
        "grouped": (penguin_plan(), ["species", "bill_length_mm"]),
    }
    for name, (plan, columns) in narrowed.items():
        query = OpenDpPolarsQuery(plan_json(plan))
        measurement = oq.build_measurement(query, penguin_md)
        assert list(measurement.input_domain.columns) == columns, name
        tree = json.loads(query.plan_json)
        facts = opendp_polars.check_polars_plan(tree, penguin_md)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            every_column = dp.m.make_private_lazyframe(
                opendp_polars.lazyframe_domain(penguin_md, facts.group_keys),
                dp.symmetric_distance(),
                dp.max_divergence(),
                pl.LazyFrame.deserialize(io.StringIO(json.dumps(tree)), format="json"),
            )
        assert measurement.map(penguin_md.max_ids) == every_column.map(penguin_md.max_ids), name
        assert len(oq.execute(query, frame, penguin_md, measurement)) >= 1, name

    wildcard = lf.select(DPExpr(pl.all().fill_null(40.0)).sum((30.0, 65.0), scale=100.0))
    regex = lf.select(DPExpr(pl.col("^b.*$").fill_null(40.0)).sum((30.0, 65.0), scale=100.0))
    for plan in (wildcard, regex):
        facts = opendp_polars.check_polars_plan(json.loads(plan_json(plan)), penguin_md)
        assert facts.named_columns is None


def test_measurements_must_take_the_metadata_domain(penguin_md: DatasetMetadata) -> None:
    vector = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()
    wrong_domain = (
        vector >> dp.t.then_clamp((0.0, 1.0)) >> dp.t.then_sum() >> dp.m.then_laplace(1.0)
    )
    with pytest.raises(InvalidQuery) as error:
        oq.estimate_cost(OpenDpMeasurementQuery(dp.serialize(wrong_domain)), penguin_md)
    refused(error, opendp_model.INPUT_DOMAIN_MISMATCH, "must be the dataset as CSV text")

    other_columns = DatasetMetadata.from_dict(
        {**penguin_md.to_dict(), "columns": {"bill_length_mm": penguin_md.column("bill_length_mm")}}
    )
    with pytest.raises(InvalidQuery) as error:
        oq.estimate_cost(OpenDpMeasurementQuery(dp.serialize(mean_bill(penguin_md))), other_columns)
    refused(
        error,
        opendp_model.INPUT_DOMAIN_MISMATCH,
        "must name the dataset's columns in metadata order",
    )

    not_a_measurement = dp.serialize(dp.t.make_split_dataframe(",", list(penguin_md.column_names)))
    with pytest.raises(InvalidQuery, match="must be a measurement"):
        oq.estimate_cost(OpenDpMeasurementQuery(not_a_measurement), penguin_md)


def test_malformed_and_mismatched_json_is_invalid(penguin_md: DatasetMetadata) -> None:
    with pytest.raises(InvalidQuery, match="not valid JSON"):
        oq.estimate_cost(OpenDpMeasurementQuery("{"), penguin_md)
    with pytest.raises(InvalidQuery, match="is empty"):
        OpenDpMeasurementQuery("  ")
    with pytest.raises(InvalidQuery, match="one serialized OpenDP measurement"):
        oq.estimate_cost(OpenDpMeasurementQuery("[1, 2]"), penguin_md)
    old = json.loads(dp.serialize(count_rows(penguin_md)))
    old["__version__"] = "0.9.0"
    with pytest.raises(InvalidQuery, match=r"built with OpenDP 0\.9\.0"):
        oq.estimate_cost(OpenDpMeasurementQuery(json.dumps(old)), penguin_md)
    with pytest.raises(InvalidQuery, match=r"nested too deeply|more than"):
        oq.estimate_cost(OpenDpMeasurementQuery("[" * 100_000 + "]" * 100_000), penguin_md)
    with pytest.raises(InvalidQuery, match="fixed_delta"):
        OpenDpMeasurementQuery("{}", fixed_delta=Decimal("1"))


def test_hostile_polars_plans_are_refused_before_deserializing(
    penguin_md: DatasetMetadata, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lf = pl.LazyFrame(schema={"bill_length_mm": pl.Float64})
    (tmp_path / "secret.csv").write_text("bill_length_mm\n1.0\n")
    cases = {
        "AnonymousFunction": lf.select(pl.col("bill_length_mm").map_batches(lambda s: s * 2)),
        "OpaquePython": lf.map_batches(lambda frame: frame),
        "Scan": pl.scan_csv(tmp_path / "secret.csv").select(dp_len(scale=1.0)),
    }
    real = pl.LazyFrame.deserialize

    def never(*_: object, **__: object) -> None:
        raise AssertionError("the plan must not be deserialized")

    monkeypatch.setattr(pl.LazyFrame, "deserialize", never)
    for node, plan in cases.items():
        with pytest.raises(InvalidQuery) as error:
            oq.estimate_cost(OpenDpPolarsQuery(plan_json(plan)), penguin_md)
        refused(error, opendp_model.PIPELINE_REFUSED, node)

    # A plugin that is not OpenDP's, and OpenDP's symbol in another library.
    tree = json.loads(plan_json(lf.select(dp_len(scale=1.0))))
    plugin = next(
        node["FfiPlugin"]
        for _, node in opendp_model.walk(tree)
        if isinstance(node, dict) and "FfiPlugin" in node
    )
    for lib, symbol in (("/tmp/evil.so", "dp_len"), (plugin["lib"], "shell")):
        plugin.update(lib=lib, symbol=symbol)
        with pytest.raises(InvalidQuery) as error:
            oq.estimate_cost(OpenDpPolarsQuery(json.dumps(tree)), penguin_md)
        refused(error, opendp_model.PIPELINE_REFUSED, "not one of OpenDP's dp expressions")

    # Pickled bytes anywhere are refused, whatever node carries them.
    sneaky = {"Select": {"expr": [], "input": {"DataFrameScan": {"df": list(b"PLPYFN\x80\x05")}}}}
    with pytest.raises(InvalidQuery) as error:
        oq.estimate_cost(OpenDpPolarsQuery(json.dumps(sneaky)), penguin_md)
    refused(error, opendp_model.PIPELINE_REFUSED, "pickled Python object")
    monkeypatch.setattr(pl.LazyFrame, "deserialize", real)


def test_polars_plans_must_agree_with_the_metadata(penguin_md: DatasetMetadata) -> None:
    wrong_type = pl.LazyFrame(schema={"species": pl.Int64}).select(dp_len(scale=1.0))
    with pytest.raises(InvalidQuery) as error:
        oq.estimate_cost(OpenDpPolarsQuery(plan_json(wrong_type)), penguin_md)
    refused(
        error,
        opendp_model.INPUT_DOMAIN_MISMATCH,
        "'species' is Int64, but the metadata says string",
    )
    unknown = pl.LazyFrame(schema={"salary": pl.Float64}).select(dp_len(scale=1.0))
    with pytest.raises(InvalidQuery) as error:
        oq.estimate_cost(OpenDpPolarsQuery(plan_json(unknown)), penguin_md)
    refused(error, opendp_model.INPUT_DOMAIN_MISMATCH, "column 'salary'")
    # Column names are data, not plan nodes: a column may be called "python_scan".
    md = DatasetMetadata.from_dict(
        {"max_ids": 1, "rows": 10, "row_privacy": True, "columns": {"python_scan": {"type": "int"}}}
    )
    fine = pl.LazyFrame(schema={"python_scan": pl.Int64}).select(dp_len(scale=1.0))
    assert oq.estimate_cost(OpenDpPolarsQuery(plan_json(fine)), md) == PrivacyLoss.pure_dp(
        Decimal("1")
    )


# -- execution -------------------------------------------------------------------------------------


def _dataset(path: Path | str, md: DatasetMetadata, version: int = 1) -> DatasetRef:
    path = Path(path)
    fmt = DataFormat.PARQUET if path.suffix == ".parquet" else DataFormat.CSV
    return DatasetRef("PENGUIN", version, DataSource.local(path), fmt, md)


def test_engine_runs_both_forms_and_caches_their_inputs(
    penguin_csv: Path, penguin_md: DatasetMetadata
) -> None:
    cache = DatasetCache(max_bytes=256 * 1024**2)
    engine = QueryEngine(cache)
    dataset = _dataset(penguin_csv, penguin_md)
    release = engine.run(OpenDpMeasurementQuery(dp.serialize(mean_bill(penguin_md))), dataset)
    assert list(release.columns) == ["value"] and len(release) == 1
    assert 30 <= release["value"][0] <= 65

    loaded = engine.load(dataset)
    assert loaded.has(OPENDP_CSV) and not loaded.has(OPENDP_POLARS)
    before = cache.stats().bytes
    frame = engine.run(OpenDpPolarsQuery(plan_json(penguin_plan())), dataset)
    assert list(frame.columns) == ["species", "bill_length_mm", "len"]
    assert sorted(frame["species"]) == ["Adelie", "Chinstrap", "Gentoo"]
    assert loaded.has(OPENDP_POLARS) and cache.stats().bytes > before
    assert cache.stats().misses == 1  # one load for both engines

    # A new version replaces the old one in the cache, table and preparations alike.
    engine.run(OpenDpPolarsQuery(plan_json(penguin_plan())), _dataset(penguin_csv, penguin_md, 2))
    assert cache.keys() == [("PENGUIN", 2)]


def test_engine_validates_before_loading_and_runs_dummies_without_data(
    tmp_path: Path, penguin_md: DatasetMetadata
) -> None:
    cache = DatasetCache(max_bytes=64 * 1024**2)
    engine = QueryEngine(cache)
    missing = _dataset(tmp_path / "absent.csv", penguin_md)
    with pytest.raises(InvalidQuery):
        hostile = {"__function__": "new_function", "__module__": "core", "__kwargs__": {}}
        engine.run(OpenDpMeasurementQuery(json.dumps(hostile)), missing)
    with pytest.raises(InvalidQuery, match="OpenDP refused"):  # private keys need a threshold
        engine.run(OpenDpPolarsQuery(plan_json(grouped_plan())), missing)
    assert cache.stats().misses == 0

    measurement = OpenDpMeasurementQuery(dp.serialize(count_rows(penguin_md)))
    dummy = engine.run_dummy(measurement, missing, rows=500, seed=1)
    assert list(dummy.columns) == ["value"] and 400 < dummy["value"][0] < 600
    polars = engine.run_dummy(
        OpenDpPolarsQuery(plan_json(penguin_plan())), missing, rows=300, seed=1
    )
    assert set(polars["species"]) <= {"Adelie", "Chinstrap", "Gentoo"}
    assert cache.stats().misses == 0


def test_failures_after_data_access_name_only_the_error_class(penguin_md: DatasetMetadata) -> None:
    query = OpenDpPolarsQuery(plan_json(penguin_plan()))
    # Data that does not fit the domain fails inside OpenDP: no cell value may leak.
    secret = "SECRET-VALUE-123"
    data = pl.DataFrame({"species": [secret] * 3, "bill_length_mm": ["x"] * 3})
    with pytest.raises(ExecutionFailed) as error:
        oq.execute(query, data, penguin_md)
    assert error.value.reason == "QUERY_EXECUTION_FAILED"
    assert secret not in str(error.value) and "OpenDP failed" in error.value.message


def test_releases_become_frames() -> None:
    assert oq.release_frame(1.5).to_dict("list") == {"value": [1.5]}
    assert oq.release_frame([1, 2]).to_dict("list") == {"value": [1, 2]}
    assert oq.release_frame({"a": 1, "b": 2}).to_dict("list") == {
        "key": ["a", "b"],
        "value": [1, 2],
    }
    assert oq.release_frame([[1, 2], 3]).to_dict("list") == {"value": ["[[1, 2], 3]"]}


def test_prepared_inputs_follow_the_metadata(
    penguin_frame: pd.DataFrame, penguin_md: DatasetMetadata
) -> None:
    shuffled = pa.Table.from_pandas(penguin_frame[list(reversed(penguin_frame.columns))])
    text = oq.prepare_csv(shuffled, penguin_md)
    first = text.splitlines()[0].split(",")
    assert len(first) == len(penguin_md.column_names) and first[0] in {
        "Adelie",
        "Chinstrap",
        "Gentoo",
    }
    frame = oq.prepare_polars(shuffled, penguin_md)
    assert frame.columns == list(penguin_md.column_names)
    assert frame.schema["bill_length_mm"] == pl.Float64


# -- group keys ------------------------------------------------------------------------------------


def test_group_keys_never_come_from_the_data(
    penguin_csv: Path, penguin_md: DatasetMetadata
) -> None:
    """A species the data lacks is released all the same (with noise) when the analyst lists the
    keys; without keys or a threshold the plan is refused before anything is read; a threshold
    is charged its delta."""
    cache = DatasetCache(max_bytes=64 * 1024**2)
    engine = QueryEngine(cache)
    dataset = _dataset(penguin_csv, penguin_md)
    no_gentoo = pl.LazyFrame(schema=PENGUIN_SCHEMA).filter(pl.col("species") != "Gentoo")

    unkeyed = OpenDpPolarsQuery(plan_json(grouped_plan(no_gentoo)))
    with pytest.raises(InvalidQuery) as error:
        engine.run(unkeyed, dataset)
    refused(error, opendp_model.GROUP_KEYS_NOT_PUBLIC, "join a public key set (with_keys)")
    assert cache.stats().misses == 0  # refused before the data was read

    keyed = OpenDpPolarsQuery(plan_json(with_keys(grouped_plan(no_gentoo), {"species": SPECIES})))
    assert oq.estimate_cost(keyed, penguin_md).definition.value == "pure_dp"
    release = engine.run(keyed, dataset)
    assert sorted(release["species"]) == SPECIES
    dummy = engine.run_dummy(keyed, dataset, rows=200, seed=3)
    assert sorted(dummy["species"]) == SPECIES

    thresholded = OpenDpPolarsQuery(plan_json(grouped_plan(no_gentoo)), threshold=20)
    loss = oq.estimate_cost(thresholded, penguin_md)
    assert loss.definition.value == "approx_dp" and loss.delta > 0
    assert "Gentoo" not in set(engine.run(thresholded, dataset)["species"])


def _keyed(
    keys: Mapping[str, Sequence[object]], schema: Mapping[str, pl.DataType | type[pl.DataType]]
) -> str:
    frame = pl.LazyFrame(keys, schema=schema)
    plan = frame.join(grouped_plan(), how="left", on=list(keys), nulls_equal=True)
    return plan_json(plan)


@pytest.mark.parametrize(
    ("keys", "schema", "reason", "text"),
    [
        (
            {"species": ["Adelie", "Emperor"]},
            {"species": pl.String},
            opendp_model.PIPELINE_REFUSED,
            "not among its declared categories",
        ),
        (
            {"species": ["Adelie", None]},
            {"species": pl.String},
            opendp_model.PIPELINE_REFUSED,
            "not nullable",
        ),
        (
            {"bill_length_mm": [40.0]},
            {"bill_length_mm": pl.Float64},
            opendp_model.PIPELINE_REFUSED,
            "declares no categories",
        ),
        (
            {"salary": [1.0]},
            {"salary": pl.Float64},
            opendp_model.INPUT_DOMAIN_MISMATCH,
            "'salary'",
        ),
        (
            {"species": SPECIES * 40_000},
            {"species": pl.String},
            opendp_model.QUERY_LIMIT_EXCEEDED,
            "maxElements",
        ),
    ],
    ids=["unknown-category", "null", "no-categories", "unknown-column", "too-many-rows"],
)
def test_literal_frames_may_only_list_declared_categories(
    keys: dict[str, list[object]],
    schema: dict[str, pl.DataType],
    reason: str,
    text: str,
    penguin_md: DatasetMetadata,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A literal frame in a plan is the analyst's public key set: it cannot carry a column or a
    value the metadata does not declare public (and nothing is deserialized before that check)."""
    query = OpenDpPolarsQuery(_keyed(keys, schema))

    def never(*_: object, **__: object) -> None:
        raise AssertionError("the plan must not be deserialized")

    monkeypatch.setattr(pl.LazyFrame, "deserialize", never)
    with pytest.raises(InvalidQuery) as error:
        oq.estimate_cost(query, penguin_md)
    refused(error, reason, text)


def test_a_literal_frame_must_be_readable_and_match_its_schema(
    penguin_md: DatasetMetadata,
) -> None:
    tree = json.loads(_keyed({"species": SPECIES}, {"species": pl.String}))
    scans = [
        n["DataFrameScan"]
        for _, n in opendp_model.walk(tree)
        if isinstance(n, dict) and "DataFrameScan" in n
    ]
    keys = next(scan for scan in scans if scan["schema"]["fields"] == {"species": "String"})
    original = list(keys["df"])
    for df, fields in (
        (original[:40], {"species": "String"}),  # truncated Arrow stream
        ("AAAA", {"species": "String"}),  # not bytes
        (original, {"island": "String"}),  # the schema names another column
    ):
        keys["df"], keys["schema"]["fields"] = df, fields
        with pytest.raises(InvalidQuery) as error:
            oq.estimate_cost(OpenDpPolarsQuery(json.dumps(tree)), penguin_md)
        refused(error, opendp_model.PIPELINE_REFUSED, "malformed literal frame")

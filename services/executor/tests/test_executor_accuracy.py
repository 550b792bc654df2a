"""Accuracy before spending: the half-width the engine announces for each column must match the
spread of real dummy releases (at least 1,000 of each) within 10 %: the engines' noise, not a model
of it."""

from __future__ import annotations

import warnings
from decimal import Decimal

import numpy as np
import polars as pl
import pytest
from opendp.extras.polars import dp_len

from lomas_common.errors import InvalidArgument
from lomas_executor import convert
from lomas_executor.cache import DatasetCache
from lomas_executor.engine import DatasetRef, Query, QueryEngine
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.opendp_model import OpenDpMeasurementQuery, OpenDpPolarsQuery
from lomas_executor.smartnoise_sql import SmartnoiseSqlQuery
from lomas_executor.sources import DataFormat, DataSource
from lomas_testing.opendp_pipelines import mean_bill, species_plan

DRAWS = 1000
ROWS, SEED = 200, 3
SQL = "SELECT COUNT(*) AS n, SUM(bill_length_mm) AS s, AVG(bill_length_mm) AS a FROM df"
# Four like columns: one release then gives four independent draws of each statistic's noise, so
# 1,000 releases measure the 95 % half-width to about 2.3 % (one column alone: about 5 %).
WIDE = [f"x{i}" for i in range(4)]


@pytest.fixture(scope="module")
def engine() -> QueryEngine:
    return QueryEngine(DatasetCache(max_bytes=0))


@pytest.fixture(scope="module")
def dataset(penguin_md: DatasetMetadata) -> DatasetRef:
    # Accuracy and dummy runs never read the source.
    return DatasetRef("PENGUIN", 1, DataSource.local("/absent.csv"), DataFormat.CSV, penguin_md)


@pytest.fixture(scope="module")
def wide() -> DatasetRef:
    metadata = DatasetMetadata.from_dict(
        {
            "max_ids": 1,
            "row_privacy": True,
            "rows": 100,
            "columns": {
                name: {"type": "float", "precision": 64, "lower": 0.0, "upper": 10.0}
                for name in WIDE
            },
        }
    )
    return DatasetRef("WIDE", 1, DataSource.local("/absent.csv"), DataFormat.CSV, metadata)


def assert_announced_matches_drawn(
    engine: QueryEngine,
    query: Query,
    dataset: DatasetRef,
    groups: list[list[str]],
    draws: int = DRAWS,
) -> None:
    """For each group of like columns, the 95 % half-width of the releases' noise, measured over
    `draws` dummy releases (around each column's mean: the noise is centred) and pooled over the
    group after dividing each column by its announced half-width, is the announced one within 10 %."""
    announced = {c.column: c.half_width for c in engine.estimate_accuracy(query, dataset, 0.05)}
    releases = [engine.run_dummy(query, dataset, ROWS, SEED) for _ in range(draws)]
    for columns in groups:
        scaled = []
        for column in columns:
            width = announced[column]
            assert width is not None
            values = np.array([float(release[column].iloc[0]) for release in releases])
            scaled.append(np.abs(values - values.mean()) / width)
        ratio = float(np.quantile(np.concatenate(scaled), 0.95))
        assert abs(ratio - 1) <= 0.10, (columns, ratio)


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_smartnoise_sql_count_and_sum(
    engine: QueryEngine, dataset: DatasetRef, wide: DatasetRef, mechanism: str
) -> None:
    mechanisms = {"count": mechanism, "sum_float": mechanism}
    query = SmartnoiseSqlQuery(SQL, Decimal("0.3"), Decimal("0.00001"), mechanisms)
    accuracy = engine.estimate_accuracy(query, dataset, 0.05)
    assert [c.column for c in accuracy] == ["n", "s", "a"]
    assert accuracy[0].distribution == mechanism.capitalize()
    # An average is a ratio of two noisy values: no closed form, and none is claimed.
    assert accuracy[2].half_width is None
    # Small epsilon, large noise: integer releases are fine-grained next to their half-width.
    statistics = [f"COUNT({c}) AS n_{c}" for c in WIDE] + [f"SUM({c}) AS s_{c}" for c in WIDE]
    many = SmartnoiseSqlQuery(
        f"SELECT {', '.join(statistics)} FROM df", Decimal("0.05"), Decimal("0.00001"), mechanisms
    )
    groups = [[f"n_{c}" for c in WIDE], [f"s_{c}" for c in WIDE]]
    assert_announced_matches_drawn(engine, many, wide, groups)


@pytest.mark.parametrize("noise", ["laplace", "gaussian"])
def test_opendp_measurement(
    engine: QueryEngine, dataset: DatasetRef, penguin_md: DatasetMetadata, noise: str
) -> None:
    import opendp.prelude as dp

    measurement = mean_bill(list(penguin_md.column_names), noise=noise)
    query = OpenDpMeasurementQuery(dp.serialize(measurement))
    (value,) = engine.estimate_accuracy(query, dataset, 0.05)
    assert (value.column, value.distribution) == ("value", noise.capitalize())
    # Fast to draw: 3,000 releases measure one column's half-width to about 2.7 %.
    assert_announced_matches_drawn(engine, query, dataset, [["value"]], draws=3000)


def test_opendp_polars_count(engine: QueryEngine, dataset: DatasetRef) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = pl.LazyFrame(schema={"species": pl.String}).select(dp_len(scale=20.0))
        query = OpenDpPolarsQuery(plan.serialize(format="json"))
    (length,) = engine.estimate_accuracy(query, dataset, 0.05)
    assert (length.column, length.distribution) == ("len", "Integer Laplace")
    assert_announced_matches_drawn(engine, query, dataset, [["len"]], draws=2500)


def test_a_polars_mean_has_no_single_interval(engine: QueryEngine, dataset: DatasetRef) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        query = OpenDpPolarsQuery(species_plan().serialize(format="json"))
    by_column = {c.column: c for c in engine.estimate_accuracy(query, dataset, 0.05)}
    assert by_column["len"].half_width is not None
    assert by_column["bill_length_mm"].half_width is None
    assert "Sum" in by_column["bill_length_mm"].distribution


@pytest.mark.parametrize("alpha", ["0", "1", "1.5", "-0.1", "nan", "abc", ""])
def test_alpha_must_be_strictly_between_0_and_1(alpha: str) -> None:
    with pytest.raises(InvalidArgument):
        convert.alpha_from_text(alpha)


def test_a_smaller_alpha_widens_the_interval(engine: QueryEngine, dataset: DatasetRef) -> None:
    query = SmartnoiseSqlQuery("SELECT COUNT(*) AS n FROM df", Decimal("1"), Decimal("0.00001"))
    (at_95,) = engine.estimate_accuracy(query, dataset, 0.05)
    (at_99,) = engine.estimate_accuracy(query, dataset, 0.01)
    assert at_95.half_width is not None and at_99.half_width is not None
    assert at_99.half_width > at_95.half_width

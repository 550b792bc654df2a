"""SmartNoise-Synth syntheses through the engine: real data, dummy data, and what never touches data."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from snsynth.transform import TableTransformer

from lomas_common.errors import InvalidQuery
from lomas_common.privacy import PrivacyLoss
from lomas_executor import smartnoise_synth as ss
from lomas_executor import smartnoise_synth_run as run
from lomas_executor.cache import DatasetCache
from lomas_executor.engine import DatasetRef, QueryEngine
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.settings import SqlLimits, SynthLimits
from lomas_executor.smartnoise_synth import SmartnoiseSynthQuery
from lomas_executor.sources import DataFormat, DataSource

SPECIES = {"Adelie", "Chinstrap", "Gentoo"}
ISLANDS = {"Biscoe", "Dream", "Torgersen"}


def _dataset(path: Path, md: DatasetMetadata) -> DatasetRef:
    return DatasetRef("PENGUIN", 1, DataSource.local(path), DataFormat.CSV, md)


def _mst(**fields: Any) -> SmartnoiseSynthQuery:
    fields = {"epsilon": Decimal("1"), "select_cols": ("species", "island"), **fields}
    return SmartnoiseSynthQuery("mst", **fields)


def test_samples_have_exactly_the_selected_columns_and_rows(
    penguin_csv: Path, penguin_md: DatasetMetadata
) -> None:
    cache = DatasetCache(max_bytes=64 * 1024**2)
    engine = QueryEngine(cache)
    dataset = _dataset(penguin_csv, penguin_md)
    samples = engine.run(_mst(nb_samples=25, nullable=False), dataset)
    assert list(samples.columns) == ["species", "island"]
    assert len(samples) == 25
    assert set(samples["species"]) <= SPECIES and set(samples["island"]) <= ISLANDS
    assert cache.stats().misses == 1


def test_cost_and_dummy_runs_never_read_the_data(
    tmp_path: Path, penguin_md: DatasetMetadata
) -> None:
    cache = DatasetCache(max_bytes=64 * 1024**2)
    engine = QueryEngine(cache)
    dataset = _dataset(tmp_path / "absent.csv", penguin_md)
    query = _mst(nb_samples=12, delta=Decimal("0.00001"))
    assert engine.estimate_cost(query, dataset) == PrivacyLoss.approx_dp(
        Decimal("1"), Decimal("0.00001")
    )
    samples = engine.run_dummy(query, dataset, rows=100, seed=1)
    assert list(samples.columns) == ["species", "island"] and len(samples) == 12
    assert cache.stats().misses == 0
    # Refusals come before any data access, on the real path too.
    with pytest.raises(InvalidQuery, match="return"):
        engine.run(_mst(return_model=True), dataset)
    with pytest.raises(InvalidQuery, match="no accuracy estimate"):
        engine.estimate_accuracy(query, dataset, 0.05)
    assert cache.stats().misses == 0


def test_categories_and_bounds_come_from_the_metadata_never_from_the_data(
    penguin_md: DatasetMetadata,
) -> None:
    """Values outside the public domain never reach the samples, and the transformers are fitted
    before they see any data, spending no preprocessor epsilon."""
    plan = ss.plan(
        SmartnoiseSynthQuery(
            "mwem",
            Decimal("5"),
            select_cols=("species", "flipper_length_mm"),
            nullable=False,
            nb_samples=300,
            synth_params_json='{"iterations": 10}',
        ),
        penguin_md,
        SynthLimits(),
        SqlLimits(),
    )
    transformer = run.table_transformer(plan)
    assert transformer.fit_complete and transformer.odometer.spent == (0.0, 0.0)
    assert transformer.cardinality == [3, 10]
    # Private data with a secret category and values far outside the bounds (and one species only).
    private = pd.DataFrame(
        {
            "species": ["SECRET"] * 50 + ["Gentoo"] * 150,
            "flipper_length_mm": np.r_[np.full(100, 10_000.0), np.full(100, 200.0)],
        }
    )
    frame = run.private_frame(plan, private)
    assert len(frame) == 150  # the secret category is missing, and non-nullable rows are dropped
    samples = run.execute(plan, private)
    assert list(samples.columns) == ["species", "flipper_length_mm"] and len(samples) == 300
    assert set(samples["species"]) <= SPECIES  # all three public species can appear
    # Bin midpoints between the metadata's bounds (150 to 250, 10 bins), whatever the data says.
    assert set(samples["flipper_length_mm"]) <= {155.0 + 10 * k for k in range(10)}


def test_conditional_sampling(penguin_frame: pd.DataFrame, penguin_md: DatasetMetadata) -> None:
    plan = ss.plan(
        _mst(nb_samples=20, condition="species = 'Gentoo'", epsilon=Decimal("5")),
        penguin_md,
        SynthLimits(),
        SqlLimits(),
    )
    samples = run.execute(plan, penguin_frame)
    assert list(samples.columns) == ["species", "island"]
    assert 0 < len(samples) <= 20 and set(samples["species"]) == {"Gentoo"}


@pytest.mark.parametrize("nullable", [True, False])
def test_the_vectorised_transform_gives_the_library_s_codes(
    penguin_frame: pd.DataFrame, penguin_md: DatasetMetadata, nullable: bool
) -> None:
    plan = ss.plan(
        SmartnoiseSynthQuery(
            "mst",
            Decimal("1"),
            select_cols=("species", "sex", "bill_length_mm", "body_mass_g"),
            nullable=nullable,
        ),
        penguin_md,
        SynthLimits(),
        SqlLimits(),
    )
    frame = run.private_frame(plan, penguin_frame)
    assert frame.isna().any().any() == nullable  # nulls stay only where they are modelled
    transformer = run.table_transformer(plan)
    library = np.array(TableTransformer.transform(transformer, frame))
    np.testing.assert_array_equal(transformer.transform(frame), library)
    assert library.shape == (len(frame), 6 if nullable else 4)

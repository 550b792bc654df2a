"""OpenDP pipelines on the PENGUIN-like data, in the two forms Lomas accepts, for tests and benches
(each builds the same pipelines: the platform's runs and the in-process floors must match)."""

from __future__ import annotations

import warnings

import opendp.prelude as dp
import polars as pl
from opendp.extras.polars import DPExpr, dp_len

SPECIES = ["Adelie", "Chinstrap", "Gentoo"]


def mean_bill(columns: list[str], noise: str = "laplace", impute: float = 40.0) -> dp.Measurement:
    """The Lomas "legacy" form (the measurement reads the dataset as CSV text): the mean bill
    length, missing values imputed with `impute` (another constant: another JSON, the same cost)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pipeline = (
            dp.t.make_split_dataframe(",", columns)
            >> dp.t.make_select_column("bill_length_mm", str)
            >> dp.t.then_cast_default(float)
            >> dp.t.then_impute_constant(impute)
            >> dp.t.then_clamp((30.0, 65.0))
            >> dp.t.then_resize(344, impute)
            >> dp.t.then_mean()
        )
    measurement: dp.Measurement = pipeline >> (
        dp.m.then_laplace(0.5) if noise == "laplace" else dp.m.then_gaussian(0.5)
    )
    return measurement


def species_plan(fill: float = 40.0) -> pl.LazyFrame:
    """An OpenDP Polars query: count and mean bill length per species, every declared species
    released (the public key set joined in, as OpenDP's `with_keys` does); nulls filled with
    `fill` (another constant: another plan, the same cost)."""
    grouped = (
        pl.LazyFrame(schema={"species": pl.String, "bill_length_mm": pl.Float64})
        .group_by("species")
        .agg(
            dp_len(scale=2.0),
            # `DPExpr(e).mean` is `e.dp.mean`: OpenDP registers the `dp` namespace at run time.
            DPExpr(pl.col("bill_length_mm").fill_null(fill)).mean((30.0, 65.0), scale=65.0),
        )
    )
    keys = pl.LazyFrame({"species": SPECIES})
    return keys.join(grouped, on="species", how="left", nulls_equal=True)

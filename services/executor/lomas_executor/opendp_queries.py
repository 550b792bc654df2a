"""OpenDP queries, in the two forms Lomas accepts: validation, true cost, execution.

This module is the entry point (the engine calls it); the query types live in `opendp_model`, the
checks in `opendp_allow_list` and `opendp_polars`, the charge in `opendp_cost`.

* **Measurement** (`OpenDpMeasurementQuery`): a measurement built with OpenDP's Python API and sent in
  OpenDP's own JSON form (`dp.serialize`) or in the parts form, each distinct constructor once
  (`opendp_json`; what the Python client sends). Its input is the dataset as CSV text without a header line,
  columns in metadata order, as Lomas feeds "legacy" pipelines (`make_split_dataframe` first).
* **Polars** (`OpenDpPolarsQuery`): a Polars LazyFrame plan using OpenDP's `dp` expressions, serialized
  with `LazyFrame.serialize(format="json")` (as Lomas 0.5 does). The server builds the input domain
  (column types, nullability, margins) from the dataset metadata and calls `make_private_lazyframe`.

Client pipelines are untrusted code, and deserializing either form runs code (OpenDP constructors;
Polars unpickles Python functions and loads plugin libraries). So the JSON is walked **before** anything
is deserialized:

* measurement JSON: every `__function__`/`__module__` pair must be on `ALLOWED_CONSTRUCTORS` (OpenDP
  constructors that need only the `contrib` feature); user-defined functions and anything that needs
  the `honest-but-curious` or `floating-point` features are refused by name, whatever features the
  process has enabled globally (smartnoise-sql enables some); Polars objects are refused here.
* Polars JSON: no node may carry a Python function (pickles), a file scan or sink, or a plugin other
  than OpenDP's own `dp` expressions (whose library path is rewritten to this server's); the plan's
  input schema must agree with the metadata; a literal frame (the key set of `with_keys`, a join
  against public keys) may hold only declared categories of metadata columns.

Sizes a pipeline chooses are checked in the same walk, before anything is allocated (`QueryLimits`):
a row-like size (`make_resize` `size`, the sized sums' `size`/`size_limit`, `vector_domain` `size`)
may not exceed the dataset's `rows` times `rows_factor` nor `max_rows`, whichever is smaller; a
count of elements (categories, bin edges, candidates, alphas, b-ary tree leaves and branching, a
key set's rows) may not exceed `max_elements`. Beyond them: QUERY_LIMIT_EXCEEDED, free of charge.

Group keys are never taken from the data: a Polars group-by releases its keys only through OpenDP's
charged threshold (`threshold`) or a join against a public key set (`with_keys`), which releases every
listed key, absent or not. (Declaring the keys of a margin invariant would have OpenDP release exactly
the keys present in the data, so an empty category would vanish from the release.)

The input domain and metric always come from the metadata: a measurement must take exactly the
metadata's CSV domain (`AtomDomain<String>`, `SymmetricDistance`, `make_split_dataframe` naming the
metadata's columns); a Polars plan is given the metadata's LazyFrame domain. The cost is the privacy
map at `max_ids`: pure DP charges epsilon, approximate DP (epsilon, delta), zCDP rho (or (epsilon,
delta) at the caller's `fixed_delta`), a privacy curve (epsilon, delta) at `fixed_delta` (refused
without one). Failures after data access become QUERY_EXECUTION_FAILED naming only the error class.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import opendp.prelude as dp
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.csv as pa_csv

from lomas_common.errors import ExecutionFailed, FailedPrecondition
from lomas_common.privacy import PrivacyLoss
from lomas_executor.failures import chain_names
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.opendp_allow_list import measurement_from_json
from lomas_executor.opendp_cost import measurement_cost
from lomas_executor.opendp_model import OpenDpMeasurementQuery, OpenDpQuery
from lomas_executor.opendp_polars import measurement_from_plan
from lomas_executor.settings import QueryLimits

_log = logging.getLogger(__name__)


# -- validation and cost ---------------------------------------------------------------------------


def build_measurement(
    query: OpenDpQuery, metadata: DatasetMetadata, limits: QueryLimits | None = None
) -> dp.Measurement:
    """The checked measurement for `query` on data described by `metadata` (no data access)."""
    limits = limits or QueryLimits()
    if isinstance(query, OpenDpMeasurementQuery):
        return measurement_from_json(query.measurement_json, metadata, limits)
    return measurement_from_plan(query, metadata, limits)


def estimate_cost(
    query: OpenDpQuery, metadata: DatasetMetadata, limits: QueryLimits | None = None
) -> PrivacyLoss:
    """The privacy loss the query will be charged (rounded up); validates it; no data access."""
    measurement = build_measurement(query, metadata, limits)
    return measurement_cost(measurement, query.fixed_delta, metadata)


# -- inputs ----------------------------------------------------------------------------------------


def conform_table(table: pa.Table, metadata: DatasetMetadata) -> pa.Table:
    """The metadata's columns, in order, with the metadata's types (raises if the data lacks one)."""
    missing = [name for name in metadata.column_names if name not in table.column_names]
    if missing:
        raise FailedPrecondition(
            f"the dataset's data lacks column(s) named in its metadata: {', '.join(missing)}"
        )
    selected = table.select(list(metadata.column_names))
    try:
        return selected.cast(metadata.arrow_schema())
    except (pa.ArrowException, ValueError) as exc:
        _log.warning("dataset does not match its metadata types (%s)", chain_names(exc))
        raise FailedPrecondition(
            f"the dataset's columns do not have the metadata's types ({type(exc).__name__})"
        ) from None


def prepare_csv(table: pa.Table, metadata: DatasetMetadata) -> str:
    """The dataset as CSV text without a header, columns in metadata order (measurement input)."""
    sink = io.BytesIO()
    pa_csv.write_csv(
        conform_table(table, metadata),
        sink,
        write_options=pa_csv.WriteOptions(include_header=False, quoting_style="none"),
    )
    return sink.getvalue().decode()


def prepare_polars(table: pa.Table, metadata: DatasetMetadata) -> pl.DataFrame:
    """The dataset as a Polars frame matching `lazyframe_domain` (float NaNs become nulls)."""
    frame = pl.from_arrow(conform_table(table, metadata))
    assert isinstance(frame, pl.DataFrame)
    floats = [name for name in metadata.column_names if metadata.column_type(name) == "float"]
    return frame.with_columns(pl.col(name).fill_nan(None) for name in floats) if floats else frame


def dummy_table(frame: pd.DataFrame, metadata: DatasetMetadata) -> pa.Table:
    return pa.Table.from_pandas(frame, schema=metadata.arrow_schema(), preserve_index=False)


# -- execution -------------------------------------------------------------------------------------


def execute(
    query: OpenDpQuery,
    data: str | pl.DataFrame | pl.LazyFrame,
    metadata: DatasetMetadata,
    measurement: dp.Measurement | None = None,
) -> pd.DataFrame:
    """Run the query on prepared data (CSV text, a Polars frame, or a lazy scan of a dataset that
    is not loaded: `lomas_executor.pushdown`) and return the DP release.

    Validates first (InvalidQuery, nothing read) unless given the `measurement` that
    `build_measurement` returned for this query and metadata. Once data is read, any failure is
    ExecutionFailed naming only the exception class.
    """
    if measurement is None:
        measurement = build_measurement(query, metadata)
    # A Polars plan gets only the columns of its measurement's domain (`_measurement_from_plan`).
    argument = (
        data.select(measurement.input_domain.columns).lazy()
        if isinstance(data, pl.DataFrame)
        else data.select(measurement.input_domain.columns)
        if isinstance(data, pl.LazyFrame)
        else data
    )
    try:
        release = measurement(argument)
        if hasattr(release, "collect"):  # an OnceFrame: Polars queries release frames
            return release.collect().to_pandas()
        return release_frame(release)
    except Exception as exc:
        _log.warning("OpenDP failed after reading data (%s)", chain_names(exc))
        raise ExecutionFailed(
            f"OpenDP failed while running the query ({type(exc).__name__})"
        ) from None


def release_frame(release: Any) -> pd.DataFrame:
    """A measurement's release as a frame: a scalar or a flat list in `value`, a map as key/value."""
    if isinstance(release, dict):
        return pd.DataFrame(
            {"key": [str(k) for k in release], "value": [_jsonable(v) for v in release.values()]}
        )
    if isinstance(release, list | tuple):
        if all(_is_scalar(v) for v in release):
            return pd.DataFrame({"value": list(release)})
        return pd.DataFrame({"value": [json.dumps(_jsonable(release))]})
    if _is_scalar(release):
        return pd.DataFrame({"value": [release]})
    return pd.DataFrame({"value": [json.dumps(_jsonable(release))]})


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if _is_scalar(value):
        return value
    return str(type(value).__name__)

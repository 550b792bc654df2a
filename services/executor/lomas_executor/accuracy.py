"""How noisy a release will be, before anyone spends budget on it: per output column, the half-width
of the (1 - alpha) interval of the noise, from the engines' own accuracy utilities, on the metadata
alone (no data access, like the cost).

- SmartNoise-SQL: the library's simple accuracy (`PrivateReader._get_simple_accuracy`: each
  mechanism's `accuracy(alpha)`), for the columns it has a closed form for: COUNT and SUM, alone or
  per group. Other columns (AVG, VAR, grouping keys, expressions) have none: the interval of a
  ratio of noisy values is not a property of the noise alone.
- OpenDP Polars: `summarize_polars_measurement(measurement, alpha)`, for the columns released
  from one noisy aggregate (a mean, a noisy sum over a noisy count, has none).
- OpenDP measurement: the noise mechanism at the end of the chain (Laplace or Gaussian, integer or
  float, read from its input domain), through OpenDP's `*_scale_to_accuracy`. A chain that ends in
  anything else (a post-processing step, a composition) has no single interval.

Callers validate the query first (its cost), so what is read here is already checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import opendp.prelude as dp

from lomas_executor import smartnoise_sql
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.opendp_model import OpenDpMeasurementQuery, OpenDpQuery
from lomas_executor.opendp_queries import build_measurement
from lomas_executor.settings import QueryLimits, SqlLimits
from lomas_executor.smartnoise_sql import SmartnoiseSqlQuery

# The release column of a measurement (`opendp_queries.release_frame`).
MEASUREMENT_COLUMN = "value"


@dataclass(frozen=True)
class ColumnAccuracy:
    """One output column: with probability 1 - alpha its release is within `half_width` of the
    noiseless value (None: no closed form for this column)."""

    column: str
    half_width: float | None
    distribution: str = ""


def sql_accuracy(
    query: SmartnoiseSqlQuery, metadata: DatasetMetadata, limits: SqlLimits, alpha: float
) -> list[ColumnAccuracy]:
    """Per output column of a SmartNoise-SQL query, in column order."""
    private = smartnoise_sql.metadata_only_reader(query, metadata, limits)
    try:
        parsed = private.parse_query_string(query.sql)
        subquery, outer = private._rewrite_ast(parsed)
        half_widths = private._get_simple_accuracy(query=outer, subquery=subquery, alpha=alpha)
        mechanisms = private._get_mechanism_map(subquery)
    except Exception as exc:  # validated already: only the library's own surprises end here
        raise smartnoise_sql.refusal(exc, query) from None
    columns: list[ColumnAccuracy] = []
    for named, half_width in zip(outer.select.namedExpressions, half_widths, strict=True):
        source = named.expression.xpath_first("//Column") if half_width is not None else None
        mechanism = mechanisms.get(source.name) if source is not None else None
        columns.append(
            ColumnAccuracy(
                column=str(named.name),
                half_width=_finite(half_width),
                distribution=type(mechanism).__name__ if mechanism is not None else "",
            )
        )
    return columns


def opendp_accuracy(
    query: OpenDpQuery, metadata: DatasetMetadata, limits: QueryLimits, alpha: float
) -> list[ColumnAccuracy]:
    """Per released column of an OpenDP query (a measurement releases one column, `value`)."""
    measurement = build_measurement(query, metadata, limits)
    if isinstance(query, OpenDpMeasurementQuery):
        return [_measurement_accuracy(measurement, alpha)]
    summary = dp.summarize_polars_measurement(measurement, alpha)
    rows: list[dict[str, Any]] = summary.to_dicts()
    by_column: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_column.setdefault(str(row["column"]), []).append(row)
    columns: list[ColumnAccuracy] = []
    for name, parts in by_column.items():
        if len(parts) == 1:
            (part,) = parts
            columns.append(
                ColumnAccuracy(name, _finite(part.get("accuracy")), str(part["distribution"]))
            )
        else:  # a mean is a noisy sum over a noisy count: no single interval
            noises = " and ".join(f"{part['aggregate']}: {part['distribution']}" for part in parts)
            columns.append(ColumnAccuracy(name, None, noises))
    return columns


# The noise constructors with a closed-form interval: (float name, integer name), and OpenDP's
# scale-to-accuracy function for each.
_NOISE = {
    "make_laplace": (
        ("Laplace", dp.laplacian_scale_to_accuracy),
        ("Integer Laplace", dp.discrete_laplacian_scale_to_accuracy),
    ),
    "make_gaussian": (
        ("Gaussian", dp.gaussian_scale_to_accuracy),
        ("Integer Gaussian", dp.discrete_gaussian_scale_to_accuracy),
    ),
}


def _measurement_accuracy(measurement: dp.Measurement, alpha: float) -> ColumnAccuracy:
    noise = _final_noise(measurement)
    if noise is None:
        return ColumnAccuracy(MEASUREMENT_COLUMN, None)
    described = _described(noise)
    assert described is not None  # `_final_noise` found it by its description
    scale = float(described["__kwargs__"]["scale"])
    # The input domain says whether the noise is added to floats or integers.
    domain = str(noise.input_domain)
    floating = "f32" in domain or "f64" in domain
    (float_name, float_accuracy), (int_name, int_accuracy) = _NOISE[described["__function__"]]
    name, to_accuracy = (float_name, float_accuracy) if floating else (int_name, int_accuracy)
    return ColumnAccuracy(MEASUREMENT_COLUMN, _finite(to_accuracy(scale, alpha)), name)


def _final_noise(measurement: dp.Measurement) -> dp.Measurement | None:
    """The noise measurement the measurement ends with (through `make_chain_mt`), if any, read from
    the constructor calls OpenDP records on what they build (`__opendp_dict__`, what it serializes)."""
    node: object = measurement
    while (described := _described(node)) is not None:
        function = described.get("__function__")
        if function in _NOISE:
            return node if isinstance(node, dp.Measurement) else None
        if function != "make_chain_mt":
            return None
        node = described.get("__kwargs__", {}).get("measurement1")
    return None


def _described(node: object) -> dict[str, Any] | None:
    described = getattr(node, "__opendp_dict__", None)
    return described if isinstance(described, dict) else None


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None

"""Seeded dummy data generated from dataset metadata alone (no access to the real data).

Same metadata, row count and seed give an identical frame, on every machine: each column draws from
its own NumPy generator seeded with (seed, column position), so values depend on nothing else.
Values respect the metadata: numbers within [lower, upper], categories from `categories`, datetimes
within bounds. Nullable columns get about 5% nulls (at least one when there are two rows or more);
int columns stay integers (pandas nullable `Int64` when nullable).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from lomas_common.errors import InvalidArgument
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.settings import QueryLimits

MAX_DUMMY_ROWS = 1_000_000
# Rows x columns of one dummy frame (`QueryLimits.max_dummy_cells`, LOMAS_MAX_DUMMY_CELLS) are
# checked before anything is allocated: 5,000,000 cells of the penguin metadata (7 columns, about
# 714,000 rows) run a SQL query in about 1 GB of resident memory (1.8 GB of address space), within
# the free calls' default address-space limit.
DUMMY_LIMIT_EXCEEDED = "QUERY_LIMIT_EXCEEDED"
NULL_FRACTION = 0.05
# Ranges used when the metadata gives no bounds (unbounded numeric columns, datetimes without
# bounds).
DEFAULT_INT_RANGE = (0, 100)
DEFAULT_FLOAT_RANGE = (0.0, 100.0)
DEFAULT_DATETIME_RANGE = (dt.datetime(2000, 1, 1), dt.datetime(2030, 1, 1))
_STRING_LENGTH = 8
_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def make_dummy_frame(
    metadata: DatasetMetadata,
    rows: int,
    seed: int,
    max_cells: int = QueryLimits.max_dummy_cells,
) -> pd.DataFrame:
    """A deterministic frame with `rows` rows and the metadata's columns, in metadata order.

    Refuses (INVALID_ARGUMENT, QUERY_LIMIT_EXCEEDED, `limit` maxDummyCells) a frame of more than
    `max_cells` cells, before allocating anything."""
    if isinstance(rows, bool) or not isinstance(rows, int) or not 0 <= rows <= MAX_DUMMY_ROWS:
        raise InvalidArgument(f"dummy rows must be an integer between 0 and {MAX_DUMMY_ROWS}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgument("dummy seed must be an integer")
    columns_count = len(metadata.column_names)
    if rows * columns_count > max_cells:
        raise InvalidArgument(
            f"{rows} dummy rows of {columns_count} columns are more than this executor's ceiling "
            f"of {max_cells} cells (maxDummyCells): ask for at most "
            f"{max_cells // max(columns_count, 1)} rows",
            reason=DUMMY_LIMIT_EXCEEDED,
            metadata={"limit": "maxDummyCells", "maximum": str(max_cells)},
        )
    columns: dict[str, pd.Series] = {}
    for position, name in enumerate(metadata.column_names):
        rng = np.random.default_rng([seed % 2**64, position])
        columns[name] = _column(metadata, name, rows, rng)
    return pd.DataFrame(columns, index=pd.RangeIndex(rows))


def _column(metadata: DatasetMetadata, name: str, rows: int, rng: np.random.Generator) -> pd.Series:
    col = metadata.column(name)
    col_type = metadata.column_type(name)
    nullable = bool(col.get("nullable", False))
    nulls = _null_mask(rows, rng) if nullable else np.zeros(rows, dtype=bool)

    if col_type == "int":
        if "categories" in col:
            values = rng.choice(np.asarray(col["categories"], dtype=np.int64), size=rows)
        else:
            lower, upper = (col["lower"], col["upper"]) if "lower" in col else DEFAULT_INT_RANGE
            values = rng.integers(lower, upper, size=rows, endpoint=True, dtype=np.int64)
        if nullable:
            return pd.Series(pd.arrays.IntegerArray(values, nulls), name=name)
        return pd.Series(values, name=name, dtype="int64")

    if col_type == "float":
        lower, upper = (col["lower"], col["upper"]) if "lower" in col else DEFAULT_FLOAT_RANGE
        values = np.minimum(rng.uniform(lower, upper, size=rows), upper)
        values[nulls] = np.nan
        return pd.Series(values, name=name, dtype="float64")

    if col_type == "string":
        if "categories" in col:
            picked = rng.choice(np.asarray(col["categories"], dtype=object), size=rows)
        else:
            letters = rng.choice(_LETTERS, size=(rows, _STRING_LENGTH))
            picked = np.array(["".join(row) for row in letters], dtype=object)
        picked[nulls] = None
        return pd.Series(picked, name=name, dtype=object)

    if col_type == "boolean":
        flags = rng.integers(0, 2, size=rows).astype(bool)
        if nullable:
            return pd.Series(pd.arrays.BooleanArray(flags, nulls), name=name)
        return pd.Series(flags, name=name, dtype=bool)

    # datetime: uniform whole seconds between the bounds
    if "lower" in col:
        start = _naive(dt.datetime.fromisoformat(col["lower"]))
        end = _naive(dt.datetime.fromisoformat(col["upper"]))
    else:
        start, end = DEFAULT_DATETIME_RANGE
    span = int((end - start).total_seconds())
    offsets = rng.integers(0, span, size=rows, endpoint=True, dtype=np.int64)
    stamps = np.datetime64(start, "s") + offsets.astype("timedelta64[s]")
    series = pd.Series(stamps.astype("datetime64[ns]"), name=name)
    series[nulls] = pd.NaT
    return series


def _null_mask(rows: int, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros(rows, dtype=bool)
    if rows >= 2:
        count = max(1, int(rows * NULL_FRACTION))
        mask[rng.choice(rows, size=count, replace=False)] = True
    return mask


def _naive(moment: dt.datetime) -> dt.datetime:
    """Datetimes are generated in UTC without a zone (SQLite and smartnoise-sql compare text)."""
    if moment.tzinfo is not None:
        return moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment

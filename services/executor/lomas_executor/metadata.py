"""Dataset metadata in the SmartNoise-SQL YAML form that Lomas uses.

A metadata document describes one table (the SQL names it `df`, as in Lomas)::

    max_ids: 1            # how many rows one individual may contribute (> 0)
    rows: 344             # approximate number of rows (> 0)
    row_privacy: true     # every row is a different individual
    censor_dims: false    # optional, default false (as in Lomas; smartnoise-sql says true)
    columns:
      species: {type: string, cardinality: 3, categories: [Adelie, Chinstrap, Gentoo]}
      bill_length_mm: {type: float, precision: 64, lower: 30.0, upper: 65.0}

This module validates such a document once, normalises it (integral floats that arrive through JSON
or a protobuf `Struct` become ints again, YAML dates become ISO strings) and produces the dictionary
that smartnoise-sql reads. Validation follows Lomas' rules (bounds ordered, categories matching
cardinality, precision 32 or 64) with two deliberate relaxations that smartnoise-sql supports:
numeric columns may be unbounded (no `lower`/`upper`: they can be counted, and any SUM/AVG/VAR on
them is refused as an invalid query), and `precision` and datetime bounds are optional.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal, InvalidOperation, localcontext
from typing import Any, Literal, cast

import pyarrow as pa
import yaml

from lomas_common.errors import InvalidMetadata

ColumnType = Literal["int", "float", "string", "boolean", "datetime"]
COLUMN_TYPES: tuple[ColumnType, ...] = ("int", "float", "string", "boolean", "datetime")
PRECISIONS = (32, 64)
# The name SQL queries use for the dataset's table, as in Lomas.
TABLE_NAME = "df"

# Table-level keys. smartnoise-sql reads every other key of a table as a column, so column names may
# not use these.
_REQUIRED_TABLE_KEYS = ("max_ids", "rows", "row_privacy", "columns")
_OPTIONAL_TABLE_BOOLS = (
    "censor_dims",
    "sample_max_ids",
    "clamp_counts",
    "clamp_columns",
    "use_dpsu",
)
_SMARTNOISE_TABLE_KEYS = frozenset(
    {"max_ids", "rows", "rows_exact", "row_privacy", *_OPTIONAL_TABLE_BOOLS}
)
# Lomas mesh's own table keys (smartnoise-sql never sees them).
# max_delta: the largest delta one query may be charged on this dataset (a decimal string).
_MESH_TABLE_KEYS = frozenset({"max_delta"})
# The default max_delta, as a fraction of one over the rows: delta must stay well below 1/rows, or
# a mechanism could release one person's row outright with probability delta.
DEFAULT_MAX_DELTA_FRACTION = Decimal(1) / 10
_COLUMN_KEYS = frozenset(
    {
        "type",
        "precision",
        "lower",
        "upper",
        "cardinality",
        "categories",
        "nullable",
        "private_id",
        "max_partition_length",
        "max_influenced_partitions",
        "max_partition_contributions",
    }
)
_POSITIVE_INT_COLUMN_KEYS = (
    "max_partition_length",
    "max_influenced_partitions",
    "max_partition_contributions",
)


@dataclass(frozen=True)
class DatasetMetadata:
    """Validated, normalised dataset metadata (Lomas form); build with `from_yaml_text`/`from_dict`.

    Equality and hashing use the canonical JSON text, so two documents that say the same thing (one
    from YAML, one from a protobuf Struct with float numbers) are equal and share caches.
    """

    canonical_json: str
    _data: dict[str, Any] = field(repr=False, compare=False)

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_yaml_text(cls, text: str) -> DatasetMetadata:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise InvalidMetadata(f"metadata is not valid YAML{where}") from None
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: object) -> DatasetMetadata:
        data = _validate(raw)
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return cls(canonical_json=canonical, _data=data)

    # -- views -------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The metadata in Lomas form (a fresh copy; ints stay ints)."""
        return copy.deepcopy(self._data)

    @property
    def max_ids(self) -> int:
        return cast(int, self._data["max_ids"])

    @property
    def rows(self) -> int:
        return cast(int, self._data["rows"])

    @property
    def max_delta(self) -> Decimal:
        """The largest delta one query may be charged: `max_delta` if the metadata sets it, else a
        tenth of one over the rows (rounded down to 12 significant digits)."""
        if "max_delta" in self._data:
            return Decimal(self._data["max_delta"])
        with localcontext() as context:
            context.prec, context.rounding = 12, ROUND_DOWN
            return DEFAULT_MAX_DELTA_FRACTION / self.rows

    @property
    def row_privacy(self) -> bool:
        return cast(bool, self._data["row_privacy"])

    @property
    def censor_dims(self) -> bool:
        return cast(bool, self._data.get("censor_dims", False))

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(self._data["columns"])

    def column(self, name: str) -> Mapping[str, Any]:
        """One column's entry (read-only view by convention; copy before changing)."""
        return cast(Mapping[str, Any], self._data["columns"][name])

    def column_type(self, name: str) -> ColumnType:
        return cast(ColumnType, self.column(name)["type"])

    def unbounded_numeric_columns(self) -> tuple[str, ...]:
        """Numeric columns without bounds: smartnoise-sql can count them but never sum them."""
        return tuple(
            name
            for name, col in self._data["columns"].items()
            if col["type"] in ("int", "float") and "lower" not in col
        )

    def fingerprint(self) -> str:
        """A short stable digest of the canonical form (for cache keys and logs)."""
        return hashlib.sha256(self.canonical_json.encode()).hexdigest()[:16]

    def arrow_schema(self) -> pa.Schema:
        """The Arrow types the data should have (used to read CSV files without guessing)."""
        return pa.schema(
            [(name, _ARROW_TYPES[self.column_type(name)]) for name in self.column_names]
        )

    def to_smartnoise(self) -> dict[str, Any]:
        """The dictionary smartnoise-sql reads: `{"": {"": {"df": {table keys..., column: {}}}}}`.

        Columns sit next to the table keys (not under `columns`). Only keys smartnoise-sql
        understands are passed on; datetime bounds are dropped because smartnoise-sql would parse
        them as floats. `censor_dims` defaults to false as in Lomas.
        """
        table: dict[str, Any] = {
            key: self._data[key] for key in self._data if key in _SMARTNOISE_TABLE_KEYS
        }
        table["censor_dims"] = self.censor_dims
        for name, col in self._data["columns"].items():
            entry: dict[str, Any] = {
                "type": col["type"],
                "nullable": col.get("nullable", False),
                "private_id": col.get("private_id", False),
            }
            if col["type"] in ("int", "float") and "lower" in col:
                entry["lower"] = col["lower"]
                entry["upper"] = col["upper"]
            if "cardinality" in col:
                entry["cardinality"] = col["cardinality"]
            table[name] = entry
        return {"": {"": {TABLE_NAME: table}}}


_ARROW_TYPES: dict[ColumnType, pa.DataType] = {
    "int": pa.int64(),
    "float": pa.float64(),
    "string": pa.string(),
    "boolean": pa.bool_(),
    "datetime": pa.timestamp("us"),
}


# -- validation ------------------------------------------------------------------------------------


def _validate(raw: object) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise InvalidMetadata(
            "metadata must be a mapping with max_ids, rows, row_privacy and columns"
        )
    missing = [key for key in _REQUIRED_TABLE_KEYS if key not in raw]
    if missing:
        raise InvalidMetadata(f"metadata is missing required field(s): {', '.join(missing)}")
    allowed = _SMARTNOISE_TABLE_KEYS | _MESH_TABLE_KEYS | {"columns"}
    unknown = sorted(str(key) for key in raw if key not in allowed)
    if unknown:
        raise InvalidMetadata(f"metadata has unknown field(s): {', '.join(unknown)}")

    data: dict[str, Any] = {
        "max_ids": _positive_int(raw["max_ids"], "max_ids"),
        "rows": _positive_int(raw["rows"], "rows"),
        "row_privacy": _bool(raw["row_privacy"], "row_privacy"),
    }
    if "rows_exact" in raw:
        data["rows_exact"] = _positive_int(raw["rows_exact"], "rows_exact")
    for key in _OPTIONAL_TABLE_BOOLS:
        if key in raw and raw[key] is not None:
            data[key] = _bool(raw[key], key)
    if data.get("use_dpsu"):
        raise InvalidMetadata("use_dpsu is not supported")
    if raw.get("max_delta") is not None:
        data["max_delta"] = _max_delta(raw["max_delta"])

    columns = raw["columns"]
    if not isinstance(columns, Mapping) or not columns:
        raise InvalidMetadata(
            "columns must be a non-empty mapping of column name to column metadata"
        )
    data["columns"] = {}
    for name, col in columns.items():
        if not isinstance(name, str) or not name:
            raise InvalidMetadata("column names must be non-empty strings")
        if name in allowed:
            raise InvalidMetadata(f"column name {name!r} is reserved for a table-level field")
        data["columns"][name] = _validate_column(name, col)

    if not data["row_privacy"] and not any(
        col.get("private_id") for col in data["columns"].values()
    ):
        raise InvalidMetadata("row_privacy is false, so one column must have private_id: true")
    return data


def _validate_column(name: str, raw: object) -> dict[str, Any]:
    where = f"column {name!r}"
    if not isinstance(raw, Mapping):
        raise InvalidMetadata(f"{where}: metadata must be a mapping")
    unknown = sorted(str(key) for key in raw if key not in _COLUMN_KEYS)
    if unknown:
        raise InvalidMetadata(f"{where}: unknown field(s): {', '.join(unknown)}")
    col_type = raw.get("type")
    if col_type not in COLUMN_TYPES:
        raise InvalidMetadata(
            f"{where}: unknown type {col_type!r} (expected one of {', '.join(COLUMN_TYPES)})"
        )
    col: dict[str, Any] = {"type": col_type}

    if "precision" in raw:
        if col_type not in ("int", "float"):
            raise InvalidMetadata(f"{where}: precision only applies to int and float columns")
        precision = _int(raw["precision"], f"{where}: precision")
        if precision not in PRECISIONS:
            raise InvalidMetadata(f"{where}: precision must be 32 or 64, got {precision}")
        col["precision"] = precision

    has_bounds = "lower" in raw or "upper" in raw
    if has_bounds:
        if col_type not in ("int", "float", "datetime"):
            raise InvalidMetadata(f"{where}: bounds only apply to int, float and datetime columns")
        if "lower" not in raw or "upper" not in raw:
            raise InvalidMetadata(f"{where}: give both lower and upper bounds, or neither")
        if col_type == "int":
            lower: Any = _int(raw["lower"], f"{where}: lower")
            upper: Any = _int(raw["upper"], f"{where}: upper")
        elif col_type == "float":
            lower = _float(raw["lower"], f"{where}: lower")
            upper = _float(raw["upper"], f"{where}: upper")
        else:
            lower = _datetime_text(raw["lower"], f"{where}: lower")
            upper = _datetime_text(raw["upper"], f"{where}: upper")
            try:
                inverted = dt.datetime.fromisoformat(lower) > dt.datetime.fromisoformat(upper)
            except TypeError:
                raise InvalidMetadata(f"{where}: bounds mix naive and zoned datetimes") from None
            if inverted:
                raise InvalidMetadata(f"{where}: lower bound cannot be larger than upper bound")
        if col_type != "datetime" and lower > upper:
            raise InvalidMetadata(f"{where}: lower bound cannot be larger than upper bound")
        col["lower"] = lower
        col["upper"] = upper

    if "cardinality" in raw or "categories" in raw:
        if col_type not in ("int", "string"):
            raise InvalidMetadata(f"{where}: categories only apply to int and string columns")
        if "cardinality" not in raw or "categories" not in raw:
            raise InvalidMetadata(f"{where}: give both cardinality and categories")
        cardinality = _positive_int(raw["cardinality"], f"{where}: cardinality")
        categories = raw["categories"]
        if not isinstance(categories, list):
            raise InvalidMetadata(f"{where}: categories must be a list")
        if col_type == "int":
            categories = [_int(c, f"{where}: categories") for c in categories]
        elif not all(isinstance(c, str) for c in categories):
            raise InvalidMetadata(f"{where}: categories of a string column must be strings")
        if len(categories) != cardinality:
            raise InvalidMetadata(
                f"{where}: number of categories ({len(categories)}) must equal cardinality "
                f"({cardinality})"
            )
        if len(set(categories)) != len(categories):
            raise InvalidMetadata(f"{where}: categories must be distinct")
        if col_type == "int" and has_bounds and any(not lower <= c <= upper for c in categories):
            # smartnoise-sql does not clamp a grouping column it also aggregates (SELECT k, SUM(k)
            # ... GROUP BY k): a category outside the bounds would be summed beyond the
            # sensitivity the noise is scaled to.
            raise InvalidMetadata(f"{where}: categories must lie within the lower and upper bounds")
        col["cardinality"] = cardinality
        col["categories"] = categories

    for key in ("nullable", "private_id"):
        if key in raw and raw[key] is not None:
            col[key] = _bool(raw[key], f"{where}: {key}")
    for key in _POSITIVE_INT_COLUMN_KEYS:
        if key in raw and raw[key] is not None:
            col[key] = _positive_int(raw[key], f"{where}: {key}")
    return col


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidMetadata(f"{what} must be true or false")
    return value


def _int(value: object, what: str) -> int:
    """An integer; integral floats (from JSON or a protobuf Struct) are accepted and become ints."""
    if isinstance(value, bool):
        raise InvalidMetadata(f"{what} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise InvalidMetadata(f"{what} must be an integer")


def _max_delta(value: object) -> str:
    """max_delta as an exact decimal string in [0, 1) (YAML may give a float: its shortest text)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidMetadata("max_delta must be a decimal number")
    try:
        delta = Decimal(str(value))
    except InvalidOperation:
        raise InvalidMetadata("max_delta must be a decimal number") from None
    if not delta.is_finite() or not 0 <= delta < 1:
        raise InvalidMetadata("max_delta must be at least 0 and less than 1")
    return str(value)


def _positive_int(value: object, what: str) -> int:
    number = _int(value, what)
    if number <= 0:
        raise InvalidMetadata(f"{what} must be greater than 0")
    return number


def _float(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidMetadata(f"{what} must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidMetadata(f"{what} must be finite")
    return number


def _datetime_text(value: object, what: str) -> str:
    """A datetime bound as ISO text (YAML turns unquoted dates into date objects)."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            dt.datetime.fromisoformat(value)
        except ValueError:
            raise InvalidMetadata(f"{what} must be an ISO date or datetime") from None
        return value
    raise InvalidMetadata(f"{what} must be an ISO date or datetime")

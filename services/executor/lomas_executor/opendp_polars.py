"""Polars plans: the walk that refuses code, files and foreign plugins, and the input domain.

A plan arrives as `LazyFrame.serialize(format="json")`; deserializing it can unpickle Python
functions and load plugin libraries, so the JSON is walked first: no node may carry a Python
function, a file scan or sink, or a plugin other than OpenDP's `dp` expressions (whose library
path is rewritten to this server's); the plan's input schema must agree with the metadata; a
literal frame may hold only declared categories (a public key set). Then the plan is given the
LazyFrame domain the metadata defines (`lazyframe_domain`) and OpenDP builds the measurement.
"""

from __future__ import annotations

import functools
import io
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import opendp.prelude as dp
import polars as pl
import pyarrow as pa
from opendp.extras.polars import Margin, dp_len
from opendp.mod import OpenDPException

from lomas_common.errors import InvalidQuery
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.opendp_model import (
    GROUP_KEYS_NOT_PUBLIC,
    InputDomainMismatch,
    OpenDpPolarsQuery,
    PipelineRefused,
    QueryLimitExceeded,
    clean_message,
    parse_json,
    short_text,
    walk,
)
from lomas_executor.settings import QueryLimits

# Polars node names (any case) that carry Python code, read or write files, or load libraries.
_FORBIDDEN_POLARS_WORDS = (
    "python",
    "opaque",
    "anonymous",
    "udf",
    "pickle",
    "scan",
    "sink",
    "credential",
    "plugin",
)
_ALLOWED_POLARS_NODES = frozenset({"DataFrameScan", "FfiPlugin"})
OPENDP_PLUGIN_SYMBOLS = frozenset(
    {
        "dp_count",
        "dp_frame_len",
        "dp_len",
        "dp_mean",
        "dp_median",
        "dp_n_unique",
        "dp_null_count",
        "dp_quantile",
        "dp_sum",
        "noise",
    }
)
_PICKLE_MAGIC = b"PLPY"
_POLARS_DTYPES: Mapping[str, tuple[str, ...]] = {
    "int": ("Int64",),
    "float": ("Float64",),
    "string": ("String",),
    "boolean": ("Boolean",),
    "datetime": ("Datetime",),
}


@dataclass
class _PlanFacts:
    """What the walk of a plan learned: its grouping keys, its input columns, and the columns its
    expressions name (None when one picks columns otherwise: a wildcard, a regex, a dtype, ...)."""

    group_keys: list[tuple[str, ...]] = field(default_factory=list)
    scanned_columns: dict[str, Any] = field(default_factory=dict)
    named_columns: set[str] | None = field(default_factory=set)


# Polars expression nodes that select columns without naming them.
_IMPLICIT_COLUMN_NODES = frozenset(
    {"Wildcard", "All", "Nth", "DtypeColumn", "Selector", "IndexColumn", "Exclude", "Columns"}
)


@functools.cache
def _opendp_plugin_lib() -> str:
    """The library path this server's Polars writes for OpenDP's `dp` expressions."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = (
            pl.LazyFrame(schema={"x": pl.Int64}).select(dp_len(scale=1.0)).serialize(format="json")
        )
    for key, node in walk(json.loads(text)):
        if key == "FfiPlugin":
            return str(node["lib"])
    raise RuntimeError("OpenDP's dp.len did not serialize as a Polars plugin")


def check_polars_plan(
    tree: Any, metadata: DatasetMetadata, limits: QueryLimits | None = None
) -> _PlanFacts:
    """Refuse Python functions, scans, sinks and foreign plugins; rewrite OpenDP's plugin paths.

    Mutates `tree` in place (OpenDP plugin library paths become this server's) and returns the
    grouping keys and input columns it found. Literal frames are read (Arrow IPC, no code) and must
    be the plan's empty input or a public key set. Nothing is deserialized by Polars or OpenDP.
    """
    limits = limits or QueryLimits()
    if not isinstance(tree, dict) or len(tree) != 1:
        raise InvalidQuery("the Polars plan must be one serialized LazyFrame")
    facts = _PlanFacts()
    for key, node in walk(tree):
        if isinstance(node, list) and len(node) >= len(_PICKLE_MAGIC):
            head = node[: len(_PICKLE_MAGIC)]
            if all(isinstance(b, int) and 0 <= b < 256 for b in head) and (
                bytes(head) == _PICKLE_MAGIC
            ):
                raise PipelineRefused("the Polars plan carries a pickled Python object")
        if not isinstance(node, dict):
            continue
        names = () if key == "fields" else node.keys()  # `fields` maps column names to types
        for name in names:
            lowered = str(name).lower()
            if name not in _ALLOWED_POLARS_NODES and any(
                word in lowered for word in _FORBIDDEN_POLARS_WORDS
            ):
                raise PipelineRefused(
                    f"the Polars plan uses {name}: Python functions, file scans and sinks, and "
                    "plugins other than OpenDP's are not accepted"
                )
        if "FfiPlugin" in node:
            _check_plugin(node["FfiPlugin"])
        if "GroupBy" in node and isinstance(node["GroupBy"], dict):
            keys = node["GroupBy"].get("keys", [])
            columns = [
                k["Column"]
                for k in keys
                if isinstance(k, dict) and isinstance(k.get("Column"), str)
            ]
            if columns and len(columns) == len(keys):  # every key names one column
                facts.group_keys.append(tuple(columns))
        if facts.named_columns is not None:
            if _IMPLICIT_COLUMN_NODES.intersection(node):
                facts.named_columns = None
            elif "Column" in node:
                name = node["Column"]
                if not isinstance(name, str) or name == "*" or name.startswith("^"):
                    facts.named_columns = None  # a wildcard or a regex
                else:
                    facts.named_columns.add(name)
        if "DataFrameScan" in node:
            facts.scanned_columns.update(_check_frame_scan(node["DataFrameScan"], metadata, limits))
    _check_scanned_columns(facts.scanned_columns, metadata)
    return facts


def _check_frame_scan(scan: Any, metadata: DatasetMetadata, limits: QueryLimits) -> dict[str, Any]:
    """The columns of a literal frame in the plan, which must be either the plan's input (no rows:
    OpenDP puts the data in its place) or a key set holding declared categories only (the public
    keys of a join, as `with_keys` sends them). Its Arrow IPC bytes are read here, which runs no
    code; Polars reads the same bytes later."""
    malformed = PipelineRefused("malformed literal frame (DataFrameScan) in the Polars plan")
    if not isinstance(scan, dict) or not isinstance(scan.get("df"), list):
        raise malformed
    try:
        data = bytes(scan["df"])
    except (TypeError, ValueError):
        raise malformed from None
    if data.startswith(_PICKLE_MAGIC):
        raise PipelineRefused("the Polars plan carries a pickled Python object")
    schema = scan.get("schema")
    fields = schema.get("fields") if isinstance(schema, dict) else None
    if not isinstance(fields, dict):
        raise malformed
    try:
        table = pa.ipc.open_stream(data).read_all()
    except (pa.ArrowException, ValueError, OSError):
        raise malformed from None
    if table.column_names != list(fields):
        raise malformed
    if table.num_rows:
        _check_key_set(table, metadata, limits)
    return fields


def _check_key_set(table: pa.Table, metadata: DatasetMetadata, limits: QueryLimits) -> None:
    if table.num_rows > limits.opendp_max_elements:
        raise QueryLimitExceeded(
            f"the key set has {table.num_rows} rows, above this executor's ceiling of "
            f"{limits.opendp_max_elements} (maxElements)",
            metadata={
                "limit": "maxElements",
                "argument": "keys.rows",
                "maximum": str(limits.opendp_max_elements),
            },
        )
    for name in table.column_names:
        if name not in metadata.column_names:
            raise InputDomainMismatch(
                f"the plan's key set has a column {name!r} that the dataset's metadata does not have"
            )
        column = metadata.column(name)
        if "categories" not in column:
            raise PipelineRefused(
                f"a literal frame in the Polars plan may only list public keys: column {name!r} "
                "declares no categories"
            )
        values = table.column(name).to_pylist()
        if None in values and not column.get("nullable", False):
            raise PipelineRefused(
                f"the key set lists nulls for column {name!r}, which is not nullable"
            )
        listed = {value for value in values if value is not None}
        allowed = set(column["categories"])
        if any(isinstance(v, bool) for v in listed) or not listed <= allowed:
            raise PipelineRefused(
                f"the key set lists values of column {name!r} that are not among its declared "
                "categories"
            )


def _check_plugin(plugin: Any) -> None:
    if not isinstance(plugin, dict):
        raise PipelineRefused("malformed Polars plugin expression")
    symbol, lib = plugin.get("symbol"), plugin.get("lib")
    opendp_lib = Path(_opendp_plugin_lib()).name
    if (
        symbol not in OPENDP_PLUGIN_SYMBOLS
        or not isinstance(lib, str)
        or Path(lib).name != (opendp_lib)
    ):
        raise PipelineRefused(
            "the Polars plan uses a plugin that is not one of OpenDP's dp expressions"
        )
    plugin["lib"] = _opendp_plugin_lib()  # never a path the client chose


def _check_scanned_columns(columns: Mapping[str, Any], metadata: DatasetMetadata) -> None:
    known = set(metadata.column_names)
    for name, dtype in columns.items():
        if name not in known:
            raise InputDomainMismatch(
                f"the plan's input has a column {name!r} that the dataset's metadata does not have"
            )
        expected = _POLARS_DTYPES[metadata.column_type(name)]
        found = next(iter(dtype)) if isinstance(dtype, dict) and len(dtype) == 1 else dtype
        if found not in expected:
            raise InputDomainMismatch(
                f"the plan's input column {name!r} is {short_text(found)}, but the metadata says "
                f"{metadata.column_type(name)} ({expected[0]} in Polars)"
            )


def lazyframe_domain(
    metadata: DatasetMetadata,
    group_keys: list[tuple[str, ...]],
    columns: Sequence[str] | None = None,
) -> dp.Domain:
    """The OpenDP LazyFrame domain that the metadata defines (over `columns` only, if given), with
    a margin per grouping.

    Columns get their type and nullability (bounds are not trusted: `dp` expressions clamp). Every
    margin bounds group sizes by `rows` (or the columns' `max_partition_length`) and the number of
    groups by the product of the columns' cardinalities. Keys are never declared invariant (public):
    OpenDP would then release exactly the keys present in the data, and a category without rows
    would vanish from the release. A grouped plan needs a threshold or a join against a public key
    set (`with_keys`), which releases every listed key.
    """
    series = []
    for name in metadata.column_names if columns is None else columns:
        column_type = metadata.column_type(name)
        element: dp.Domain
        if column_type == "int":
            element = dp.atom_domain(T=dp.i64)
        elif column_type == "float":
            element = dp.atom_domain(T=dp.f64, nan=False)
        elif column_type == "string":
            element = dp.atom_domain(T=dp.String)
        elif column_type == "boolean":
            element = dp.atom_domain(T=bool)
        else:
            element = dp.datetime_domain(time_unit="us")
        if metadata.column(name).get("nullable", False):
            element = dp.option_domain(element)
        series.append(dp.series_domain(name, element))
    domain = dp.lazyframe_domain(series)
    domain = dp.with_margin(domain, Margin(by=[], max_length=metadata.rows))
    for keys in dict.fromkeys(group_keys):
        if not all(k in metadata.column_names for k in keys):
            continue  # OpenDP refuses the plan with its own message
        entries = [metadata.column(k) for k in keys]
        lengths = [c["max_partition_length"] for c in entries if "max_partition_length" in c]
        cardinalities: list[int] = [c["cardinality"] for c in entries if c.get("cardinality")]
        max_groups = math.prod(cardinalities) if len(cardinalities) == len(entries) else None
        domain = dp.with_margin(
            domain,
            Margin(
                by=[pl.col(k) for k in keys],
                max_length=min([metadata.rows, *lengths]),
                max_groups=max_groups,
            ),
        )
    return domain


@functools.lru_cache(maxsize=64)
def measurement_from_plan(
    query: OpenDpPolarsQuery, metadata: DatasetMetadata, limits: QueryLimits
) -> dp.Measurement:
    """The checked measurement of a Polars query. Memoised per process (refusals are not), as
    `measurement_from_json` is: the worker builds it to check the cost and again to run it (a few
    milliseconds each), and a Measurement is never changed by use (each run has its own frame)."""
    tree = parse_json(query.plan_json, "Polars plan")
    facts = check_polars_plan(tree, metadata, limits)
    measure = (
        dp.max_divergence() if query.mechanism == "laplace" else dp.zero_concentrated_divergence()
    )
    if query.threshold is not None:
        measure = dp.approximate(measure)  # releasing private keys costs a delta
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = pl.LazyFrame.deserialize(io.StringIO(json.dumps(tree)), format="json")
    except Exception as exc:  # Polars raises its own exception classes for malformed plans
        raise InvalidQuery(
            f"the Polars plan could not be read ({type(exc).__name__}); build it with "
            f"Polars {pl.__version__}"
        ) from None

    def measurement(columns: Sequence[str] | None) -> dp.Measurement:
        return dp.m.make_private_lazyframe(
            lazyframe_domain(metadata, facts.group_keys, columns),
            dp.symmetric_distance(),
            measure,
            plan,
            global_scale=query.global_scale,
            threshold=query.threshold,
        )

    # Over only the columns the plan names, when it names them all: OpenDP copies every column
    # of its input across into its own Polars (on 1M rows, a COUNT takes 7 ms over one numeric
    # column and 140 ms over a string, a float and an int). Dropping columns a plan never reads
    # changes neither its release nor its privacy map; should OpenDP still refuse the narrower
    # domain, the plan is built over every column, as it would be without this.
    columns = _read_columns(facts, metadata)
    try:
        if columns is not None:
            try:
                return measurement(columns)
            except (OpenDPException, TypeError, ValueError):
                pass
        return measurement(None)
    except (OpenDPException, TypeError, ValueError) as exc:
        message = clean_message(exc)
        if query.threshold is None and "key-set" in message and "private" in message:
            raise InvalidQuery(
                "OpenDP refused the Polars plan: its group keys would come from the data; give a "
                "threshold (charged with a delta) or join a public key set (with_keys)",
                reason=GROUP_KEYS_NOT_PUBLIC,
            ) from None
        raise InvalidQuery(f"OpenDP refused the Polars plan: {message}") from None


def _read_columns(facts: _PlanFacts, metadata: DatasetMetadata) -> list[str] | None:
    """The dataset columns a plan reads, in metadata order, or None if it may read any. A plan
    that names none (a bare count) still needs rows: it gets the cheapest column to copy."""
    if facts.named_columns is None:
        return None
    named = [name for name in metadata.column_names if name in facts.named_columns]
    if named:
        return named
    by_cost = sorted(metadata.column_names, key=lambda n: metadata.column_type(n) == "string")
    return by_cost[:1]

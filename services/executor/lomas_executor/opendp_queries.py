"""OpenDP queries, in the two forms Lomas accepts: validation, true cost, execution.

* **Measurement** (`OpenDpMeasurementQuery`): a measurement built with OpenDP's Python API and sent in
  OpenDP's own JSON form (`dp.serialize`). Its input is the dataset as CSV text without a header line,
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

import functools
import io
import json
import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import opendp.prelude as dp
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.csv as pa_csv
from opendp.mod import OpenDPException

from lomas_common.errors import ExecutionFailed, FailedPrecondition, InvalidQuery
from lomas_common.privacy import PrivacyLoss, PrivacyValueError, parse_decimal
from lomas_executor.failures import chain_names
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.settings import QueryLimits

_log = logging.getLogger(__name__)

# Building any OpenDP measurement needs `contrib`; nothing here ever enables another feature (and a
# pipeline may not ask for one: see FEATURE_GATED_CONSTRUCTORS).
dp.enable_features("contrib")

MAX_JSON_CHARS = 16 * 1024 * 1024
MAX_JSON_NODES = 500_000
MAX_MESSAGE_LENGTH = 500
PIPELINE_REFUSED = "OPENDP_PIPELINE_REFUSED"
INPUT_DOMAIN_MISMATCH = "OPENDP_INPUT_DOMAIN_MISMATCH"
QUERY_LIMIT_EXCEEDED = "QUERY_LIMIT_EXCEEDED"
GROUP_KEYS_NOT_PUBLIC = "GROUP_KEYS_NOT_PUBLIC"

Mechanism = Literal["laplace", "gaussian"]
MECHANISMS: tuple[Mechanism, ...] = ("laplace", "gaussian")


class PipelineRefused(InvalidQuery):
    """The pipeline asks for something the executor never runs (nothing was deserialized)."""

    reason = PIPELINE_REFUSED


class InputDomainMismatch(InvalidQuery):
    """The pipeline's input domain or metric is not the one the dataset metadata defines."""

    reason = INPUT_DOMAIN_MISMATCH


class QueryLimitExceeded(InvalidQuery):
    """A size the query chose is above one of the executor's ceilings (nothing was allocated).

    Metadata: `limit` (the ceiling's name: maxRows, maxElements), `argument` (e.g.
    make_resize.size) and `maximum`.
    """

    reason = QUERY_LIMIT_EXCEEDED


# -- the queries -----------------------------------------------------------------------------------


def _check_fixed_delta(value: Decimal | None) -> None:
    if value is not None and (not value.is_finite() or not 0 < value < 1):
        raise InvalidQuery("fixed_delta must be greater than 0 and less than 1")


def _check_json_text(text: object, what: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise InvalidQuery(f"the {what} is empty")
    if len(text) > MAX_JSON_CHARS:
        raise InvalidQuery(f"the {what} is longer than {MAX_JSON_CHARS} characters")


@dataclass(frozen=True)
class OpenDpMeasurementQuery:
    """An OpenDP measurement in OpenDP's JSON form (`dp.serialize`), run on the dataset as CSV text.

    `fixed_delta` is the delta at which a zCDP or privacy-curve cost is converted to (epsilon, delta).
    """

    measurement_json: str
    fixed_delta: Decimal | None = None

    def __post_init__(self) -> None:
        _check_json_text(self.measurement_json, "OpenDP measurement")
        _check_fixed_delta(self.fixed_delta)


@dataclass(frozen=True)
class OpenDpPolarsQuery:
    """An OpenDP Polars query: a LazyFrame plan (Polars JSON) with OpenDP `dp` expressions.

    `mechanism` picks the privacy measure (laplace: pure DP; gaussian: zCDP), `global_scale` is
    OpenDP's scale factor for the `dp` expressions that set no scale (noise scale = global_scale x
    sensitivity), `threshold` the minimum group size when group keys are not public (it makes the
    loss approximate: a delta for releasing keys).
    """

    plan_json: str
    mechanism: Mechanism = "laplace"
    global_scale: float | None = None
    threshold: int | None = None
    fixed_delta: Decimal | None = None

    def __post_init__(self) -> None:
        _check_json_text(self.plan_json, "Polars plan")
        _check_fixed_delta(self.fixed_delta)
        if self.mechanism not in MECHANISMS:
            raise InvalidQuery(
                f"unknown mechanism {self.mechanism!r} (expected {' or '.join(MECHANISMS)})"
            )
        if self.global_scale is not None and (
            not math.isfinite(self.global_scale) or self.global_scale <= 0
        ):
            raise InvalidQuery("global_scale must be a positive number")
        if self.threshold is not None and not 0 < self.threshold < 2**32:
            raise InvalidQuery("threshold must be a positive 32-bit integer")


# -- the allow-list --------------------------------------------------------------------------------

# OpenDP constructors a client pipeline may name, by OpenDP module. Each needs only `contrib` (a test
# checks the wrappers), builds a non-interactive measurement or one of its parts, and takes no
# function. Interactive compositors (queryables), Polars constructors (use the Polars form) and
# anything taking user code are left out.
ALLOWED_CONSTRUCTORS: Mapping[str, frozenset[str]] = {
    "combinators": frozenset(
        {
            "make_approximate",
            "make_basic_composition",
            "make_chain_mt",
            "make_chain_pm",
            "make_chain_tt",
            "make_composition",
            "make_fix_delta",
            "make_fixed_approxDP_to_approxDP",
            "make_pureDP_to_zCDP",
            "make_zCDP_to_approxDP",
        }
    ),
    "measurements": frozenset(
        {
            "make_canonical_noise",
            "make_gaussian",
            "make_gaussian_threshold",
            "make_geometric",
            "make_laplace",
            "make_laplace_threshold",
            "make_noise",
            "make_noise_threshold",
            "make_noisy_max",
            "make_noisy_top_k",
            "make_private_quantile",
            "make_randomized_response",
            "make_randomized_response_bool",
            "make_report_noisy_max_gumbel",
        }
    ),
    "transformations": frozenset(
        {
            "make_b_ary_tree",
            "make_bounded_float_checked_sum",
            "make_bounded_float_ordered_sum",
            "make_bounded_int_monotonic_sum",
            "make_bounded_int_ordered_sum",
            "make_bounded_int_split_sum",
            "make_cast",
            "make_cast_default",
            "make_cast_inherent",
            "make_cdf",
            "make_clamp",
            "make_consistent_b_ary_tree",
            "make_count",
            "make_count_by",
            "make_count_by_categories",
            "make_count_distinct",
            "make_create_dataframe",
            "make_df_cast_default",
            "make_df_is_equal",
            "make_drop_null",
            "make_find",
            "make_find_bin",
            "make_impute_constant",
            "make_impute_uniform_float",
            "make_index",
            "make_is_equal",
            "make_is_null",
            "make_lipschitz_float_mul",
            "make_mean",
            "make_metric_bounded",
            "make_metric_unbounded",
            "make_ordered_random",
            "make_quantile_score_candidates",
            "make_quantiles_from_counts",
            "make_resize",
            "make_select_column",
            "make_sized_bounded_float_checked_sum",
            "make_sized_bounded_float_ordered_sum",
            "make_sized_bounded_int_checked_sum",
            "make_sized_bounded_int_monotonic_sum",
            "make_sized_bounded_int_ordered_sum",
            "make_sized_bounded_int_split_sum",
            "make_split_dataframe",
            "make_split_lines",
            "make_split_records",
            "make_subset_by",
            "make_sum",
            "make_sum_of_squared_deviations",
            "make_unordered",
            "make_variance",
        }
    ),
    "domains": frozenset(
        {
            "atom_domain",
            "bitvector_domain",
            "categorical_domain",
            "datetime_domain",
            "map_domain",
            "option_domain",
            "vector_domain",
        }
    ),
    "metrics": frozenset(
        {
            "absolute_distance",
            "change_one_distance",
            "discrete_distance",
            "hamming_distance",
            "insert_delete_distance",
            "l1_distance",
            "l2_distance",
            "linf_distance",
            "symmetric_distance",
        }
    ),
    "measures": frozenset(
        {
            "approximate",
            "fixed_smoothed_max_divergence",
            "max_divergence",
            "smoothed_max_divergence",
            "zero_concentrated_divergence",
        }
    ),
    # What `then_*` chaining serializes to: the previous step's output space.
    "core": frozenset(
        {
            "measurement_input_domain",
            "measurement_input_metric",
            "transformation_input_domain",
            "transformation_input_metric",
            "transformation_output_domain",
            "transformation_output_metric",
        }
    ),
}

# Refused with a specific reason (the rest of OpenDP is simply "not on the allow-list").
USER_CODE_CONSTRUCTORS = frozenset(
    {
        "make_user_measurement",
        "make_user_transformation",
        "new_function",
        "new_privacy_profile",
        "new_queryable",
        "user_distance",
        "user_divergence",
        "user_domain",
    }
)
FEATURE_GATED_CONSTRUCTORS: Mapping[str, str] = {
    "make_identity": "honest-but-curious",
    "make_population_amplification": "honest-but-curious",
    "make_private_expr": "honest-but-curious",
    "onceframe_lazy": "honest-but-curious",
    "enable_features": "any",
    "disable_features": "any",
}
POLARS_FLAGS = ("__lazyframe__", "__expr__", "__margin__")
_NODE_KEYS = frozenset({"__function__", "__module__", "__kwargs__", "__version__"})


# -- measurement JSON ------------------------------------------------------------------------------


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidQuery(f"the {what} is nested too deeply") from None
    except ValueError:
        raise InvalidQuery(f"the {what} is not valid JSON") from None


def _walk(tree: Any) -> Iterator[tuple[Any, Any]]:
    """Every (parent key, node) of a JSON tree, iteratively (no recursion limit), counting nodes."""
    stack: list[tuple[Any, Any]] = [(None, tree)]
    seen = 0
    while stack:
        key, node = stack.pop()
        seen += 1
        if seen > MAX_JSON_NODES:
            raise InvalidQuery(f"the pipeline has more than {MAX_JSON_NODES} JSON nodes")
        yield key, node
        if isinstance(node, dict):
            stack.extend(node.items())
        elif isinstance(node, list):
            stack.extend((key, item) for item in node)


def check_measurement_json(
    tree: Any, metadata: DatasetMetadata, limits: QueryLimits | None = None
) -> None:
    """Refuse anything but allow-listed OpenDP constructors, before deserializing anything.

    Also checks that every `make_split_dataframe`/`make_create_dataframe` names the metadata's
    columns in order (the measurement reads the dataset as CSV text), and that every size the
    pipeline chooses is within `limits`.
    """
    limits = limits or QueryLimits()
    if not isinstance(tree, dict) or "__function__" not in tree:
        raise InvalidQuery("the OpenDP measurement JSON must be one serialized OpenDP measurement")
    for _, node in _walk(tree):
        if not isinstance(node, dict):
            continue
        flags = [key for key in node if isinstance(key, str) and key.startswith("__")]
        if any(flag in POLARS_FLAGS for flag in flags):
            raise PipelineRefused(
                "Polars objects are not accepted in an OpenDP measurement: send Polars plans as an "
                "OpenDP Polars query"
            )
        if "__tuple__" in node:
            if set(node) != {"__tuple__"} or not isinstance(node["__tuple__"], list):
                raise InvalidQuery("malformed tuple in the OpenDP measurement JSON")
            continue
        if "__function__" not in node:
            if flags:
                raise PipelineRefused(f"unknown OpenDP JSON field {flags[0]!r}")
            continue
        _check_constructor(node)
        _check_sizes(node["__function__"], node.get("__kwargs__", {}), metadata, limits)
        if node["__function__"] in ("make_split_dataframe", "make_create_dataframe"):
            names = node.get("__kwargs__", {}).get("col_names")
            if names != list(metadata.column_names):
                raise InputDomainMismatch(
                    f"{node['__function__']} must name the dataset's columns in metadata order: "
                    f"{', '.join(metadata.column_names)}"
                )


def _check_constructor(node: dict[str, Any]) -> None:
    unknown = set(node) - _NODE_KEYS
    if unknown:
        raise PipelineRefused(f"unknown field(s) in an OpenDP constructor: {sorted(unknown)}")
    function, module = node.get("__function__"), node.get("__module__")
    if not isinstance(function, str) or not isinstance(module, str):
        raise InvalidQuery("OpenDP constructors must name a function and a module")
    kwargs = node.get("__kwargs__", {})
    if not isinstance(kwargs, dict):
        raise InvalidQuery(f"the arguments of {function} must be a JSON object")
    version = node.get("__version__")
    if version is not None and version != dp.__version__:
        raise InvalidQuery(
            f"the pipeline was built with OpenDP {version}; this server runs OpenDP "
            f"{dp.__version__}: build it with the same version"
        )
    if function in USER_CODE_CONSTRUCTORS:
        raise PipelineRefused(
            f"{function} takes a user-defined function, which the executor never runs "
            "(it needs OpenDP's honest-but-curious feature)"
        )
    if function in FEATURE_GATED_CONSTRUCTORS:
        feature = FEATURE_GATED_CONSTRUCTORS[function]
        raise PipelineRefused(
            f"{function} changes or needs OpenDP features ({feature}); pipelines may use only "
            "constructors that need no feature beyond contrib"
        )
    if function not in ALLOWED_CONSTRUCTORS.get(module, ()):
        raise PipelineRefused(
            f"OpenDP constructor {module}.{function} is not on the executor's allow-list"
        )


# Arguments that allocate by a number the client chose, by name (the same in every constructor that
# takes them): row-like sizes (`make_resize`, the sized sums, `vector_domain`), element counts
# (b-ary trees; `k` of `make_noisy_top_k`) and lists whose length counts elements.
_ROW_SIZE_ARGUMENTS = frozenset({"size", "size_limit"})
_COUNT_ARGUMENTS = frozenset({"leaf_count", "branching_factor"})
_LIST_ARGUMENTS = frozenset({"categories", "edges", "bin_edges", "candidates", "alphas"})


def _check_sizes(
    function: str, kwargs: Mapping[str, Any], metadata: DatasetMetadata, limits: QueryLimits
) -> None:
    for name, value in kwargs.items():
        if name in _ROW_SIZE_ARGUMENTS:
            _check_count(function, name, value, limits.opendp_row_ceiling(metadata.rows), "maxRows")
        elif name in _COUNT_ARGUMENTS or (function, name) == ("make_noisy_top_k", "k"):
            _check_count(function, name, value, limits.opendp_max_elements, "maxElements")
        elif name in _LIST_ARGUMENTS:
            items = value.get("__tuple__") if isinstance(value, dict) else value
            if isinstance(items, list):
                _check_count(function, name, len(items), limits.opendp_max_elements, "maxElements")


def _check_count(function: str, name: str, value: object, maximum: int, limit: str) -> None:
    if value is None:
        return  # optional sizes (vector_domain without a size)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidQuery(f"{function} {name} must be an integer")
    if value > maximum:
        raise QueryLimitExceeded(
            f"{function} {name} is {value}, above this executor's ceiling of {maximum} ({limit})",
            metadata={"limit": limit, "argument": f"{function}.{name}", "maximum": str(maximum)},
        )


def _measurement_from_json(
    text: str, metadata: DatasetMetadata, limits: QueryLimits
) -> dp.Measurement:
    tree = _parse_json(text, "OpenDP measurement JSON")
    check_measurement_json(tree, metadata, limits)
    # Every constructor named in the JSON is allow-listed: deserializing runs only those.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            measurement = dp.deserialize(text)
    except (OpenDPException, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise InvalidQuery(
            f"OpenDP could not rebuild the measurement: {_clean_message(exc)}"
        ) from None
    if not isinstance(measurement, dp.Measurement):
        raise InvalidQuery("the OpenDP pipeline must be a measurement (it must add noise)")
    if measurement.input_domain != csv_input_domain():
        raise InputDomainMismatch(
            "the measurement's input domain must be the dataset as CSV text "
            f"(AtomDomain(T=String)), not {_short(measurement.input_domain)}; start it with "
            "make_split_dataframe"
        )
    if measurement.input_metric != dp.symmetric_distance():
        raise InputDomainMismatch(
            "the measurement's input metric must be SymmetricDistance, not "
            f"{_short(measurement.input_metric)}"
        )
    return measurement


@functools.cache
def csv_input_domain() -> dp.Domain:
    return dp.atom_domain(T=dp.String)


# -- Polars plans ----------------------------------------------------------------------------------

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
            pl.LazyFrame(schema={"x": pl.Int64}).select(dp.len(scale=1.0)).serialize(format="json")
        )
    for key, node in _walk(json.loads(text)):
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
    for key, node in _walk(tree):
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
            columns = [k.get("Column") for k in keys if isinstance(k, dict)]
            if columns and len(columns) == len(keys) and all(isinstance(c, str) for c in columns):
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
                f"the plan's input column {name!r} is {_short(found)}, but the metadata says "
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
    domain = dp.with_margin(domain, dp.polars.Margin(by=[], max_length=metadata.rows))
    for keys in dict.fromkeys(group_keys):
        if not all(k in metadata.column_names for k in keys):
            continue  # OpenDP refuses the plan with its own message
        columns = [metadata.column(k) for k in keys]
        lengths = [c["max_partition_length"] for c in columns if "max_partition_length" in c]
        cardinalities = [c.get("cardinality") for c in columns]
        max_groups = math.prod(cardinalities) if all(cardinalities) else None  # type: ignore[arg-type]
        domain = dp.with_margin(
            domain,
            dp.polars.Margin(
                by=[pl.col(k) for k in keys],
                max_length=min([metadata.rows, *lengths]),
                max_groups=max_groups,
            ),
        )
    return domain


def _measurement_from_plan(
    query: OpenDpPolarsQuery, metadata: DatasetMetadata, limits: QueryLimits
) -> dp.Measurement:
    tree = _parse_json(query.plan_json, "Polars plan")
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
        message = _clean_message(exc)
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


# -- cost ------------------------------------------------------------------------------------------

OpenDpQuery = OpenDpMeasurementQuery | OpenDpPolarsQuery


def build_measurement(
    query: OpenDpQuery, metadata: DatasetMetadata, limits: QueryLimits | None = None
) -> dp.Measurement:
    """The checked measurement for `query` on data described by `metadata` (no data access)."""
    limits = limits or QueryLimits()
    if isinstance(query, OpenDpMeasurementQuery):
        return _measurement_from_json(query.measurement_json, metadata, limits)
    return _measurement_from_plan(query, metadata, limits)


def estimate_cost(
    query: OpenDpQuery, metadata: DatasetMetadata, limits: QueryLimits | None = None
) -> PrivacyLoss:
    """The privacy loss the query will be charged (rounded up); validates it; no data access."""
    measurement = build_measurement(query, metadata, limits)
    return measurement_cost(measurement, query.fixed_delta, metadata)


def measurement_cost(
    measurement: dp.Measurement, fixed_delta: Decimal | None, metadata: DatasetMetadata
) -> PrivacyLoss:
    measure = measurement.output_measure
    try:
        if measure == dp.max_divergence():
            return PrivacyLoss.pure_dp(_decimal(measurement.map(metadata.max_ids), "epsilon"))
        if measure == dp.approximate(dp.max_divergence()):
            epsilon, delta = measurement.map(metadata.max_ids)
            return _approx(epsilon, delta)
        if measure == dp.zero_concentrated_divergence():
            if fixed_delta is None:
                return PrivacyLoss.rho_zcdp(_decimal(measurement.map(metadata.max_ids), "rho"))
            curve = dp.c.make_zCDP_to_approxDP(measurement).map(metadata.max_ids)
            return _approx(curve.epsilon(delta=float(fixed_delta)), fixed_delta)
        if measure == dp.smoothed_max_divergence():
            if fixed_delta is None:
                raise InvalidQuery(
                    "the measurement's privacy loss is a curve: give fixed_delta to charge it as "
                    "(epsilon, delta)"
                )
            curve = measurement.map(metadata.max_ids)
            return _approx(curve.epsilon(delta=float(fixed_delta)), fixed_delta)
        approximate_zcdp = measure == dp.approximate(dp.zero_concentrated_divergence())
        if approximate_zcdp or measure == dp.approximate(dp.smoothed_max_divergence()):
            if fixed_delta is None:
                raise InvalidQuery(
                    "the measurement's privacy loss is a zCDP or curve loss with a delta: give "
                    "fixed_delta to charge it as (epsilon, delta)"
                )
            if approximate_zcdp:
                measurement = dp.c.make_zCDP_to_approxDP(measurement)
            curve, delta = measurement.map(metadata.max_ids)
            epsilon = curve.epsilon(delta=float(fixed_delta))
            return _approx(epsilon, fixed_delta + _decimal(delta, "delta"))
    except InvalidQuery:
        raise
    except (OpenDPException, TypeError, ValueError) as exc:
        raise InvalidQuery(
            f"OpenDP could not compute the privacy loss: {_clean_message(exc)}"
        ) from None
    raise InvalidQuery(
        f"unsupported privacy measure {_short(measure)}: use max divergence (pure DP), approximate "
        "max divergence, zero-concentrated divergence or a privacy curve with fixed_delta"
    )


def _decimal(value: object, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidQuery(f"the pipeline's {name} is not a number")
    if not math.isfinite(value):
        raise InvalidQuery(f"the pipeline's {name} is not finite (the noise scale is too small)")
    try:
        return parse_decimal(float(value), name=name)
    except PrivacyValueError as exc:
        raise InvalidQuery(f"the query's privacy cost is out of range: {exc}") from None


def _approx(epsilon: object, delta: object) -> PrivacyLoss:
    delta_value = delta if isinstance(delta, Decimal) else _decimal(delta, "delta")
    loss = PrivacyLoss.approx_dp(_decimal(epsilon, "epsilon"), delta_value)
    if loss.delta >= 1:
        raise InvalidQuery("the pipeline's delta must be less than 1")
    return loss


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
    data: str | pl.DataFrame,
    metadata: DatasetMetadata,
    measurement: dp.Measurement | None = None,
) -> pd.DataFrame:
    """Run the query on prepared data (CSV text or a Polars frame) and return the DP release.

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


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _clean_message(exc: BaseException) -> str:
    """The first meaningful line of a library error (OpenDP adds backtraces), bounded in length."""
    if isinstance(exc, OpenDPException):
        text = (exc.message or exc.variant or "").strip()
    else:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        text = lines[0] if lines else ""
    text = text or type(exc).__name__
    if len(text) > MAX_MESSAGE_LENGTH:
        text = text[: MAX_MESSAGE_LENGTH - 3] + "..."
    return text

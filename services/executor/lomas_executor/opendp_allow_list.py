"""The allow-list of OpenDP constructors, and the walk of a measurement's JSON against it.

A measurement arrives in OpenDP's JSON form (`dp.serialize`) or in the parts form (`opendp_json`,
each distinct constructor once, walked part by part); deserializing it runs the constructors it
names, so the JSON is walked first: every `__function__`/`__module__` pair must be
on `ALLOWED_CONSTRUCTORS`, user-defined functions and feature-gated constructors are refused by
name, Polars objects are refused here, and every size the pipeline chooses is checked against the
executor's ceilings (`QueryLimits`) before anything is allocated. Only then is it deserialized, and
its input domain and metric must be the dataset as CSV text (`csv_input_domain`).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from typing import Any

import opendp.prelude as dp
from opendp.mod import OpenDPException

from lomas_common.errors import InvalidQuery
from lomas_executor import opendp_model as model
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.opendp_json import (
    build_parts,
    deserialize_shared,
    is_part_reference,
    measurement_parts,
)
from lomas_executor.opendp_model import InputDomainMismatch, PipelineRefused, QueryLimitExceeded
from lomas_executor.settings import QueryLimits

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


def check_measurement_json(
    tree: Any, metadata: DatasetMetadata, limits: QueryLimits | None = None
) -> list[dict[str, Any]] | None:
    """Refuse anything but allow-listed OpenDP constructors, before deserializing anything.

    Also checks that every `make_split_dataframe`/`make_create_dataframe` names the metadata's
    columns in order (the measurement reads the dataset as CSV text), and that every size the
    pipeline chooses is within `limits`. `tree` is OpenDP's JSON or the parts form
    (`opendp_json`), whose parts are each checked as OpenDP's JSON: a reference stands for a whole
    constructor node, and every check reads only a node and its own arguments, so checking each
    part once checks every node of the measurement. Returns the parts (None for OpenDP's form).
    """
    limits = limits or QueryLimits()
    parts = measurement_parts(tree)
    if parts is None:
        if not isinstance(tree, dict) or "__function__" not in tree:
            raise InvalidQuery(
                "the OpenDP measurement JSON must be one serialized OpenDP measurement"
            )
        _check_tree(tree, metadata, limits, references=False)
    else:
        for part in parts:
            _check_tree(part, metadata, limits, references=True)
    return parts


def _check_tree(
    tree: Any, metadata: DatasetMetadata, limits: QueryLimits, *, references: bool
) -> None:
    for _, node in model.walk(tree):
        if not isinstance(node, dict):
            continue
        if references and is_part_reference(node):
            continue  # its shape was checked with the parts (`measurement_parts`)
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


@functools.lru_cache(maxsize=64)
def measurement_from_json(
    text: str, metadata: DatasetMetadata, limits: QueryLimits
) -> dp.Measurement:
    """The checked measurement of `text` (OpenDP's JSON or the parts form, `opendp_json`).
    Memoised per process (refusals are not): OpenDP's form of a `then_` chain takes tens of
    milliseconds to parse, check and build, and the worker builds it to price the query and again
    to run it; a Measurement is never changed by use, so one object serves every run."""
    tree = model.parse_json(text, "OpenDP measurement JSON")
    parts = check_measurement_json(tree, metadata, limits)
    # Every constructor named in the JSON is allow-listed: deserializing runs only those.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            measurement = deserialize_shared(text) if parts is None else build_parts(parts)
    except (
        OpenDPException,
        TypeError,
        ValueError,
        KeyError,
        AttributeError,
        RecursionError,
    ) as exc:
        raise InvalidQuery(
            f"OpenDP could not rebuild the measurement: {model.clean_message(exc)}"
        ) from None
    if not isinstance(measurement, dp.Measurement):
        raise InvalidQuery("the OpenDP pipeline must be a measurement (it must add noise)")
    if measurement.input_domain != csv_input_domain():
        raise InputDomainMismatch(
            "the measurement's input domain must be the dataset as CSV text "
            f"(AtomDomain(T=String)), not {model.short_text(measurement.input_domain)}; start it with "
            "make_split_dataframe"
        )
    if measurement.input_metric != dp.symmetric_distance():
        raise InputDomainMismatch(
            "the measurement's input metric must be SymmetricDistance, not "
            f"{model.short_text(measurement.input_metric)}"
        )
    return measurement


@functools.cache
def csv_input_domain() -> dp.Domain:
    return dp.atom_domain(T=dp.String)

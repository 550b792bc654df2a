"""DP synthetic data with SmartNoise-Synth: validation and cost, on the metadata alone.

A query names a synthesizer, its (epsilon, delta), the columns to synthesize and how many samples to
return; the release is the samples (never the fitted model). This module checks everything that can
be known without the data and computes the cost; `smartnoise_synth_run` fits and samples.

Synthesizers:
* the marginal ones, `mwem`, `aim` and `mst`, run in the default install (SmartNoise-Synth without
  PyTorch: `scripts/setup.sh`);
* the GANs, `dpctgan`, `patectgan`, `pategan` and `dpgan`, need PyTorch and Opacus, which only the
  heavy worker pool installs (`services/executor/requirements-heavy.txt`, `scripts/setup-heavy.sh`).
  Without them a GAN query is refused before any charge: FAILED_PRECONDITION, HEAVY_POOL_UNAVAILABLE
  (metadata `pool`, `synthesizer`). Whether they are there is `SynthLimits.gan` (LOMAS_SYNTH_GAN):
  `auto` (the default) looks for them in this process; `on` says the heavy pool has them although
  this process does not (an executor service whose image has no PyTorch); `off` refuses GANs;
* `dpctgan` and `dpgan` are refused on the heavy pool too (SYNTHESIZER_REFUSED): their privacy
  accountant, Opacus 0.14, warns on every fit that the budget it computes is incorrect
  (`UNSOUND_ACCOUNTING`); patectgan and pategan account with PATE's own moments;
* `pacsynth` (a Rust panic, as Lomas says), `quail` and any other name are refused by name:
  INVALID_ARGUMENT, SYNTHESIZER_REFUSED (metadata `synthesizer`).

Refusals, all before any charge, as Lomas makes them and more:
* `return_model=True`: no model of private data leaves the platform (Lomas refuses it for mst);
* a synthesizer unreliable at the dataset's size (the metadata's `rows`): the GANs below
  `MIN_ROWS_GAN` rows (Lomas refuses pategan below 1,000; here pategan needs `MIN_ROWS`, 2,000:
  it makes one teacher per 1,000 rows of the data and fails with none) or below their batch size; mwem when its histogram has more cells than `MAX_MWEM_CELLS` or
  fewer than half its iterations (SmartNoise-Synth's own "privacy risk" warning);
* `select_cols` that the metadata does not have, identifier columns (`private_id`), datetime
  columns, and columns without public categories or bounds (their values would come from the data);
* datasets where one person may own several rows (`max_ids` above 1): the synthesizers' privacy
  analyses count one row per person;
* synthesizer parameters and constraints outside their allow-lists (`smartnoise_synth_params`);
* a delta where the synthesizer spends none (mwem), and none where a GAN needs one (they would take
  one from the data's row count): DELTA_REQUIRED;
* `nb_samples` above `SynthLimits.max_samples` (QUERY_LIMIT_EXCEEDED); 0 means the metadata's row
  count, capped alike. A `condition` must parse as a SQL WHERE clause on the selected columns.

Data-independent preprocessing: every column's transformer comes from the metadata (categories,
bounds) and is fitted on a table made from the metadata alone before it sees data, so
SmartNoise-Synth never infers categories or bounds from the data and spends no preprocessor epsilon
(continuous columns are binned, for the marginal synthesizers, or scaled, for the GANs, between the
metadata's bounds or the constraint's).

Cost: exactly the query's epsilon, and its delta for the synthesizers that use one (aim and mst take
SmartNoise-Synth's default 1e-9 when the query gives none, as in Lomas), as approximate DP; each
synthesizer runs with the largest floats not above them.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from snsql._ast.ast import Column
from snsql.sql.parse import QueryParser

from lomas_common.errors import FailedPrecondition, InvalidQuery
from lomas_common.privacy import PrivacyLoss
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.settings import SqlLimits, SynthLimits
from lomas_executor.smartnoise_sql import float_at_most
from lomas_executor.smartnoise_synth_params import (
    NumericOverride,
    parse_constraints,
    parse_synth_params,
)
from lomas_executor.sql_limits import check_sql_text

MARGINAL_SYNTHESIZERS = ("mwem", "aim", "mst")
GAN_SYNTHESIZERS = ("dpctgan", "patectgan", "pategan", "dpgan")
NOT_OFFERED = {
    "pacsynth": "pacsynth is not offered (it panics in Rust, as Lomas says)",
    "quail": "quail is not offered (SmartNoise-Synth does not list it)",
}
# GANs that the heavy pool has but does not run: their accountant is Opacus 0.14 (the version
# SmartNoise-Synth 1.0.8 requires), which warns on every fit, as SmartNoise-Synth calls it, that "the
# returned privacy budget will be incorrect" (the sampling rate comes from the batch size and the
# data's row count). Refused before any charge rather than failed after data access.
UNSOUND_ACCOUNTING = {
    "dpctgan": "Opacus 0.14, its privacy accountant, warns that the budget it computes is incorrect",
    "dpgan": "Opacus 0.14, its privacy accountant, warns that the budget it computes is incorrect",
}
HEAVY_POOL = "heavy"
# What the GAN synthesizers import (SmartNoise-Synth's `snsynth.pytorch`).
GAN_MODULES = ("torch", "opacus")
# SmartNoise-Synth's default delta for the synthesizers that spend one and have a default.
DEFAULT_DELTA = {"aim": Decimal("1e-9"), "mst": Decimal("1e-9")}
MIN_ROWS_GAN = 1_000
# PATE-GAN makes one teacher per 1,000 rows of the data it fits (none below 1,000, and it fails):
# the metadata's row count is approximate and rows with missing values may be dropped, so it asks
# for twice that.
MIN_ROWS = {"pategan": 2_000}
DEFAULT_GAN_BATCH = {"dpctgan": 500, "patectgan": 500, "pategan": 64, "dpgan": 64}
DEFAULT_BINS = 10
MAX_MWEM_CELLS = 1_000_000
# MWEM's multiplicative weights pass over the whole histogram once per measurement, per
# multiplicative-weights iteration, per iteration: about iterations^2 / 2 x
# mult_weights_iterations x cells element updates, which this ceiling bounds (about 20 s of CPU).
MAX_MWEM_WORK = 20_000_000_000
MAX_CONDITION_CHARS = 1_000
MAX_CONDITIONAL_SAMPLES = 10_000
MAX_SELECTED_COLUMNS = 100
# Reason of the ceilings checked here (the same as the SQL and OpenDP ceilings).
LIMIT_EXCEEDED = "QUERY_LIMIT_EXCEEDED"
SYNTHESIZER_REFUSED = "SYNTHESIZER_REFUSED"

Style = Literal["cube", "gan"]


@dataclass(frozen=True)
class SmartnoiseSynthQuery:
    """A SmartNoise-Synth query as Lomas takes it (see the module docstring).

    `delta` None means the query gave none. `synth_params_json` and `constraints_json` are JSON
    objects (empty text for none); `nb_samples` 0 means the metadata's row count."""

    synth_name: str
    epsilon: Decimal
    delta: Decimal | None = None
    select_cols: tuple[str, ...] = ()
    synth_params_json: str = ""
    nullable: bool = True
    constraints_json: str = ""
    return_model: bool = False
    condition: str = ""
    nb_samples: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.epsilon, Decimal) or not self.epsilon.is_finite():
            raise InvalidQuery("epsilon must be a finite decimal")
        if self.epsilon <= 0:
            raise InvalidQuery("epsilon must be greater than 0")
        if self.delta is not None:
            if not isinstance(self.delta, Decimal) or not self.delta.is_finite():
                raise InvalidQuery("delta must be a finite decimal")
            if not 0 <= self.delta < 1:
                raise InvalidQuery("delta must be at least 0 and less than 1")
        if isinstance(self.nb_samples, bool) or not isinstance(self.nb_samples, int):
            raise InvalidQuery("nb_samples must be an integer")
        if self.nb_samples < 0:
            raise InvalidQuery("nb_samples must not be negative")


@dataclass(frozen=True)
class SynthColumn:
    """One column as the synthesizer sees it: categorical (public categories) or continuous
    (binned or scaled between public bounds)."""

    name: str
    kind: Literal["categorical", "continuous"]
    categories: tuple[Any, ...] = ()
    lower: float = 0.0
    upper: float = 0.0
    bins: int = DEFAULT_BINS
    integer: bool = False  # an int column: continuous samples are rounded back to ints

    def cardinality(self, nullable: bool) -> list[int]:
        """The sizes of the cube-style transformer's outputs for this column."""
        if self.kind == "categorical":
            return [len(self.categories) + (1 if nullable else 0)]
        return [self.bins, 2] if nullable else [self.bins]


@dataclass(frozen=True)
class SynthPlan:
    """A validated query: everything the run needs, known without the data."""

    synth_name: str
    style: Style
    epsilon: float
    delta: float | None
    params: Mapping[str, Any]
    columns: tuple[SynthColumn, ...]
    nullable: bool
    nb_samples: int
    condition: str
    cost: PrivacyLoss = field(compare=False)

    @property
    def column_names(self) -> list[str]:
        return [column.name for column in self.columns]


def gan_dependencies_available(limits: SynthLimits) -> bool:
    """Whether GAN synthesizers can run (see `SynthLimits.gan`): found, not imported."""
    if limits.gan == "on":
        return True
    if limits.gan == "off":
        return False
    return all(importlib.util.find_spec(name) is not None for name in GAN_MODULES)


def estimate_cost(
    query: SmartnoiseSynthQuery, metadata: DatasetMetadata, limits: SynthLimits, sql: SqlLimits
) -> PrivacyLoss:
    """The exact cost of `query` (rounded up to the ledger quantum); validates it; no data."""
    return plan(query, metadata, limits, sql).cost


def plan(
    query: SmartnoiseSynthQuery, metadata: DatasetMetadata, limits: SynthLimits, sql: SqlLimits
) -> SynthPlan:
    """Validate `query` against the metadata alone and say how it runs (see the module docstring)."""
    name = _synthesizer(query.synth_name)
    if query.return_model:
        raise InvalidQuery(
            f"{name} cannot return its model: Lomas mesh releases samples only, never a model "
            "fitted on private data; set return_model to false",
            metadata={"field": "return_model"},
        )
    gan = name in GAN_SYNTHESIZERS
    if gan and not gan_dependencies_available(limits):
        raise FailedPrecondition(
            f"{name} runs only on the heavy worker pool (PyTorch and Opacus), which this platform "
            "has not installed; use mwem, aim or mst, or ask the operator for the heavy pool "
            "(scripts/setup-heavy.sh)",
            reason="HEAVY_POOL_UNAVAILABLE",
            metadata={"pool": HEAVY_POOL, "synthesizer": name},
        )
    if name in UNSOUND_ACCOUNTING:
        raise InvalidQuery(
            f"{name} is not offered: {UNSOUND_ACCOUNTING[name]}; use patectgan, pategan, mst, aim "
            "or mwem",
            reason=SYNTHESIZER_REFUSED,
            metadata={"synthesizer": name},
        )
    if metadata.max_ids != 1:
        raise InvalidQuery(
            "SmartNoise-Synth's synthesizers count one row per person, and this dataset lets one "
            f"person own up to {metadata.max_ids} rows (max_ids)",
            metadata={"field": "max_ids"},
        )
    style: Style = "gan" if gan else "cube"
    params = parse_synth_params(name, query.synth_params_json)
    columns = _columns(query, metadata, style, parse_constraints(query.constraints_json))
    delta = _delta(name, query.delta)
    _check_reliable(name, params, metadata.rows)
    if name == "mwem":
        params = _mwem_params(params, columns, query.nullable, metadata.rows)
    nb_samples = _nb_samples(query.nb_samples, metadata.rows, limits)
    condition = _condition(query.condition, columns, sql)
    if condition and nb_samples > MAX_CONDITIONAL_SAMPLES:
        raise InvalidQuery(
            f"with a condition, nb_samples may be at most {MAX_CONDITIONAL_SAMPLES} (the samples "
            "are drawn and filtered row by row)",
            reason=LIMIT_EXCEEDED,
            metadata={"limit": "maxConditionalSamples", "maximum": str(MAX_CONDITIONAL_SAMPLES)},
        )
    cost = PrivacyLoss.approx_dp(query.epsilon, delta or Decimal(0)).as_cost()
    return SynthPlan(
        synth_name=name,
        style=style,
        epsilon=float_at_most(query.epsilon),
        delta=None if delta is None else float_at_most(delta),
        params=params,
        columns=columns,
        nullable=query.nullable,
        nb_samples=nb_samples,
        condition=condition,
        cost=cost,
    )


def _synthesizer(text: str) -> str:
    name = text.strip().lower()
    if name in MARGINAL_SYNTHESIZERS or name in GAN_SYNTHESIZERS:
        return name
    shown = text if len(text) <= 40 else text[:40] + "..."
    message = NOT_OFFERED.get(name) or (
        f"unknown synthesizer {shown!r}: choose one of "
        f"{', '.join(MARGINAL_SYNTHESIZERS + GAN_SYNTHESIZERS)}"
    )
    raise InvalidQuery(message, reason=SYNTHESIZER_REFUSED, metadata={"synthesizer": shown})


def _delta(name: str, delta: Decimal | None) -> Decimal | None:
    """The delta the synthesizer runs with and is charged (None: it spends none)."""
    if name == "mwem":
        if delta:
            raise InvalidQuery(
                "mwem spends no delta (pure epsilon-DP): leave delta empty",
                metadata={"field": "delta"},
            )
        return None
    if delta is None and name in DEFAULT_DELTA:
        return DEFAULT_DELTA[name]
    if not delta:
        raise InvalidQuery(
            f"{name} needs a delta above 0 (SmartNoise-Synth would otherwise take one from the "
            "data's row count)",
            reason="DELTA_REQUIRED",
        )
    return delta


def _columns(
    query: SmartnoiseSynthQuery,
    metadata: DatasetMetadata,
    style: Style,
    constraints: Mapping[str, NumericOverride | None],
) -> tuple[SynthColumn, ...]:
    names = list(query.select_cols) or [
        name for name in metadata.column_names if not metadata.column(name).get("private_id")
    ]
    if len(names) > MAX_SELECTED_COLUMNS:
        raise InvalidQuery(f"select at most {MAX_SELECTED_COLUMNS} columns")
    if len(set(names)) != len(names):
        raise InvalidQuery("select_cols names a column twice", metadata={"field": "select_cols"})
    unknown = [name for name in names if name not in metadata.column_names]
    if unknown:
        raise InvalidQuery(
            f"select_cols: no column {unknown[0]!r} in the dataset's metadata",
            metadata={"column": unknown[0]},
        )
    extra = sorted(set(constraints) - set(names))
    if extra:
        raise InvalidQuery(
            f"constraints name column {extra[0]!r}, which is not selected",
            metadata={"column": extra[0]},
        )
    return tuple(_column(name, metadata, style, constraints.get(name)) for name in names)


def _column(
    name: str, metadata: DatasetMetadata, style: Style, override: NumericOverride | None
) -> SynthColumn:
    col = metadata.column(name)
    col_type = metadata.column_type(name)

    def refuse(why: str) -> InvalidQuery:
        return InvalidQuery(f"column {name!r}: {why}", metadata={"column": name})

    if col.get("private_id"):
        raise refuse("an identifier column (private_id) cannot be synthesized")
    if col_type == "datetime":
        raise refuse("datetime columns are not synthesized yet; leave it out of select_cols")
    if col_type == "boolean" or "categories" in col:
        if override is not None:
            raise refuse(f"{override.transformer} applies to numeric columns only")
        categories = (False, True) if col_type == "boolean" else tuple(col["categories"])
        return SynthColumn(name, "categorical", categories=categories)
    if col_type == "string":
        raise refuse(
            "a string column needs its categories in the metadata (otherwise the values would "
            "come from the data)"
        )
    wanted = "BinTransformer" if style == "cube" else "MinMaxTransformer"
    if override is not None and override.transformer != wanted:
        raise refuse(f"the {style} synthesizers take a {wanted} here, not {override.transformer}")
    lower = override.lower if override is not None and override.lower is not None else None
    upper = override.upper if override is not None and override.upper is not None else None
    if lower is None or upper is None:
        if "lower" not in col:
            raise refuse(
                "a numeric column needs bounds (lower and upper) in the metadata or in its "
                "constraint: SmartNoise-Synth would otherwise infer them from the data"
            )
        lower, upper = float(col["lower"]), float(col["upper"])
    if not lower < upper:
        raise refuse("its bounds must satisfy lower < upper")
    bins = override.bins if override is not None and override.bins is not None else DEFAULT_BINS
    return SynthColumn(
        name, "continuous", lower=lower, upper=upper, bins=bins, integer=col_type == "int"
    )


def _check_reliable(name: str, params: Mapping[str, Any], rows: int) -> None:
    """Refuse a synthesizer that would be unreliable at the dataset's size (metadata rows)."""

    def refuse(why: str) -> InvalidQuery:
        return InvalidQuery(
            f"{name} is not reliable on this dataset: {why}",
            reason=SYNTHESIZER_REFUSED,
            metadata={"synthesizer": name},
        )

    if name in GAN_SYNTHESIZERS:
        least = MIN_ROWS.get(name, MIN_ROWS_GAN)
        if rows < least:
            raise refuse(
                f"it needs at least {least} rows and the metadata says {rows} rows; "
                "use mst, aim or mwem"
            )
        batch = int(params.get("batch_size", DEFAULT_GAN_BATCH[name]))
        if batch > rows:
            raise refuse(f"its batch_size ({batch}) is above the dataset's {rows} rows")


def _mwem_params(
    params: Mapping[str, Any], columns: tuple[SynthColumn, ...], nullable: bool, rows: int
) -> dict[str, Any]:
    """MWEM's parameters with the defaults it would derive from the data's row count taken from
    the metadata's instead; refuses histograms too large, or too small for its iterations."""
    result = dict(params)
    scale = max(rows, 1)
    result.setdefault("iterations", max(math.ceil(math.log10(scale)) * 10, 1))
    result.setdefault("marginal_width", 3 if scale > 10_000 else 2)
    dims = [size for column in columns for size in column.cardinality(nullable)]
    factor = int(result.get("split_factor") or len(dims))
    for start in range(0, len(dims), factor):
        cells = math.prod(dims[start : start + factor])
        if cells > MAX_MWEM_CELLS:
            raise InvalidQuery(
                f"mwem would build a histogram of {cells} cells, above the ceiling of "
                f"{MAX_MWEM_CELLS}: set split_factor, select fewer columns or use mst or aim",
                reason=LIMIT_EXCEEDED,
                metadata={"limit": "maxMwemCells", "maximum": str(MAX_MWEM_CELLS)},
            )
        work = result["iterations"] ** 2 * result.get("mult_weights_iterations", 20) * cells
        if work > MAX_MWEM_WORK:
            raise InvalidQuery(
                f"mwem would update its histogram of {cells} cells about {work // 2:.2e} times "
                "in all, above this executor's ceiling: set split_factor, lower iterations, "
                "select fewer columns or use mst or aim",
                reason=LIMIT_EXCEEDED,
                metadata={"limit": "maxMwemWork", "maximum": str(MAX_MWEM_WORK)},
            )
        if 2 * cells <= result["iterations"]:
            raise InvalidQuery(
                f"mwem would run {result['iterations']} iterations on a histogram of {cells} "
                "cells, which SmartNoise-Synth calls a privacy risk: lower iterations or raise "
                "split_factor",
                reason=SYNTHESIZER_REFUSED,
                metadata={"synthesizer": "mwem"},
            )
    return result


def _nb_samples(nb_samples: int, rows: int, limits: SynthLimits) -> int:
    if nb_samples == 0:
        return min(rows, limits.max_samples)
    if nb_samples > limits.max_samples:
        raise InvalidQuery(
            f"nb_samples is above this executor's ceiling of {limits.max_samples}",
            reason=LIMIT_EXCEEDED,
            metadata={"limit": "maxSamples", "maximum": str(limits.max_samples)},
        )
    return nb_samples


def _condition(text: str, columns: tuple[SynthColumn, ...], sql: SqlLimits) -> str:
    """The condition, checked: a SQL WHERE clause on the selected columns ("" for none)."""
    if not text.strip():
        return ""
    if len(text) > MAX_CONDITION_CHARS:
        raise InvalidQuery(f"condition is longer than {MAX_CONDITION_CHARS} characters")
    check_sql_text(text, sql)
    try:
        parsed = QueryParser().query(f"SELECT * FROM DUMMY WHERE {text}")
        referenced = [node.name for node in parsed.where.condition.find_nodes(Column)]
    except Exception:  # the parser's many error types; its messages quote only the condition
        raise InvalidQuery(
            "condition is not a valid WHERE clause", metadata={"field": "condition"}
        ) from None
    selected = {column.name: column for column in columns}
    for name in referenced:
        if name not in selected:
            raise InvalidQuery(
                f"condition names {name!r}, which is not a selected column",
                metadata={"column": str(name)},
            )
    # Evaluated once on public values, so that a condition the samples cannot be filtered with
    # (a string compared with a number, say) fails here, before any data access.
    bindings = {
        column.name: column.categories[0] if column.kind == "categorical" else column.lower
        for column in columns
    }
    try:
        parsed.where.condition.evaluate(bindings)
    except Exception:
        raise InvalidQuery(
            "condition cannot be evaluated on the selected columns' values",
            metadata={"field": "condition"},
        ) from None
    return text

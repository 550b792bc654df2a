"""DiffPrivLib queries before any data: the declarative pipeline, its checks and its cost.

A `DiffPrivLibQuery` trains a pipeline of DiffPrivLib steps on feature (and target) columns of the
dataset. The pipeline is JSON, never a pickle::

    {"steps": [
      {"name": "scaler", "type": "StandardScaler",
       "params": {"epsilon": 0.5, "bounds": [[30, 13], [65, 23]]}},
      {"name": "classifier", "type": "LogisticRegression",
       "params": {"epsilon": 1.0, "data_norm": 83.6}}]}

`parse_pipeline` checks everything on the metadata alone, before any data access (nothing charged):

* **Allow-list** (`diffprivlib_allow_list`). Each step's `type` is one of `MODELS` (DiffPrivLib's
  StandardScaler, PCA, LogisticRegression, LinearRegression, GaussianNB, KMeans,
  RandomForestClassifier); each parameter is on that model's list, with its type and range checked (numbers, booleans, bounds). Any other
  parameter is accepted only at DiffPrivLib's own default value (what `get_params()` of an untouched
  model shows: `verbose=0`, `n_jobs=None`...), so it changes nothing; otherwise
  DIFFPRIVLIB_PIPELINE_REFUSED names it. `random_state` is refused: a seed makes DiffPrivLib's noise
  reproducible by whoever knows it, which undoes the privacy. `accountant` is the client's business
  (the platform keeps the ledger). A data-dependent number of PCA components (`"mle"`, a ratio) is
  refused. Structure: one to `MAX_STEPS` uniquely named steps; every step but the last is a
  preprocessor (StandardScaler, PCA); the last one is a model with a score.
* **No bounds from the data.** A parameter whose absence makes DiffPrivLib compute bounds, a data
  norm or the classes from the data (DiffPrivLib's PrivacyLeakWarning) is required:
  DIFFPRIVLIB_PRIVACY_LEAK names the step and parameter. A classifier's classes come from the
  metadata: the target must declare its categories (or be boolean); rows whose class is not one of
  them are left out; RandomForestClassifier is given them, GaussianNB is fitted with them.
  LogisticRegression takes the classes that occur in its training rows (DiffPrivLib's
  `np.unique(y)`), and GaussianNB leaves an absent class's parameters at exact zeros: either would
  tell whether a declared class is absent from the data, without noise. So both are trained with
  one extra row per declared class (`ParsedPipeline.anchor`): public and fixed (every feature at
  the midpoint of its metadata bounds, 0.5 for a boolean, 0 without bounds), so the training stays
  DP on the real rows (DiffPrivLib clips it like any row), and every declared class is always
  there. The run turns PrivacyLeakWarning into an error as a second guard.
* **Columns.** Feature columns exist, are distinct, numeric or boolean; a classifier has one
  categorical or boolean target, a regressor one numeric target, a clusterer or PCA none.
* **Missing values** (`imputer_strategy`): "drop" drops rows with a missing feature; "mean" and
  "median" put the midpoint of the column's metadata bounds in its gaps, and "most_frequent" the
  first declared category of an int column with categories, false for a boolean, otherwise the
  midpoint too. The values come from the metadata: the data's own mean, median or mode would be
  statistics released without noise. Rows without a target are always dropped.
* **Sizes** a pipeline chooses are bounded before anything is allocated (QUERY_LIMIT_EXCEEDED):
  steps, features, trees and their nodes, clusters, iterations, the JSON's length.
* **One row per person.** DiffPrivLib's epsilon protects one row: a dataset where a person may own
  several rows (`max_ids` above 1) is refused (its true loss would be up to `max_ids` times the
  charge).
* **The score** (`score_epsilon`): without it a real run releases no score (the score of the
  private test rows without noise would not be DP). With it, a classifier's accuracy is released
  with noise (`diffprivlib_score`); a regressor's R², a clusterer's inertia or a PCA's likelihood
  have no bounded sensitivity, so a positive `score_epsilon` is refused for them. A dummy run
  always releases the exact score: the dummy data is public.

The cost is exact: the decimal sum of the steps' epsilon, as written in the JSON (or DiffPrivLib's
default of 1.0 where a step sets none), plus `score_epsilon`, pure DP. Each step is given the
largest float not above its decimal epsilon, so the noise is never calibrated to more than is
charged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from lomas_common.errors import InvalidQuery
from lomas_common.privacy import PrivacyLoss, PrivacyValueError, parse_decimal
from lomas_executor.canonical import canonical_decimal
from lomas_executor.diffprivlib_allow_list import (
    DEFAULTS,
    LIMIT_EXCEEDED,
    MAX_FEATURES,
    MAX_PIPELINE_CHARS,
    MAX_STEP_NAME,
    MAX_STEPS,
    MAX_TREE_NODES,
    MODELS,
    PIPELINE_REFUSED,
    PRIVACY_LEAK,
    REFUSED_PARAMETERS,
    Role,
    Where,
    is_default,
    label_key,
)
from lomas_executor.metadata import DatasetMetadata

IMPUTER_STRATEGIES = ("drop", "mean", "median", "most_frequent")
DEFAULT_TEST_SIZE = Decimal("0.2")
DEFAULT_IMPUTER_STRATEGY = "drop"
# Classifiers trained with one public row per declared class (see `ParsedPipeline.anchor`).
ANCHORED = ("LogisticRegression", "GaussianNB")


@dataclass(frozen=True, slots=True)
class DiffPrivLibQuery:
    """A DiffPrivLib training query (what `lomas.common.v1.DiffPrivLibQuery` carries)."""

    pipeline_json: str
    feature_columns: tuple[str, ...]
    target_columns: tuple[str, ...] = ()
    test_size: Decimal = DEFAULT_TEST_SIZE
    test_train_split_seed: int = 0
    imputer_strategy: str = DEFAULT_IMPUTER_STRATEGY
    score_epsilon: Decimal = Decimal(0)  # 0: no score released (a dummy run's is exact)


@dataclass(frozen=True, slots=True)
class Step:
    """One checked step: the keyword arguments its DiffPrivLib class is built with."""

    name: str
    type: str
    epsilon: Decimal
    kwargs: Mapping[str, Any]
    n_features_in: int  # columns the step sees (public: from the query and the steps before)


@dataclass(frozen=True, slots=True)
class ParsedPipeline:
    """A query that passed every check before data access, and what its run needs."""

    query: DiffPrivLibQuery
    steps: tuple[Step, ...]
    cost: PrivacyLoss
    role: Role  # the last step's
    classes: tuple[Any, ...] | None  # a classifier's classes, from the metadata (sorted)
    target_type: str  # the target column's metadata type ("" without a target)
    fill_values: Mapping[str, float]  # imputation values per feature column (empty for "drop")
    # The public feature row added to the training rows once per declared class (None: no rows
    # added), so a classifier's classes never depend on which classes the data holds.
    anchor: tuple[float, ...] | None = None


# -- parsing ---------------------------------------------------------------------------------------


def load_pipeline_json(text: str) -> list[dict[str, Any]]:
    """The steps of a pipeline's JSON (numbers with a fraction or exponent as exact Decimals),
    checked for shape only."""
    if len(text) > MAX_PIPELINE_CHARS:
        raise InvalidQuery(
            f"the pipeline JSON is longer than {MAX_PIPELINE_CHARS} characters",
            reason=LIMIT_EXCEEDED,
            metadata={"limit": "maxPipelineChars", "maximum": str(MAX_PIPELINE_CHARS)},
        )
    try:
        document = json.loads(text, parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise InvalidQuery("the pipeline is not valid JSON", reason=PIPELINE_REFUSED) from None
    if not isinstance(document, dict) or set(document) != {"steps"}:
        raise InvalidQuery(
            'the pipeline must be a JSON object {"steps": [...]}', reason=PIPELINE_REFUSED
        )
    steps = document["steps"]
    if not isinstance(steps, list) or not steps:
        raise InvalidQuery("the pipeline needs at least one step", reason=PIPELINE_REFUSED)
    if len(steps) > MAX_STEPS:
        raise InvalidQuery(
            f"the pipeline has more than {MAX_STEPS} steps",
            reason=LIMIT_EXCEEDED,
            metadata={"limit": "maxSteps", "maximum": str(MAX_STEPS)},
        )
    for step in steps:
        if (
            not isinstance(step, dict)
            or not {"name", "type"} <= set(step) <= {"name", "type", "params"}
            or not isinstance(step.get("params", {}), dict)
        ):
            raise InvalidQuery(
                'each step must be {"name": ..., "type": ..., "params": {...}}',
                reason=PIPELINE_REFUSED,
            )
    return steps


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number")


def canonical_pipeline_json(text: str) -> str:
    """One spelling per pipeline: sorted keys, no white space, every number as its normalised
    decimal (1, 1.0 and 1e0 are one number: the engine reads them alike). Text that is not a
    pipeline is kept as it is (the engine refuses it)."""
    try:
        steps = load_pipeline_json(text)
    except InvalidQuery:
        return text
    return _canonical({"steps": steps})


def _canonical(value: object) -> str:
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ",".join(f"{json.dumps(key)}:{_canonical(item)}" for key, item in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_canonical(item) for item in value) + "]"
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return json.dumps(value)
    normal = Decimal(value).normalize()
    return "0" if normal == 0 else format(normal, "f")


def parse_pipeline(query: DiffPrivLibQuery, metadata: DatasetMetadata) -> ParsedPipeline:
    """Check `query` against `metadata` (no data access) and price it."""
    _check_split(query)
    if metadata.max_ids != 1:
        raise InvalidQuery(
            "DiffPrivLib protects one row, and a person may own up to "
            f"{metadata.max_ids} rows of this dataset (max_ids)",
            metadata={"field": "max_ids"},
        )
    features = _check_features(query.feature_columns, metadata)
    steps: list[Step] = []
    n_features = len(features)
    names: set[str] = set()
    raw_steps = load_pipeline_json(query.pipeline_json)
    for position, raw in enumerate(raw_steps):
        step = _parse_step(raw, names, n_features, last=position == len(raw_steps) - 1)
        names.add(step.name)
        steps.append(step)
        if step.type == "PCA":
            n_features = int(step.kwargs["n_components"])
    role = MODELS[steps[-1].type].role
    classes = _check_targets(query.target_columns, role, steps[-1], metadata)
    if classes is not None:
        steps[-1] = _with_classes(steps[-1], classes)
    if not query.score_epsilon.is_finite() or query.score_epsilon < 0:
        raise InvalidQuery(
            "score_epsilon must be a finite number, 0 or more", metadata={"field": "scoreEpsilon"}
        )
    if query.score_epsilon and role != "classifier":
        raise InvalidQuery(
            f"score_epsilon: a {steps[-1].type}'s score has no bounded sensitivity, so it cannot "
            "be released with DP noise (only a classifier's accuracy can); leave it empty",
            metadata={"field": "scoreEpsilon"},
        )
    total = sum((step.epsilon for step in steps), query.score_epsilon)
    anchor = None
    if steps[-1].type in ANCHORED:
        midpoints = [_midpoint(column, metadata) for column in features]
        anchor = tuple(0.0 if value is None else value for value in midpoints)
    return ParsedPipeline(
        query=query,
        steps=tuple(steps),
        cost=PrivacyLoss.pure_dp(total).as_cost(),
        role=role,
        classes=classes,
        target_type=(metadata.column_type(query.target_columns[0]) if query.target_columns else ""),
        fill_values=_fill_values(query.imputer_strategy, features, metadata),
        anchor=anchor,
    )


def _check_split(query: DiffPrivLibQuery) -> None:
    if query.imputer_strategy not in IMPUTER_STRATEGIES:
        raise InvalidQuery(
            f"imputer_strategy must be one of {', '.join(IMPUTER_STRATEGIES)}",
            metadata={"field": "imputerStrategy"},
        )
    if not 0 < query.test_size < 1:
        raise InvalidQuery(
            "test_size must be strictly between 0 and 1", metadata={"field": "testSize"}
        )


def _check_features(columns: Sequence[str], metadata: DatasetMetadata) -> tuple[str, ...]:
    if not columns:
        raise InvalidQuery("name at least one feature column", metadata={"field": "featureColumns"})
    if len(columns) > MAX_FEATURES:
        raise InvalidQuery(
            f"more than {MAX_FEATURES} feature columns",
            reason=LIMIT_EXCEEDED,
            metadata={"limit": "maxFeatures", "maximum": str(MAX_FEATURES)},
        )
    if len(set(columns)) != len(columns):
        raise InvalidQuery("feature columns must be distinct", metadata={"field": "featureColumns"})
    for column in columns:
        _known(column, metadata)
        if metadata.column_type(column) not in ("int", "float", "boolean"):
            raise InvalidQuery(
                f"feature column {column!r} must be numeric or boolean",
                metadata={"column": column},
            )
    return tuple(columns)


def _known(column: str, metadata: DatasetMetadata) -> None:
    if column not in metadata.column_names:
        raise InvalidQuery(f"unknown column {column!r}", metadata={"column": column})


def _parse_step(raw: Mapping[str, Any], taken: set[str], n_features: int, *, last: bool) -> Step:
    name, kind = raw["name"], raw["type"]
    if not isinstance(name, str) or not name or len(name) > MAX_STEP_NAME or "__" in name:
        raise InvalidQuery(
            f"step names must be 1 to {MAX_STEP_NAME} characters without '__'",
            reason=PIPELINE_REFUSED,
        )
    if name in taken:
        raise InvalidQuery(f"two steps are named {name!r}", reason=PIPELINE_REFUSED)
    # Lomas's serialisation names types "_dpl_type:StandardScaler".
    kind = kind.removeprefix("_dpl_type:") if isinstance(kind, str) else kind
    if kind not in MODELS:
        raise InvalidQuery(
            f"step {name!r}: type must be one of {', '.join(MODELS)}",
            reason=PIPELINE_REFUSED,
            metadata={"step": name},
        )
    spec = MODELS[kind]
    if not last and spec.role not in ("preprocessor", "decomposition"):
        raise InvalidQuery(
            f"step {name!r}: a {kind} can only be the last step", reason=PIPELINE_REFUSED
        )
    if last and spec.role == "preprocessor":
        raise InvalidQuery(
            f"step {name!r}: the last step must be a model, not a {kind}", reason=PIPELINE_REFUSED
        )
    kwargs: dict[str, Any] = {}
    epsilon = Decimal(repr(DEFAULTS[kind]["epsilon"]))
    for parameter, value in dict(raw.get("params", {})).items():
        where = Where(name, str(parameter))
        if parameter in REFUSED_PARAMETERS and value is not None:
            raise where.refuse(REFUSED_PARAMETERS[parameter])
        if parameter in spec.params:
            if value is None:
                continue  # DiffPrivLib's default (a required one is reported below)
            kwargs[parameter] = spec.params[parameter](value, where)
            if parameter == "epsilon":
                epsilon = Decimal(value) if isinstance(value, int) else value
                if float_at_most(epsilon) <= 0:
                    raise where.refuse("is too small")
        elif not is_default(kind, parameter, value):
            raise where.refuse(f"is not accepted for a {kind}")
    for parameter in spec.required(kwargs):
        if parameter not in kwargs:
            raise Where(name, parameter).refuse(
                f"must be given: DiffPrivLib would compute it from the data (a privacy leak, "
                f"PrivacyLeakWarning) when a {kind} has none",
                reason=PRIVACY_LEAK,
            )
    _check_shapes(name, kind, kwargs, n_features)
    if "epsilon" in kwargs:
        kwargs["epsilon"] = float_at_most(epsilon)
    return Step(name, kind, epsilon, kwargs, n_features)


def _check_shapes(name: str, kind: str, kwargs: dict[str, Any], n_features: int) -> None:
    """Per-feature bounds must have one entry per column the step sees; sizes stay bounded."""
    for parameter in ("bounds", "bounds_X"):
        for part in kwargs.get(parameter, ()):
            if isinstance(part, tuple) and len(part) != n_features:
                raise Where(name, parameter).refuse(
                    f"must hold one bound per feature ({n_features}) or a single number"
                )
    if kind == "PCA" and kwargs["n_components"] > n_features:
        raise Where(name, "n_components").refuse(
            f"must be at most the number of features ({n_features})"
        )
    if kind == "RandomForestClassifier":
        trees = kwargs.get("n_estimators", DEFAULTS[kind]["n_estimators"])
        depth = kwargs.get("max_depth", DEFAULTS[kind]["max_depth"])
        if trees * (2 ** (depth + 1) - 1) > MAX_TREE_NODES:
            raise InvalidQuery(
                f"step {name!r}: n_estimators x (2 ** (max_depth + 1) - 1) nodes must be at most "
                f"{MAX_TREE_NODES}",
                reason=LIMIT_EXCEEDED,
                metadata={"limit": "maxTreeNodes", "maximum": str(MAX_TREE_NODES)},
            )


def float_at_most(value: Decimal) -> float:
    """The largest float not above `value` (so noise is never calibrated to more epsilon than the
    charge)."""
    number = float(value)
    if Decimal(number) > value:
        number = math.nextafter(number, -math.inf)
    return number


def _check_targets(
    targets: Sequence[str], role: Role, last: Step, metadata: DatasetMetadata
) -> tuple[Any, ...] | None:
    """A classifier's classes (sorted, from the metadata); None for the other roles."""
    if role in ("clusterer", "decomposition"):
        if targets:
            raise InvalidQuery(
                f"a {last.type} is unsupervised: give no target columns",
                metadata={"field": "targetColumns"},
            )
        return None
    if len(targets) != 1:
        raise InvalidQuery(
            f"a {last.type} needs exactly one target column", metadata={"field": "targetColumns"}
        )
    target = targets[0]
    _known(target, metadata)
    column_type = metadata.column_type(target)
    if role == "regressor":
        if column_type not in ("int", "float"):
            raise InvalidQuery(
                f"the target of a {last.type} must be numeric", metadata={"column": target}
            )
        return None
    column = metadata.column(target)
    if column_type == "boolean":
        classes: tuple[Any, ...] = (False, True)
    elif "categories" in column:
        classes = tuple(sorted(column["categories"]))
    else:
        raise InvalidQuery(
            f"the target of a {last.type} must be boolean or declare its categories in the "
            "metadata (its classes would otherwise come from the data)",
            reason=PRIVACY_LEAK,
            metadata={"column": target},
        )
    if len(classes) < 2:
        raise InvalidQuery(
            f"the target of a {last.type} needs at least two classes", metadata={"column": target}
        )
    _check_classes(last, classes)
    return classes


def _check_classes(step: Step, classes: tuple[Any, ...]) -> None:
    given = step.kwargs.get("classes")
    if given is not None and sorted(map(label_key, given)) != sorted(map(label_key, classes)):
        raise Where(step.name, "classes").refuse("must be the target's categories in the metadata")
    priors = step.kwargs.get("priors")
    if priors is not None and len(priors) != len(classes):
        raise Where(step.name, "priors").refuse(f"must hold one prior per class ({len(classes)})")


def _with_classes(step: Step, classes: tuple[Any, ...]) -> Step:
    if step.type != "RandomForestClassifier":
        return step
    kwargs = dict(step.kwargs)
    kwargs["classes"] = list(classes)
    return Step(step.name, step.type, step.epsilon, kwargs, step.n_features_in)


def _fill_values(
    strategy: str, features: Sequence[str], metadata: DatasetMetadata
) -> dict[str, float]:
    """What each feature column's gaps are filled with, from the metadata (none for "drop")."""
    if strategy == "drop":
        return {}
    values: dict[str, float] = {}
    for column in features:
        entry = metadata.column(column)
        column_type = metadata.column_type(column)
        if strategy == "most_frequent" and column_type == "boolean":
            values[column] = 0.0
        elif strategy == "most_frequent" and entry.get("categories"):
            values[column] = float(entry["categories"][0])
        elif (midpoint := _midpoint(column, metadata)) is not None:
            values[column] = midpoint
        else:
            raise InvalidQuery(
                f"imputer_strategy {strategy!r} needs bounds in the metadata of column "
                f"{column!r} (its fill value comes from them); use 'drop'",
                metadata={"column": column},
            )
    return values


def _midpoint(column: str, metadata: DatasetMetadata) -> float | None:
    """The middle of a feature column's metadata range (0.5 for a boolean; None without one)."""
    if metadata.column_type(column) == "boolean":
        return 0.5
    entry = metadata.column(column)
    if "lower" in entry and "upper" in entry:
        return (float(entry["lower"]) + float(entry["upper"])) / 2
    return None


def test_size_from_text(text: str) -> Decimal:
    """The test size of the wire form: a decimal string, empty for the default."""
    if not text:
        return DEFAULT_TEST_SIZE
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise InvalidQuery(
            "test_size must be a decimal number", metadata={"field": "testSize"}
        ) from None
    if not value.is_finite():
        raise InvalidQuery("test_size must be finite", metadata={"field": "testSize"})
    return value


def score_epsilon_from_text(text: str) -> Decimal:
    """The score's epsilon of the wire form: a decimal string, empty for none (0)."""
    try:
        return parse_decimal(text or "0", name="score_epsilon")
    except PrivacyValueError as error:
        raise InvalidQuery(str(error), metadata={"field": "scoreEpsilon"}) from None


def canonical_score_epsilon(text: str) -> str:
    """One spelling per score epsilon: "" for none ("", "0", "0.0"), else the canonical decimal;
    text that is not a decimal is kept (the engine refuses it)."""
    spelled = canonical_decimal(text) if text else ""
    return "" if spelled == "0" else spelled

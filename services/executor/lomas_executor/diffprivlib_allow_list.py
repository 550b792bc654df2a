"""The allow-list of DiffPrivLib steps: which models and preprocessors run, which parameters each
accepts and how they are checked, which ones must be given (DiffPrivLib would otherwise read them off
the data), the size ceilings, and DiffPrivLib's own defaults. `diffprivlib_model` parses a pipeline
against it. Every check runs on the JSON alone, before any data access."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import diffprivlib.models as dpl_models

from lomas_common.errors import InvalidQuery

PIPELINE_REFUSED = "DIFFPRIVLIB_PIPELINE_REFUSED"
PRIVACY_LEAK = "DIFFPRIVLIB_PRIVACY_LEAK"
LIMIT_EXCEEDED = "QUERY_LIMIT_EXCEEDED"

# Ceilings on what one pipeline may ask for (checked before any work).
MAX_PIPELINE_CHARS = 100_000
MAX_STEPS = 10
MAX_FEATURES = 1_000
MAX_ITER = 10_000
MAX_CLUSTERS = 1_000
MAX_ESTIMATORS = 1_000
MAX_DEPTH = 20
MAX_TREE_NODES = 2_000_000  # over all trees of a forest: n_estimators x (2 ** (max_depth + 1) - 1)
MAX_STEP_NAME = 64

Role = Literal["preprocessor", "classifier", "regressor", "clusterer", "decomposition"]
Checker = Callable[[object, "Where"], object]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What the allow-list knows of one DiffPrivLib class."""

    role: Role
    params: Mapping[str, Checker]
    # Parameters without which DiffPrivLib would read bounds, norms or classes off the data.
    required: Callable[[Mapping[str, Any]], tuple[str, ...]]
    # The DiffPrivLib mechanisms the step draws noise from (all of them sample with floating-point
    # arithmetic, a known weakness of DiffPrivLib: see `floating_point_noise` in the release).
    mechanisms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Where:
    step: str
    parameter: str

    def refuse(self, message: str, reason: str = PIPELINE_REFUSED) -> InvalidQuery:
        return InvalidQuery(
            f"step {self.step!r}, parameter {self.parameter!r}: {message}",
            reason=reason,
            metadata={"step": self.step, "parameter": self.parameter},
        )


# -- parameter checks --------------------------------------------------------------------------------


def _number(value: object, where: Where) -> float:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise where.refuse("must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise where.refuse("must be finite")
    return number


def _positive(value: object, where: Where) -> float:
    number = _number(value, where)
    if number <= 0:
        raise where.refuse("must be greater than 0")
    return number


def _non_negative(value: object, where: Where) -> float:
    number = _number(value, where)
    if number < 0:
        raise where.refuse("must not be negative")
    return number


def _boolean(value: object, where: Where) -> bool:
    if not isinstance(value, bool):
        raise where.refuse("must be true or false")
    return value


def _integer(low: int, high: int) -> Callable[[object, Where], int]:
    def check(value: object, where: Where) -> int:
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise where.refuse("must be an integer")
        if isinstance(value, Decimal) and (not value.is_finite() or value != value.to_integral()):
            raise where.refuse("must be an integer")
        number = int(value)
        if not low <= number <= high:
            raise where.refuse(f"must be from {low} to {high}", reason=_limit_reason(number, high))
        return number

    return check


def _limit_reason(number: int, high: int) -> str:
    return LIMIT_EXCEEDED if number > high else PIPELINE_REFUSED


def _vector_or_scalar(value: object, where: Where) -> float | tuple[float, ...]:
    if isinstance(value, list):
        if not value or len(value) > MAX_FEATURES:
            raise where.refuse(f"must hold 1 to {MAX_FEATURES} numbers")
        return tuple(_number(item, where) for item in value)
    return _number(value, where)


def _bounds(value: object, where: Where) -> tuple[Any, Any]:
    """DiffPrivLib bounds: [lower, upper], each a number or one number per feature."""
    if not isinstance(value, list) or len(value) != 2:
        raise where.refuse("must be [lower, upper], each a number or a list of numbers")
    lower, upper = (_vector_or_scalar(part, where) for part in value)
    lows = lower if isinstance(lower, tuple) else (lower,)
    highs = upper if isinstance(upper, tuple) else (upper,)
    if len(lows) > 1 and len(highs) > 1 and len(lows) != len(highs):
        raise where.refuse("lower and upper must have the same length")
    size = max(len(lows), len(highs))
    lows, highs = (
        (lows * size if len(lows) == 1 else lows),
        (highs * size if len(highs) == 1 else highs),
    )
    if any(low > high for low, high in zip(lows, highs, strict=True)):
        raise where.refuse("each lower bound must be at most its upper bound")
    return lower, upper


def _scalar_bounds(value: object, where: Where) -> tuple[float, float]:
    lower, upper = _bounds(value, where)
    if isinstance(lower, tuple) or isinstance(upper, tuple):
        raise where.refuse("must be [lower, upper] numbers (one target)")
    return lower, upper


def _priors(value: object, where: Where) -> tuple[float, ...]:
    if not isinstance(value, list) or not value or len(value) > MAX_FEATURES:
        raise where.refuse("must be a list of probabilities, one per class")
    priors = tuple(_non_negative(item, where) for item in value)
    if not math.isclose(sum(priors), 1.0):
        raise where.refuse("must sum to 1")
    return priors


def _n_components(value: object, where: Where) -> int:
    if isinstance(value, str) or (isinstance(value, Decimal) and value != value.to_integral()):
        raise where.refuse(
            "must be a number of components: 'mle' or a variance ratio would choose it from the data"
        )
    return _integer(1, MAX_FEATURES)(value, where)


def _classes(value: object, where: Where) -> list[object]:
    # Checked against the metadata's categories in `_check_classes` (the step has no metadata here).
    if not isinstance(value, list) or not value or len(value) > MAX_FEATURES:
        raise where.refuse("must be the list of the target's classes")
    return value


def label_key(label: object) -> tuple[str, object]:
    """A class label compared by value (1, 1.0 and Decimal("1") alike)."""
    if isinstance(label, bool):
        return ("bool", label)
    if isinstance(label, int | float | Decimal):
        return ("number", Decimal(repr(label) if isinstance(label, float) else label).normalize())
    return ("text", str(label))


_EPSILON: Checker = _positive


def _bounded(role: Role, mechanisms: tuple[str, ...], **params: Checker) -> ModelSpec:
    """A step whose only data-dependent parameter is `bounds` (required), beside epsilon and
    `params`."""
    return ModelSpec(
        role=role,
        params={"epsilon": _EPSILON, "bounds": _bounds, **params},
        required=lambda given: ("bounds",),
        mechanisms=mechanisms,
    )


MODELS: Mapping[str, ModelSpec] = {
    "StandardScaler": _bounded(
        "preprocessor",
        ("LaplaceTruncated", "LaplaceBoundedDomain"),
        with_mean=_boolean,
        with_std=_boolean,
        copy=_boolean,
    ),
    "PCA": ModelSpec(
        role="decomposition",
        params={
            "epsilon": _EPSILON,
            "n_components": _n_components,
            "data_norm": _positive,
            "centered": _boolean,
            "bounds": _bounds,
            "copy": _boolean,
        },
        # A centred PCA computes no mean, so it needs no bounds. Without n_components, the number
        # of components would be min(rows, features): it would depend on the data. `whiten` only
        # at its default (false): it scales by variances divided by the exact number of rows.
        required=lambda params: (
            ("n_components", "data_norm")
            if params.get("centered")
            else ("n_components", "data_norm", "bounds")
        ),
        mechanisms=("Bingham", "LaplaceBoundedDomain", "LaplaceTruncated"),
    ),
    "LogisticRegression": ModelSpec(
        role="classifier",
        params={
            "epsilon": _EPSILON,
            "data_norm": _positive,
            "tol": _positive,
            "C": _positive,
            "fit_intercept": _boolean,
            "max_iter": _integer(1, MAX_ITER),
        },
        required=lambda params: ("data_norm",),
        mechanisms=("Vector",),
    ),
    "LinearRegression": ModelSpec(
        role="regressor",
        params={
            "epsilon": _EPSILON,
            "bounds_X": _bounds,
            "bounds_y": _scalar_bounds,
            "fit_intercept": _boolean,
            "copy_X": _boolean,
        },
        required=lambda params: ("bounds_X", "bounds_y"),
        mechanisms=("Laplace", "LaplaceFolded", "LaplaceTruncated"),
    ),
    "GaussianNB": _bounded(
        "classifier",
        # Its class counts: Geometric (see `diffprivlib_queries._GaussianNB`).
        ("LaplaceTruncated", "LaplaceBoundedDomain", "Geometric"),
        priors=_priors,
        var_smoothing=_non_negative,
    ),
    "KMeans": _bounded(
        "clusterer",
        ("GeometricFolded", "LaplaceBoundedDomain"),
        n_clusters=_integer(1, MAX_CLUSTERS),
    ),
    # Its classes come from the metadata when absent.
    "RandomForestClassifier": _bounded(
        "classifier",
        ("PermuteAndFlip",),
        n_estimators=_integer(1, MAX_ESTIMATORS),
        max_depth=_integer(1, MAX_DEPTH),
        classes=_classes,
        shuffle=_boolean,
    ),
}

# Parameters refused whatever their value, with the reason.
REFUSED_PARAMETERS = {
    "random_state": "a seed makes DiffPrivLib's noise reproducible by whoever knows it: leave it unset",
    "accountant": "the platform keeps the privacy ledger: leave it unset",
}


def _defaults(cls: type) -> dict[str, Any]:
    """The keyword defaults of a DiffPrivLib class's constructor."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(cls).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    name: _defaults(getattr(dpl_models, name)) for name in MODELS
}


def is_default(kind: str, parameter: str, value: object) -> bool:
    defaults = DEFAULTS[kind]
    if parameter not in defaults:
        return False
    default = defaults[parameter]
    if default is None or isinstance(default, bool) or isinstance(value, bool):
        return value is default or (value == default and type(value) is type(default))
    return isinstance(value, int | Decimal) and value == Decimal(repr(default))

"""What a SmartNoise-Synth query may say: the synthesizers' parameters and the column constraints.

Both arrive as JSON from the client and are checked here against allow-lists, before any data access:
no callables, no objects, no parameter the executor does not know. Every numeric parameter has a
ceiling, so that a free dummy run or a real query cannot ask for unbounded work (iterations, epochs,
model sizes). The names and defaults are SmartNoise-Synth's own (1.0.8).

`epsilon` and `delta` are the query's own fields, never parameters; `verbose`, `cuda`, `disabled_dp`
(DP-CTGAN's switch that turns differential privacy off) and the transformers' `epsilon` are never
accepted.

Constraints: per column, the transformer that SmartNoise-Synth's `TableTransformer` would take, in the
JSON form that `smartnoise_synth_logger.serialise_constraints` writes (what Lomas clients send)::

    {"module": "smartnoise-synth", "version": "1.0.8", "constraints": {
        "bill_length_mm": {"type": "_ssynth_type:BinTransformer", "name": "BinTransformer",
                           "params": {"bins": 20, "lower": 30.0, "upper": 65.0}}}}

or the bare `{"constraints": {...}}` / `{column: {"name": ..., "params": ...}}`. The executor builds
every column's transformer from the metadata; a constraint may only change how a numeric column is
discretised or scaled (BinTransformer: `bins`, `lower`, `upper`; MinMaxTransformer: `lower`,
`upper`), and must give both bounds when it gives one: SmartNoise-Synth never infers bounds from the
data here. Categorical columns take their categories from the metadata, so their constraint
(LabelTransformer, or LabelTransformer then OneHotEncoder for the GANs) changes nothing and is accepted
for compatibility. Anything else (AnonymizationTransformer and its Faker callables, LogTransformer,
StandardScaler, DropTransformer...) is refused by name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from lomas_common.errors import InvalidQuery

MAX_JSON_CHARS = 100_000
MAX_BINS = 1_000


@dataclass(frozen=True, slots=True)
class Param:
    """One allowed parameter: its JSON type and inclusive range (lists: of ints, up to `max_len`)."""

    kind: str  # "int", "float", "bool", "int_list" or "choice"
    low: float = 0
    high: float = math.inf
    choices: tuple[str, ...] = ()
    max_len: int = 4
    even: bool = False


_GAN_COMMON = {
    "batch_size": Param("int", 2, 10_000, even=True),
    "epochs": Param("int", 1, 1_000),
}
_CTGAN = {
    **_GAN_COMMON,
    "embedding_dim": Param("int", 1, 1_024),
    "generator_dim": Param("int_list", 1, 1_024),
    "discriminator_dim": Param("int_list", 1, 1_024),
    "generator_lr": Param("float", 1e-8, 1.0),
    "generator_decay": Param("float", 0.0, 1.0),
    "discriminator_lr": Param("float", 1e-8, 1.0),
    "discriminator_decay": Param("float", 0.0, 1.0),
    "discriminator_steps": Param("int", 1, 100),
    "pac": Param("int", 1, 100),
    "loss": Param("choice", choices=("cross_entropy", "wasserstein")),
}

# Per synthesizer, the parameters a query may set (SmartNoise-Synth's names).
SYNTH_PARAMS: dict[str, dict[str, Param]] = {
    "mwem": {
        "q_count": Param("int", 1, 10_000),
        "iterations": Param("int", 1, 1_000),
        "split_factor": Param("int", 1, 100),
        "marginal_width": Param("int", 1, 5),
        "add_ranges": Param("bool"),
        "measure_only": Param("bool"),
        "max_retries_exp_mechanism": Param("int", 1, 100),
        "mult_weights_iterations": Param("int", 1, 1_000),
    },
    "aim": {
        "max_model_size": Param("float", 1, 1_000),  # megabytes
        "degree": Param("int", 1, 3),
        "num_marginals": Param("int", 1, 1_000),
        "max_cells": Param("int", 1, 1_000_000),
        "rounds": Param("int", 1, 1_000),
    },
    "mst": {},
    "dpctgan": {
        **_CTGAN,
        "sigma": Param("float", 1e-3, 1_000),
        "max_per_sample_grad_norm": Param("float", 1e-6, 1_000),
    },
    "patectgan": {
        **_CTGAN,
        "binary": Param("bool"),
        "teacher_iters": Param("int", 1, 100),
        "student_iters": Param("int", 1, 100),
        "sample_per_teacher": Param("int", 1, 100_000),
        "noise_multiplier": Param("float", 1e-6, 1_000),
        "moments_order": Param("int", 1, 1_000),
    },
    "pategan": {
        "binary": Param("bool"),
        "latent_dim": Param("int", 1, 1_024),
        "batch_size": Param("int", 2, 10_000, even=True),
        "teacher_iters": Param("int", 1, 100),
        "student_iters": Param("int", 1, 100),
    },
    "dpgan": {
        **_GAN_COMMON,
        "binary": Param("bool"),
        "latent_dim": Param("int", 1, 1_024),
    },
}
# Set by the executor, never by a query.
_RESERVED = {
    "epsilon": "epsilon is the query's own field",
    "delta": "delta is the query's own field",
    "verbose": "the executor sets verbose",
    "cuda": "the executor chooses the device",
    "disabled_dp": "differential privacy cannot be turned off",
}


def _json_object(text: str, what: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    if len(text) > MAX_JSON_CHARS:
        raise InvalidQuery(f"{what} is longer than {MAX_JSON_CHARS} characters")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidQuery(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidQuery(f"{what} must be a JSON object")
    return value


def parse_synth_params(synth_name: str, text: str) -> dict[str, Any]:
    """The synthesizer's keyword arguments from `text` (a JSON object), checked and normalised."""
    allowed = SYNTH_PARAMS[synth_name]
    params: dict[str, Any] = {}
    for name, value in _json_object(text, "synth_params").items():
        if name in _RESERVED:
            raise InvalidQuery(f"synth_params: {name} is not accepted ({_RESERVED[name]})")
        spec = allowed.get(name)
        if spec is None:
            known = ", ".join(sorted(allowed)) or "none"
            raise InvalidQuery(
                f"synth_params: {synth_name} takes no parameter {name!r} (allowed: {known})",
                metadata={"parameter": name},
            )
        params[name] = _checked(f"synth_params.{name}", value, spec)
    return params


def _checked(where: str, value: object, spec: Param) -> Any:
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise InvalidQuery(f"{where} must be true or false")
        return value
    if spec.kind == "choice":
        if value not in spec.choices:
            raise InvalidQuery(f"{where} must be one of {', '.join(spec.choices)}")
        return value
    if spec.kind == "int_list":
        if not isinstance(value, list) or not 1 <= len(value) <= spec.max_len:
            raise InvalidQuery(f"{where} must be a list of 1 to {spec.max_len} integers")
        return tuple(_number(where, item, Param("int", spec.low, spec.high)) for item in value)
    return _number(where, value, spec)


def _number(where: str, value: object, spec: Param) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidQuery(f"{where} must be a number")
    if spec.kind == "int":
        if isinstance(value, float):
            if not value.is_integer():
                raise InvalidQuery(f"{where} must be an integer")
            value = int(value)
    elif not math.isfinite(value):
        raise InvalidQuery(f"{where} must be finite")
    if not spec.low <= value <= spec.high:
        raise InvalidQuery(f"{where} must be between {spec.low:g} and {spec.high:g}")
    if spec.even and int(value) % 2:
        raise InvalidQuery(f"{where} must be even")
    return int(value) if spec.kind == "int" else float(value)


# -- constraints -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NumericOverride:
    """How one numeric column is discretised (BinTransformer: `bins`) or scaled
    (MinMaxTransformer), with bounds given by the query (None: the metadata's)."""

    transformer: str
    bins: int | None = None
    lower: float | None = None
    upper: float | None = None


_TYPE_PREFIX = "_ssynth_type:"
_CATEGORICAL_TRANSFORMERS = ("LabelTransformer", "OneHotEncoder")
_NUMERIC_PARAMS = {
    "BinTransformer": ("bins", "lower", "upper"),
    "MinMaxTransformer": ("lower", "upper"),
}
# Parameters Lomas clients' serialiser writes with their neutral values: accepted only with those.
_NEUTRAL = {"epsilon": (0, 0.0, None), "odometer": (None,), "negative": (True,)}


def parse_constraints(text: str) -> dict[str, NumericOverride | None]:
    """Per column, the override a constraint asks for (None: the metadata's default, unchanged)."""
    body = _json_object(text, "constraints")
    if "constraints" in body:
        if body.get("module", "smartnoise-synth") != "smartnoise-synth":
            raise InvalidQuery("constraints: module must be smartnoise-synth")
        body = body["constraints"]
        if not isinstance(body, dict):
            raise InvalidQuery("constraints.constraints must be a JSON object")
    overrides: dict[str, NumericOverride | None] = {}
    for column, entry in body.items():
        overrides[column] = _column_constraint(column, entry)
    return overrides


def _transformer_name(where: str, entry: object) -> tuple[str, Any]:
    if isinstance(entry, str):
        return entry, {}
    if not isinstance(entry, dict):
        raise InvalidQuery(f"{where} must name a transformer")
    name = entry.get("name") or str(entry.get("type", "")).removeprefix(_TYPE_PREFIX)
    if not isinstance(name, str) or not name:
        raise InvalidQuery(f"{where} must name a transformer")
    return name, entry.get("params", {})


def _column_constraint(column: str, entry: object) -> NumericOverride | None:
    where = f"constraints[{column!r}]"
    name, params = _transformer_name(where, entry)
    if name == "ChainTransformer":
        if not isinstance(params, list) or not params:
            raise InvalidQuery(f"{where}: a ChainTransformer lists its transformers")
        names = [_transformer_name(where, item)[0] for item in params]
        if names[0] != "LabelTransformer" or any(n not in _CATEGORICAL_TRANSFORMERS for n in names):
            raise InvalidQuery(
                f"{where}: only LabelTransformer then OneHotEncoder may be chained here",
                metadata={"column": column},
            )
        return None
    if name in _CATEGORICAL_TRANSFORMERS:
        return None
    allowed = _NUMERIC_PARAMS.get(name)
    if allowed is None:
        raise InvalidQuery(
            f"{where}: transformer {name!r} is not accepted (BinTransformer, MinMaxTransformer, "
            "LabelTransformer and OneHotEncoder are)",
            metadata={"column": column},
        )
    if not isinstance(params, dict):
        raise InvalidQuery(f"{where}: params must be a JSON object")
    values: dict[str, Any] = {}
    for key, value in params.items():
        if key == "nullable":
            continue  # the query's own nullable flag applies
        if key in _NEUTRAL and key not in allowed:
            if not any(
                value == neutral and type(value) is type(neutral) for neutral in _NEUTRAL[key]
            ):
                raise InvalidQuery(
                    f"{where}: {key} is not accepted (bounds come from the metadata or the "
                    "constraint, never from the data)",
                    metadata={"column": column},
                )
            continue
        if key not in allowed:
            raise InvalidQuery(f"{where}: {name} takes no parameter {key!r} here")
        if value is None:
            continue
        spec = Param("int", 2, MAX_BINS) if key == "bins" else Param("float", -math.inf, math.inf)
        values[key] = _number(f"{where}.{key}", value, spec)
    if ("lower" in values) != ("upper" in values):
        raise InvalidQuery(
            f"{where}: give both lower and upper, or neither", metadata={"column": column}
        )
    if "lower" in values and not values["lower"] < values["upper"]:
        raise InvalidQuery(f"{where}: lower must be below upper", metadata={"column": column})
    return NumericOverride(name, values.get("bins"), values.get("lower"), values.get("upper"))

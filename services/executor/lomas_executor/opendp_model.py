"""The OpenDP query types, their refusal reasons, and the JSON helpers every check shares.

`opendp_queries` is the entry point (cost and execution); the checks that run before anything is
deserialized live in `opendp_allow_list` (measurement JSON) and `opendp_polars` (Polars plans);
`opendp_cost` turns a privacy map into the charge. This module depends on none of them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import opendp.prelude as dp
from opendp.mod import OpenDPException

from lomas_common.errors import InvalidQuery

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


def check_fixed_delta(value: Decimal | None) -> None:
    if value is not None and (not value.is_finite() or not 0 < value < 1):
        raise InvalidQuery("fixed_delta must be greater than 0 and less than 1")


def check_json_text(text: object, what: str) -> None:
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
        check_json_text(self.measurement_json, "OpenDP measurement")
        check_fixed_delta(self.fixed_delta)


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
        check_json_text(self.plan_json, "Polars plan")
        check_fixed_delta(self.fixed_delta)
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


OpenDpQuery = OpenDpMeasurementQuery | OpenDpPolarsQuery


# -- JSON and messages ------------------------------------------------------------------------------


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidQuery(f"the {what} is nested too deeply") from None
    except ValueError:
        raise InvalidQuery(f"the {what} is not valid JSON") from None


def walk(tree: Any) -> Iterator[tuple[Any, Any]]:
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


def short_text(value: object) -> str:
    text = str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def clean_message(exc: BaseException) -> str:
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

"""The score of a trained DiffPrivLib pipeline on the held-out rows, and what of it is released.

The score is a function of the private test rows: released as it is, it would be a statistic
without noise (Lomas does that; we do not). So:

* **a real run without `score_epsilon`** releases no score (`NOT_RELEASED`, no value), and does not
  even compute it;
* **a real run with `score_epsilon`** (classifiers only: `diffprivlib_model` refuses it for the
  others before any charge) releases the accuracy as a noisy count of correct predictions over a
  noisy count of test rows, each count with OpenDP's integer (discrete) Laplace noise at half of
  `score_epsilon` (adding or removing one test row moves each count by at most 1), the ratio
  clipped to [0, 1] (a noisy count of test rows below 1 counts as 1). Both counts are exact
  integers and so is their noise: no floating-point sampling. The ratio is post-processing;
* **a dummy run** releases the exact score (`EXACT_ON_DUMMY_DATA`): the dummy data is public.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal, localcontext
from typing import Any, TypeVar

import numpy as np
import opendp.prelude as dp

from lomas_common.errors import ExecutionFailed
from lomas_executor.diffprivlib_model import ParsedPipeline, Step

dp.enable_features("contrib")

T = TypeVar("T")

NOT_RELEASED = "not_released"
EXACT_ON_DUMMY_DATA = "exact_on_dummy_data"
DISCRETE_LAPLACE = "discrete_laplace"

SCORE_KINDS = {
    "classifier": "accuracy",
    "regressor": "r2",
    "clusterer": "negative_inertia",
    "decomposition": "average_log_likelihood",
}


@dataclass(frozen=True, slots=True)
class Score:
    """What the release says of the score: its kind, how it was released, its value (if any)."""

    kind: str
    method: str
    value: float | None


def release_score(
    parsed: ParsedPipeline,
    fitted: Sequence[tuple[Step, Any]],
    x: np.ndarray,
    y: np.ndarray | None,
    *,
    dummy: bool,
) -> Score:
    """The score of `fitted` on the test rows `x`, `y`, as the run may release it."""
    kind = SCORE_KINDS[parsed.role]
    if dummy:
        return Score(kind, EXACT_ON_DUMMY_DATA, _exact_score(fitted, x, y))
    if not parsed.query.score_epsilon:
        return Score(kind, NOT_RELEASED, None)
    assert y is not None and parsed.role == "classifier"  # checked before any charge
    correct = int(np.count_nonzero(_final_input(fitted, x, _predict) == y))
    return Score(kind, DISCRETE_LAPLACE, dp_ratio(correct, len(y), parsed.query.score_epsilon))


def dp_ratio(numerator: int, denominator: int, epsilon: Decimal) -> float:
    """numerator / denominator from two noisy counts, each with half of `epsilon`, in [0, 1]."""
    with localcontext(rounding=ROUND_FLOOR):
        half = epsilon / 2  # never above the half (a decimal with very many digits rounds down)
    noise = count_noise(half)
    noisy_numerator, noisy_denominator = int(noise(numerator)), int(noise(denominator))
    return min(1.0, max(0.0, noisy_numerator / max(noisy_denominator, 1)))


def count_noise(epsilon: Decimal) -> dp.Measurement:
    """OpenDP's discrete Laplace on one count (sensitivity 1), its loss at most `epsilon` exactly:
    the scale starts at 1 / epsilon and grows by a float step until OpenDP's own (rounded-up)
    privacy map is not above it."""
    scale = float(1 / epsilon)
    while True:
        measurement = dp.m.make_laplace(
            dp.atom_domain(T="i64"), dp.absolute_distance(T="i64"), scale
        )
        if Decimal(measurement.map(1)) <= epsilon:
            return measurement
        scale = math.nextafter(scale, math.inf)


def _exact_score(fitted: Sequence[tuple[Step, Any]], x: np.ndarray, y: np.ndarray | None) -> float:
    def score(final: Any, inputs: np.ndarray) -> float:
        return float(final.score(inputs, y) if y is not None else final.score(inputs))

    return _final_input(fitted, x, score)


def _predict(final: Any, inputs: np.ndarray) -> np.ndarray:
    return np.asarray(final.predict(inputs))


def _final_input(
    fitted: Sequence[tuple[Step, Any]], x: np.ndarray, use: Callable[[Any, np.ndarray], T]
) -> T:
    """`use(final_model, x transformed by the steps before it)`; a library failure names no data."""
    try:
        for _, estimator in fitted[:-1]:
            x = estimator.transform(x)
        return use(fitted[-1][1], x)
    except (ValueError, ArithmeticError, TypeError, IndexError):
        raise ExecutionFailed("the fitted pipeline could not be scored on the test rows") from None

"""The noise mechanisms Lomas runs for SmartNoise-SQL queries, and the privacy loss each one spends.

smartnoise-sql 1.0.10 runs one class for three names (`laplace`, `geometric` and
`discrete_laplace` all add continuous Laplace noise), truncates the noisy value of an integer
statistic (every COUNT biased low by about 0.5), charges a key count the query's delta where no
threshold uses it, and searches the Gaussian's scale for bounds rounded outward. Lomas hands the
library its own mechanisms instead (`MechanismChoice`, the `mechanisms` of the query's `Privacy`).
Each one:

* adds the noise its name says, drawn by OpenDP's samplers: `laplace` continuous Laplace and
  `gaussian` continuous Gaussian (`make_laplace`/`make_gaussian` on floats), `discrete_laplace` and
  its other name `geometric` discrete Laplace (`make_laplace` on integers). A statistic a
  mechanism cannot serve is refused before anything runs (`check_choice`);
* releases an integer statistic (COUNT, SUM of integers) as an integer: continuous noise is
  rounded to the nearest integer (post-processing, and unbiased: the noise is symmetric), so the
  library's conversion to int, which truncates, has nothing left to truncate;
* takes the smallest scale whose privacy loss meets the query's epsilon (and delta) under a loss
  model built from OpenDP, and reports that model's privacy map at the scale it runs
  (`Noise.loss`): that is what Lomas charges, so the charge is the loss of what ran;
* needs only OpenDP's `contrib` feature (the library's own mechanisms turn on `floating-point` for
  the whole process).

The loss model of a statistic (`Noise._model`): for an integer statistic, the noise measurement
itself at the exact sensitivity `max_contrib * sensitivity` (SQLite adds integers exactly); for a
float statistic, the library's own model, a sum of `max_contrib` floats clamped to
[0, sensitivity] then the noise (OpenDP bounds the float sum's sensitivity with its rounding error).
A Gaussian's zCDP loss is converted to (epsilon, delta) at the query's delta by OpenDP.

Thresholds (`censor_dims`): with GROUP BY, the library releases only the groups whose noisy key
count exceeds the key count mechanism's `threshold`, which spends the query's delta (`spent`
charges it). Each threshold here is worked out from the noise actually used, so that a group one
individual adds (up to `max_contrib` rows, in up to `max_contrib` groups) survives with
probability at most delta in all. Gaussian noise cannot be the threshold: the library's formula
for it does not hold for `max_contrib` > 1, so it is refused. Without GROUP BY a query releases
exactly one row, and the threshold only post-processes a pure count: no delta is spent.
"""

from __future__ import annotations

import abc
import functools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import opendp.prelude as dp
from snsql.sql._mechanisms.base import Unbounded

from lomas_common.errors import InvalidQuery
from lomas_executor.smartnoise_memos import CalibrationMemo

# Building OpenDP measurements needs `contrib`, and nothing here needs another feature.
dp.enable_features("contrib")

INTEGER_NOISE = ("discrete_laplace", "geometric")
# The mechanisms each statistic a client may name can take (`SmartnoiseSqlQuery.mechanisms`).
SUPPORTED_MECHANISMS: Mapping[str, tuple[str, ...]] = {
    "count": ("laplace", "gaussian", *INTEGER_NOISE),
    "sum_int": ("laplace", "gaussian", *INTEGER_NOISE),
    "sum_large_int": ("laplace", "gaussian", *INTEGER_NOISE),
    "sum_float": ("laplace", "gaussian"),
    "sum_large_float": ("laplace", "gaussian"),
    "threshold": ("laplace", *INTEGER_NOISE),
}
# smartnoise-sql's defaults; without a choice for sum_large_float, large float sums use sum_float's.
DEFAULT_MECHANISMS: Mapping[str, str] = {
    "count": "discrete_laplace",
    "sum_int": "discrete_laplace",
    "sum_large_int": "discrete_laplace",
    "sum_float": "laplace",
    "threshold": "discrete_laplace",
}
# A sum whose sensitivity exceeds this is a "large" sum (the library's `Mechanisms.large`).
LARGE_SENSITIVITY = 1000
# The library's ceiling on a noise scale (larger ones are refused as useless).
MAX_SCALE = 10_000_000
# Bracketing a noise scale around its rough value: the first relative width, and the steps (each
# 16 times wider) before giving up.
_FIRST_BRACKET = 2.0**-20
_BRACKET_STEPS = 20
# Relative margin added to a threshold for the rounding of its float arithmetic.
_THRESHOLD_MARGIN = 1e-9


def check_choice(statistic: str, mechanism: str) -> None:
    """Refuse a mechanism for a statistic it cannot serve (names are known: checked before)."""
    supported = SUPPORTED_MECHANISMS[statistic]
    if mechanism in supported:
        return
    if mechanism in INTEGER_NOISE:
        why = "it adds integer noise, and this statistic is a float"
    else:
        why = "its threshold for censor_dims does not hold for more than one row per individual"
    raise InvalidQuery(
        f"mechanism {mechanism!r} cannot serve {statistic} ({why}): use one of "
        f"{', '.join(supported)}"
    )


@dataclass(frozen=True)
class Calibration:
    """A mechanism's smallest scale, and its loss model's privacy map at that scale."""

    scale: float
    epsilon: float
    delta: float


# Every search, once per process (see `CalibrationMemo`).
CALIBRATIONS: CalibrationMemo[Calibration] = CalibrationMemo(maxsize=4096)


class Noise(abc.ABC):
    """One noisy statistic of a query, where smartnoise-sql expects a mechanism object.

    The library reads `epsilon`, `delta` (it sets a key count's to the query's delta: the
    threshold's), `sensitivity`, `scale`, `threshold`, `release(values)` and `accuracy(alpha)`.
    """

    name: ClassVar[str]

    def __init__(
        self,
        epsilon: float,
        *,
        delta: float,
        sensitivity: float,
        max_contrib: int,
        integer: bool,
    ) -> None:
        self.epsilon = epsilon
        self.delta = self._noise_delta(delta)
        self.sensitivity = sensitivity
        self.max_contrib = max_contrib
        self.integer = integer
        rough_scale = self._rough_scale()
        if not rough_scale <= MAX_SCALE:
            raise ValueError(
                f"Noise scale is too large using epsilon={epsilon} and sensitivity {sensitivity} "
                f"with {self.name}. Try preprocessing to reduce sensitivity, or try different "
                "privacy parameters."
            )
        calibration = CALIBRATIONS.get(self._memo_key(), self._calibrate)
        self.scale = calibration.scale
        self.loss = (calibration.epsilon, calibration.delta)

    # -- what each kind of noise defines --

    def _noise_delta(self, delta: float) -> float:
        return 0.0  # pure noise; Gaussian overrides

    def _rough_scale(self) -> float:
        return self._sensitivity_bound() / self.epsilon

    @abc.abstractmethod
    def _noise(self, domain: Any, metric: Any, scale: float) -> dp.Measurement:
        """OpenDP's measurement of this noise at `scale`."""

    def _to_approx(self, measurement: dp.Measurement) -> dp.Measurement:
        return measurement  # already (epsilon, 0)-DP; Gaussian converts its zCDP loss

    def _target(self) -> Any:
        return self.epsilon

    @abc.abstractmethod
    def _interval(self, alpha: float) -> float:
        """With probability 1 - alpha, |noise| <= this, before any rounding."""

    @property
    @abc.abstractmethod
    def threshold(self) -> float:
        """The release threshold of a key count that decides which groups are released."""

    # -- shared --

    def _sensitivity_bound(self) -> float:
        return self.max_contrib * float(self.sensitivity)

    def _memo_key(self) -> tuple[Any, ...]:
        inputs = (self.epsilon, self.delta, self.sensitivity, self.max_contrib, self.integer)
        return (type(self), *((type(value), value) for value in inputs))

    def _space(self) -> tuple[Any, Any]:
        """The input domain and metric of the noise when it is added to the exact statistic."""
        return dp.atom_domain(T="f64", nan=False), dp.absolute_distance(T="f64")

    def _model(self, scale: float) -> dp.Measurement:
        """The loss model at `scale` (see the module docstring); its input distance is `_d_in`."""
        if self.integer:
            return self._to_approx(self._noise(*self._space(), scale))
        float_sum = self._float_sum
        noise = self._noise(float_sum.output_domain, float_sum.output_metric, scale)
        return self._to_approx(float_sum >> noise)

    @functools.cached_property
    def _float_sum(self) -> dp.Transformation:
        """A float statistic's model before the noise, built once for the many scales tried."""
        float_sum: dp.Transformation = (
            (dp.vector_domain(dp.atom_domain(T="f64", nan=False)), dp.symmetric_distance())
            >> dp.t.then_clamp(bounds=(0.0, float(self.sensitivity)))
            >> dp.t.then_sum()
        )
        return float_sum

    def _d_in(self) -> Any:
        return self._sensitivity_bound() if self.integer else self.max_contrib

    def _calibrate(self) -> Calibration:
        d_in, d_out = self._d_in(), self._target()

        def meets_target(scale: float) -> bool:
            try:
                return bool(self._model(scale).check(d_in, d_out))
            except Exception:  # OpenDP refuses scales too small to bound (overflow): not private
                return False

        failing, passing = self._bracket(meets_target)
        while True:  # bisect down to adjacent floats: `passing` is then the smallest scale
            middle = failing + (passing - failing) / 2
            if middle in (failing, passing):
                break
            if meets_target(middle):
                passing = middle
            else:
                failing = middle
        loss = self._model(passing).map(d_in)
        epsilon, delta = loss if isinstance(loss, tuple) else (loss, 0.0)
        return Calibration(passing, float(epsilon), float(delta))

    def _bracket(self, meets_target: Callable[[float], bool]) -> tuple[float, float]:
        """A failing and a passing scale around the rough one, the bracket 16 times wider at each
        step (the rough scale is usually within a millionth of the smallest)."""
        rough = self._rough_scale()
        rough_passes = meets_target(rough)
        known, width = rough, _FIRST_BRACKET
        for _ in range(_BRACKET_STEPS):
            candidate = rough / (1 + width) if rough_passes else rough * (1 + width)
            if meets_target(candidate) != rough_passes:
                return (candidate, known) if rough_passes else (known, candidate)
            known, width = candidate, width * 16
        raise ValueError(
            f"Unable to find a noise scale for {self.name} with epsilon={self.epsilon} and "
            f"sensitivity {self.sensitivity}: try different privacy parameters"
        )

    @functools.cached_property
    def _sampler(self) -> dp.Measurement:
        return self._noise(*self._space(), self.scale)

    def release(self, values: Sequence[Any]) -> list[Any]:
        """Noisy values (an integer statistic's rounded to the nearest integer)."""
        sampler = self._sampler
        noisy = [sampler(float(_exact(value, self.integer))) for value in values]
        return [round(value) for value in noisy] if self.integer else noisy

    def accuracy(self, alpha: float) -> float:
        """With probability 1 - alpha, |noise| <= this (an integer for an integer statistic)."""
        interval = self._interval(alpha)
        if not self.integer:
            return interval
        # |round(x)| <= h whenever |x| < h + 0.5: the smallest such integer h.
        return float(max(0, math.ceil(interval - 0.5)))


class Laplace(Noise):
    """Continuous Laplace noise (OpenDP's exact sampler on floats)."""

    name = "laplace"

    def _noise(self, domain: Any, metric: Any, scale: float) -> dp.Measurement:
        return dp.m.make_laplace(domain, metric, scale)

    def _interval(self, alpha: float) -> float:
        return float(dp.laplacian_scale_to_accuracy(self.scale, alpha))

    @property
    def threshold(self) -> float:
        # P(count + Laplace(scale) > t) = exp(-(t - count) / scale) / 2 for t >= count: at most
        # delta / max_contrib per group for count <= max_contrib. An integer statistic is rounded
        # before the comparison, which the extra 0.5 covers.
        contributions = float(self.max_contrib)
        above = self.scale * max(0.0, math.log(contributions / (2 * _threshold_delta(self))))
        return _with_margin(contributions + above + (0.5 if self.integer else 0.0))


class DiscreteLaplace(Noise):
    """Discrete Laplace noise, also named geometric (OpenDP's exact sampler on 64-bit integers)."""

    name = "discrete_laplace"

    def __init__(self, epsilon: float, *, integer: bool, **arguments: Any) -> None:
        if not integer:
            raise ValueError(
                "discrete_laplace adds integer noise: it cannot serve a float statistic"
            )
        super().__init__(epsilon, integer=integer, **arguments)

    def _space(self) -> tuple[Any, Any]:
        return dp.atom_domain(T="i64"), dp.absolute_distance(T="i64")

    def _d_in(self) -> Any:
        return math.ceil(self._sensitivity_bound())  # integer statistics move by whole units

    def _noise(self, domain: Any, metric: Any, scale: float) -> dp.Measurement:
        return dp.m.make_laplace(domain, metric, scale)

    def release(self, values: Sequence[Any]) -> list[Any]:
        sampler = self._sampler
        return [int(sampler(_exact(value, True))) for value in values]

    def _interval(self, alpha: float) -> float:
        return float(dp.discrete_laplacian_scale_to_accuracy(self.scale, alpha))

    def accuracy(self, alpha: float) -> float:
        # OpenDP: P(|noise| >= a) = alpha, and the floor keeps the coverage.
        return float(math.floor(self._interval(alpha)))

    @property
    def threshold(self) -> float:
        # P(noise >= m) = exp(-m / scale) / (1 + exp(-1 / scale)) for an integer m >= 1, and a
        # count released above t has noise >= floor(t - count) + 1 > t - count.
        contributions = float(self.max_contrib)
        ratio = contributions / (_threshold_delta(self) * (1 + math.exp(-1 / self.scale)))
        return _with_margin(contributions + self.scale * max(0.0, math.log(ratio)))


class Gaussian(Noise):
    """Continuous Gaussian noise (OpenDP's exact sampler on floats), charged (epsilon, delta)."""

    name = "gaussian"

    def _noise_delta(self, delta: float) -> float:
        if not delta > 0:
            raise ValueError("the gaussian mechanism spends delta: delta must be greater than 0")
        return delta

    def _rough_scale(self) -> float:
        # The classical formula: an upper bound on what OpenDP's conversion needs for epsilon <= 1.
        return self._sensitivity_bound() * math.sqrt(2 * math.log(1.25 / self.delta)) / self.epsilon

    def _noise(self, domain: Any, metric: Any, scale: float) -> dp.Measurement:
        return dp.m.make_gaussian(domain, metric, scale)

    def _to_approx(self, measurement: dp.Measurement) -> dp.Measurement:
        return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(measurement), self.delta)

    def _target(self) -> Any:
        return (self.epsilon, self.delta)

    def _interval(self, alpha: float) -> float:
        return float(dp.gaussian_scale_to_accuracy(self.scale, alpha))

    @property
    def threshold(self) -> float:
        raise ValueError("gaussian noise cannot be the threshold of censor_dims: use laplace")


MECHANISMS: Mapping[str, type[Noise]] = {
    "laplace": Laplace,
    "gaussian": Gaussian,
    "discrete_laplace": DiscreteLaplace,
    "geometric": DiscreteLaplace,
}


class MechanismChoice:
    """The query's mechanism per statistic, in the place of smartnoise-sql's `Mechanisms`: the
    library calls `get_mechanism` for each noisy column and reads `large`."""

    large = LARGE_SENSITIVITY

    def __init__(self, chosen: Mapping[str, str]) -> None:
        self._names = {**DEFAULT_MECHANISMS, **chosen}

    def get_mechanism(self, sensitivity: Any, stat: str, t: str) -> Callable[..., Any] | None:
        if sensitivity == math.inf:
            # The library's marker, refused before anything runs (aggregates of unbounded columns).
            unbounded: Callable[..., Any] = Unbounded
            return unbounded
        statistic = self._statistic(sensitivity, stat, t)
        if statistic is None:
            return None
        return functools.partial(MECHANISMS[self._names[statistic]], integer=t == "int")

    def _statistic(self, sensitivity: float, stat: str, t: str) -> str | None:
        if stat in ("threshold", "count"):
            return stat
        if stat != "sum" or t not in ("int", "float"):
            return None
        large = f"sum_large_{t}"
        if sensitivity > self.large and large in self._names:
            return large
        return f"sum_{t}"


def spent(
    mechanisms: Sequence[Any], key_count: int | None, grouped: bool
) -> list[tuple[float, float]]:
    """The (epsilon, delta) each mechanism of a query spends, in column order, plus the threshold's
    delta when the query thresholds its groups.

    `key_count` is the column the library thresholds on (censor_dims), None without censor_dims;
    `grouped` says the query has GROUP BY. Raises ValueError where the library would fail after
    reading the data (a threshold without delta).
    """
    losses: list[tuple[float, float]] = []
    for position, mechanism in enumerate(mechanisms):
        if mechanism is None:
            continue
        if not isinstance(mechanism, Noise):
            raise ValueError(f"no privacy loss is known for {type(mechanism).__name__}")
        losses.append(mechanism.loss)
        if position == key_count:
            if isinstance(mechanism, Gaussian):
                raise ValueError("gaussian noise cannot be the threshold of censor_dims")
            threshold_delta = _threshold_delta(mechanism)
            if grouped:
                losses.append((0.0, threshold_delta))
    return losses


def _threshold_delta(mechanism: Noise) -> float:
    if not mechanism.delta > 0:
        raise ValueError(
            "censor_dims requires delta > 0 (the threshold on the key count spends it)"
        )
    return mechanism.delta


def _with_margin(threshold: float) -> float:
    return threshold + _THRESHOLD_MARGIN * abs(threshold)


def _exact(value: Any, integer: bool) -> Any:
    """An exact aggregate as the noise takes it: an integer statistic must hold an integer."""
    if not integer:
        return float(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError("an integer statistic holds a value that is not an integer")

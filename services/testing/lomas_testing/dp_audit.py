"""Statistical DP audits: a lower confidence bound on the privacy loss a mechanism really has.

A mechanism M is (epsilon, delta)-DP when, for neighbouring datasets D and D' and every event S,
P[M(D) in S] <= exp(epsilon) * P[M(D') in S] + delta. Run M many times on D and on D', pick an event,
and bound the two probabilities with confidence intervals: then

    epsilon >= ln((lower(p) - delta) / upper(q)),   p = P[M(D) in S], q = P[M(D') in S],

holds with the intervals' confidence. When that bound exceeds the epsilon charged, the mechanism
leaks more than it is charged for (DP-Sniper, Bichsel et al. 2021; StatDP, Ding et al. 2018).

The events are thresholds on a scalar release, {x > t} or its complement, in both directions
(D on top, or D'). The event is chosen on the first half of the draws and measured on the second
half: choosing and measuring on the same draws would pick the luckiest event and overstate the
bound. The choice maximises a cautious estimate of the bound (Wilson score intervals, cheap for
every threshold at once); the measure uses exact Clopper-Pearson intervals at `confidence`, of
which each bound used fails with probability at most (1 - confidence) / 2, so that both hold
together with probability at least `confidence`.

No SciPy: the Clopper-Pearson bounds are quantiles of beta distributions, computed here from the
regularized incomplete beta function (a continued fraction) by bisection.

The second half of this module audits the platform's own mechanism families through the public
client (tests/e2e/test_dp_audit.py in CI, bench/dp_audit.py for longer runs).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt
import opendp.prelude as dp
import pandas as pd
import polars as pl
from opendp.extras.polars import DPExpr

from lomas.client import Client
from lomas.client.admin import AdminClient, approx_dp, local_source
from lomas.common.v1 import dataset_pb2

CONFIDENCE = 0.99
# The event is chosen with stricter intervals than it is measured with: they favour events with many
# hits, whose measure on the second half is precise (simulated: fewer unlucky choices).
SELECTION_CONFIDENCE = 0.9999

# The continued fraction converges in a few dozen terms where it is used (x below its mean); this
# bound only stops a runaway on arguments far outside what Clopper-Pearson intervals ask for.
_MAX_TERMS = 10_000
_TINY = 1e-300


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the CDF at x of the Beta(a, b) distribution (a, b > 0).

    The continued fraction of I_x(a, b) converges fast for x < (a + 1) / (a + b + 2); above, the
    symmetry I_x(a, b) = 1 - I_{1-x}(b, a) brings x back below."""
    if a <= 0 or b <= 0:
        raise ValueError("the beta distribution needs a > 0 and b > 0")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - regularized_incomplete_beta(1.0 - x, b, a)
    log_front = (
        a * math.log(x)
        + b * math.log1p(-x)
        + math.lgamma(a + b)
        - math.lgamma(a)
        - math.lgamma(b)
        - math.log(a)
    )
    return math.exp(log_front) / _beta_continued_fraction(x, a, b)


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """The denominator 1 + d1/(1 + d2/(1 + ...)) of I_x(a, b), by the modified Lentz method, where
    d_{2m+1} = -(a+m)(a+b+m)x / ((a+2m)(a+2m+1)) and d_{2m} = m(b-m)x / ((a+2m-1)(a+2m))."""
    value = 1.0  # the fraction's value so far
    c = 1.0  # ratio of successive numerators (Lentz)
    d = 0.0  # ratio of successive denominators, inverted (Lentz)
    for n in range(1, _MAX_TERMS):
        m = n // 2
        if n % 2:
            coefficient = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            coefficient = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + coefficient * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + coefficient / c
        c = c if abs(c) > _TINY else _TINY
        value *= c * d
        if abs(c * d - 1.0) < 1e-14:
            return value
    raise ArithmeticError(f"the incomplete beta fraction did not converge (x={x}, a={a}, b={b})")


def beta_quantile(probability: float, a: float, b: float) -> float:
    """The x with I_x(a, b) = probability (the Beta(a, b) quantile), by bisection: I_x is
    increasing in x, so halving [0, 1] sixty times leaves an interval below 1e-18."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError("a probability lies in [0, 1]")
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if regularized_incomplete_beta(middle, a, b) < probability:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def clopper_pearson(
    successes: int, trials: int, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval of a binomial proportion: each side fails
    with probability at most (1 - confidence) / 2."""
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError("need 0 <= successes <= trials and trials > 0")
    tail = (1.0 - confidence) / 2
    lower = 0.0 if successes == 0 else beta_quantile(tail, successes, trials - successes + 1)
    upper = (
        1.0 if successes == trials else beta_quantile(1 - tail, successes + 1, trials - successes)
    )
    return lower, upper


@dataclass(frozen=True)
class ThresholdEvent:
    """S = {x > threshold} when `above`, else its complement (NaN falls in the complement).

    `first_on_top`: the ratio bounded is P[M(D) in S] / P[M(D') in S] (else the inverse)."""

    threshold: float
    above: bool
    first_on_top: bool

    def hits(self, outputs: npt.NDArray[np.float64]) -> int:
        inside = outputs > self.threshold
        return int(np.count_nonzero(inside if self.above else ~inside))


@dataclass(frozen=True)
class AuditResult:
    """A lower confidence bound on the epsilon that a mechanism realises on one neighbouring pair.

    `top`/`bottom` are the Clopper-Pearson bounds used: lower(p) and upper(q) on the second half."""

    epsilon_lower_bound: float
    event: ThresholdEvent
    top: float
    bottom: float
    draws: int  # outputs used, both datasets together

    def describe(self) -> str:
        side = ">" if self.event.above else "<="
        order = "D over D'" if self.event.first_on_top else "D' over D"
        return (
            f"epsilon >= {self.epsilon_lower_bound:.3f} (S = x {side} {self.event.threshold:.6g}, "
            f"{order}: p >= {self.top:.4f}, q <= {self.bottom:.4f}; {self.draws} draws)"
        )


def epsilon_lower_bound(
    on_first: Sequence[float] | npt.NDArray[np.float64],
    on_second: Sequence[float] | npt.NDArray[np.float64],
    *,
    delta: float = 0.0,
    confidence: float = CONFIDENCE,
) -> AuditResult:
    """A lower bound, holding with probability `confidence`, on the epsilon (at `delta`) of a
    mechanism whose independent scalar outputs on neighbouring datasets D and D' are given.

    The event is chosen on the first half of each sample and measured on the second half. The
    bound is 0 when no event shows any privacy loss beyond delta."""
    first = np.asarray(on_first, dtype=np.float64)
    second = np.asarray(on_second, dtype=np.float64)
    if min(len(first), len(second)) < 4:
        raise ValueError("an audit needs at least 4 outputs on each dataset")
    half_first, half_second = len(first) // 2, len(second) // 2
    event = _choose_event(first[:half_first], second[:half_second], delta, SELECTION_CONFIDENCE)
    measured_first, measured_second = first[half_first:], second[half_second:]
    top_sample, bottom_sample = (
        (measured_first, measured_second)
        if event.first_on_top
        else (measured_second, measured_first)
    )
    top, _ = clopper_pearson(event.hits(top_sample), len(top_sample), confidence)
    _, bottom = clopper_pearson(event.hits(bottom_sample), len(bottom_sample), confidence)
    bound = math.log((top - delta) / bottom) if top - delta > bottom else 0.0
    return AuditResult(bound, event, top, bottom, len(first) + len(second))


def _choose_event(
    first: npt.NDArray[np.float64],
    second: npt.NDArray[np.float64],
    delta: float,
    confidence: float,
) -> ThresholdEvent:
    """The threshold event whose cautious bound (Wilson intervals) is largest on these draws.

    Every distinct output is a candidate threshold; sorting gives the counts of all of them at once.
    """
    candidates = np.unique(np.concatenate([first, second]))
    candidates = candidates[~np.isnan(candidates)]
    if candidates.size == 0:  # nothing but NaN: no threshold tells the datasets apart
        return ThresholdEvent(0.0, True, True)
    above_first = len(first) - np.searchsorted(np.sort(first), candidates, side="right")
    above_second = len(second) - np.searchsorted(np.sort(second), candidates, side="right")
    best = (-math.inf, ThresholdEvent(float(candidates[0]), True, True))
    for above in (True, False):
        hits_first = above_first if above else len(first) - above_first
        hits_second = above_second if above else len(second) - above_second
        for first_on_top in (True, False):
            top_hits, top_trials, bottom_hits, bottom_trials = (
                (hits_first, len(first), hits_second, len(second))
                if first_on_top
                else (hits_second, len(second), hits_first, len(first))
            )
            top = _wilson(top_hits, top_trials, confidence, lower=True)
            bottom = _wilson(bottom_hits, bottom_trials, confidence, lower=False)
            with np.errstate(divide="ignore"):
                scores = np.log(np.maximum(top - delta, 0.0) / bottom)
            index = int(np.argmax(scores))
            if scores[index] > best[0]:
                event = ThresholdEvent(float(candidates[index]), above, first_on_top)
                best = (float(scores[index]), event)
    return best[1]


def _wilson(
    hits: npt.NDArray[np.int64], trials: int, confidence: float, *, lower: bool
) -> npt.NDArray[np.float64]:
    """Wilson score bounds of binomial proportions (one side of the two-sided interval)."""
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    share = hits / trials
    centre = (share + z * z / (2 * trials)) / (1 + z * z / trials)
    spread = (
        z / (1 + z * z / trials) * np.sqrt(share * (1 - share) / trials + z * z / (4 * trials**2))
    )
    bound: npt.NDArray[np.float64] = centre - spread if lower else centre + spread
    return bound


# -- Audits of the platform's mechanisms, through the public API ----------------------------------
#
# Two neighbouring datasets share every audit: D holds ROWS rows at the columns' lower bound (0)
# and D' adds one row at their upper bound, so a count moves by its sensitivity (1), a sum by its
# sensitivity (UPPER) and a mean by the most one row can move it. Each query releases many draws
# at once, every one of them a separate mechanism that the platform charges on its own: a noisy
# column per data column (SQL, Polars), a composition of noise draws on one mean (OpenDP). The
# charge of one draw is the query's charge divided by the draws it released.

COLUMNS = tuple(f"x{i}" for i in range(25))
ROWS = 100
LOWER, UPPER = 0.0, 10.0
EPSILON = Decimal(1)  # per mechanism (SmartNoise-SQL's parameter) and per draw (OpenDP)
DELTA = Decimal("0.00001")  # per Gaussian mechanism
# Draws per OpenDP measurement query: its noise draws compose on one computed mean.
MEASUREMENT_DRAWS = 100


def neighbouring_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """D (ROWS rows at the lower bound) and D' (D plus one row at the upper bound)."""
    first = pd.DataFrame({column: [LOWER] * ROWS for column in COLUMNS})
    second = pd.concat([first, pd.DataFrame({column: [UPPER] for column in COLUMNS})])
    return first, second


def audit_metadata() -> dict[str, Any]:
    """The SmartNoise-SQL metadata of both datasets. `rows` is a public bound above either size;
    `max_delta` admits the delta of one query's many Gaussian draws."""
    column = {"type": "float", "precision": 64, "lower": LOWER, "upper": UPPER}
    return {
        "max_ids": 1,
        "row_privacy": True,
        "rows": 1000,
        "max_delta": "0.01",
        "columns": {name: dict(column) for name in COLUMNS},
    }


def register_neighbours(
    admin: AdminClient, directory: Path, user: str, names: tuple[str, str]
) -> None:
    """Write D and D' as CSV files, register them under `names` and grant `user` a budget that
    thousands of draws cannot exhaust."""
    directory.mkdir(parents=True, exist_ok=True)
    admin.add_user(user)
    for name, frame in zip(names, neighbouring_frames(), strict=True):
        path = directory / f"{name}.csv"
        frame.to_csv(path, index=False)
        admin.add_dataset(name, local_source(path), audit_metadata(), dataset_pb2.DATA_FORMAT_CSV)
        admin.grant(user, name, approx_dp("10000000", "0.9"))


@dataclass(frozen=True)
class Release:
    """One charged release: its independent draws and what one draw was charged."""

    draws: list[float]
    epsilon: Decimal
    delta: Decimal


@dataclass(frozen=True)
class PlatformMechanism:
    """A mechanism family as a researcher runs it: `query` makes one real, charged, fresh release
    (never a replay) of `draws_per_release` independent draws."""

    name: str
    draws_per_release: int
    query: Callable[[Client], pd.DataFrame]

    def release(self, client: Client) -> Release:
        frame = self.query(client)
        if frame.attrs.get("replay", True):
            raise AssertionError(f"{self.name}: a replay is not a new draw")
        draws = [float(value) for value in frame.to_numpy(dtype=np.float64).ravel()]
        if len(draws) != self.draws_per_release:
            raise AssertionError(f"{self.name}: {len(draws)} draws, not {self.draws_per_release}")
        if len(set(draws)) == 1:
            # Draws sharing one noise value would count one draw many times.
            raise AssertionError(f"{self.name}: the release's draws are all equal")
        cost = frame.attrs["cost"]
        if "epsilon" not in cost:
            raise AssertionError(f"{self.name}: charged {cost}, not (epsilon, delta)")
        share = Decimal(self.draws_per_release)
        return Release(draws, cost["epsilon"] / share, cost["delta"] / share)


def _sql(aggregate: str, mechanism: str) -> Callable[[Client], pd.DataFrame]:
    sql = "SELECT " + ", ".join(f"{aggregate}({c}) AS {c}" for c in COLUMNS) + " FROM df"
    mechanisms = {"count": mechanism, "sum_float": mechanism}

    def query(client: Client) -> pd.DataFrame:
        return client.smartnoise_sql.query(
            sql, EPSILON, DELTA, mechanisms, fresh=True, progress=False
        )

    return query


def _measurement(noise: str) -> Callable[[Client], pd.DataFrame]:
    """The mean of x0 (resized to D's size plus one, so that D is padded with the lower bound and
    D' is whole), then MEASUREMENT_DRAWS independent noise draws on it."""
    dp.enable_features("contrib")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        mean = (
            dp.t.make_split_dataframe(",", list(COLUMNS))
            >> dp.t.make_select_column(COLUMNS[0], str)
            >> dp.t.then_cast_default(float)
            >> dp.t.then_impute_constant(LOWER)
            >> dp.t.then_clamp((LOWER, UPPER))
            >> dp.t.then_resize(ROWS + 1, LOWER)
            >> dp.t.then_mean()
        )
    # Fresh domain objects: ones taken from `mean` would serialize the whole pipeline again.
    domain, metric = dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)
    sensitivity = (UPPER - LOWER) / (ROWS + 1)
    draw: dp.Measurement
    if noise == "laplace":
        draw = dp.m.make_laplace(domain, metric, sensitivity / float(EPSILON))
    else:
        # Each Gaussian draw is converted to (epsilon, delta) on its own (OpenDP's conversion of
        # its zCDP loss), so the query's charge is the sum of its draws' charges.
        gaussian = dp.m.make_gaussian(domain, metric, 4 * sensitivity)
        draw = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(gaussian), float(DELTA))
    pipeline = mean >> dp.c.make_composition([draw] * MEASUREMENT_DRAWS)

    def query(client: Client) -> pd.DataFrame:
        return client.opendp.query(pipeline, fresh=True, progress=False)

    return query


def _polars(statistic: str) -> Callable[[Client], pd.DataFrame]:
    """An OpenDP Polars plan with one noisy count (scale 1: epsilon 1) or one noisy mean (sum and
    count with scale UPPER + 1: epsilon 1) per column."""
    expressions = [
        DPExpr(pl.col(c)).count(scale=1.0)
        if statistic == "count"
        else DPExpr(pl.col(c)).mean((LOWER, UPPER), scale=UPPER + 1)
        for c in COLUMNS
    ]
    plan = pl.LazyFrame(schema={c: pl.Float64 for c in COLUMNS}).select(expressions)

    def query(client: Client) -> pd.DataFrame:
        return client.opendp.query(plan, mechanism="laplace", fresh=True, progress=False)

    return query


def platform_mechanisms() -> list[PlatformMechanism]:
    """Every mechanism family a researcher can pick, as audited."""
    mechanisms = [
        PlatformMechanism(
            f"SmartNoise-SQL {aggregate} {noise}", len(COLUMNS), _sql(aggregate, noise)
        )
        for aggregate in ("COUNT", "SUM", "AVG")
        for noise in ("laplace", "gaussian")
    ]
    mechanisms += [
        PlatformMechanism(
            f"OpenDP measurement mean {noise}", MEASUREMENT_DRAWS, _measurement(noise)
        )
        for noise in ("laplace", "gaussian")
    ]
    mechanisms += [
        PlatformMechanism(f"OpenDP Polars {statistic} laplace", len(COLUMNS), _polars(statistic))
        for statistic in ("count", "mean")
    ]
    return mechanisms


@dataclass(frozen=True)
class MechanismAudit:
    """One mechanism's audit: the bound, what one draw was charged, and what the run took."""

    name: str
    result: AuditResult
    epsilon: Decimal
    delta: Decimal
    seconds: float

    @property
    def passed(self) -> bool:
        return self.result.epsilon_lower_bound <= self.epsilon

    def line(self) -> str:
        return (
            f"{self.name:<38} charged epsilon {float(self.epsilon):.4f} delta "
            f"{float(self.delta):.0e}  lower bound {self.result.epsilon_lower_bound:.3f}  "
            f"({self.result.draws} draws, {self.seconds:.1f} s)"
        )


def audit(
    name: str,
    release: Callable[[int], Release],
    draws_per_release: int,
    draws: int,
    *,
    parallel: int = 2,
) -> MechanismAudit:
    """Draw at least `draws` outputs on D (`release(0)`) and on D' (`release(1)`), `parallel`
    releases in flight, and bound the epsilon they realise at the delta one draw was charged."""
    start = time.perf_counter()
    releases = math.ceil(draws / draws_per_release)
    samples: list[list[float]] = []
    charges: set[tuple[Decimal, Decimal]] = set()
    with ThreadPoolExecutor(parallel) as pool:
        for side in (0, 1):
            sample: list[float] = []
            for one in pool.map(release, [side] * releases):
                sample += one.draws
                charges.add((one.epsilon, one.delta))
            samples.append(sample)
    if len(charges) != 1:
        raise AssertionError(f"{name}: the same query was charged differently: {charges}")
    ((epsilon, delta),) = charges
    result = epsilon_lower_bound(samples[0], samples[1], delta=float(delta))
    return MechanismAudit(name, result, epsilon, delta, time.perf_counter() - start)


def audit_on_platform(
    mechanism: PlatformMechanism, clients: tuple[Client, Client], draws: int
) -> MechanismAudit:
    """Audit a platform mechanism: `clients` query D and D' as the same researcher."""

    def release(side: int) -> Release:
        return mechanism.release(clients[side])

    return audit(mechanism.name, release, mechanism.draws_per_release, draws)


def audit_broken_sum(client: Client, draws: int) -> MechanismAudit:
    """The negative control: the SQL SUM Laplace audit's twin with its noise halved, on the same
    datasets' true sums, with the same draws, charged what the platform charges one SUM column
    (its free estimate). Its bound must exceed that charge."""
    sql = "SELECT " + ", ".join(f"SUM({c}) AS {c}" for c in COLUMNS) + " FROM df"
    cost = client.smartnoise_sql.cost(sql, EPSILON, DELTA, {"sum_float": "laplace"})
    epsilon = cost["epsilon"] / len(COLUMNS)
    sums = [float(frame[COLUMNS[0]].sum()) for frame in neighbouring_frames()]
    sensitivity = max(abs(LOWER), abs(UPPER))

    def release(side: int) -> Release:
        return broken_laplace(sums[side], sensitivity, epsilon, len(COLUMNS))

    return audit("negative control: SUM, half the noise", release, len(COLUMNS), draws)


def broken_laplace(true_answer: float, sensitivity: float, epsilon: Decimal, draws: int) -> Release:
    """A deliberately broken mechanism: Laplace noise at HALF the scale that epsilon needs at this
    sensitivity, charged epsilon all the same (test code only)."""
    scale = sensitivity / float(epsilon) / 2
    noisy = true_answer + np.random.default_rng().laplace(0.0, scale, draws)
    return Release([float(value) for value in noisy], epsilon, Decimal(0))

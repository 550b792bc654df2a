"""SmartNoise-SQL mechanisms mean what they say, and charges are the loss of what runs
(`lomas_executor.smartnoise_mechanisms`).

* every mechanism a client can name either runs the noise it names, or is refused;
* the charge of each mechanism is OpenDP's privacy map of the noise it runs, at the scale it runs;
* a pure Laplace COUNT spends no delta; integer releases are unbiased: the mean of 2,000 releases
  through the engine is within 0.1 of the truth, and the releases follow the distribution named
  (the frequency of an exact answer and the variance, for the scale the mechanism reports).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import numpy as np
import opendp.prelude as dp
import pandas as pd
import pytest

from lomas_common.errors import InvalidQuery
from lomas_common.privacy import PrivacyLoss, engine_cost
from lomas_executor import smartnoise_sql as sn
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.smartnoise_mechanisms import (
    MECHANISMS,
    SUPPORTED_MECHANISMS,
    DiscreteLaplace,
    Gaussian,
    Laplace,
    Noise,
)
from lomas_executor.smartnoise_sql import MECHANISM_NAMES, STAT_NAMES, SmartnoiseSqlQuery

dp.enable_features("contrib")

RELEASES = 2000
ROWS = 40  # the true COUNT(*)
DELTA = "0.00001"
# One SQL per statistic, and the column bound behind its sensitivity (1 for a count).
STATISTIC_SQL = {
    "count": ("SELECT COUNT(*) AS n FROM df", 1),
    "sum_int": ("SELECT SUM(k) AS s FROM df", 10),
    "sum_large_int": ("SELECT SUM(big) AS s FROM df", 5000),
    "sum_float": ("SELECT SUM(x) AS s FROM df", 10.0),
    "sum_large_float": ("SELECT SUM(w) AS s FROM df", 5000.0),
    # With censor_dims, COUNT(*) is the key count the library thresholds on.
    "threshold": ("SELECT COUNT(*) AS n FROM df", 1),
}
INTEGER_STATISTICS = ("count", "sum_int", "sum_large_int", "threshold")
# Each mechanism's COUNT(*) sample: epsilon large enough that 2,000 releases pin the mean to well
# within 0.1 (standard error 0.016 or less).
SAMPLED = {"laplace": "2", "discrete_laplace": "2", "geometric": "2", "gaussian": "8"}


def _metadata(max_ids: int = 1, censor_dims: bool = False) -> DatasetMetadata:
    return DatasetMetadata.from_dict(
        {
            "max_ids": max_ids,
            "rows": ROWS,
            "row_privacy": True,
            "censor_dims": censor_dims,
            "columns": {
                "k": {"type": "int", "lower": 0, "upper": 10},
                "big": {"type": "int", "lower": 0, "upper": 5000},
                "x": {"type": "float", "lower": 0.0, "upper": 10.0},
                "w": {"type": "float", "lower": 0.0, "upper": 5000.0},
                "g": {"type": "string", "cardinality": 2, "categories": ["a", "b"]},
            },
        }
    )


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "k": [i % 10 for i in range(ROWS)],
            "big": [100 * i for i in range(ROWS)],
            "x": [i / 4 for i in range(ROWS)],
            "w": [50.0 * i for i in range(ROWS)],
            "g": ["a", "b"] * (ROWS // 2),
        }
    )


def _query(
    sql: str, mechanisms: Mapping[str, str], epsilon: str = "0.7", delta: str = DELTA
) -> SmartnoiseSqlQuery:
    return SmartnoiseSqlQuery(sql, Decimal(epsilon), Decimal(delta), dict(mechanisms))


def _noise(query: SmartnoiseSqlQuery, md: DatasetMetadata) -> list[Noise]:
    """The mechanism objects the engine builds for the query (the same inputs as at execution)."""
    private = sn.metadata_only_reader(query, md)
    subquery, _ = private._rewrite_ast(private.parse_query_string(query.sql))
    return [m for m in private._get_mechanisms(subquery) if m is not None]


def _opendp_loss(mechanism: Noise, max_ids: int, bound: float, delta: float) -> tuple[float, float]:
    """OpenDP's privacy map, built here, of the noise at the scale the mechanism runs: at the exact
    sensitivity of an integer statistic, and for a float statistic at OpenDP's sensitivity of a
    float sum of `max_ids` values in [0, bound]."""
    scale = mechanism.scale
    if mechanism.integer:
        if isinstance(mechanism, DiscreteLaplace):
            space = (dp.atom_domain(T="i64"), dp.absolute_distance(T="i64"))
            d_in: Any = int(max_ids * bound)
        else:
            space = (dp.atom_domain(T="f64", nan=False), dp.absolute_distance(T="f64"))
            d_in = float(max_ids * bound)
        before: Any = None
    else:
        before = (
            (dp.vector_domain(dp.atom_domain(T="f64", nan=False)), dp.symmetric_distance())
            >> dp.t.then_clamp(bounds=(0.0, float(bound)))
            >> dp.t.then_sum()
        )
        space, d_in = (before.output_domain, before.output_metric), max_ids
    make = dp.m.make_gaussian if isinstance(mechanism, Gaussian) else dp.m.make_laplace
    measurement = make(*space, scale)
    if before is not None:
        measurement = before >> measurement
    if isinstance(mechanism, Gaussian):
        approx = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(measurement), delta)
        epsilon, spent_delta = approx.map(d_in)
        return float(epsilon), float(spent_delta)
    return float(measurement.map(d_in)), 0.0


# -- every name a client can pick runs what it names, or is refused ----------------------------------


@pytest.mark.parametrize("statistic", STAT_NAMES)
@pytest.mark.parametrize("name", MECHANISM_NAMES)
def test_every_mechanism_name_runs_the_noise_it_names_or_is_refused(
    statistic: str, name: str
) -> None:
    sql, _ = STATISTIC_SQL[statistic]
    md = _metadata(censor_dims=statistic == "threshold")
    if name not in SUPPORTED_MECHANISMS[statistic]:
        with pytest.raises(InvalidQuery) as refused:
            _query(sql, {statistic: name})
        assert refused.value.reason == "QUERY_INVALID"
        assert refused.value.message.endswith(
            f"use one of {', '.join(SUPPORTED_MECHANISMS[statistic])}"
        )
        return
    query = _query(sql, {statistic: name})
    sn.estimate_cost(query, md)  # accepted, dry run included
    noisy = _noise(query, md)
    assert type(noisy[0]) is MECHANISMS[name]
    assert noisy[0].integer is (statistic in INTEGER_STATISTICS)
    release = sn.execute(query, sn.prepare_reader(_frame(), md), md)
    value = release[release.columns[-1]].iloc[0]
    if statistic in INTEGER_STATISTICS:
        assert float(value).is_integer()


def test_the_names_are_the_noise_they_say() -> None:
    assert MECHANISMS == {
        "laplace": Laplace,
        "gaussian": Gaussian,
        "discrete_laplace": DiscreteLaplace,
        "geometric": DiscreteLaplace,  # the two-sided geometric distribution is discrete Laplace
    }
    refused = {(s, m) for s in STAT_NAMES for m in MECHANISM_NAMES} - {
        (s, m) for s, names in SUPPORTED_MECHANISMS.items() for m in names
    }
    assert refused == {
        ("sum_float", "discrete_laplace"),
        ("sum_float", "geometric"),
        ("sum_large_float", "discrete_laplace"),
        ("sum_large_float", "geometric"),
        ("threshold", "gaussian"),
    }


# -- the charge is the loss of what runs ------------------------------------------------------------


CHARGED = [
    (statistic, name)
    for statistic in ("count", "sum_int", "sum_large_int", "sum_float", "sum_large_float")
    for name in SUPPORTED_MECHANISMS[statistic]
]


@pytest.mark.parametrize(("statistic", "name"), CHARGED)
def test_the_charge_is_opendps_map_of_the_noise_that_runs(statistic: str, name: str) -> None:
    sql, bound = STATISTIC_SQL[statistic]
    md = _metadata(max_ids=2)
    query = _query(sql, {statistic: name})
    (mechanism,) = _noise(query, md)
    epsilon, delta = _opendp_loss(mechanism, 2, bound, float(sn.float_at_most(query.delta)))
    cost = sn.estimate_cost(query, md)
    # The map rounded up to 12 digits, and never above the user's epsilon: the library ran with
    # at most the float just below it.
    assert cost.epsilon == min(engine_cost(epsilon, name="epsilon"), query.epsilon)
    assert cost.epsilon >= Decimal(epsilon)  # never less than what runs spends
    assert cost.epsilon > query.epsilon * Decimal("0.999999")  # and the scale is the tight one
    if isinstance(mechanism, Gaussian):
        assert delta == sn.float_at_most(query.delta)
        assert cost.delta == query.delta
    else:
        assert delta == 0
        assert cost.delta == 0


def test_a_pure_laplace_count_is_charged_no_delta() -> None:
    plain, censored = _metadata(), _metadata(censor_dims=True)
    count = "SELECT COUNT(*) AS n FROM df"
    grouped = "SELECT g, COUNT(*) AS n FROM df GROUP BY g"  # public keys without censor_dims
    for name in ("laplace", "discrete_laplace", "geometric"):
        mechanisms = {"count": name, "threshold": name}
        for sql, md in ((count, plain), (count, censored), (grouped, plain)):
            cost = sn.estimate_cost(_query(sql, mechanisms, epsilon="1"), md)
            assert cost == PrivacyLoss.approx_dp(Decimal(1), Decimal(0)), (name, sql)
        # Only a threshold that hides groups the data lacks spends the delta, once.
        cost = sn.estimate_cost(_query(grouped, mechanisms, epsilon="1"), censored)
        assert cost == PrivacyLoss.approx_dp(Decimal(1), Decimal(DELTA))
    gaussian = sn.estimate_cost(_query(count, {"count": "gaussian"}, epsilon="1"), plain)
    assert gaussian == PrivacyLoss.approx_dp(Decimal(1), Decimal(DELTA))


# -- releases are unbiased and follow the named distribution --------------------------------------


@pytest.fixture(scope="module")
def samples() -> dict[str, tuple[Noise, np.ndarray]]:
    """2,000 COUNT(*) releases per mechanism name, through the engine, and the mechanism."""
    md = _metadata()
    reader = sn.prepare_reader(_frame(), md)
    drawn = {}
    for name, epsilon in SAMPLED.items():
        query = _query("SELECT COUNT(*) AS n FROM df", {"count": name}, epsilon=epsilon)
        sn.estimate_cost(query, md)
        (mechanism,) = _noise(query, md)
        values = [
            sn.execute(query, reader, md, validated=True)["n"].iloc[0] for _ in range(RELEASES)
        ]
        drawn[name] = (mechanism, np.array(values, dtype=float))
    return drawn


def _pmf(mechanism: Noise, k: int) -> float:
    """P(released noise == k) for the noise the mechanism names, at its scale."""
    scale = mechanism.scale
    if isinstance(mechanism, DiscreteLaplace):
        return math.tanh(1 / (2 * scale)) * math.exp(-abs(k) / scale)

    def cdf(x: float) -> float:
        if isinstance(mechanism, Gaussian):
            return 0.5 * (1 + math.erf(x / (scale * math.sqrt(2))))
        return 0.5 * math.exp(x / scale) if x < 0 else 1 - 0.5 * math.exp(-x / scale)

    return cdf(k + 0.5) - cdf(k - 0.5)  # continuous noise rounded to the nearest integer


@pytest.mark.parametrize("name", SAMPLED)
def test_count_releases_are_unbiased_integers(
    samples: dict[str, tuple[Noise, np.ndarray]], name: str
) -> None:
    _, values = samples[name]
    assert len(values) == RELEASES
    assert all(value.is_integer() for value in values)
    assert abs(values.mean() - ROWS) <= 0.1  # truncation toward zero was 0.5 low


@pytest.mark.parametrize("name", SAMPLED)
def test_count_releases_follow_the_named_distribution(
    samples: dict[str, tuple[Noise, np.ndarray]], name: str
) -> None:
    mechanism, values = samples[name]
    noise = values - ROWS
    support = range(-60, 61)
    exact = _pmf(mechanism, 0)
    variance = sum(k * k * _pmf(mechanism, k) for k in support)
    assert abs(sum(_pmf(mechanism, k) for k in support) - 1) < 1e-9
    # 2,000 draws: the standard error of the frequency is about 0.011, of the variance about 6 %
    # (both bounds at four standard errors or more).
    assert abs(float(np.mean(noise == 0)) - exact) <= 0.05, (exact, float(np.mean(noise == 0)))
    assert abs(float(noise.var()) - variance) <= 0.25 * variance, (variance, float(noise.var()))


def test_the_distributions_tell_the_mechanisms_apart(
    samples: dict[str, tuple[Noise, np.ndarray]],
) -> None:
    """The frequency test has teeth: at the same scale, discrete and rounded continuous Laplace
    differ by far more than its tolerance."""
    discrete, _ = samples["discrete_laplace"]
    continuous, _ = samples["laplace"]
    assert discrete.scale == pytest.approx(continuous.scale, rel=1e-6)
    assert _pmf(discrete, 0) - _pmf(continuous, 0) > 0.12


@pytest.mark.parametrize("name", SAMPLED)
def test_announced_accuracy_covers_the_releases(
    samples: dict[str, tuple[Noise, np.ndarray]], name: str
) -> None:
    mechanism, values = samples[name]
    half_width = mechanism.accuracy(0.05)
    assert half_width.is_integer()
    covered = float(np.mean(np.abs(values - ROWS) <= half_width))
    tighter = float(np.mean(np.abs(values - ROWS) <= half_width - 1))
    # The standard error of a frequency near 0.95 is 0.005 (2,000 draws): four of them.
    assert covered >= 0.95 - 0.02
    assert tighter < 0.95 + 0.02  # the smallest integer width that covers


# -- thresholds hide a group one individual adds ---------------------------------------------------


@pytest.mark.parametrize("noise_class", [Laplace, DiscreteLaplace])
@pytest.mark.parametrize("max_contrib", [1, 2])
def test_a_threshold_releases_a_new_group_with_probability_at_most_its_share_of_delta(
    noise_class: type[Noise], max_contrib: int
) -> None:
    mechanism = noise_class(1.0, delta=0.0, sensitivity=1, max_contrib=max_contrib, integer=True)
    mechanism.delta = 0.2  # the library gives a key count the query's delta
    draws = 20_000
    # A group only one individual is in holds at most max_contrib of its rows.
    released = np.array(mechanism.release([max_contrib] * draws)) > mechanism.threshold
    share = mechanism.delta / max_contrib
    assert float(released.mean()) <= share + 4 * math.sqrt(share * (1 - share) / draws)


def test_thresholds_need_delta_and_gaussian_cannot_threshold() -> None:
    grouped = "SELECT k, COUNT(*) AS n FROM df GROUP BY k"
    with pytest.raises(InvalidQuery) as caught:
        sn.estimate_cost(_query(grouped, {}, delta="0"), _metadata(censor_dims=True))
    assert caught.value.reason == "DELTA_REQUIRED"
    with pytest.raises(InvalidQuery, match="cannot serve threshold"):
        _query(grouped, {"threshold": "gaussian"})

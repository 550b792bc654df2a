"""The statistics of the DP audits (lomas_testing.dp_audit): the incomplete beta function, exact
Clopper-Pearson intervals against published values and their defining binomial tails, and the
threshold test on mechanisms whose privacy loss is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lomas_testing.dp_audit import (
    beta_quantile,
    clopper_pearson,
    epsilon_lower_bound,
    regularized_incomplete_beta,
)


def binomial_tail_at_least(k: int, n: int, p: float) -> float:
    """P[Binomial(n, p) >= k], summed exactly term by term."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


@pytest.mark.parametrize("x", [0.01, 0.2, 0.5, 0.77, 0.999])
def test_incomplete_beta_closed_forms(x: float) -> None:
    assert regularized_incomplete_beta(x, 1, 7) == pytest.approx(1 - (1 - x) ** 7, rel=1e-12)
    assert regularized_incomplete_beta(x, 5.5, 1) == pytest.approx(x**5.5, rel=1e-12)
    assert regularized_incomplete_beta(x, 3, 4) == pytest.approx(
        1 - regularized_incomplete_beta(1 - x, 4, 3), abs=1e-14
    )


def test_incomplete_beta_is_the_binomial_tail() -> None:
    # I_p(k, n - k + 1) = P[Binomial(n, p) >= k]: the identity Clopper-Pearson rests on.
    for n, k, p in [(10, 3, 0.2), (40, 13, 0.31), (60, 59, 0.97), (25, 1, 0.001)]:
        assert regularized_incomplete_beta(p, k, n - k + 1) == pytest.approx(
            binomial_tail_at_least(k, n, p), rel=1e-10
        )


def test_incomplete_beta_edges_and_large_parameters() -> None:
    assert regularized_incomplete_beta(0.0, 2, 3) == 0.0
    assert regularized_incomplete_beta(1.0, 2, 3) == 1.0
    assert regularized_incomplete_beta(0.5, 2000, 2000) == pytest.approx(0.5, abs=1e-12)
    with pytest.raises(ValueError):
        regularized_incomplete_beta(0.5, 0, 1)


def test_beta_quantile_inverts_the_cdf() -> None:
    for a, b, probability in [(1, 1, 0.3), (2.5, 40, 0.005), (900, 101, 0.995)]:
        x = beta_quantile(probability, a, b)
        assert regularized_incomplete_beta(x, a, b) == pytest.approx(probability, abs=1e-12)
    with pytest.raises(ValueError):
        beta_quantile(1.5, 1, 1)


@pytest.mark.parametrize(
    ("successes", "trials", "confidence", "expected"),
    [
        # Published exact intervals (e.g. Clopper and Pearson's tables; any statistics package).
        (5, 10, 0.95, (0.1871, 0.8129)),
        (50, 100, 0.95, (0.3983, 0.6017)),
        (1, 20, 0.95, (0.0013, 0.2487)),
    ],
)
def test_clopper_pearson_published_values(
    successes: int, trials: int, confidence: float, expected: tuple[float, float]
) -> None:
    lower, upper = clopper_pearson(successes, trials, confidence)
    assert (round(lower, 4), round(upper, 4)) == expected


def test_clopper_pearson_closed_forms_at_the_ends() -> None:
    # No success: the upper bound solves (1 - p)^n = alpha/2; all successes, by symmetry.
    none_lower, none_upper = clopper_pearson(0, 30, 0.99)
    assert none_lower == 0.0
    assert none_upper == pytest.approx(1 - 0.005 ** (1 / 30), rel=1e-12)
    all_lower, all_upper = clopper_pearson(30, 30, 0.99)
    assert all_lower == pytest.approx(0.005 ** (1 / 30), rel=1e-12)
    assert all_upper == 1.0


def test_clopper_pearson_bounds_meet_their_tails() -> None:
    # At 99 %: P[Bin(n, lower) >= k] = 0.005 and P[Bin(n, upper) <= k] = 0.005.
    n, k = 40, 13
    lower, upper = clopper_pearson(k, n)
    assert binomial_tail_at_least(k, n, lower) == pytest.approx(0.005, rel=1e-9)
    assert 1 - binomial_tail_at_least(k + 1, n, upper) == pytest.approx(0.005, rel=1e-9)
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)


def laplace_pair(
    scale: float, draws: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Outputs of a Laplace mechanism on two datasets whose answers differ by 1."""
    return rng.laplace(0.0, scale, draws), 1.0 + rng.laplace(0.0, scale, draws)


def test_a_correct_laplace_mechanism_passes_and_a_broken_one_is_caught() -> None:
    rng = np.random.default_rng(19)
    honest = epsilon_lower_bound(*laplace_pair(1.0, 2000, rng))  # epsilon 1
    assert 0.3 < honest.epsilon_lower_bound <= 1.0
    broken = epsilon_lower_bound(*laplace_pair(0.5, 2000, rng))  # really 2, "charged" 1
    assert broken.epsilon_lower_bound > 1.0
    assert broken.draws == 4000


def test_the_bound_holds_at_its_confidence() -> None:
    # At most 1 % of audits of an exactly epsilon-DP mechanism may exceed epsilon; the union of
    # two one-sided 0.5 % bounds makes it rarer still.
    rng = np.random.default_rng(7)
    exceeded = sum(
        epsilon_lower_bound(*laplace_pair(1.0, 300, rng)).epsilon_lower_bound > 1.0
        for _ in range(300)
    )
    assert exceeded <= 3


def test_delta_is_subtracted_and_equal_outputs_show_nothing() -> None:
    rng = np.random.default_rng(3)
    first, second = laplace_pair(1.0, 2000, rng)
    plain = epsilon_lower_bound(first, second).epsilon_lower_bound
    with_delta = epsilon_lower_bound(first, second, delta=0.1).epsilon_lower_bound
    assert 0 < with_delta < plain
    same = rng.laplace(0.0, 1.0, 2000)
    assert epsilon_lower_bound(same, same).epsilon_lower_bound == 0.0


def test_outputs_may_be_integers_infinite_or_missing() -> None:
    rng = np.random.default_rng(5)
    first, second = (np.round(sample) for sample in laplace_pair(0.5, 2000, rng))
    first[::50] = np.nan  # a release that is no number falls outside every {x > t}
    second[::70] = np.inf
    assert epsilon_lower_bound(first, second).epsilon_lower_bound > 0.5
    with pytest.raises(ValueError):
        epsilon_lower_bound([1.0, 2.0], [1.0, 2.0, 3.0, 4.0])

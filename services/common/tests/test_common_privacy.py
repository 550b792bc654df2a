"""Exact privacy values: decimals parsed as written, charges rounded up and grants rounded down."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest

from lomas_common.privacy import (
    QUANTUM,
    PrivacyDefinition,
    PrivacyLoss,
    PrivacyValueError,
    engine_cost,
    format_decimal,
    parse_decimal,
    round_allocation,
    round_cost,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.1", Decimal("0.1")),
        (" 1e-5 ", Decimal("0.00001")),
        (".5", Decimal("0.5")),
        ("+2.", Decimal("2")),
        (0.1, Decimal("0.1")),  # a float through its shortest repr, not its binary expansion
        (3, Decimal(3)),
        (Decimal("1E+2"), Decimal(100)),
    ],
)
def test_decimals_are_parsed_exactly(value: str | float | Decimal, expected: Decimal) -> None:
    assert parse_decimal(value, name="epsilon") == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nan", "must be a decimal number"),
        ("Infinity", "must be a decimal number"),
        (float("inf"), "must be finite"),
        (Decimal("NaN"), "must be finite"),
        ("-0.5", "must not be negative"),
        ("\u0661", "must be a decimal number"),  # ARABIC-INDIC DIGIT ONE: Decimal() would take it
        ("1_000", "must be a decimal number"),
        ("\u00a01", "must be a decimal number"),  # a non-ASCII space
        ("1e1234567", "must be a decimal number"),  # an exponent too long to be meant
        ("1e20", "is too large"),
        (True, "must be a number"),
    ],
)
def test_malformed_or_absurd_decimals_are_refused_by_name(
    value: str | float | Decimal, message: str
) -> None:
    with pytest.raises(PrivacyValueError, match=f"delta {message}"):
        parse_decimal(value, name="delta")


def test_costs_round_up_and_allocations_round_down_to_the_quantum() -> None:
    just_above = Decimal("0.1") + QUANTUM / 10
    assert round_cost(just_above) == Decimal("0.1") + QUANTUM
    assert round_allocation(just_above) == Decimal("0.1")
    assert round_cost(Decimal("0.1")) == round_allocation(Decimal("0.1")) == Decimal("0.1")
    loss = PrivacyLoss.approx_dp(just_above, Decimal("1e-19"))
    assert loss.as_cost() == PrivacyLoss.approx_dp(Decimal("0.1") + QUANTUM, QUANTUM)
    assert loss.as_allocation() == PrivacyLoss.approx_dp(Decimal("0.1"), Decimal(0))


def test_decimals_are_written_without_exponents() -> None:
    assert format_decimal(Decimal("1E-18")) == "0.000000000000000001"
    assert format_decimal(Decimal("1.500")) == "1.5"
    assert format_decimal(Decimal("1E+3")) == "1000"
    assert format_decimal(Decimal("-0")) == "0"


def test_a_loss_holds_only_the_components_of_its_definition() -> None:
    assert PrivacyLoss.pure_dp(Decimal(1)).components() == {"epsilon": Decimal(1)}
    assert PrivacyLoss.rho_zcdp(Decimal("0.5")).components() == {"rho": Decimal("0.5")}
    assert str(PrivacyLoss.approx_dp(Decimal(1), Decimal("1e-5"))) == (
        "approx_dp(epsilon=1, delta=0.00001)"
    )
    assert PrivacyLoss.zero(PrivacyDefinition.RHO_ZCDP) == PrivacyLoss.rho_zcdp(Decimal(0))
    refused: list[Callable[[], PrivacyLoss]] = [
        lambda: PrivacyLoss(PrivacyDefinition.PURE_DP, epsilon=Decimal(1), delta=Decimal("0.1")),
        lambda: PrivacyLoss(PrivacyDefinition.APPROX_DP, rho=Decimal(1)),
        lambda: PrivacyLoss(PrivacyDefinition.RHO_ZCDP, epsilon=Decimal(1)),
        lambda: PrivacyLoss.approx_dp(Decimal(1), Decimal("1.1")),
        lambda: PrivacyLoss.pure_dp(Decimal(-1)),
    ]
    for build in refused:
        with pytest.raises(PrivacyValueError):
            build()


def test_an_engine_float_cost_is_rounded_up_to_twelve_significant_digits() -> None:
    assert engine_cost(0.5, name="epsilon") == Decimal("0.5")  # exact in binary: kept
    assert engine_cost(0.1 + 0.2, name="epsilon") == Decimal("0.300000000001")
    assert engine_cost(1 / 3, name="epsilon") == Decimal("0.333333333334")
    assert engine_cost(1.5e-9, name="delta") == Decimal("1.5E-9")  # its float is just below
    assert engine_cost(0.0, name="delta") == 0
    for value in (0.1, 1 / 3, 2.0 / 7, 1e-9, 123456.789):
        assert engine_cost(value, name="epsilon") >= Decimal(value)  # never below the float
        assert len(engine_cost(value, name="epsilon").normalize().as_tuple().digits) <= 12
    with pytest.raises(PrivacyValueError):
        engine_cost(float("inf"), name="epsilon")

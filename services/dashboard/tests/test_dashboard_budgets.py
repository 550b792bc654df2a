"""Budgets as the pages write them: exact decimals, and the used share that sizes a grant's bar."""

from __future__ import annotations

from decimal import Decimal

from lomas.client.admin import approx_dp, rho_zcdp
from lomas_dashboard.budgets import Budget, amounts_text, exact, loss_text


def test_decimals_are_written_exactly_without_exponents() -> None:
    assert exact(Decimal("1E-7")) == "0.0000001"
    assert exact(Decimal("10.000")) == "10"
    assert exact(Decimal("0.00")) == "0"
    # More digits than a float (or Decimal's default context) holds, all kept.
    long = "0.1234567890123456789012345678901234567"
    assert exact(Decimal(long)) == long


def test_losses_read_with_their_symbols() -> None:
    assert loss_text(approx_dp("1", "0.00001")) == "ε 1 · δ 0.00001"
    assert loss_text(rho_zcdp("0.5")) == "\N{GREEK SMALL LETTER RHO} 0.5"
    assert amounts_text({}) == "—"


def test_used_share_is_the_most_used_component_with_holds_counted() -> None:
    budget = Budget(
        allocation={"epsilon": Decimal("4"), "delta": Decimal("0.001")},
        spent={"epsilon": Decimal("1"), "delta": Decimal("0.0009")},
        reserved={"epsilon": Decimal("0"), "delta": Decimal("0.0001")},
        remaining={"epsilon": Decimal("3"), "delta": Decimal("0")},
    )
    assert budget.used_fraction == 1  # delta is used up, though epsilon is not
    assert budget.used_percent == "100.0%"
    half = Budget({"rho": Decimal("2")}, {"rho": Decimal("1")}, {}, {"rho": Decimal("1")})
    assert half.bar_value == "0.5000"


def test_a_zero_allocation_is_unused_until_something_is_spent() -> None:
    zero = {"epsilon": Decimal("0"), "delta": Decimal("0")}
    assert Budget(zero, zero, {}, zero).used_fraction == 0
    spent = {"epsilon": Decimal("0.1"), "delta": Decimal("0")}
    assert Budget(zero, spent, {}, zero).used_fraction == 1


def test_researcher_client_dictionaries_become_budgets() -> None:
    budget = Budget.from_client(
        {"initial_epsilon": Decimal("10"), "initial_delta": Decimal("0.005")},
        {"total_spent_epsilon": Decimal("2.5"), "total_spent_delta": Decimal("0")},
        {
            "remaining_epsilon": Decimal("7.5"),
            "remaining_delta": Decimal("0.005"),
            "remaining_epsilon_at_delta": Decimal("7"),  # another view of it: not a component
        },
    )
    assert budget.text("allocation") == "ε 10 · δ 0.005"
    assert budget.text("spent") == "ε 2.5 · δ 0"
    assert budget.text("remaining") == "ε 7.5 · δ 0.005"
    assert budget.used_percent == "25.0%"

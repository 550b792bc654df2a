"""zCDP ledgers compose in rho: 100 Gaussian queries fit a zCDP ledger whose budget is worth a
nominal (epsilon, delta), while an (epsilon, delta) ledger with the same nominal budget, charged
each query's own (epsilon, delta) (basic composition), refuses after far fewer.

The privacy losses come from OpenDP: the Gaussian mechanism's rho (its zCDP map) and its
(epsilon, delta) at a fixed delta (`make_zCDP_to_approxDP` + `make_fix_delta`). Both ledgers run
in a real budget service and are charged over gRPC.
"""

from __future__ import annotations

from decimal import Context, Decimal
from pathlib import Path

import opendp.prelude as dp
import pytest
from budget_testing import BudgetProcess, approx, zcdp

from lomas.budget.v1 import budget_pb2
from lomas.common.v1 import privacy_pb2
from lomas_budget.accounting import approx_dp_epsilon
from lomas_common.errors import LomasError
from lomas_common.privacy import round_allocation, round_cost

EPSILON, DELTA = Decimal(1), Decimal("0.000001")  # the nominal budget of both ledgers
QUERIES = 100
PER_QUERY_DELTA = DELTA / QUERIES  # so that basic composition could afford 100 deltas
_CTX = Context(prec=80)


def nominal_rho(epsilon: Decimal, delta: Decimal) -> Decimal:
    """The largest rho (rounded down) whose (epsilon, delta) reading, rho + 2 sqrt(rho ln(1/delta)),
    is at most `epsilon`: sqrt(rho) = sqrt(ln(1/delta) + epsilon) - sqrt(ln(1/delta))."""
    log_term = _CTX.ln(_CTX.divide(1, delta))
    root = _CTX.subtract(_CTX.sqrt(_CTX.add(log_term, epsilon)), _CTX.sqrt(log_term))
    return round_allocation(_CTX.multiply(root, root) * Decimal("0.999999"))


def gaussian_losses(rho_budget_per_query: Decimal) -> tuple[Decimal, Decimal]:
    """An OpenDP Gaussian mechanism (sensitivity 1) spending at most the given rho: its rho and
    its epsilon at PER_QUERY_DELTA, as decimal strings of OpenDP's floats."""
    dp.enable_features("contrib")
    scale = float(1 / (2 * rho_budget_per_query).sqrt()) * 1.000001
    space = dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)
    gaussian = dp.m.make_gaussian(*space, scale=scale)
    rho = Decimal(repr(gaussian.map(1.0)))
    approximate = dp.c.make_fix_delta(
        dp.c.make_zCDP_to_approxDP(gaussian), delta=float(PER_QUERY_DELTA)
    )
    epsilon, delta = approximate.map(1.0)
    assert Decimal(repr(delta)) == PER_QUERY_DELTA
    return rho, Decimal(repr(epsilon))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_hundred_gaussian_queries_fit_in_rho_but_not_in_epsilon_delta(
    database_url: str, tmp_path: Path
) -> None:
    rho_budget = nominal_rho(EPSILON, DELTA)
    assert approx_dp_epsilon(rho_budget, DELTA) <= EPSILON  # the zCDP ledger is worth no more
    rho, epsilon = gaussian_losses(rho_budget / QUERIES)
    assert round_cost(rho) * QUERIES <= rho_budget  # each charge rounds up to 1e-18

    service = BudgetProcess(database_url, tmp_path / "budget.log").start()
    budget = service.peer()
    try:
        for user, allocation in (
            ("zcdp", zcdp(str(rho_budget))),
            ("approx", approx("1", "0.000001")),
        ):
            budget.call(
                "OpenLedger",
                budget_pb2.OpenLedgerRequest(
                    user=user, dataset="penguins", allocation=allocation, actor="admin"
                ),
            )

        def charge(user: str, number: int, cost: privacy_pb2.PrivacyLoss) -> bool:
            query_id = f"{user}-{number}"
            try:
                budget.call(
                    "ReserveBudget",
                    budget_pb2.ReserveBudgetRequest(
                        query_id=query_id, user=user, dataset="penguins", cost=cost, actor="gw"
                    ),
                )
            except LomasError as error:
                assert error.reason == "PRIVACY_BUDGET_EXHAUSTED", error
                return False
            budget.call("CommitReservation", budget_pb2.CommitReservationRequest(query_id=query_id))
            return True

        fitted_zcdp = sum(charge("zcdp", n, zcdp(str(rho))) for n in range(QUERIES))
        fitted_approx = 0
        while charge("approx", fitted_approx, approx(str(epsilon), str(PER_QUERY_DELTA))):
            fitted_approx += 1

        assert fitted_zcdp == QUERIES
        assert fitted_approx < QUERIES // 5  # basic composition of the same queries: far fewer
        assert fitted_approx == int(EPSILON / epsilon)  # ... exactly as many epsilons as fit

        # What is left in the zCDP ledger, read as (epsilon, delta) at the nominal delta, and what
        # was spent, read the same way, stay within the nominal epsilon.
        ledger = budget.call(
            "GetLedger",
            budget_pb2.GetLedgerRequest(user="zcdp", dataset="penguins", delta=str(DELTA)),
        ).ledger
        spent_rho = Decimal(ledger.spent.rho_zcdp.rho)
        assert spent_rho == QUERIES * round_cost(rho)
        assert approx_dp_epsilon(spent_rho, DELTA) <= EPSILON
        left = Decimal(ledger.remaining_at_delta.epsilon)
        assert Decimal(ledger.remaining_at_delta.delta) == DELTA
        assert left == approx_dp_epsilon(rho_budget - spent_rho, DELTA)
        assert 0 < left < Decimal("0.05")
        assert budget.call("VerifyLedgers", budget_pb2.VerifyLedgersRequest()).problems == []
    finally:
        budget.close()
        service.kill()

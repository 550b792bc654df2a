"""Privacy accounting of the ledger: costs in a ledger's unit, dataset caps, (epsilon, delta) views.

Everything here is exact `Decimal` arithmetic and follows the one rounding rule of
`lomas_common.privacy`: a cost rounds **up**, an allocation (what is granted, or what is left)
rounds **down**.

* `charge_in_unit` expresses a cost in a ledger's (or a dataset cap's) privacy definition:
  approximate DP takes (eps, delta) as is and pure DP as (eps, 0); pure DP takes delta-free costs;
  zCDP takes rho as is and a delta-free eps as rho = eps**2 / 2. Anything else is refused.
* `cap_accepts` says which ledgers a dataset cap can bound: those whose every charge converts.
* `approx_dp_epsilon(rho, delta)` is the (eps, delta) reading of rho-zCDP,
  eps = rho + 2 * sqrt(rho * ln(1 / delta)) (Bun and Steinke 2016, Proposition 1.3), rounded down:
  it is shown for what is *left* in a zCDP ledger.
"""

from __future__ import annotations

from decimal import Context, Decimal

from lomas_common.errors import InvalidArgument
from lomas_common.privacy import (
    PrivacyDefinition,
    PrivacyLoss,
    format_decimal,
    round_allocation,
    round_cost,
)

APPROX, PURE, ZCDP = (
    PrivacyDefinition.APPROX_DP,
    PrivacyDefinition.PURE_DP,
    PrivacyDefinition.RHO_ZCDP,
)
COMPONENTS = ("epsilon", "delta", "rho")
# Storable bound: NUMERIC(38, 18) holds values below 1e20.
MAX_STORABLE = Decimal("1e20")
# All ledger arithmetic goes through this context, never the default one (28 digits, which would
# round a 1e10 allocation with 18 decimals). Exact for sums of storable values (< 1e20, 18 decimals)
# and for eps**2 / 2 (at most 77 significant digits).
EXACT = Context(prec=100)
# ln and sqrt are correctly rounded at this precision (error below one unit in the 80th digit);
# the margin below exceeds that error by far, so rounding (value - margin) down never rounds up.
_IRRATIONAL = Context(prec=80)
_MARGIN = Decimal("1e-50")

# Which ledger definitions a dataset cap of each definition can bound (every charge converts).
CAP_ACCEPTS: dict[PrivacyDefinition, frozenset[PrivacyDefinition]] = {
    APPROX: frozenset({APPROX, PURE}),
    PURE: frozenset({PURE}),
    ZCDP: frozenset({ZCDP, PURE}),
}


def describe(loss: PrivacyLoss) -> str:
    """'epsilon=1, delta=0.00001': the components of a loss, for messages and error metadata."""
    return ", ".join(f"{name}={format_decimal(value)}" for name, value in loss.components().items())


def loss_metadata(prefix: str, loss: PrivacyLoss) -> dict[str, str]:
    """Error metadata for a loss, one value per lowerCamel key: `requestedEpsilon`,
    `requestedDelta` (or `requestedRho`), as the error registry asks."""
    return {
        f"{prefix}{name[0].upper()}{name[1:]}": format_decimal(value)
        for name, value in loss.components().items()
    }


def plus(base: Decimal, amount: Decimal, sign: int = 1) -> Decimal:
    """base + sign * amount, exactly."""
    return EXACT.add(base, EXACT.multiply(sign, amount))


def shift(base: PrivacyLoss, amount: PrivacyLoss, sign: int) -> PrivacyLoss:
    """base + sign * amount, componentwise (same definition; raises if a component is < 0)."""
    if base.definition is not amount.definition:
        raise ValueError("privacy losses of different definitions")
    return PrivacyLoss(
        base.definition,
        epsilon=plus(base.epsilon, amount.epsilon, sign),
        delta=plus(base.delta, amount.delta, sign),
        rho=plus(base.rho, amount.rho, sign),
    )


def exceeds(amount: PrivacyLoss, limit: PrivacyLoss) -> bool:
    """Whether any component of `amount` is above the same component of `limit`."""
    return amount.epsilon > limit.epsilon or amount.delta > limit.delta or amount.rho > limit.rho


def storable(loss: PrivacyLoss, name: str) -> PrivacyLoss:
    if loss.epsilon >= MAX_STORABLE or loss.delta >= MAX_STORABLE or loss.rho >= MAX_STORABLE:
        raise InvalidArgument(f"{name} is too large", reason="PRIVACY_VALUE_OUT_OF_RANGE")
    return loss


def definition_mismatch(
    cost: PrivacyDefinition, target: PrivacyDefinition, *, scope: str = "ledger"
) -> InvalidArgument:
    return InvalidArgument(
        f"a {cost.value} cost cannot be charged to a {target.value} {scope}",
        reason="PRIVACY_DEFINITION_MISMATCH",
        metadata={f"{scope}Definition": target.value, "costDefinition": cost.value},
    )


def charge_in_unit(cost: PrivacyLoss, definition: PrivacyDefinition) -> PrivacyLoss:
    """A cost (rounded up) expressed in a ledger's privacy definition, or InvalidArgument
    (PRIVACY_DEFINITION_MISMATCH).

    * approx-DP ledger: (eps, delta) as is; a pure-DP cost is (eps, 0); no zCDP costs.
    * pure-DP ledger: eps; an approx-DP cost only if its delta is 0; no zCDP costs.
    * zCDP ledger: rho as is; a pure-DP (or delta = 0) cost of eps is rho = eps**2 / 2, rounded up
      (pure eps-DP implies (eps**2 / 2)-zCDP); an approx-DP cost with delta > 0 is refused: it has
      no zCDP reading.
    """
    cost = cost.as_cost()
    if definition is APPROX and cost.definition is not ZCDP:
        return PrivacyLoss.approx_dp(cost.epsilon, cost.delta)
    if definition is PURE and cost.definition is not ZCDP and cost.delta == 0:
        return PrivacyLoss.pure_dp(cost.epsilon)
    if definition is ZCDP and cost.definition is ZCDP:
        return cost
    if definition is ZCDP and cost.delta == 0:
        rho = round_cost(EXACT.divide(EXACT.multiply(cost.epsilon, cost.epsilon), 2))
        return storable(PrivacyLoss.rho_zcdp(rho), "cost")
    raise definition_mismatch(cost.definition, definition)


def approx_dp_epsilon(rho: Decimal, delta: Decimal) -> Decimal:
    """The epsilon of the (epsilon, delta)-DP that rho-zCDP implies, rounded down to the quantum.

    eps = rho + 2 * sqrt(rho * ln(1 / delta)), for 0 < delta < 1. ln and sqrt are computed to 80
    significant digits (correctly rounded); subtracting a margin far above their error before
    rounding down makes the result never exceed the exact value.
    """
    if not 0 < delta < 1:
        raise InvalidArgument(
            "delta must be strictly between 0 and 1",
            reason="PRIVACY_LOSS_INVALID",
            metadata={"field": "delta"},
        )
    if rho < 0:
        raise ValueError("rho must not be negative")
    if rho == 0:
        return Decimal(0)
    ctx = _IRRATIONAL
    log_term = ctx.ln(ctx.divide(1, delta))
    root = ctx.sqrt(ctx.multiply(rho, log_term))
    epsilon = ctx.add(rho, ctx.multiply(2, root))
    lowered = EXACT.subtract(epsilon, EXACT.multiply(_MARGIN, EXACT.add(1, epsilon)))
    return round_allocation(max(lowered, Decimal(0)))


def approx_dp_view(remaining: PrivacyLoss, delta: Decimal) -> PrivacyLoss | None:
    """What is left in a ledger as an (epsilon, delta) guarantee at the chosen delta (rounded down).

    zCDP: eps(rho, delta) above. Pure DP: (eps, delta), since eps-DP implies (eps, delta)-DP.
    Approximate DP: None; its remaining budget already is an (epsilon, delta) pair.
    """
    if remaining.definition is ZCDP:
        return PrivacyLoss.approx_dp(approx_dp_epsilon(remaining.rho, delta), delta)
    if remaining.definition is PURE:
        if not 0 < delta < 1:
            approx_dp_epsilon(Decimal(0), delta)  # raises the same InvalidArgument
        return PrivacyLoss.approx_dp(remaining.epsilon, delta)
    return None


__all__ = [
    "CAP_ACCEPTS",
    "COMPONENTS",
    "EXACT",
    "MAX_STORABLE",
    "approx_dp_epsilon",
    "approx_dp_view",
    "charge_in_unit",
    "definition_mismatch",
    "describe",
    "exceeds",
    "plus",
    "shift",
    "storable",
]

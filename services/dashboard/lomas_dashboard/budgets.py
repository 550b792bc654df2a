"""Privacy budgets as the pages show them: exact decimal text, and how much of a budget is used.

Amounts stay `Decimal` from the wire to the page; only the width of a bar is an approximation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from lomas.client.client import loss_to_dict
from lomas.common.v1 import privacy_pb2

# Components of a privacy loss as `loss_to_dict` names them, in display order, with their symbols.
SYMBOLS = {"epsilon": "ε", "delta": "δ", "rho": "\N{GREEK SMALL LETTER RHO}"}

DEFINITIONS = {
    privacy_pb2.PRIVACY_DEFINITION_APPROX_DP: "(ε, δ)-DP",
    privacy_pb2.PRIVACY_DEFINITION_PURE_DP: "ε-DP",
    privacy_pb2.PRIVACY_DEFINITION_RHO_ZCDP: "\N{GREEK SMALL LETTER RHO}-zCDP",
}

Amounts = Mapping[str, Decimal]


def exact(value: Decimal) -> str:
    """A decimal in positional notation with every digit it has (no exponent, no rounding);
    trailing zeros after the point are dropped (`10.000` reads `10`)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def amounts_text(amounts: Amounts) -> str:
    """`ε 1 · δ 0.00001`; an empty loss (nothing set) reads as a dash."""
    parts = [f"{SYMBOLS[key]} {exact(amounts[key])}" for key in SYMBOLS if key in amounts]
    return " · ".join(parts) or "—"


def loss_text(loss: privacy_pb2.PrivacyLoss) -> str:
    return amounts_text(loss_to_dict(loss))


def _unprefixed(amounts: Amounts, prefix: str) -> dict[str, Decimal]:
    return {
        key.removeprefix(prefix): value for key, value in amounts.items() if key in _keys(prefix)
    }


def _keys(prefix: str) -> set[str]:
    return {prefix + key for key in SYMBOLS}


@dataclass(frozen=True)
class Budget:
    """A grant's (or a dataset cap's) budget: what was allocated, spent, held and is left."""

    allocation: dict[str, Decimal]
    spent: dict[str, Decimal]
    reserved: dict[str, Decimal]
    remaining: dict[str, Decimal]

    @classmethod
    def from_losses(
        cls,
        allocation: privacy_pb2.PrivacyLoss,
        spent: privacy_pb2.PrivacyLoss,
        reserved: privacy_pb2.PrivacyLoss,
        remaining: privacy_pb2.PrivacyLoss,
    ) -> Budget:
        return cls(
            loss_to_dict(allocation),
            loss_to_dict(spent),
            loss_to_dict(reserved),
            loss_to_dict(remaining),
        )

    @classmethod
    def from_client(
        cls, initial: Amounts, spent: Amounts, remaining: Amounts, reserved: Amounts | None = None
    ) -> Budget:
        """From the researcher client's dictionaries (`initial_epsilon`, `total_spent_epsilon`,
        `remaining_epsilon`, ...)."""
        return cls(
            _unprefixed(initial, "initial_"),
            _unprefixed(spent, "total_spent_"),
            dict(reserved or {}),
            _unprefixed(remaining, "remaining_"),
        )

    @property
    def used_fraction(self) -> Decimal:
        """The largest share of any component that is spent or held (0 to 1): the share that
        decides when the next query is refused. A component allocated as 0 counts as used up
        as soon as anything is spent on it, and as unused otherwise."""
        fractions = [Decimal(0)]
        for key, allocated in self.allocation.items():
            used = self.spent.get(key, Decimal(0)) + self.reserved.get(key, Decimal(0))
            if allocated > 0:
                fractions.append(used / allocated)
            elif used > 0:
                fractions.append(Decimal(1))
        return min(max(fractions), Decimal(1))

    @property
    def used_percent(self) -> str:
        """The used fraction as a rounded percentage, for the bar's label only."""
        return f"{self.used_fraction * 100:.1f}%"

    @property
    def bar_value(self) -> str:
        """The used fraction as the `value` of a `<meter min=0 max=1>`."""
        return f"{self.used_fraction:.4f}"

    def text(self, part: str) -> str:
        amounts: dict[str, Decimal] = getattr(self, part)
        return amounts_text(amounts)

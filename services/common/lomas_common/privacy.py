"""Exact privacy-loss values.

Every privacy quantity in Lomas mesh is a `Decimal`, never a float. This module is the one place that
states the rounding rule:

* a **cost** (anything charged to a ledger) rounds **up** to `QUANTUM`;
* an **allocation** (anything granted) rounds **down** to `QUANTUM`.

So rounding can only ever make the platform more conservative than the exact mathematics.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal, InvalidOperation

# 18 decimal places: far below any meaningful epsilon or delta, and it fits NUMERIC(38, 18).
QUANTUM = Decimal("1e-18")
# Enough digits for 20 integer digits plus 18 decimals, so quantizing never raises.
_CONTEXT = Context(prec=60)
_MAX_ABS = Decimal("1e20")
# What a decimal may look like on the wire: ASCII only. Python's Decimal() also takes other Unicode
# digits (U+0661, Arabic-Indic one, is 1), Unicode white space and underscores; none of them is accepted. The exponent is
# bounded in length so a huge one cannot make arithmetic slow.
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,6})?")


class PrivacyValueError(ValueError):
    """A privacy parameter is not a finite, non-negative decimal (or is out of range)."""


class PrivacyDefinition(enum.Enum):
    """The privacy definition of a ledger: the unit its allocation and spend are kept in."""

    APPROX_DP = "approx_dp"  # (epsilon, delta), basic composition, as Lomas does
    PURE_DP = "pure_dp"  # epsilon
    RHO_ZCDP = "rho_zcdp"  # rho


def parse_decimal(text: str | int | float | Decimal, *, name: str) -> Decimal:
    """Parse one privacy parameter exactly.

    Floats are converted through their shortest repr, so 0.1 becomes Decimal("0.1"), not the binary
    expansion; strings are parsed as written: ASCII `[+-]digits[.digits][e[+-]digits]`, with ASCII
    spaces around it allowed. NaN, infinities, negatives, other Unicode digits or spaces and absurd
    magnitudes are refused.
    """
    if isinstance(text, bool):
        raise PrivacyValueError(f"{name} must be a number")
    if isinstance(text, float):
        raw = repr(text)  # always ASCII: digits, ".", "e", "-", or inf / nan (refused below)
    elif isinstance(text, Decimal):
        raw = str(text)  # already a number: only its finiteness and range are checked below
    else:
        try:
            raw = str(text).strip(" ")
        except ValueError:  # an int too long to print
            raise PrivacyValueError(f"{name} is too large") from None
        if not _DECIMAL_TEXT.fullmatch(raw):
            raise PrivacyValueError(f"{name} must be a decimal number")
    try:
        value = Decimal(raw)
    except (InvalidOperation, ValueError):
        raise PrivacyValueError(f"{name} must be a decimal number") from None
    if not value.is_finite():
        raise PrivacyValueError(f"{name} must be finite")
    if value < 0:
        raise PrivacyValueError(f"{name} must not be negative")
    if value >= _MAX_ABS:
        raise PrivacyValueError(f"{name} is too large")
    return value


def round_cost(value: Decimal) -> Decimal:
    """Round a charge up to the ledger quantum."""
    return _CONTEXT.plus(value.quantize(QUANTUM, rounding=ROUND_CEILING, context=_CONTEXT))


# Significant digits kept of a cost an engine computed in floating point.
ENGINE_COST_DIGITS = 12


def engine_cost(value: float, *, name: str) -> Decimal:
    """A cost an engine computed in floating point (a privacy map, a library's own arithmetic),
    rounded up to `ENGINE_COST_DIGITS` significant digits of its exact binary value: never below
    what the float says, and never shown or stored with the float's noise digits
    (0.1 + 0.2 is charged 0.300000000001, not 0.3000000000000000444089209850062616169452667236328125).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PrivacyValueError(f"{name} must be a number")
    if not math.isfinite(value):
        raise PrivacyValueError(f"{name} must be finite")
    exact = Decimal(value)
    if exact == 0:
        return Decimal(0)
    rounded = Context(prec=ENGINE_COST_DIGITS, rounding=ROUND_CEILING).plus(exact)
    return parse_decimal(rounded, name=name)


def round_allocation(value: Decimal) -> Decimal:
    """Round a grant down to the ledger quantum."""
    return _CONTEXT.plus(value.quantize(QUANTUM, rounding=ROUND_FLOOR, context=_CONTEXT))


def format_decimal(value: Decimal) -> str:
    """Render a decimal without exponent notation (what goes on the wire and into databases)."""
    text = format(value.normalize(_CONTEXT), "f")
    return "0" if text in ("-0", "") else text


@dataclass(frozen=True, slots=True)
class PrivacyLoss:
    """A privacy loss under one definition.

    `epsilon`/`delta` are used by APPROX_DP (both) and PURE_DP (epsilon only, delta is 0); `rho` by
    RHO_ZCDP. Unused fields are zero, so equality and hashing are exact.
    """

    definition: PrivacyDefinition
    epsilon: Decimal = Decimal(0)
    delta: Decimal = Decimal(0)
    rho: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        for name in ("epsilon", "delta", "rho"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
                raise PrivacyValueError(f"{name} must be a finite, non-negative decimal")
        if self.delta > 1:
            raise PrivacyValueError("delta must be at most 1")
        if self.definition is PrivacyDefinition.PURE_DP and (self.delta or self.rho):
            raise PrivacyValueError("a pure-DP loss has only epsilon")
        if self.definition is PrivacyDefinition.APPROX_DP and self.rho:
            raise PrivacyValueError("an approximate-DP loss has no rho")
        if self.definition is PrivacyDefinition.RHO_ZCDP and (self.epsilon or self.delta):
            raise PrivacyValueError("a zCDP loss has only rho")

    @classmethod
    def approx_dp(cls, epsilon: Decimal, delta: Decimal) -> PrivacyLoss:
        return cls(PrivacyDefinition.APPROX_DP, epsilon=epsilon, delta=delta)

    @classmethod
    def pure_dp(cls, epsilon: Decimal) -> PrivacyLoss:
        return cls(PrivacyDefinition.PURE_DP, epsilon=epsilon)

    @classmethod
    def rho_zcdp(cls, rho: Decimal) -> PrivacyLoss:
        return cls(PrivacyDefinition.RHO_ZCDP, rho=rho)

    @classmethod
    def zero(cls, definition: PrivacyDefinition) -> PrivacyLoss:
        return cls(definition)

    def components(self) -> dict[str, Decimal]:
        """The fields this definition uses, by name (for display and storage)."""
        if self.definition is PrivacyDefinition.APPROX_DP:
            return {"epsilon": self.epsilon, "delta": self.delta}
        if self.definition is PrivacyDefinition.PURE_DP:
            return {"epsilon": self.epsilon}
        return {"rho": self.rho}

    def as_cost(self) -> PrivacyLoss:
        """This loss with every component rounded up: what a ledger is charged."""
        return PrivacyLoss(
            self.definition, round_cost(self.epsilon), round_cost(self.delta), round_cost(self.rho)
        )

    def as_allocation(self) -> PrivacyLoss:
        """This loss with every component rounded down: what a ledger is granted."""
        return PrivacyLoss(
            self.definition,
            round_allocation(self.epsilon),
            round_allocation(self.delta),
            round_allocation(self.rho),
        )

    def __str__(self) -> str:
        parts = ", ".join(f"{k}={format_decimal(v)}" for k, v in self.components().items())
        return f"{self.definition.value}({parts})"

"""Exact accounting: the (epsilon, delta) reading of rho, cap conversions, canonical hash texts."""

from __future__ import annotations

import hashlib
import json
from decimal import Context, Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lomas_budget.accounting import CAP_ACCEPTS, approx_dp_epsilon, approx_dp_view, charge_in_unit
from lomas_budget.journal import HASH_VERSION, chain_hash, chain_prefix
from lomas_budget.verify import canonical_decimal
from lomas_common.errors import InvalidArgument
from lomas_common.privacy import QUANTUM, PrivacyDefinition, PrivacyLoss, format_decimal

FAST = settings(max_examples=200, deadline=None)
_REFERENCE = Context(prec=200)


def reference_epsilon(rho: Decimal, delta: Decimal) -> Decimal:
    """eps = rho + 2 sqrt(rho ln(1/delta)) at 200 digits: the 'exact' value to compare with."""
    ctx = _REFERENCE
    return ctx.add(rho, ctx.multiply(2, ctx.sqrt(ctx.multiply(rho, ctx.ln(ctx.divide(1, delta))))))


quantized = st.integers(min_value=0, max_value=10**24).map(lambda n: Decimal(n).scaleb(-18))
deltas = st.integers(min_value=1, max_value=10**18 - 1).map(lambda n: Decimal(n).scaleb(-18))


def test_epsilon_of_rho_known_values() -> None:
    # rho = 0.5, delta = 1e-5: 0.5 + 2 sqrt(0.5 ln 1e5) = 5.29852591218808120(7...)
    assert approx_dp_epsilon(Decimal("0.5"), Decimal("0.00001")) == Decimal("5.298525912188081207")
    assert approx_dp_epsilon(Decimal(0), Decimal("0.5")) == 0
    # a tiny rho still rounds down to the quantum, never up
    tiny = approx_dp_epsilon(QUANTUM, Decimal("0.5"))
    assert 0 < tiny <= reference_epsilon(QUANTUM, Decimal("0.5"))


@FAST
@given(rho=quantized, delta=deltas)
def test_epsilon_of_rho_rounds_down_by_less_than_two_quanta(rho: Decimal, delta: Decimal) -> None:
    epsilon = approx_dp_epsilon(rho, delta)
    exact = reference_epsilon(rho, delta)
    assert epsilon <= exact
    assert exact - epsilon < 2 * QUANTUM
    assert epsilon == epsilon.quantize(QUANTUM)


@FAST
@given(rho=quantized, more=quantized, delta=deltas)
def test_epsilon_of_rho_grows_with_rho(rho: Decimal, more: Decimal, delta: Decimal) -> None:
    assert approx_dp_epsilon(rho, delta) <= approx_dp_epsilon(rho + more, delta)


@pytest.mark.parametrize("delta", ["0", "1", "1.5"])
def test_epsilon_of_rho_needs_a_delta_strictly_between_0_and_1(delta: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        approx_dp_epsilon(Decimal("0.1"), Decimal(delta))
    assert error.value.reason == "PRIVACY_LOSS_INVALID"


def test_views_at_a_delta() -> None:
    delta = Decimal("0.000001")
    zcdp = approx_dp_view(PrivacyLoss.rho_zcdp(Decimal("0.25")), delta)
    assert zcdp == PrivacyLoss.approx_dp(approx_dp_epsilon(Decimal("0.25"), delta), delta)
    assert approx_dp_view(PrivacyLoss.pure_dp(Decimal("2")), delta) == PrivacyLoss.approx_dp(
        Decimal(2), delta
    )
    assert approx_dp_view(PrivacyLoss.approx_dp(Decimal(1), Decimal("0.1")), delta) is None


def test_caps_accept_the_ledgers_whose_every_charge_converts() -> None:
    approx, pure, zcdp = (
        PrivacyDefinition.APPROX_DP,
        PrivacyDefinition.PURE_DP,
        PrivacyDefinition.RHO_ZCDP,
    )
    samples = {
        approx: PrivacyLoss.approx_dp(Decimal("0.5"), Decimal("0.001")),
        pure: PrivacyLoss.pure_dp(Decimal("0.5")),
        zcdp: PrivacyLoss.rho_zcdp(Decimal("0.5")),
    }
    for cap, accepted in CAP_ACCEPTS.items():
        for ledger, charge in samples.items():
            if ledger in accepted:
                assert charge_in_unit(charge, cap).definition is cap
            else:
                with pytest.raises(InvalidArgument):
                    charge_in_unit(charge, cap)
    assert charge_in_unit(samples[pure], zcdp) == PrivacyLoss.rho_zcdp(Decimal("0.125"))


@FAST
@given(
    texts=st.lists(st.text(), min_size=6, max_size=6),
    query_id=st.none() | st.text(),
    seq=st.integers(min_value=1, max_value=2**62),
)
def test_chain_hash_is_sha256_of_the_canonical_json(
    texts: list[str], query_id: str | None, seq: int
) -> None:
    ledger_id, user, dataset, actor, reason, created_at = texts
    fields = [ledger_id, user, dataset, "approx_dp", seq, "commit", "1.5", "0", "-2"]
    fields += [query_id, actor, reason, created_at, "0" * 64]
    canonical = json.dumps([HASH_VERSION, *fields], separators=(",", ":"), ensure_ascii=False)
    digest = chain_hash(
        chain_prefix(ledger_id, user, dataset, "approx_dp"),
        seq,
        "commit",
        "1.5",
        "0",
        "-2",
        query_id,
        actor,
        reason,
        created_at,
        "0" * 64,
    )
    assert digest == hashlib.sha256(canonical.encode()).hexdigest()


@FAST
@given(units=st.integers(min_value=-(10**38) + 1, max_value=10**38 - 1))
def test_stored_decimal_texts_read_back_as_the_hashed_text(units: int) -> None:
    value = Decimal(units).scaleb(-18)
    postgres_text = f"{value:.18f}"  # how PostgreSQL prints NUMERIC(38, 18)
    assert canonical_decimal(postgres_text) == format_decimal(value)
    assert canonical_decimal(format_decimal(value)) == format_decimal(value)  # SQLite keeps text

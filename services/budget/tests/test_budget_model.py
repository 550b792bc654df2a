"""Model-based test: random sequences of grant, reserve, access, commit, release, adjust, freeze,
cap, expire and sweep against a simple reference model, on SQLite and PostgreSQL.

The model is written independently of the ledger: plain `Fraction` arithmetic with its own
rounding (costs up, allocations down, at 1e-18) and its own conversion rules. After every step
every balance, freeze flag and dataset cap must match the model exactly; every refusal must carry
the model's reason; at the end `verify` must find the whole database consistent.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Context
from fractions import Fraction
from typing import Any, Protocol

import pytest
from budget_testing import FakeClock
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from lomas_budget.ledger import BudgetLedger
from lomas_budget.model import Reservation, ReservationState
from lomas_common.errors import LomasError
from lomas_common.privacy import PrivacyDefinition, PrivacyLoss

APPROX, PURE, ZCDP = (
    PrivacyDefinition.APPROX_DP,
    PrivacyDefinition.PURE_DP,
    PrivacyDefinition.RHO_ZCDP,
)
SCALE = 10**18
_EXACT = Context(prec=100)
Vec = tuple[Fraction, Fraction, Fraction]  # epsilon, delta, rho
ZERO: Vec = (Fraction(0), Fraction(0), Fraction(0))

USERS = ["u0", "u1"]
DATASETS = ["d0", "d1"]
QUERIES = [f"q{index}" for index in range(8)]
EPSILONS = ["0", "0.1", "0.25", "1", "2.5", "0.1000000000000000001", "3"]
DELTAS = ["0", "0.00001", "0.0001", "0.0000100000000000009"]
RHOS = ["0", "0.01", "0.05", "0.5", "0.0500000000000000001", "1.25"]
TTLS = [5, 60]
GRANT_EPSILONS = ["2.5", "5", "10.0000000000000000009"]
GRANT_DELTAS = ["0.001", "0.0001"]
GRANT_RHOS = ["1", "2.5"]

MODEL_SETTINGS = settings(
    max_examples=75,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def up(value: Fraction) -> Fraction:
    return Fraction(math.ceil(value * SCALE), SCALE)


def down_vec(vec: Vec) -> Vec:
    """`down` of each component."""
    return (down(vec[0]), down(vec[1]), down(vec[2]))


def down(value: Fraction) -> Fraction:
    return Fraction(math.floor(value * SCALE), SCALE)


@dataclass(frozen=True)
class Loss:
    """A privacy loss as the model sees it: a definition and exact fractions."""

    definition: PrivacyDefinition
    vec: Vec


def loss_strategy(
    epsilons: list[str] = EPSILONS, deltas: list[str] = DELTAS, rhos: list[str] = RHOS
) -> st.SearchStrategy[Loss]:
    return st.one_of(
        st.builds(
            lambda e, d: Loss(APPROX, (Fraction(e), Fraction(d), Fraction(0))),
            st.sampled_from(epsilons),
            st.sampled_from(deltas),
        ),
        st.builds(
            lambda e: Loss(PURE, (Fraction(e), Fraction(0), Fraction(0))),
            st.sampled_from(epsilons),
        ),
        st.builds(
            lambda r: Loss(ZCDP, (Fraction(0), Fraction(0), Fraction(r))),
            st.sampled_from(rhos),
        ),
    )


def biased(loss: Loss, definition: PrivacyDefinition | None, pick: int) -> Loss:
    """Mostly a loss of `definition` (same numbers), so that most calls pass the definition check."""
    if definition is None or pick % 4 == 0 or loss.definition is definition:
        return loss
    epsilon = loss.vec[0] or loss.vec[2]
    if definition is APPROX:
        return Loss(APPROX, (epsilon, loss.vec[1], Fraction(0)))
    if definition is PURE:
        return Loss(PURE, (epsilon, Fraction(0), Fraction(0)))
    return Loss(ZCDP, (Fraction(0), Fraction(0), loss.vec[2] or loss.vec[0] / 10))


def grant_strategy() -> st.SearchStrategy[Loss]:
    return loss_strategy(GRANT_EPSILONS, GRANT_DELTAS, GRANT_RHOS)


def to_domain(loss: Loss) -> PrivacyLoss:
    """The same loss as the ledger's value type (the fractions have short decimal expansions)."""
    epsilon, delta, rho = (_EXACT.divide(f.numerator, f.denominator) for f in loss.vec)
    return PrivacyLoss(loss.definition, epsilon=epsilon, delta=delta, rho=rho)


def vec_of(loss: PrivacyLoss) -> Vec:
    return (Fraction(loss.epsilon), Fraction(loss.delta), Fraction(loss.rho))


def add(a: Vec, b: Vec, sign: int = 1) -> Vec:
    return (a[0] + sign * b[0], a[1] + sign * b[1], a[2] + sign * b[2])


def exceeds(a: Vec, b: Vec) -> bool:
    return any(x > y for x, y in zip(a, b, strict=True))


class Mismatch(Exception):
    """The model's 'this cost has no reading in that unit'."""


def convert(cost: Loss, unit: PrivacyDefinition) -> Vec:
    """The model's rule: costs round up; pure eps (or delta = 0) is rho = eps**2 / 2 in zCDP."""
    epsilon, delta, rho = (up(v) for v in cost.vec)
    if unit is APPROX and cost.definition is not ZCDP:
        return (epsilon, delta, Fraction(0))
    if unit is PURE and cost.definition is not ZCDP and delta == 0:
        return (epsilon, Fraction(0), Fraction(0))
    if unit is ZCDP and cost.definition is ZCDP:
        return (Fraction(0), Fraction(0), rho)
    if unit is ZCDP and delta == 0:
        return (Fraction(0), Fraction(0), up(epsilon * epsilon / 2))
    raise Mismatch


CAP_ACCEPTS = {APPROX: {APPROX, PURE}, PURE: {PURE}, ZCDP: {ZCDP, PURE}}


@dataclass
class MLedger:
    definition: PrivacyDefinition
    allocation: Vec
    spent: Vec
    reserved: Vec
    imported: Vec


@dataclass
class MReservation:
    key: tuple[str, str]
    cost: Vec  # in the ledger's unit
    state: str
    age: int = 0  # seconds the clock advanced since it was made
    ttl: int = 60


@dataclass
class MCap:
    definition: PrivacyDefinition
    cap: Vec
    used: Vec


@dataclass
class Replay:
    call: Callable[[], Any]
    first: Any


@dataclass
class ModelState:
    ledgers: dict[tuple[str, str], MLedger] = field(default_factory=dict)
    reservations: dict[str, MReservation] = field(default_factory=dict)
    frozen: set[str] = field(default_factory=set)
    caps: dict[str, MCap] = field(default_factory=dict)


class Transition(Protocol):
    """What mark_accessed, commit and release have in common."""

    def __call__(self, query_id: str, *, request_id: str | None = None) -> Reservation: ...


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self, ledger: BudgetLedger, clock: FakeClock) -> None:
        super().__init__()
        self.ledger = ledger
        self.clock = clock
        self.prefix = uuid.uuid4().hex[:8]  # each example has names of its own
        self.model = ModelState()
        self.replays: list[Replay] = []

    # names

    def user(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def dataset(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def qid(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def expect(self, call: Callable[[], Any], reason: str | None) -> Any:
        """Run `call`; it must succeed when `reason` is None, else fail with that reason."""
        if reason is None:
            return call()
        with pytest.raises(LomasError) as error:
            call()
        assert error.value.reason == reason, error.value
        return None

    def remember(self, call: Callable[[], Any], result: Any) -> None:
        self.replays.append(Replay(call, result))

    def request_id(self, use: bool) -> str | None:
        return uuid.uuid4().hex if use else None

    # rules

    @initialize(
        grants=st.lists(
            st.tuples(st.sampled_from(USERS), st.sampled_from(DATASETS), grant_strategy()),
            min_size=1,
            max_size=4,
        )
    )
    def grant_some(self, grants: list[tuple[str, str, Loss]]) -> None:
        for user, dataset, allocation in grants:
            self.open_ledger(user, dataset, allocation, None)

    @rule(
        user=st.sampled_from(USERS),
        dataset=st.sampled_from(DATASETS),
        allocation=grant_strategy() | loss_strategy(),
        imported=st.none() | st.sampled_from(["0.1", "1", "0.0000000000000000001"]),
    )
    def open_ledger(self, user: str, dataset: str, allocation: Loss, imported: str | None) -> None:
        key = (user, dataset)
        granted = down_vec(allocation.vec)
        definition = allocation.definition
        spent_loss = None
        spent: Vec = ZERO
        if imported is not None:
            spent_loss = Loss(PURE, (Fraction(imported), Fraction(0), Fraction(0)))
            spent = convert(spent_loss, definition)  # pure converts to every unit
        existing = self.model.ledgers.get(key)
        cap = self.model.caps.get(dataset)
        reason = None
        if exceeds(spent, granted):
            reason = "IMPORTED_SPEND_EXCEEDS_ALLOCATION"
        elif existing is not None:
            same = (
                existing.definition is definition
                and existing.allocation == granted
                and existing.imported == spent
            )
            reason = None if same else "LEDGER_ALREADY_EXISTS"
        elif cap is not None and definition not in CAP_ACCEPTS[cap.definition]:
            reason = "DATASET_CAP_DEFINITION_MISMATCH"
        elif cap is not None and exceeds(
            convert(Loss(definition, spent), cap.definition), add(cap.cap, cap.used, -1)
        ):
            reason = "DATASET_CAP_EXHAUSTED"
        result = self.expect(
            lambda: self.ledger.open_ledger(
                self.user(user),
                self.dataset(dataset),
                to_domain(allocation),
                to_domain(spent_loss) if spent_loss else None,
                "admin",
            ),
            reason,
        )
        if reason is None and existing is None:
            assert result.definition is definition
            self.model.ledgers[key] = MLedger(definition, granted, spent, ZERO, spent)
            if cap is not None and spent != ZERO:
                cap.used = add(cap.used, convert(Loss(definition, spent), cap.definition))

    def existing_key(self, pick: int, user: str, dataset: str) -> tuple[str, str]:
        """Mostly a ledger that exists (a random name now and then)."""
        keys = sorted(self.model.ledgers)
        return keys[pick % len(keys)] if keys and pick % 8 else (user, dataset)

    @rule(
        pick=st.integers(min_value=0, max_value=63),
        user=st.sampled_from(USERS),
        dataset=st.sampled_from(DATASETS),
        query=st.sampled_from(QUERIES),
        cost=loss_strategy(),
        ttl=st.sampled_from(TTLS),
        with_request_id=st.booleans(),
    )
    def reserve(
        self,
        pick: int,
        user: str,
        dataset: str,
        query: str,
        cost: Loss,
        ttl: int,
        with_request_id: bool,
    ) -> None:
        key = user, dataset = self.existing_key(pick, user, dataset)
        model = self.model.ledgers.get(key)
        cost = biased(cost, model.definition if model else None, pick // 8)
        existing = self.model.reservations.get(query)
        reason = None
        charge: Vec = ZERO
        if model is None:
            reason = "LEDGER_NOT_FOUND"
        else:
            try:
                charge = convert(cost, model.definition)
            except Mismatch:
                reason = "PRIVACY_DEFINITION_MISMATCH"
        cap = self.model.caps.get(dataset)
        fresh = False
        if reason is None and model is not None:
            if existing is not None:
                if existing.key != key or existing.cost != charge:
                    reason = "QUERY_ID_CONFLICT"
            elif user in self.model.frozen:
                reason = "USER_MAY_NOT_QUERY"
            elif exceeds(charge, add(add(model.allocation, model.spent, -1), model.reserved, -1)):
                reason = "PRIVACY_BUDGET_EXHAUSTED"
            elif cap is not None and exceeds(
                convert(Loss(model.definition, charge), cap.definition),
                add(cap.cap, cap.used, -1),
            ):
                reason = "DATASET_CAP_EXHAUSTED"
            else:
                fresh = True
        request_id = self.request_id(with_request_id)

        def call() -> Any:
            return self.ledger.reserve(
                self.qid(query),
                self.user(user),
                self.dataset(dataset),
                to_domain(cost),
                "gateway",
                ttl_seconds=ttl,
                request_id=request_id,
            )

        result = self.expect(call, reason)
        if reason is not None or model is None:
            return
        assert vec_of(result.cost) == charge
        if fresh:
            assert result.state is ReservationState.RESERVED
            self.model.reservations[query] = MReservation(key, charge, "reserved", 0, ttl)
            model.reserved = add(model.reserved, charge)
            if cap is not None:
                cap.used = add(cap.used, convert(Loss(model.definition, charge), cap.definition))
        else:
            assert existing is not None and result.state.value == existing.state
        if request_id:
            self.remember(call, result)

    def _settle(self, query: str, target: str) -> None:
        reservation = self.model.reservations[query]
        model = self.model.ledgers[reservation.key]
        reservation.state = target
        if target == "committed":
            model.spent = add(model.spent, reservation.cost)
        if target in ("committed", "released"):
            model.reserved = add(model.reserved, reservation.cost, -1)
        cap = self.model.caps.get(reservation.key[1])
        if target == "released" and cap is not None:
            charge = Loss(model.definition, reservation.cost)
            cap.used = add(cap.used, convert(charge, cap.definition), -1)

    @rule(
        pick=st.integers(min_value=0, max_value=63),
        query=st.sampled_from(QUERIES),
        action=st.sampled_from(["access", "commit", "release"]),
        with_request_id=st.booleans(),
    )
    def settle(self, pick: int, query: str, action: str, with_request_id: bool) -> None:
        known = sorted(self.model.reservations)
        if known and pick % 8:
            query = known[pick % len(known)]
        reservation = self.model.reservations.get(query)
        state = reservation.state if reservation else None
        reason = None
        target = state
        if reservation is None:
            reason = "RESERVATION_NOT_FOUND"
        elif action == "access":
            if state == "released":
                reason = "RESERVATION_RELEASED"
            elif state == "reserved":
                target = "accessed"
        elif action == "commit":
            if state == "released":
                reason = "RESERVATION_RELEASED"
            elif state in ("reserved", "accessed"):
                target = "committed"
        elif state in ("accessed", "committed"):
            reason = "DATA_ACCESSED"
        elif state == "reserved":
            target = "released"
        request_id = self.request_id(with_request_id)
        methods: dict[str, Transition] = {
            "access": self.ledger.mark_accessed,
            "commit": self.ledger.commit,
            "release": self.ledger.release,
        }
        method = methods[action]

        def call() -> Any:
            return method(self.qid(query), request_id=request_id)

        result = self.expect(call, reason)
        if reason is None:
            assert target is not None
            if target != state:
                self._settle(query, target)
            assert result.state.value == target
            if request_id:
                self.remember(call, result)

    @rule(
        pick=st.integers(min_value=0, max_value=63),
        user=st.sampled_from(USERS),
        dataset=st.sampled_from(DATASETS),
        allocation=grant_strategy() | loss_strategy(),
    )
    def adjust(self, pick: int, user: str, dataset: str, allocation: Loss) -> None:
        user, dataset = self.existing_key(pick, user, dataset)
        model = self.model.ledgers.get((user, dataset))
        allocation = biased(allocation, model.definition if model else None, pick // 8)
        target = down_vec(allocation.vec)
        reason = None
        if model is None:
            reason = "LEDGER_NOT_FOUND"
        elif allocation.definition is not model.definition:
            reason = "PRIVACY_DEFINITION_MISMATCH"
        elif exceeds(add(model.spent, model.reserved), target):
            reason = "ALLOCATION_BELOW_SPENT"
        self.expect(
            lambda: self.ledger.adjust_allocation(
                self.user(user), self.dataset(dataset), to_domain(allocation), "admin", "model"
            ),
            reason,
        )
        if reason is None and model is not None:
            model.allocation = target

    @rule(user=st.sampled_from(USERS), frozen=st.booleans())
    def freeze(self, user: str, frozen: bool) -> None:
        if frozen:
            state = self.ledger.freeze_user(self.user(user), "admin", "model")
            self.model.frozen.add(user)
        else:
            state = self.ledger.unfreeze_user(self.user(user), "admin", "model")
            self.model.frozen.discard(user)
        assert state.frozen is frozen

    @rule(
        pick=st.integers(min_value=0, max_value=63),
        dataset=st.sampled_from(DATASETS),
        cap=st.none() | grant_strategy() | loss_strategy(),
    )
    def set_cap(self, pick: int, dataset: str, cap: Loss | None) -> None:
        ledgers = {k: v for k, v in self.model.ledgers.items() if k[1] == dataset}
        if cap is not None and ledgers:
            cap = biased(cap, next(iter(ledgers.values())).definition, pick)
        reason = None
        used: Vec = ZERO
        bound: Vec = ZERO
        if cap is not None:
            bound = down_vec(cap.vec)
            if any(m.definition not in CAP_ACCEPTS[cap.definition] for m in ledgers.values()):
                reason = "DATASET_CAP_DEFINITION_MISMATCH"
            else:
                charges = [Loss(m.definition, m.imported) for m in ledgers.values()]
                charges += [
                    Loss(self.model.ledgers[r.key].definition, r.cost)
                    for r in self.model.reservations.values()
                    if r.key[1] == dataset and r.state != "released"
                ]
                for charge in charges:
                    if charge.vec != ZERO:
                        used = add(used, convert(charge, cap.definition))
                if exceeds(used, bound):
                    reason = "DATASET_CAP_BELOW_USED"
        result = self.expect(
            lambda: self.ledger.set_dataset_cap(
                self.dataset(dataset), to_domain(cap) if cap else None, "admin"
            ),
            reason,
        )
        if reason is not None:
            return
        if cap is None:
            self.model.caps.pop(dataset, None)
            assert result.cap is None
        else:
            self.model.caps[dataset] = MCap(cap.definition, bound, used)

    @rule(seconds=st.sampled_from([1, 4, 30, 61]))
    def expire(self, seconds: int) -> None:
        self.clock.advance(seconds)
        for reservation in self.model.reservations.values():
            reservation.age += seconds

    @rule()
    def sweep(self) -> None:
        expected_released, expected_committed = set(), set()
        for query, reservation in self.model.reservations.items():
            if reservation.age >= reservation.ttl and reservation.state in ("reserved", "accessed"):
                if reservation.state == "reserved":
                    expected_released.add(query)
                else:
                    expected_committed.add(query)
        report = self.ledger.sweep()
        mine = f"{self.prefix}-"
        assert {q.removeprefix(mine) for q in report.released if q.startswith(mine)} == (
            expected_released
        )
        assert {q.removeprefix(mine) for q in report.committed if q.startswith(mine)} == (
            expected_committed
        )
        for query in expected_released:
            self._settle(query, "released")
        for query in expected_committed:
            self._settle(query, "committed")

    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        if not self.replays:
            return
        replay = data.draw(st.sampled_from(self.replays))
        assert replay.call() == replay.first

    # invariants

    @invariant()
    def balances_match_the_model(self) -> None:
        for user in USERS:
            balances = {b.dataset: b for b in self.ledger.list_balances(self.user(user))[0]}
            expected = {d: m for (u, d), m in self.model.ledgers.items() if u == user}
            assert {name.removeprefix(f"{self.prefix}-") for name in balances} == set(expected)
            for dataset, model in expected.items():
                balance = balances[self.dataset(dataset)]
                assert balance.definition is model.definition
                assert vec_of(balance.allocation) == model.allocation
                assert vec_of(balance.spent) == model.spent
                assert vec_of(balance.reserved) == model.reserved
                assert balance.frozen == (user in self.model.frozen)
                assert balance.capped == (dataset in self.model.caps)
        for dataset in DATASETS:
            cap = self.ledger.get_dataset_cap(self.dataset(dataset))
            model_cap = self.model.caps.get(dataset)
            if model_cap is None:
                assert cap.cap is None
            else:
                assert cap.cap is not None and cap.used is not None
                assert vec_of(cap.cap) == model_cap.cap
                assert vec_of(cap.used) == model_cap.used

    def teardown(self) -> None:
        assert self.ledger.verify_all() == []


def test_the_ledger_follows_the_model(ledger: BudgetLedger, clock: FakeClock) -> None:
    class Bound(LedgerMachine):  # hypothesis builds the machine from a class without arguments
        def __init__(self) -> None:
            super().__init__(ledger, clock)

    run_state_machine_as_test(Bound, settings=MODEL_SETTINGS)

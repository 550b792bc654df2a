"""The platform end to end, through the real client, in both deployment modes."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import jwt
import pandas as pd
import pytest
import yaml
from mesh_testing import RunningMesh

from lomas.client import (
    AccessDenied,
    BudgetExhausted,
    Client,
    InvalidQuery,
    LomasError,
    Unauthenticated,
)
from lomas.client.admin import approx_dp, local_source
from lomas.common.v1 import dataset_pb2
from lomas_embedded import demo
from lomas_embedded.devkeys import DevIssuer
from lomas_executor.demo import penguin_metadata_text

COUNT = "SELECT COUNT(*) AS n FROM df"
GROUP_AVG = "SELECT species, AVG(bill_length_mm) AS avg_bill FROM df GROUP BY species"


def new_researcher(platform: RunningMesh, epsilon: str, delta: str) -> Client:
    """A fresh researcher with a PENGUIN grant, so each test owns its budget."""
    name = f"researcher-{uuid.uuid4().hex[:8]}"
    with platform.admin() as admin:
        admin.add_user(name)
        admin.grant(name, demo.DATASET, approx_dp(epsilon, delta))
    return platform.client(name)


def budget_state(client: Client) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    return client.get_total_spent_budget(), client.get_remaining_budget()


def test_metadata_is_the_registered_penguin_metadata(platform: RunningMesh) -> None:
    with platform.client() as client:
        metadata = client.get_dataset_metadata()
    expected = yaml.safe_load(penguin_metadata_text())
    assert metadata["rows"] == expected["rows"] == 344
    assert metadata["max_ids"] == 1
    assert (
        metadata["columns"]["species"]["categories"] == expected["columns"]["species"]["categories"]
    )
    assert metadata["columns"]["bill_length_mm"]["lower"] == 30.0


def test_dummy_data_is_seeded(platform: RunningMesh) -> None:
    with platform.client() as client:
        first = client.get_dummy_dataset(nb_rows=50, seed=7)
        again = client.get_dummy_dataset(nb_rows=50, seed=7)
        other = client.get_dummy_dataset(nb_rows=50, seed=8)
    assert len(first) == 50
    assert list(first.columns) == list(yaml.safe_load(penguin_metadata_text())["columns"])
    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)


def test_cost_and_dummy_queries_are_free_and_real_queries_charge_exactly(
    platform: RunningMesh,
) -> None:
    client = new_researcher(platform, "10", "0.005")
    before = budget_state(client)
    assert client.get_initial_budget() == {
        "initial_epsilon": Decimal("10"),
        "initial_delta": Decimal("0.005"),
    }

    cost = client.smartnoise_sql.cost(GROUP_AVG, epsilon=0.5, delta=1e-5)
    # AVG is a SUM and a COUNT, both Laplace (pure): basic composition charges 2 x 0.5 and no delta.
    assert cost == {"epsilon": Decimal("1.0"), "delta": Decimal(0)}
    assert budget_state(client) == before

    dummy = client.smartnoise_sql.query(GROUP_AVG, epsilon=0.5, delta=1e-5, dummy=True, nb_rows=200)
    assert set(dummy.columns) == {"species", "avg_bill"}
    assert budget_state(client) == before

    release = client.smartnoise_sql.query(GROUP_AVG, epsilon=0.5, delta=1e-5)
    assert set(release.columns) == {"species", "avg_bill"}
    assert sorted(release["species"]) == ["Adelie", "Chinstrap", "Gentoo"]  # every category
    assert release.attrs["cost"] == cost
    spent, remaining = budget_state(client)
    assert spent == {"total_spent_epsilon": cost["epsilon"], "total_spent_delta": cost["delta"]}
    assert remaining == {
        "remaining_epsilon": Decimal("10") - cost["epsilon"],
        "remaining_delta": Decimal("0.005") - cost["delta"],
    }

    archive = client.get_previous_queries()
    assert len(archive) == 1
    entry = archive[0]
    assert entry["query_id"] == release.attrs["query_id"]
    assert entry["query"]["smartnoise_sql"]["sql"] == GROUP_AVG
    assert entry["cost"] == cost
    pd.testing.assert_frame_equal(entry["result"], release, check_like=True)


def test_a_retry_with_the_same_request_id_returns_the_same_release_without_a_second_charge(
    platform: RunningMesh,
) -> None:
    client = new_researcher(platform, "10", "0.005")
    first = client.smartnoise_sql.query(COUNT, epsilon=1.0, delta=0, request_id="retry-1")
    spent = client.get_total_spent_budget()
    again = client.smartnoise_sql.query(COUNT, epsilon=1.0, delta=0, request_id="retry-1")
    pd.testing.assert_frame_equal(first, again)
    assert again.attrs["query_id"] == first.attrs["query_id"]
    assert client.get_total_spent_budget() == spent
    assert len(client.get_previous_queries()) == 1


def assert_refused(error: LomasError, code: str, reason: str) -> None:
    assert (error.code, error.reason) == (code, reason), error


def test_refusals_carry_code_and_reason_and_change_no_budget(platform: RunningMesh) -> None:
    client = new_researcher(platform, "1", "0.001")
    before = budget_state(client)

    with pytest.raises(AccessDenied) as unknown:
        Client(
            platform.target, token=client_token(platform, client), dataset="NO_SUCH_DATASET"
        ).smartnoise_sql.query(COUNT, epsilon=0.1, delta=0)
    assert_refused(unknown.value, "PERMISSION_DENIED", "DATASET_ACCESS_DENIED")

    with platform.admin() as admin:  # a dataset that exists, without a grant for this researcher
        try:
            admin.add_dataset(
                "PENGUIN_PRIVATE",
                local_source(platform.data_dir / "datasets" / "penguin.csv"),
                yaml.safe_load(penguin_metadata_text()),
                dataset_pb2.DATA_FORMAT_CSV,
            )
        except LomasError as error:
            assert error.reason == "DATASET_EXISTS"
    with pytest.raises(AccessDenied) as no_grant:
        Client(
            platform.target, token=client_token(platform, client), dataset="PENGUIN_PRIVATE"
        ).get_dataset_metadata()
    assert_refused(no_grant.value, "PERMISSION_DENIED", "DATASET_ACCESS_DENIED")
    assert no_grant.value.message == unknown.value.message.replace(
        "NO_SUCH_DATASET", "PENGUIN_PRIVATE"
    )

    with pytest.raises(BudgetExhausted) as exhausted:
        client.smartnoise_sql.query(COUNT, epsilon=5.0, delta=0)
    assert_refused(exhausted.value, "RESOURCE_EXHAUSTED", "PRIVACY_BUDGET_EXHAUSTED")
    assert exhausted.value.metadata["requestedEpsilon"] == "5"

    with pytest.raises(InvalidQuery) as invalid:
        client.smartnoise_sql.query("SELEC COUNT(*) FROM df", epsilon=0.1, delta=0)
    assert_refused(invalid.value, "INVALID_ARGUMENT", "QUERY_INVALID")

    assert budget_state(client) == before


def client_token(platform: RunningMesh, client: Client) -> str:
    return client._metadata[0][1].removeprefix("Bearer ")


def test_bad_tokens_are_refused(platform: RunningMesh, tmp_path: Path) -> None:
    client = new_researcher(platform, "1", "0.001")
    before = budget_state(client)
    claims = jwt.decode(client_token(platform, client), options={"verify_signature": False})
    cases = {
        "": ("UNAUTHENTICATED", "TOKEN_MISSING"),
        platform.token(claims["sub"], ttl_seconds=-60): ("UNAUTHENTICATED", "TOKEN_EXPIRED"),
        DevIssuer.load_or_create(tmp_path / "rogue").token(claims["sub"]): (
            "UNAUTHENTICATED",
            "TOKEN_INVALID",
        ),
        "not-a-jwt": ("UNAUTHENTICATED", "TOKEN_INVALID"),
    }
    for token, (code, reason) in cases.items():
        with pytest.raises(Unauthenticated) as refused:
            Client(platform.target, token=token, dataset=demo.DATASET).smartnoise_sql.query(
                COUNT, epsilon=0.1, delta=0
            )
        assert_refused(refused.value, code, reason)
    assert budget_state(client) == before


def test_researchers_cannot_call_admin_rpcs(platform: RunningMesh) -> None:
    from lomas.client.admin import AdminClient

    with AdminClient(platform.target, token=platform.token(demo.RESEARCHER)) as admin:
        with pytest.raises(AccessDenied) as refused:
            admin.add_user("mallory", admin=True)
    assert_refused(refused.value, "PERMISSION_DENIED", "ADMIN_ROLE_REQUIRED")
    with platform.admin() as admin:
        assert "mallory" not in {u.name for u in admin.list_users()}


def test_concurrent_queries_never_overspend(platform: RunningMesh) -> None:
    # COUNT at epsilon 1 and delta 0 costs exactly (1, 0), so (10.5, 1e-12) affords 10.
    client = new_researcher(platform, "10.5", "0.000000000001")
    assert client.smartnoise_sql.cost(COUNT, epsilon=1, delta=0) == {
        "epsilon": Decimal("1"),
        "delta": Decimal("0"),
    }

    def attempt(_: int) -> str:
        try:
            client.smartnoise_sql.query(COUNT, epsilon=1, delta=0, fresh=True)
            return "ok"
        except BudgetExhausted:
            return "exhausted"

    with ThreadPoolExecutor(max_workers=50) as pool:
        outcomes = list(pool.map(attempt, range(50)))
    assert outcomes.count("ok") == 10
    assert outcomes.count("exhausted") == 40
    assert client.get_total_spent_budget()["total_spent_epsilon"] == Decimal("10")
    assert client.get_remaining_budget()["remaining_epsilon"] == Decimal("0.5")
    assert len(client.get_previous_queries()) == 10


def test_asking_the_same_query_again_is_a_free_replay_and_fresh_pays_for_new_noise(
    platform: RunningMesh,
) -> None:
    client = new_researcher(platform, "10", "0.005")
    first = client.smartnoise_sql.query(GROUP_AVG, epsilon=0.5, delta=1e-5)
    assert first.attrs["replay"] is False
    spent = client.get_total_spent_budget()

    # The same query text: the stored release again, at no cost.
    again = client.smartnoise_sql.query(GROUP_AVG, epsilon=0.5, delta=1e-5)
    assert again.attrs["replay"] is True
    assert again.attrs["query_id"] == first.attrs["query_id"]
    assert again.attrs["cost"] == {"epsilon": Decimal(0), "delta": Decimal(0)}
    pd.testing.assert_frame_equal(again, first)
    assert client.get_total_spent_budget() == spent

    # Other parameters make another query: charged. Other white space is the same query, as the
    # SQL parser reads it (tests/e2e/test_query_promises.py has the other spellings).
    other = client.smartnoise_sql.query(GROUP_AVG, epsilon=0.6, delta=1e-5)
    assert other.attrs["replay"] is False
    spaced = client.smartnoise_sql.query(GROUP_AVG.replace(" ", "  "), epsilon=0.5, delta=1e-5)
    assert spaced.attrs["replay"] is True

    fresh = client.smartnoise_sql.query(GROUP_AVG, epsilon=0.5, delta=1e-5, fresh=True)
    assert fresh.attrs["replay"] is False
    assert fresh.attrs["query_id"] != first.attrs["query_id"]
    assert fresh.attrs["cost"] == first.attrs["cost"]
    assert not fresh["avg_bill"].equals(first["avg_bill"])  # a new draw of noise
    total = client.get_total_spent_budget()
    assert total["total_spent_epsilon"] == spent["total_spent_epsilon"] + (
        other.attrs["cost"]["epsilon"] + fresh.attrs["cost"]["epsilon"]
    )
    assert len(client.get_previous_queries()) == 3


def test_an_administrators_change_holds_from_the_next_call(platform: RunningMesh) -> None:
    """The gateway keeps grants it read (access.py) only until an administrator writes: a revoked
    grant is refused, and a cached cost estimate with it, on the very next call."""
    name = f"revoked-{uuid.uuid4().hex[:8]}"
    with platform.admin() as admin:
        admin.add_user(name)
        admin.grant(name, demo.DATASET, approx_dp("3", "0.001"))
    with platform.client(name) as client:
        for _ in range(3):  # read once, then kept
            client.get_dataset_metadata()
            client.smartnoise_sql.cost(COUNT, epsilon=0.5, delta=0)
        with platform.admin() as admin:
            admin.revoke(name, demo.DATASET)
        with pytest.raises(AccessDenied) as metadata:
            client.get_dataset_metadata()
        assert_refused(metadata.value, "PERMISSION_DENIED", "DATASET_ACCESS_DENIED")
        with pytest.raises(AccessDenied) as estimate:
            client.smartnoise_sql.cost(COUNT, epsilon=0.5, delta=0)
        assert_refused(estimate.value, "PERMISSION_DENIED", "DATASET_ACCESS_DENIED")
        with platform.admin() as admin:
            admin.grant(name, demo.DATASET, approx_dp("3", "0.001"))
        client.smartnoise_sql.cost(COUNT, epsilon=0.5, delta=0)


def test_may_query_and_the_ledger_freeze_are_one_switch(platform: RunningMesh) -> None:
    """A user created unable to query (Lomas `may_query: false`) is frozen in the ledger too;
    unfreezing lets them query, freezing stops them again, and the user record follows."""
    name = f"researcher-{uuid.uuid4().hex[:8]}"

    def may_query() -> bool:
        with platform.admin() as admin:
            user = next(u for u in admin.list_users() if u.name == name)
            ledgers = admin.budgets(name)
        assert all(ledger.frozen is not user.may_query for ledger in ledgers)
        return bool(user.may_query)

    with platform.admin() as admin:
        assert admin.add_user(name, may_query=False).may_query is False
        admin.grant(name, demo.DATASET, approx_dp("3", "0.001"))
    assert may_query() is False
    with platform.client(name) as client:
        with pytest.raises(AccessDenied) as refused:
            client.smartnoise_sql.query(COUNT, epsilon=0.5, delta=0)
        assert refused.value.reason == "USER_MAY_NOT_QUERY"
        assert client.get_remaining_budget()["remaining_epsilon"] == Decimal("3")
        with platform.admin() as admin:
            admin.unfreeze_user(name, reason="approved")
        assert may_query() is True
        client.smartnoise_sql.query(COUNT, epsilon=0.5, delta=0)
        with platform.admin() as admin:
            admin.freeze_user(name, reason="review")
        assert may_query() is False
        with pytest.raises(AccessDenied) as frozen:
            client.smartnoise_sql.query(COUNT, epsilon=0.25, delta=0)
        assert frozen.value.reason == "USER_MAY_NOT_QUERY"
    with platform.admin() as admin, pytest.raises(LomasError) as unknown:
        admin.freeze_user(f"nobody-{uuid.uuid4().hex[:8]}")
    assert unknown.value.reason == "USER_NOT_FOUND"

"""Per-user limits and timing protection, on a second gateway started with small limits."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from mesh_testing import RunningMesh

from lomas.client import BudgetExhausted, Client, LomasError
from lomas.client.admin import approx_dp
from lomas_embedded import demo
from lomas_embedded.ports import free_port

COUNT = "SELECT COUNT(*) AS n FROM df"


@pytest.fixture(scope="module")
def limited(platform: RunningMesh) -> Iterator[str]:
    """A gateway beside the main one: 20 requests/s, 1 query at a time, responses padded to 0.5 s."""
    target = f"127.0.0.1:{free_port()}"
    service = platform.mesh.start_service(
        "gateway-limited",
        listen=target,
        gateway_env={
            "LOMAS_RATE_LIMIT_PER_SECOND": "20",
            "LOMAS_MAX_CONCURRENT_QUERIES_PER_USER": "1",
            "LOMAS_RESPONSE_MIN_SECONDS": "0.5",
            "LOMAS_RESPONSE_QUANTUM_SECONDS": "0.25",
            "LOMAS_MAX_QUERY_CHARS": "1000",
            "LOMAS_MAX_DUMMY_ROWS": "500",
            "LOMAS_MAX_MESSAGE_BYTES": str(1024 * 1024),
        },
    )
    platform.mesh.wait_healthy(service, 60)
    yield target
    platform.mesh.kill("gateway-limited")


def researcher(platform: RunningMesh, target: str) -> Client:
    name = f"limited-{uuid.uuid4().hex[:6]}"
    with platform.admin() as admin:
        admin.add_user(name)
        admin.grant(name, demo.DATASET, approx_dp("100", "0.001"))
    return Client(target, token=platform.token(name), dataset=demo.DATASET)


@pytest.mark.parametrize("platform", ["embedded"], indirect=True)
def test_request_rate_is_limited_per_user(platform: RunningMesh, limited: str) -> None:
    client = researcher(platform, limited)
    refusals = []
    with ThreadPoolExecutor(max_workers=8) as pool:

        def budget(_: int) -> None:
            try:
                client.get_remaining_budget()
            except LomasError as error:
                refusals.append(error)

        list(pool.map(budget, range(60)))
    assert refusals, "60 requests in well under 3 seconds must exceed 20 per second"
    assert {(e.code, e.reason) for e in refusals} == {("RESOURCE_EXHAUSTED", "RATE_LIMITED")}
    other = researcher(platform, limited)  # another user is not affected
    assert other.get_remaining_budget()["remaining_epsilon"] == 100


@pytest.mark.parametrize("platform", ["embedded"], indirect=True)
def test_concurrent_queries_are_limited_and_responses_padded(
    platform: RunningMesh, limited: str
) -> None:
    client = researcher(platform, limited)
    start = time.monotonic()
    client.smartnoise_sql.query(COUNT, epsilon=0.1, delta=0, dummy=True)
    elapsed = time.monotonic() - start
    assert elapsed >= 0.5  # padded to the minimum (and to a 0.25 s quantum)

    def query(_: int) -> str:
        try:
            client.smartnoise_sql.query(COUNT, epsilon=0.1, delta=0, fresh=True)
            return "ok"
        except BudgetExhausted:
            return "exhausted"
        except LomasError as error:
            return error.reason

    with ThreadPoolExecutor(max_workers=3) as pool:
        outcomes = list(pool.map(query, range(3)))
    assert outcomes.count("ok") >= 1
    assert "TOO_MANY_CONCURRENT_QUERIES" in outcomes
    charged = client.get_total_spent_budget()["total_spent_epsilon"]
    assert charged == outcomes.count("ok") * client.smartnoise_sql.cost(COUNT, 0.1, 0)["epsilon"]


@pytest.mark.parametrize("platform", ["embedded"], indirect=True)
def test_size_limits_give_clear_errors_and_cost_nothing(
    platform: RunningMesh, limited: str
) -> None:
    client = researcher(platform, limited)
    before = client.get_total_spent_budget()
    long_query = COUNT + " WHERE " + " OR ".join(["species = 'Adelie'"] * 60)
    with pytest.raises(LomasError) as too_long:
        client.smartnoise_sql.query(long_query, epsilon=0.1, delta=0)
    assert (too_long.value.code, too_long.value.reason) == ("INVALID_ARGUMENT", "QUERY_TOO_LONG")
    with pytest.raises(LomasError) as too_many_rows:
        client.get_dummy_dataset(nb_rows=501)
    assert (too_many_rows.value.code, too_many_rows.value.reason) == (
        "INVALID_ARGUMENT",
        "DUMMY_ROWS_OUT_OF_RANGE",
    )
    with pytest.raises(LomasError) as too_big:  # a 2 MiB message to a gateway that takes 1 MiB
        client.smartnoise_sql.query("x" * (2 * 1024 * 1024), epsilon=0.1, delta=0)
    assert too_big.value.code == "RESOURCE_EXHAUSTED"
    assert client.get_total_spent_budget() == before

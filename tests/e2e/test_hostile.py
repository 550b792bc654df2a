"""The hostile suite: every attack of the privacy-boundary review, through the public API of a real mesh,
with the refusal it must get and the budget (and the other user's service) it must leave alone.

Each class of the review has its test here; the long variant that floods the mesh and reports peak
memory and latencies is `bench/hostile_floods.py`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import grpc
import opendp.prelude as dp
import pytest
import yaml
from google.rpc import error_details_pb2
from mesh_testing import RunningMesh, status_of

from lomas.client import Client, LomasError
from lomas.client.admin import approx_dp, local_source
from lomas.common.v1 import dataset_pb2
from lomas.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from lomas_embedded import demo
from lomas_executor.demo import make_penguin_like, penguin_metadata_text

dp.enable_features("contrib")

COUNT = "SELECT COUNT(*) AS n FROM df"
SUMS = ", SUM(bill_length_mm) AS s1, SUM(body_mass_g) AS s2, SUM(flipper_length_mm) AS s3"
# The same characters, the newline moved: in the first the sums are a comment, in the second they run.
COMMENTED = f"SELECT COUNT(*) AS n -- {SUMS}\nFROM df"
EXECUTED = f"SELECT COUNT(*) AS n --\n{SUMS} FROM df"

pytestmark = pytest.mark.parametrize("platform", ["embedded"], indirect=True)


def named_researcher(
    platform: RunningMesh, epsilon: str = "50", delta: str = "0.01"
) -> tuple[str, Client]:
    name = f"hostile-{uuid.uuid4().hex[:8]}"
    with platform.admin() as admin:
        admin.add_user(name)
        admin.grant(name, demo.DATASET, approx_dp(epsilon, delta))
    return name, Client(platform.target, token=platform.token(name), dataset=demo.DATASET)


def researcher(platform: RunningMesh, epsilon: str = "50", delta: str = "0.01") -> Client:
    return named_researcher(platform, epsilon, delta)[1]


def spent(client: Client) -> dict[str, Decimal]:
    return client.get_total_spent_budget()


def refusal(call: Callable[[], object]) -> LomasError:
    with pytest.raises(LomasError) as caught:
        call()
    return caught.value


# -- 1. the charge comes from exactly what runs ---------------------------------------------------


def test_the_comment_trick_is_charged_the_executed_query(platform: RunningMesh) -> None:
    client = researcher(platform)
    one = client.smartnoise_sql.cost(COMMENTED, epsilon="1", delta="0")
    four = client.smartnoise_sql.cost(EXECUTED, epsilon="1", delta="0")
    assert four["epsilon"] == 4 * one["epsilon"]
    # The cheap text first (estimated and run), then its twin: no cache and no replay may confuse them.
    assert list(client.smartnoise_sql.query(COMMENTED, epsilon="1", delta="0").columns) == ["n"]
    release = client.smartnoise_sql.query(EXECUTED, epsilon="1", delta="0")
    assert list(release.columns) == ["n", "s1", "s2", "s3"]
    assert not release.attrs["replay"]
    assert release.attrs["cost"]["epsilon"] == four["epsilon"]
    assert spent(client)["total_spent_epsilon"] == one["epsilon"] + four["epsilon"]


def test_one_caller_cannot_set_what_another_pays(platform: RunningMesh) -> None:
    first, second = researcher(platform), researcher(platform)
    first.smartnoise_sql.cost(COMMENTED, epsilon="1", delta="0")
    first.smartnoise_sql.query(COMMENTED, epsilon="1", delta="0")
    release = second.smartnoise_sql.query(EXECUTED, epsilon="1", delta="0")
    assert list(release.columns) == ["n", "s1", "s2", "s3"]
    assert spent(second)["total_spent_epsilon"] == Decimal(4)


def test_a_budget_too_small_for_the_executed_query_refuses_it(platform: RunningMesh) -> None:
    client = researcher(platform, epsilon="2")
    client.smartnoise_sql.cost(COMMENTED, epsilon="1", delta="0")
    error = refusal(lambda: client.smartnoise_sql.query(EXECUTED, epsilon="1", delta="0"))
    assert (error.code, error.reason) == ("RESOURCE_EXHAUSTED", "PRIVACY_BUDGET_EXHAUSTED")
    assert spent(client)["total_spent_epsilon"] == 0


# -- 2. no value leaves the data without noise ----------------------------------------------------


def test_group_by_a_column_without_public_categories_is_refused_free(platform: RunningMesh) -> None:
    client = researcher(platform)
    sql = "SELECT bill_length_mm, COUNT(*) AS n FROM df GROUP BY bill_length_mm"
    for call in (
        lambda: client.smartnoise_sql.cost(sql, epsilon="1", delta="0"),
        lambda: client.smartnoise_sql.query(sql, epsilon="1", delta="0", dummy=True),
        lambda: client.smartnoise_sql.query(sql, epsilon="1", delta="0"),
    ):
        error = refusal(call)
        assert error.code == "INVALID_ARGUMENT"
        assert error.reason == "GROUP_KEYS_NOT_PUBLIC"
    assert spent(client)["total_spent_epsilon"] == 0


def test_group_by_public_categories_lists_every_category(platform: RunningMesh) -> None:
    client = researcher(platform)
    sql = "SELECT species, COUNT(*) AS n FROM df WHERE species <> 'Adelie' GROUP BY species"
    release = client.smartnoise_sql.query(sql, epsilon="1", delta="0")
    assert sorted(release["species"]) == ["Adelie", "Chinstrap", "Gentoo"]
    two_keys = client.smartnoise_sql.query(
        "SELECT species, sex, COUNT(*) AS n FROM df WHERE sex = 'MALE' GROUP BY species, sex",
        epsilon="1",
        delta="0",
    )
    assert len(two_keys) == 3 * 2  # every (species, sex) pair, FEMALE included


# -- 3. free calls cannot take a service down -----------------------------------------------------


def resize_measurement(size: int) -> dp.Measurement:
    columns = list(yaml.safe_load(penguin_metadata_text())["columns"])
    measurement: dp.Measurement = (
        dp.t.make_split_dataframe(separator=",", col_names=columns)
        >> dp.t.make_select_column(key="bill_length_mm", TOA=str)
        >> dp.t.then_cast_default(TOA=float)
        >> dp.t.then_impute_constant(40.0)
        >> dp.t.then_clamp(bounds=(30.0, 65.0))
        >> dp.t.then_resize(size=size, constant=40.0)
        >> dp.t.then_mean()
        >> dp.m.then_laplace(scale=1.0)
    )
    return measurement


def test_an_enormous_resize_is_refused_before_allocation(platform: RunningMesh) -> None:
    client = researcher(platform)
    measurement = resize_measurement(10**12)
    for call in (
        lambda: client.opendp.cost(measurement),
        lambda: client.opendp.query(measurement, dummy=True),
        lambda: client.opendp.query(measurement),
    ):
        error = refusal(call)
        assert (error.code, error.reason) == ("INVALID_ARGUMENT", "QUERY_LIMIT_EXCEEDED")
    assert spent(client)["total_spent_epsilon"] == 0
    # The executor is still there, and a sensible resize runs.
    assert client.opendp.query(resize_measurement(400), dummy=True).shape == (1, 1)


# -- 6. what can never run is refused before the charge -------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT COUNT(*) AS n FROM df WHERE species = 'a\x00b'",
        "SELECT COUNT(*) AS n FROM df WHERE bill_length_mm > " + "9" * 400,
        "SELECT COUNT(*) AS n FROM df WHERE " + "(" * 200 + "bill_length_mm > 40" + ")" * 200,
        "SELECT COUNT(*) AS n FROM df WHERE " + "(" * 10_000 + "bill_length_mm > 40" + ")" * 10_000,
        # smartnoise-sql's lexer reads \' as an escaped quote, SQLite as the end of the literal: the
        # UNION would reach the engine unparsed and release an injected, unclamped count.
        "SELECT COUNT(*) AS n FROM df WHERE species = 'x\\' OR 1=1) UNION ALL "
        "SELECT 1000000 AS n -- '",
    ],
    ids=["nul-byte", "400-digits", "200-parentheses", "10000-parentheses", "backslash-quote"],
)
def test_queries_that_can_never_run_are_refused_free(platform: RunningMesh, sql: str) -> None:
    client = researcher(platform)
    for call in (
        lambda: client.smartnoise_sql.cost(sql, epsilon="1", delta="0"),
        lambda: client.smartnoise_sql.query(sql, epsilon="1", delta="0"),
    ):
        error = refusal(call)
        assert error.code == "INVALID_ARGUMENT"
        assert error.reason in ("QUERY_LIMIT_EXCEEDED", "QUERY_INVALID")
    assert spent(client)["total_spent_epsilon"] == 0
    assert not client.get_previous_queries()


# -- 7. the smaller ones --------------------------------------------------------------------------


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    for detail in status_of(error).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError("the error carries no ErrorInfo")


def test_garbage_page_tokens_are_invalid_arguments(platform: RunningMesh) -> None:
    name, client = named_researcher(platform)
    client.smartnoise_sql.query(COUNT, epsilon="0.1", delta="0")
    with grpc.insecure_channel(platform.target) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        metadata = (("authorization", f"Bearer {platform.token(name)}"),)
        for token in ("1e999", "x" * 10_000, "-1", "\u0661", "eyJvZmZzZXQiOiAxZTk5OX0="):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListQueries(
                    gateway_pb2.ListQueriesRequest(dataset=demo.DATASET, page_token=token),
                    metadata=metadata,
                )
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_info(caught.value).reason == "PAGE_TOKEN_INVALID"


def test_an_undecodable_request_is_an_invalid_argument(platform: RunningMesh) -> None:
    name, client = named_researcher(platform)
    with grpc.insecure_channel(platform.target) as channel:
        # No serializers: the raw bytes go out as they are.
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/lomas.gateway.v1.GatewayService/ExecuteQuery"
        )
        with pytest.raises(grpc.RpcError) as caught:
            call(
                b"\xff\xff\xff\xff\x0f",
                metadata=(("authorization", f"Bearer {platform.token(name)}"),),
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "REQUEST_UNDECODABLE"
    assert spent(client)["total_spent_epsilon"] == 0


@pytest.mark.parametrize("epsilon", ["\u0661", "\u0661.\u0665", "1\u00a0", "\uff11"])
def test_decimals_are_ascii_only(platform: RunningMesh, epsilon: str) -> None:
    client = researcher(platform)
    error = refusal(lambda: client.smartnoise_sql.query(COUNT, epsilon=epsilon, delta="0"))
    assert error.code == "INVALID_ARGUMENT"
    assert spent(client)["total_spent_epsilon"] == 0


def test_a_float_epsilon_is_charged_at_least_what_the_library_runs(platform: RunningMesh) -> None:
    client = researcher(platform)
    release = client.smartnoise_sql.query(COUNT, epsilon=0.1, delta=0)
    # 0.1 as a binary float is 0.1000000000000000055...: the library must not run with more than
    # the decimal charged.
    assert release.attrs["cost"]["epsilon"] == Decimal("0.1")
    assert spent(client)["total_spent_epsilon"] == Decimal("0.1")


# -- 4 and 5. one user's load does not starve another's query -------------------------------------


@pytest.fixture(scope="module")
def larger_dataset(platform: RunningMesh, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 200,000-row penguin-like dataset, so a GROUP BY takes tens of milliseconds."""
    name = f"PENGUIN_200K_{uuid.uuid4().hex[:6]}"
    path: Path = tmp_path_factory.mktemp("larger") / "penguin_200k.csv"
    make_penguin_like(200_000, seed=7).to_csv(path, index=False)
    metadata = yaml.safe_load(penguin_metadata_text())
    metadata["rows"] = 200_000
    with platform.admin() as admin:
        admin.add_dataset(name, local_source(path), metadata, dataset_pb2.DATA_FORMAT_CSV)
    return name


def researcher_on(platform: RunningMesh, dataset: str) -> Client:
    name = f"hostile-{uuid.uuid4().hex[:8]}"
    with platform.admin() as admin:
        admin.add_user(name)
        admin.grant(name, dataset, approx_dp("1000", "0.5"))
    return Client(platform.target, token=platform.token(name), dataset=dataset)


SLOW = (
    "SELECT species, island, AVG(bill_length_mm) AS a, AVG(body_mass_g) AS b, "
    "AVG(flipper_length_mm) AS c FROM df GROUP BY species, island"
)


def test_one_users_backlog_does_not_starve_another_users_query(
    platform: RunningMesh, larger_dataset: str
) -> None:
    heavy, light = researcher_on(platform, larger_dataset), researcher_on(platform, larger_dataset)
    light.smartnoise_sql.query(COUNT, epsilon="0.1", delta="0", fresh=True)  # warm the workers
    finished: list[float] = []
    lock = threading.Lock()

    def slow(_: int) -> None:
        heavy.smartnoise_sql.query(SLOW, epsilon="0.1", delta="0", fresh=True)
        with lock:
            finished.append(time.monotonic())

    with ThreadPoolExecutor(max_workers=64) as pool:
        backlog = [pool.submit(slow, i) for i in range(64)]
        time.sleep(1.0)  # the backlog is queued
        light.smartnoise_sql.query(COUNT, epsilon="0.1", delta="0", fresh=True)
        with lock:
            done_before = len(finished)
        for future in backlog:
            future.result()
    # Fair queuing: the light user's one query went ahead of the heavy user's queued ones.
    assert done_before <= 16, f"{done_before} of the backlog's 64 queries finished first"


def test_a_flood_of_free_calls_leaves_another_users_query_answering(platform: RunningMesh) -> None:
    flooder, other = researcher(platform), researcher(platform)
    refusals: list[str] = []

    def dummy(_: int) -> None:
        try:
            flooder.smartnoise_sql.query(
                "SELECT species, AVG(body_mass_g) AS m FROM df GROUP BY species",
                epsilon="1",
                delta="0",
                dummy=True,
                nb_rows=500_000,
            )
        except LomasError as error:
            refusals.append(error.reason)

    def estimate(_: int) -> None:
        nested = "SELECT COUNT(*) AS n FROM df WHERE " + "(" * 5000 + "1 = 1" + ")" * 5000
        try:
            flooder.smartnoise_sql.cost(nested, epsilon="1", delta="0")
        except LomasError as error:
            refusals.append(error.reason)

    with ThreadPoolExecutor(max_workers=24) as pool:
        flood = [pool.submit(dummy, i) for i in range(12)] + [
            pool.submit(estimate, i) for i in range(12)
        ]
        time.sleep(0.5)
        release = other.smartnoise_sql.query(COUNT, epsilon="0.1", delta="0")
        for future in flood:
            future.result()
    assert list(release.columns) == ["n"]
    assert spent(flooder)["total_spent_epsilon"] == 0
    assert set(refusals) <= {
        "TOO_MANY_CONCURRENT_CALLS",
        "RATE_LIMITED",
        "QUERY_LIMIT_EXCEEDED",
        "FREE_CALL_LIMIT_EXCEEDED",
        "FREE_CALLS_BUSY",
    }


def test_a_request_id_is_bound_to_its_query(platform: RunningMesh) -> None:
    client = researcher(platform)
    first = client.smartnoise_sql.query(COUNT, epsilon="0.5", delta="0", request_id="bound-1")
    again = client.smartnoise_sql.query(COUNT, epsilon="0.5", delta="0", request_id="bound-1")
    assert again.attrs["query_id"] == first.attrs["query_id"]
    other = "SELECT COUNT(*) AS m FROM df"
    error = refusal(
        lambda: client.smartnoise_sql.query(other, epsilon="0.5", delta="0", request_id="bound-1")
    )
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "REQUEST_ID_REUSED")
    # Sent together, one id with two queries: one runs, the other is refused; one charge.
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(
            pool.map(
                lambda sql: _reason_of(
                    lambda: client.smartnoise_sql.query(
                        sql, epsilon="0.5", delta="0", request_id="bound-2", fresh=True
                    )
                ),
                [COUNT, other],
            )
        )
    assert sorted(outcomes) == ["", "REQUEST_ID_REUSED"]
    assert spent(client)["total_spent_epsilon"] == Decimal("1.0")


def _reason_of(call: Callable[[], object]) -> str:
    try:
        call()
    except LomasError as error:
        return error.reason
    return ""

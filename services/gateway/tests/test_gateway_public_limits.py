"""Through the public API of a real gateway (a local mesh of processes, no worker needed): free
calls are bounded per user, page tokens are validated, client decimals are ASCII."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from lomas.client.admin import approx_dp
from lomas.common.v1 import query_pb2
from lomas.gateway.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from lomas_embedded import demo
from lomas_embedded.local import SYSTEM_REDIS_URL, LocalMesh, local_mesh

COUNT = "SELECT COUNT(*) AS n FROM df"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    with local_mesh(
        tmp_path_factory.mktemp("gateway-limits"),
        redis_url=SYSTEM_REDIS_URL,
        worker_count=0,
        gateway_env={
            "LOMAS_RATE_LIMIT_PER_SECOND": "20",
            "LOMAS_MAX_CONCURRENT_FREE_CALLS_PER_USER": "1",
        },
    ) as running:
        yield running


def call(mesh: LocalMesh, subject: str, method: str, request: Any, admin: bool = False) -> Any:
    # A large dummy dataset is bigger than gRPC's default 4 MiB receive limit.
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(mesh.target, options=options) as channel:
        stub: Any = (
            admin_pb2_grpc.AdminServiceStub(channel)
            if admin
            else gateway_pb2_grpc.GatewayServiceStub(channel)
        )
        metadata = (("authorization", f"Bearer {mesh.token(subject)}"),)
        return getattr(stub, method)(request, metadata=metadata, timeout=60)


def refusal(error: grpc.RpcError) -> tuple[str, str, bool]:
    """(code, ErrorInfo.reason, whether a RetryInfo came along)."""
    assert isinstance(error, grpc.Call)  # errors of unary calls are both
    reason, retry = "", False
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason = info.reason
                retry = retry or detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    return error.code().name, reason, retry


def refused(mesh: LocalMesh, subject: str, method: str, request: Any, **kw: Any) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as error:
        call(mesh, subject, method, request, **kw)
    code, reason, _ = refusal(error.value)
    return code, reason


def new_researcher(mesh: LocalMesh, name: str) -> str:
    with mesh.admin() as admin:
        admin.add_user(name)
        admin.grant(name, demo.DATASET, approx_dp("10", "0.001"))
    return name


def test_free_calls_are_bounded_per_user_with_retry_info(mesh: LocalMesh) -> None:
    slow = gateway_pb2.GetDummyDatasetRequest(dataset=demo.DATASET, row_count=300_000)
    estimate = gateway_pb2.EstimateQueryCostRequest(
        dataset=demo.DATASET,
        query=query_pb2.Query(
            smartnoise_sql=query_pb2.SmartnoiseSqlQuery(sql=COUNT, epsilon="1", delta="0")
        ),
    )

    def attempt(request: Any) -> tuple[str, str, bool] | None:
        method = (
            "GetDummyDataset"
            if isinstance(request, gateway_pb2.GetDummyDatasetRequest)
            else "EstimateQueryCost"
        )
        try:
            call(mesh, demo.RESEARCHER, method, request)
        except grpc.RpcError as error:
            return refusal(error)
        return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(attempt, [slow, slow, estimate, estimate]))
    refusals = [o for o in outcomes if o is not None]
    assert refusals, "four free calls at once must exceed a cap of one"
    assert set(refusals) == {("RESOURCE_EXHAUSTED", "TOO_MANY_CONCURRENT_CALLS", True)}
    assert any(o is None for o in outcomes)
    # Nothing is held afterwards, and another user was never affected.
    call(mesh, demo.RESEARCHER, "EstimateQueryCost", estimate)
    other = new_researcher(mesh, "free-calls-other")
    call(mesh, other, "EstimateQueryCost", estimate)


def test_free_calls_count_against_the_request_rate(mesh: LocalMesh) -> None:
    user = new_researcher(mesh, "free-calls-rate")
    estimate = gateway_pb2.EstimateQueryCostRequest(
        dataset=demo.DATASET,
        query=query_pb2.Query(
            smartnoise_sql=query_pb2.SmartnoiseSqlQuery(sql=COUNT, epsilon="1", delta="0")
        ),
    )
    seen: set[tuple[str, str, bool]] = set()
    metadata = (("authorization", f"Bearer {mesh.token(user)}"),)
    with grpc.insecure_channel(mesh.target) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        for _ in range(100):  # one at a time (never over the concurrency cap), on one channel
            try:
                stub.EstimateQueryCost(estimate, metadata=metadata, timeout=60)
            except grpc.RpcError as error:
                seen.add(refusal(error))
    assert seen == {("RESOURCE_EXHAUSTED", "RATE_LIMITED", True)}


def test_page_tokens_are_validated_at_the_gateway(mesh: LocalMesh) -> None:
    hostile = base64.urlsafe_b64encode(b'{"offset": 1e999}').decode()
    for method, request in (
        ("ListAccessibleDatasets", gateway_pb2.ListAccessibleDatasetsRequest(page_token=hostile)),
        (
            "ListQueries",
            gateway_pb2.ListQueriesRequest(dataset=demo.DATASET, page_token=hostile),
        ),
        (
            "ListAccessibleDatasets",
            gateway_pb2.ListAccessibleDatasetsRequest(page_token="x" * 5000),
        ),
    ):
        assert refused(mesh, demo.RESEARCHER, method, request) == (
            "INVALID_ARGUMENT",
            "PAGE_TOKEN_INVALID",
        )
    assert refused(
        mesh, demo.ADMIN, "ListUsers", admin_pb2.ListUsersRequest(page_token=hostile), admin=True
    ) == ("INVALID_ARGUMENT", "PAGE_TOKEN_INVALID")

    # A real token of the admin's user list is refused for another list (the dataset list) and
    # for another user's grants.
    with mesh.admin() as admin:
        for index in range(3):
            admin.add_user(f"paging-{index}")
    users = call(mesh, demo.ADMIN, "ListUsers", admin_pb2.ListUsersRequest(page_size=1), admin=True)
    assert users.next_page_token
    assert refused(
        mesh,
        demo.ADMIN,
        "ListDatasets",
        admin_pb2.ListDatasetsRequest(page_token=users.next_page_token),
        admin=True,
    ) == ("INVALID_ARGUMENT", "PAGE_TOKEN_INVALID")
    following = call(
        mesh,
        demo.ADMIN,
        "ListUsers",
        admin_pb2.ListUsersRequest(page_size=1, page_token=users.next_page_token),
        admin=True,
    )
    assert following.users[0].name != users.users[0].name
    assert refused(
        mesh,
        demo.RESEARCHER,
        "ListAccessibleDatasets",
        gateway_pb2.ListAccessibleDatasetsRequest(page_token=users.next_page_token),
    ) == ("INVALID_ARGUMENT", "PAGE_TOKEN_INVALID")
    assert refused(
        mesh,
        demo.RESEARCHER,
        "ListAccessibleDatasets",
        gateway_pb2.ListAccessibleDatasetsRequest(page_size=-1),
    ) == ("INVALID_ARGUMENT", "PAGE_SIZE_INVALID")


def test_a_non_ascii_epsilon_is_an_invalid_query(mesh: LocalMesh) -> None:
    estimate = gateway_pb2.EstimateQueryCostRequest(
        dataset=demo.DATASET,
        query=query_pb2.Query(
            smartnoise_sql=query_pb2.SmartnoiseSqlQuery(sql=COUNT, epsilon="\u0661", delta="0")
        ),
    )
    assert refused(mesh, demo.RESEARCHER, "EstimateQueryCost", estimate) == (
        "INVALID_ARGUMENT",
        "QUERY_INVALID",
    )

"""The handwritten client against an in-process gateway-like gRPC server on 127.0.0.1: what it
sends (token, request ids, pages), what it makes of the answers (frames, exact decimals, typed
errors) and how the admin client loads Lomas collection files. The fake servicers answer from
memory; the real gateway is exercised end to end in tests/e2e.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent import futures
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest
from google.protobuf import any_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from lomas.admin.v1 import resources_pb2
from lomas.client import AlreadyExists, BudgetExhausted, Client
from lomas.client.admin import AdminClient, url_source
from lomas.common.v1 import dataset_pb2, privacy_pb2
from lomas.gateway.v1 import admin_pb2, gateway_pb2

TOKEN = "token-of-alice"


def _abort(context: grpc.ServicerContext, code: int, reason: str, metadata: dict[str, str]) -> None:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="lomas.mesh", metadata=metadata))
    status = status_pb2.Status(code=code, message="refused", details=[info])
    context.abort_with_status(rpc_status.to_status(status))


def _release() -> bytes:
    table = pa.table({"n": [42]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


class FakeGateway:
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.executed: list[gateway_pb2.ExecuteQueryRequest] = []

    def _seen(self, context: grpc.ServicerContext) -> None:
        for key, value in context.invocation_metadata():
            if key == "authorization" and isinstance(value, str):
                self.tokens.append(value)

    def ListAccessibleDatasets(
        self, request: gateway_pb2.ListAccessibleDatasetsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListAccessibleDatasetsResponse:
        self._seen(context)
        pages = {"": (["IRIS"], "p2"), "p2": (["PENGUIN"], "")}
        names, token = pages[request.page_token]
        return gateway_pb2.ListAccessibleDatasetsResponse(
            dataset_names=names, next_page_token=token
        )

    def GetDatasetMetadata(
        self, request: gateway_pb2.GetDatasetMetadataRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.GetDatasetMetadataResponse:
        metadata = {"max_ids": 1, "columns": {"b": {"type": "int"}, "a": {"type": "string"}}}
        return gateway_pb2.GetDatasetMetadataResponse(metadata_json=json.dumps(metadata))

    def GetBudget(
        self, request: gateway_pb2.GetBudgetRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.GetBudgetResponse:
        rho = privacy_pb2.PrivacyLoss(rho_zcdp=privacy_pb2.RhoZcdp(rho="0.3"))
        response = gateway_pb2.GetBudgetResponse(
            definition=privacy_pb2.PRIVACY_DEFINITION_RHO_ZCDP,
            initial=privacy_pb2.PrivacyLoss(rho_zcdp=privacy_pb2.RhoZcdp(rho="0.5")),
            remaining=rho,
        )
        if request.delta:
            response.remaining_at_delta.CopyFrom(
                privacy_pb2.ApproxDp(epsilon="2.1", delta=request.delta)
            )
        return response

    def ExecuteQuery(
        self, request: gateway_pb2.ExecuteQueryRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ExecuteQueryResponse:
        self.executed.append(request)
        if request.query.smartnoise_sql.epsilon == "100":
            _abort(
                context,
                code_pb2.RESOURCE_EXHAUSTED,
                "PRIVACY_BUDGET_EXHAUSTED",
                {"requestedEpsilon": "100", "remainingEpsilon": "0.5"},
            )
        return gateway_pb2.ExecuteQueryResponse(
            query_id="" if request.dummy else "q-1",
            release=_release(),
            cost=privacy_pb2.PrivacyLoss(approx_dp=privacy_pb2.ApproxDp(epsilon="0.1", delta="0")),
            dummy=request.dummy,
        )


class FakeAdmin:
    """Users, datasets and grants in memory; an identical name again is ALREADY_EXISTS."""

    def __init__(self) -> None:
        self.users: dict[str, resources_pb2.User] = {}
        self.datasets: dict[str, resources_pb2.Dataset] = {}
        self.grants: list[admin_pb2.CreateGrantRequest] = []
        self.deleted = admin_pb2.DeleteGrantRequest()
        self.updated = admin_pb2.UpdateDatasetRequest()

    def CreateUser(
        self, request: admin_pb2.CreateUserRequest, context: grpc.ServicerContext
    ) -> admin_pb2.CreateUserResponse:
        if request.user.name in self.users:
            _abort(context, code_pb2.ALREADY_EXISTS, "ALREADY_EXISTS", {})
        self.users[request.user.name] = request.user
        return admin_pb2.CreateUserResponse(user=request.user)

    def CreateGrant(
        self, request: admin_pb2.CreateGrantRequest, context: grpc.ServicerContext
    ) -> admin_pb2.CreateGrantResponse:
        key = (request.grant.user, request.grant.dataset)
        if key in {(g.grant.user, g.grant.dataset) for g in self.grants}:
            _abort(context, code_pb2.ALREADY_EXISTS, "ALREADY_EXISTS", {})
        self.grants.append(request)
        return admin_pb2.CreateGrantResponse(grant=request.grant)

    def CreateDataset(
        self, request: admin_pb2.CreateDatasetRequest, context: grpc.ServicerContext
    ) -> admin_pb2.CreateDatasetResponse:
        if request.dataset.name in self.datasets:
            _abort(context, code_pb2.ALREADY_EXISTS, "ALREADY_EXISTS", {})
        self.datasets[request.dataset.name] = request.dataset
        return admin_pb2.CreateDatasetResponse(dataset=request.dataset)

    def UpdateDataset(
        self, request: admin_pb2.UpdateDatasetRequest, context: grpc.ServicerContext
    ) -> admin_pb2.UpdateDatasetResponse:
        self.updated = request
        return admin_pb2.UpdateDatasetResponse(dataset=request.dataset)

    def ListUsers(
        self, request: admin_pb2.ListUsersRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListUsersResponse:
        # One user per page, so the client's paging is exercised.
        names = sorted(self.users)
        start = names.index(request.page_token) if request.page_token else 0
        following = names[start + 1] if start + 1 < len(names) else ""
        return admin_pb2.ListUsersResponse(
            users=[self.users[names[start]]], next_page_token=following
        )

    def DeleteGrant(
        self, request: admin_pb2.DeleteGrantRequest, context: grpc.ServicerContext
    ) -> admin_pb2.DeleteGrantResponse:
        self.deleted = request
        return admin_pb2.DeleteGrantResponse()


def _serialized(message: Message) -> bytes:
    return message.SerializeToString()


def _handlers(service: ServiceDescriptor, fake: object) -> grpc.GenericRpcHandler:
    """The fake's methods as the service's RPCs; the others answer UNIMPLEMENTED. (The generated
    servicer bases declare every RPC abstract, and a fake implements only what a test needs.)"""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        implementation = getattr(fake, method.name, None)
        if implementation is not None:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                implementation,
                request_deserializer=GetMessageClass(method.input_type).FromString,
                response_serializer=_serialized,
            )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


class Server:
    def __init__(self) -> None:
        self.gateway = FakeGateway()
        self.admin = FakeAdmin()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self._server.add_generic_rpc_handlers(
            (
                _handlers(gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"], self.gateway),
                _handlers(admin_pb2.DESCRIPTOR.services_by_name["AdminService"], self.admin),
            )
        )
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{port}"
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None)


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    yield running
    running.stop()


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with Client(server.target, token=TOKEN, dataset="PENGUIN") as connected:
        yield connected


@pytest.fixture
def admin(server: Server) -> Iterator[AdminClient]:
    with AdminClient(server.target, token="token-of-root") as connected:
        yield connected


def test_datasets_are_listed_across_pages_with_the_bearer_token(
    server: Server, client: Client
) -> None:
    assert client.list_datasets() == ["IRIS", "PENGUIN"]
    assert server.gateway.tokens == [f"Bearer {TOKEN}"] * 2


def test_metadata_keeps_its_column_order(client: Client) -> None:
    assert list(client.get_dataset_metadata()["columns"]) == ["b", "a"]


def test_budgets_are_exact_decimals(client: Client) -> None:
    assert client.get_initial_budget() == {"initial_rho": Decimal("0.5")}
    assert client.get_remaining_budget() == {"remaining_rho": Decimal("0.3")}
    shown = client.get_remaining_budget(delta=1e-5)
    assert shown["remaining_epsilon_at_delta"] == Decimal("2.1")
    assert shown["at_delta"] == Decimal("0.00001")


def test_a_real_query_always_carries_a_request_id_and_a_dummy_none(
    server: Server, client: Client
) -> None:
    frame = client.smartnoise_sql.query("SELECT COUNT(*) AS n FROM df", 0.1, 0)
    assert frame["n"].tolist() == [42]
    assert frame.attrs == {
        "query_id": "q-1",
        "cost": {"epsilon": Decimal("0.1"), "delta": Decimal("0")},
        "replay": False,
    }
    client.smartnoise_sql.query("SELECT 1 FROM df", 0.1, 0, request_id="mine")
    client.smartnoise_sql.query("SELECT 1 FROM df", 0.1, 0, dummy=True, nb_rows=7, seed=3)
    first, chosen, dummy = server.gateway.executed
    uuid.UUID(first.request_id)  # generated, so a transport retry is never charged twice
    assert chosen.request_id == "mine"
    assert (dummy.request_id, dummy.dummy, dummy.dummy_row_count, dummy.dummy_seed) == (
        "",
        True,
        7,
        3,
    )
    assert first.query.smartnoise_sql.postprocess is True  # the client's default


def test_a_refusal_becomes_a_typed_error_with_its_reason_and_metadata(client: Client) -> None:
    with pytest.raises(BudgetExhausted) as refused:
        client.smartnoise_sql.query("SELECT COUNT(*) AS n FROM df", 100, 0)
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED.name
    assert refused.value.reason == "PRIVACY_BUDGET_EXHAUSTED"
    assert refused.value.metadata["remainingEpsilon"] == "0.5"


def test_admin_lists_follow_every_page(server: Server, admin: AdminClient) -> None:
    for name in ("carol", "alice", "bob"):
        admin.add_user(name)
    assert [u.name for u in admin.list_users()] == ["alice", "bob", "carol"]


def test_admin_writes_carry_the_request_id(server: Server, admin: AdminClient) -> None:
    admin.revoke("bob", "PENGUIN", request_id="r-7")
    assert (server.admin.deleted.user, server.admin.deleted.request_id) == ("bob", "r-7")
    admin.add_user("bob", request_id="r-8")
    assert server.admin.users["bob"].name == "bob"
    with pytest.raises(AlreadyExists):
        admin.add_user("bob")


def test_adding_and_updating_a_dataset_send_the_same_dataset(
    server: Server, admin: AdminClient
) -> None:
    metadata = {"max_ids": 1, "rows": 1, "columns": {"b": {"type": "int"}, "a": {"type": "int"}}}
    source = url_source("https://example.org/penguin")
    added = admin.add_dataset("PENGUIN", source, metadata, dataset_pb2.DATA_FORMAT_CSV)
    updated = admin.update_dataset(
        "PENGUIN", source, metadata, dataset_pb2.DATA_FORMAT_CSV, request_id="r-9"
    )
    assert added == updated == server.admin.updated.dataset
    assert server.admin.updated.request_id == "r-9"
    assert (updated.name, updated.source.url.url, updated.format) == (
        "PENGUIN",
        "https://example.org/penguin",
        dataset_pb2.DATA_FORMAT_CSV,
    )
    assert list(json.loads(updated.metadata_json)["columns"]) == ["b", "a"]


USERS = """
users:
- user_name: Alice
  may_query: True
  datasets_list:
  - dataset_name: "PENGUIN"
    initial_epsilon: 10.0
    initial_delta: 0.0001
    total_spent_epsilon: 1.0
    total_spent_delta: 0.000001
- user_name: Bob
  may_query: False
  datasets_list:
  - dataset_name: "IRIS"
    initial_epsilon: 5
    initial_delta: 0
"""


def test_a_user_collection_loads_users_and_budgets_and_reloads_safely(
    tmp_path: Path, server: Server, admin: AdminClient
) -> None:
    path = tmp_path / "user_collection.yaml"
    path.write_text(USERS)
    assert admin.load_user_collection(path) == ["Alice", "Bob"]
    assert admin.load_user_collection(path) == ["Alice", "Bob"]  # nothing new, nothing refused
    assert server.admin.users["Bob"].may_query is False
    alice, bob = server.admin.grants
    assert (alice.grant.user, alice.grant.dataset) == ("Alice", "PENGUIN")
    assert alice.grant.allocation.approx_dp == privacy_pb2.ApproxDp(epsilon="10.0", delta="0.0001")
    assert alice.already_spent.approx_dp == privacy_pb2.ApproxDp(epsilon="1.0", delta="1e-06")
    # No spend written down is a spend of zero.
    assert bob.already_spent.approx_dp == privacy_pb2.ApproxDp(epsilon="0.0", delta="0.0")


def test_a_dataset_collection_reads_paths_relative_to_the_file(
    tmp_path: Path, server: Server, admin: AdminClient
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "penguin.csv").write_text("a,b\n1,2\n")
    (tmp_path / "penguin_metadata.yaml").write_text(
        "max_ids: 1\nrows: 1\nrow_privacy: true\ncolumns:\n  b: {type: int}\n  a: {type: int}\n"
    )
    collection = tmp_path / "dataset_collection.yaml"
    collection.write_text(
        "datasets:\n"
        "- dataset_name: PENGUIN\n"
        "  dataset_access: {database_type: PATH_DB, path: data/penguin.csv}\n"
        "  metadata_access: {database_type: PATH_DB, path: penguin_metadata.yaml}\n"
        "- dataset_name: REMOTE\n"
        "  dataset_access: {database_type: PATH_DB, path: 'https://example.org/r', format: PARQUET}\n"
        "  metadata_access: {database_type: PATH_DB, path: penguin_metadata.yaml}\n"
    )
    assert admin.load_dataset_collection(collection) == ["PENGUIN", "REMOTE"]
    assert admin.load_dataset_collection(collection) == ["PENGUIN", "REMOTE"]  # reload is safe
    penguin = server.admin.datasets["PENGUIN"]
    assert penguin.source.local.path == str((tmp_path / "data" / "penguin.csv").resolve())
    assert penguin.format == dataset_pb2.DATA_FORMAT_CSV
    metadata: dict[str, Any] = json.loads(penguin.metadata_json)
    assert list(metadata["columns"]) == ["b", "a"]  # the wire form keeps the column order
    remote = server.admin.datasets["REMOTE"]
    assert remote.source.url.url == "https://example.org/r"
    assert remote.format == dataset_pb2.DATA_FORMAT_PARQUET


def test_an_unknown_collection_source_is_refused_before_any_call(
    tmp_path: Path, server: Server, admin: AdminClient
) -> None:
    collection = tmp_path / "dataset_collection.yaml"
    collection.write_text(
        "datasets:\n- dataset_name: X\n  dataset_access: {database_type: MONGO_DB}\n"
        "  metadata_access: {database_type: PATH_DB, path: m.yaml}\n"
    )
    with pytest.raises(ValueError, match="unsupported database_type 'MONGO_DB'"):
        admin.load_dataset_collection(collection)
    assert server.admin.datasets == {}


def test_the_dataset_is_named_as_lomas_users_do(server: Server) -> None:
    for connected in (
        Client(server.target, "PENGUIN", token=TOKEN),
        Client(server.target, dataset_name="PENGUIN", token=TOKEN),
        Client(server.target, token=TOKEN, dataset="PENGUIN"),
    ):
        with connected:
            assert connected.dataset == "PENGUIN"
            assert connected.get_dataset_metadata()["columns"]
    with pytest.raises(TypeError):
        Client(server.target, "PENGUIN", token=TOKEN, dataset="IRIS")
    with pytest.raises(TypeError):
        Client(server.target, token=TOKEN)

"""The administration's rules (which services an admin operation touches, in what order, with which
request ids), and the AdminService's relays of calls one service answers alone, checked against
in-memory fakes of the peers: pure unit tests, no gRPC, no mesh.

The same operations run end to end through the real services in tests/e2e (test_platform,
test_admin_datasets, test_authorization_matrix).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from lomas.admin.v1 import admin_store_pb2, resources_pb2
from lomas.budget.v1 import budget_pb2
from lomas.common.v1 import archive_pb2, dataset_pb2, privacy_pb2
from lomas.executor.v1 import executor_pb2
from lomas.gateway.v1 import admin_pb2
from lomas_common.errors import Code, InvalidArgument, LomasError, NotFound
from lomas_gateway.administration import (
    CREATE_DATASET,
    FREEZE,
    UNFREEZE,
    UPDATE_DATASET,
    Administration,
    step_id,
)
from lomas_gateway.api import AdminServicer, Context
from lomas_gateway.auth import Caller, caller_var
from lomas_gateway.lifecycle import Peers
from lomas_gateway.relay import mirrored

Answer = Message | LomasError | Callable[[Any], Message]


class FakePeer:
    """One internal service: records every call, in one journal shared by all the fakes, and
    answers by method (a message, a function of the request, or an error to raise)."""

    def __init__(self, name: str, journal: list[tuple[str, str, Any]]) -> None:
        self.name = name
        self.journal = journal
        self.answers: dict[str, Answer] = {}

    async def call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        self.journal.append((self.name, method, request))
        answer = self.answers.get(method)
        if answer is None:
            raise AssertionError(f"unexpected call {self.name}.{method}")
        if isinstance(answer, LomasError):
            raise answer
        return answer(request) if callable(answer) else answer


class Mesh:
    def __init__(self) -> None:
        self.journal: list[tuple[str, str, Any]] = []
        self.admin = FakePeer("admin", self.journal)
        self.budget = FakePeer("budget", self.journal)
        self.executor = FakePeer("executor", self.journal)
        self.administration = Administration(self.admin, self.budget, self.executor)

    def steps(self) -> list[str]:
        return [f"{peer}.{method}" for peer, method, _ in self.journal]

    def request(self, step: str) -> Any:
        (found,) = [r for peer, method, r in self.journal if f"{peer}.{method}" == step]
        return found


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coroutine)


def refusal(coroutine: Coroutine[Any, Any, Any]) -> LomasError:
    with pytest.raises(LomasError) as caught:
        run(coroutine)
    return caught.value


def approx(epsilon: str, delta: str) -> privacy_pb2.PrivacyLoss:
    return privacy_pb2.PrivacyLoss(approx_dp=privacy_pb2.ApproxDp(epsilon=epsilon, delta=delta))


def echo_user(request: admin_store_pb2.CreateUserRequest) -> Message:
    return admin_store_pb2.CreateUserResponse(user=request.user)


def test_a_user_created_unable_to_query_is_frozen_in_the_ledger_too() -> None:
    mesh = Mesh()
    mesh.admin.answers["CreateUser"] = echo_user
    mesh.budget.answers["FreezeUser"] = budget_pb2.FreezeUserResponse()
    user = resources_pb2.User(name="bob", may_query=False)

    created = run(
        mesh.administration.create_user(
            admin_pb2.CreateUserRequest(user=user, request_id="r1"), actor="root"
        )
    )

    assert created.user.name == "bob"
    assert mesh.steps() == ["admin.CreateUser", "budget.FreezeUser"]
    assert mesh.request("admin.CreateUser").request_id == "r1"
    freeze = mesh.request("budget.FreezeUser")
    # The freeze has its own id, so that a FreezeUser sent with "r1" is not taken for a replay.
    assert (freeze.user, freeze.actor, freeze.request_id) == ("bob", "root", "r1/freeze")


def test_a_user_who_may_query_touches_only_the_admin_store() -> None:
    mesh = Mesh()
    mesh.admin.answers["CreateUser"] = echo_user
    run(
        mesh.administration.create_user(
            admin_pb2.CreateUserRequest(user=resources_pb2.User(name="al", may_query=True)),
            actor="root",
        )
    )
    assert mesh.steps() == ["admin.CreateUser"]


def test_a_freeze_sets_the_admin_store_copy_before_the_ledger() -> None:
    mesh = Mesh()
    mesh.admin.answers["SetUserMayQuery"] = admin_store_pb2.SetUserMayQueryResponse()
    mesh.budget.answers["FreezeUser"] = budget_pb2.FreezeUserResponse(
        user=budget_pb2.UserState(user="bob", frozen=True)
    )
    request = admin_pb2.FreezeUserRequest(name="bob", reason="audit", request_id="f1")
    frozen = run(mesh.administration.switch_user(FREEZE, request, actor="root"))

    assert frozen.user.frozen
    assert mesh.steps() == ["admin.SetUserMayQuery", "budget.FreezeUser"]
    flag = mesh.request("admin.SetUserMayQuery")
    assert (flag.name, flag.may_query, flag.request_id) == ("bob", False, "f1")
    ledger = mesh.request("budget.FreezeUser")
    assert (ledger.actor, ledger.reason, ledger.request_id) == ("root", "audit", "f1")


def test_an_unknown_user_is_neither_frozen_nor_unfrozen_anywhere() -> None:
    for switch, request in (
        (FREEZE, admin_pb2.FreezeUserRequest(name="ghost")),
        (UNFREEZE, admin_pb2.UnfreezeUserRequest(name="ghost")),
    ):
        mesh = Mesh()
        mesh.admin.answers["SetUserMayQuery"] = NotFound("no such user", reason="USER_NOT_FOUND")
        error = refusal(mesh.administration.switch_user(switch, request, actor="root"))
        assert (error.code, error.reason) == (Code.NOT_FOUND, "USER_NOT_FOUND")
        assert mesh.steps() == ["admin.SetUserMayQuery"]  # the ledger is never asked


def test_an_unfreeze_lets_the_admin_store_copy_go_first() -> None:
    mesh = Mesh()
    mesh.admin.answers["SetUserMayQuery"] = admin_store_pb2.SetUserMayQueryResponse()
    mesh.budget.answers["UnfreezeUser"] = budget_pb2.UnfreezeUserResponse()
    request = admin_pb2.UnfreezeUserRequest(name="bob", request_id="u1")
    run(mesh.administration.switch_user(UNFREEZE, request, actor="root"))
    assert mesh.steps() == ["admin.SetUserMayQuery", "budget.UnfreezeUser"]
    assert mesh.request("admin.SetUserMayQuery").may_query is True
    assert mesh.request("budget.UnfreezeUser").request_id == "u1"


def grant_mesh() -> Mesh:
    mesh = Mesh()
    mesh.admin.answers["GetUser"] = admin_store_pb2.GetUserResponse()
    mesh.admin.answers["GetDataset"] = admin_store_pb2.GetDatasetResponse()
    mesh.budget.answers["OpenLedger"] = budget_pb2.OpenLedgerResponse(
        ledger=budget_pb2.Ledger(
            definition=privacy_pb2.PRIVACY_DEFINITION_APPROX_DP, allocation=approx("1.5", "0.0001")
        )
    )
    mesh.admin.answers["CreateGrant"] = lambda request: admin_store_pb2.CreateGrantResponse(
        grant=request.grant
    )
    return mesh


def test_a_grant_checks_both_names_opens_the_ledger_then_records_the_grant() -> None:
    mesh = grant_mesh()
    grant = resources_pb2.Grant(user="bob", dataset="PENGUIN", allocation=approx("1.50", "1e-4"))
    spent = approx("0.5", "0")

    request = admin_pb2.CreateGrantRequest(grant=grant, already_spent=spent, request_id="g1")
    stored = run(mesh.administration.create_grant(request, actor="root")).grant

    assert mesh.steps() == [
        "admin.GetUser",
        "admin.GetDataset",
        "budget.OpenLedger",
        "admin.CreateGrant",  # last: the grant is what lets the user in
    ]
    opened = mesh.request("budget.OpenLedger")
    assert (opened.user, opened.dataset, opened.actor, opened.request_id) == (
        "bob",
        "PENGUIN",
        "root",
        "g1",
    )
    assert opened.already_spent == spent
    # The grant records what the ledger made of the allocation (its unit, rounded down).
    assert stored.definition == privacy_pb2.PRIVACY_DEFINITION_APPROX_DP
    assert stored.allocation == approx("1.5", "0.0001")
    assert mesh.request("admin.CreateGrant").request_id == "g1"


def test_a_grant_without_spend_opens_a_ledger_without_one() -> None:
    mesh = grant_mesh()
    grant = resources_pb2.Grant(user="bob", dataset="PENGUIN", allocation=approx("1", "0"))
    run(mesh.administration.create_grant(admin_pb2.CreateGrantRequest(grant=grant), actor="root"))
    assert not mesh.request("budget.OpenLedger").HasField("already_spent")


def test_a_grant_for_an_unknown_user_opens_no_ledger() -> None:
    mesh = grant_mesh()
    mesh.admin.answers["GetUser"] = NotFound("no such user", reason="USER_NOT_FOUND")
    grant = resources_pb2.Grant(user="ghost", dataset="PENGUIN", allocation=approx("1", "0"))
    error = refusal(
        mesh.administration.create_grant(admin_pb2.CreateGrantRequest(grant=grant), actor="root")
    )
    assert (error.code, error.reason) == (Code.NOT_FOUND, "USER_NOT_FOUND")
    assert mesh.steps() == ["admin.GetUser"]


def test_a_grant_whose_definition_contradicts_its_allocation_touches_nothing() -> None:
    mesh = grant_mesh()
    grant = resources_pb2.Grant(
        user="bob",
        dataset="PENGUIN",
        definition=privacy_pb2.PRIVACY_DEFINITION_RHO_ZCDP,
        allocation=approx("1", "0"),
    )
    error = refusal(
        mesh.administration.create_grant(admin_pb2.CreateGrantRequest(grant=grant), actor="root")
    )
    assert isinstance(error, InvalidArgument)
    assert (error.code, error.reason) == (Code.INVALID_ARGUMENT, "PRIVACY_DEFINITION_MISMATCH")
    assert mesh.steps() == []


def dataset_mesh() -> Mesh:
    mesh = Mesh()
    mesh.executor.answers["ValidateDataset"] = lambda request: executor_pb2.ValidateDatasetResponse(
        dataset=dataset_pb2.DatasetDescriptor(metadata_json='{"normalised": true}')
    )
    mesh.admin.answers["CreateDataset"] = lambda request: admin_store_pb2.CreateDatasetResponse(
        dataset=request.dataset
    )
    mesh.admin.answers["UpdateDataset"] = lambda request: admin_store_pb2.UpdateDatasetResponse(
        dataset=request.dataset
    )
    return mesh


def test_a_dataset_is_stored_with_the_metadata_an_executor_normalised() -> None:
    dataset = resources_pb2.Dataset(
        name="PENGUIN", format=dataset_pb2.DATA_FORMAT_CSV, metadata_json='{"raw": 1}'
    )
    for write, request, step in (
        (
            CREATE_DATASET,
            admin_pb2.CreateDatasetRequest(dataset=dataset, request_id="d1"),
            "admin.CreateDataset",
        ),
        (
            UPDATE_DATASET,
            admin_pb2.UpdateDatasetRequest(dataset=dataset, request_id="d1"),
            "admin.UpdateDataset",
        ),
    ):
        mesh = dataset_mesh()
        stored = run(mesh.administration.write_dataset(write, request)).dataset
        assert mesh.steps() == ["executor.ValidateDataset", step]
        assert mesh.request("executor.ValidateDataset").dataset.metadata_json == '{"raw": 1}'
        assert stored.metadata_json == '{"normalised": true}'
        assert (stored.name, stored.format) == ("PENGUIN", dataset_pb2.DATA_FORMAT_CSV)
        assert mesh.request(step).request_id == "d1"


def test_invalid_metadata_stores_nothing() -> None:
    mesh = dataset_mesh()
    mesh.executor.answers["ValidateDataset"] = InvalidArgument(
        "metadata must be a JSON object", reason="METADATA_INVALID"
    )
    request = admin_pb2.CreateDatasetRequest(dataset=resources_pb2.Dataset(name="X"))
    error = refusal(mesh.administration.write_dataset(CREATE_DATASET, request))
    assert (error.code, error.reason) == (Code.INVALID_ARGUMENT, "METADATA_INVALID")
    assert mesh.steps() == ["executor.ValidateDataset"]


def test_a_cap_on_an_unknown_dataset_never_reaches_the_ledger() -> None:
    mesh = Mesh()
    mesh.admin.answers["GetDataset"] = NotFound("no such dataset", reason="DATASET_NOT_FOUND")
    request = admin_pb2.SetDatasetCapRequest(dataset="GHOST", cap=approx("5", "0"))
    error = refusal(mesh.administration.set_dataset_cap(request, actor="root"))
    assert (error.code, error.reason) == (Code.NOT_FOUND, "DATASET_NOT_FOUND")
    assert mesh.steps() == ["admin.GetDataset"]


def test_a_cap_of_none_removes_the_cap() -> None:
    mesh = Mesh()
    mesh.admin.answers["GetDataset"] = admin_store_pb2.GetDatasetResponse()
    mesh.budget.answers["SetDatasetCap"] = budget_pb2.SetDatasetCapResponse(
        cap=budget_pb2.DatasetCap(dataset="PENGUIN")
    )
    request = admin_pb2.SetDatasetCapRequest(dataset="PENGUIN", reason="lifted", request_id="c1")
    cap = run(mesh.administration.set_dataset_cap(request, actor="root")).cap
    assert cap.dataset == "PENGUIN"
    sent = mesh.request("budget.SetDatasetCap")
    assert not sent.HasField("cap")
    assert (sent.actor, sent.reason, sent.request_id) == ("root", "lifted", "c1")


def test_a_step_id_derives_from_the_request_id_only_when_there_is_one() -> None:
    assert step_id("r1", "freeze") == "r1/freeze"
    assert step_id("", "freeze") == ""


# The AdminService servicer: a call that one service answers alone is relayed to it ---------------


NO_CONTEXT = cast(Context, None)  # the servicers read nothing from the context


def admin_servicer(mesh: Mesh) -> AdminServicer:
    return AdminServicer(cast(Peers, mesh))  # the servicer uses only the peers' `call`


def run_as_admin(coroutine: Coroutine[Any, Any, Any]) -> Any:
    async def as_admin() -> Any:
        caller_var.set(Caller(subject="root"))  # what GatewayGuard sets before a handler runs
        return await coroutine

    return run(as_admin())


MIRRORED: list[tuple[str, str, Message, Message]] = [
    # (RPC, the peer that answers it alone, a public request, that peer's answer)
    (
        "DeleteUser",
        "admin",
        admin_pb2.DeleteUserRequest(name="bob", request_id="x1"),
        admin_store_pb2.DeleteUserResponse(),
    ),
    (
        "ListUsers",
        "admin",
        admin_pb2.ListUsersRequest(page_size=2, page_token="t1"),
        admin_store_pb2.ListUsersResponse(
            users=[resources_pb2.User(name="bob")], next_page_token="t2"
        ),
    ),
    (
        "DeleteDataset",
        "admin",
        admin_pb2.DeleteDatasetRequest(name="PENGUIN", request_id="x2"),
        admin_store_pb2.DeleteDatasetResponse(),
    ),
    (
        "ListDatasets",
        "admin",
        admin_pb2.ListDatasetsRequest(page_size=1),
        admin_store_pb2.ListDatasetsResponse(datasets=[resources_pb2.Dataset(name="PENGUIN")]),
    ),
    (
        "DeleteGrant",
        "admin",
        admin_pb2.DeleteGrantRequest(user="bob", dataset="PENGUIN", request_id="x3"),
        admin_store_pb2.DeleteGrantResponse(),
    ),
    (
        "ListGrants",
        "admin",
        admin_pb2.ListGrantsRequest(user="bob", page_token="t1"),
        admin_store_pb2.ListGrantsResponse(grants=[resources_pb2.Grant(user="bob")]),
    ),
    (
        "ListArchivedQueries",
        "admin",
        admin_pb2.ListArchivedQueriesRequest(user="bob", dataset="PENGUIN", page_size=5),
        admin_store_pb2.ListArchivedQueriesResponse(
            queries=[archive_pb2.ArchivedQuery(query_id="q1", user="bob")], next_page_token="t2"
        ),
    ),
    (
        "GetDatasetCap",
        "budget",
        admin_pb2.GetDatasetCapRequest(dataset="PENGUIN"),
        budget_pb2.GetDatasetCapResponse(cap=budget_pb2.DatasetCap(dataset="PENGUIN")),
    ),
    (
        "GetLedger",
        "budget",
        admin_pb2.GetLedgerRequest(user="bob", dataset="PENGUIN", delta="1e-6"),
        budget_pb2.GetLedgerResponse(ledger=budget_pb2.Ledger(user="bob", dataset="PENGUIN")),
    ),
    (
        "ListLedgers",
        "budget",
        admin_pb2.ListLedgersRequest(user="bob", page_size=3, delta="1e-6"),
        budget_pb2.ListLedgersResponse(
            ledgers=[budget_pb2.Ledger(user="bob")], next_page_token="t2"
        ),
    ),
    (
        "ListLedgerEntries",
        "budget",
        admin_pb2.ListLedgerEntriesRequest(user="bob", dataset="PENGUIN", page_token="t1"),
        budget_pb2.ListLedgerEntriesResponse(
            ledger=budget_pb2.Ledger(user="bob"), entries=[budget_pb2.LedgerEntry(seq=1)]
        ),
    ),
]


@pytest.mark.parametrize(
    ("rpc", "peer", "public", "answer"), MIRRORED, ids=[m[0] for m in MIRRORED]
)
def test_a_call_one_service_answers_alone_is_relayed_as_it_is(
    rpc: str, peer: str, public: Message, answer: Message
) -> None:
    mesh = Mesh()
    getattr(mesh, peer).answers[rpc] = answer
    response = run_as_admin(getattr(admin_servicer(mesh), rpc)(public, NO_CONTEXT))
    assert mesh.steps() == [f"{peer}.{rpc}"]
    # Every field goes through, paging and request ids included, and the answer comes back whole.
    assert MessageToDict(mesh.request(f"{peer}.{rpc}")) == MessageToDict(public)
    assert MessageToDict(response) == MessageToDict(answer)


def test_a_field_a_caller_slips_in_never_reaches_the_store() -> None:
    mesh = Mesh()
    mesh.admin.answers["DeleteUser"] = admin_store_pb2.DeleteUserResponse()
    declared = admin_pb2.DeleteUserRequest(name="bob").SerializeToString()
    undeclared = bytes([4 << 3 | 2, 4]) + b"root"  # field 4, length-delimited: "root"
    public = admin_pb2.DeleteUserRequest.FromString(declared + undeclared)
    assert public.SerializeToString() != declared  # the public message keeps what it was sent
    run_as_admin(admin_servicer(mesh).DeleteUser(public, NO_CONTEXT))
    assert mesh.request("admin.DeleteUser").SerializeToString() == declared


def test_messages_that_do_not_declare_the_same_fields_are_not_mirrored() -> None:
    # The ledger's request has an actor that the public one does not: it must be set explicitly.
    with pytest.raises(TypeError):
        mirrored(admin_pb2.AdjustAllocationRequest(user="bob"), budget_pb2.AdjustAllocationRequest)


def test_a_mirrored_message_keeps_which_fields_are_set() -> None:
    unset = mirrored(budget_pb2.GetLedgerResponse(), admin_pb2.GetLedgerResponse)
    assert not unset.HasField("ledger")
    found = budget_pb2.GetLedgerResponse(ledger=budget_pb2.Ledger())
    assert mirrored(found, admin_pb2.GetLedgerResponse).HasField("ledger")


def test_an_allocation_change_is_the_ledgers_alone_and_names_the_admin() -> None:
    mesh = Mesh()
    mesh.budget.answers["AdjustAllocation"] = budget_pb2.AdjustAllocationResponse(
        ledger=budget_pb2.Ledger(user="bob")
    )
    public = admin_pb2.AdjustAllocationRequest(
        user="bob", dataset="PENGUIN", allocation=approx("3", "0"), reason="more", request_id="a1"
    )
    response = run_as_admin(admin_servicer(mesh).AdjustAllocation(public, NO_CONTEXT))
    assert response.ledger.user == "bob"
    assert mesh.steps() == ["budget.AdjustAllocation"]
    sent = mesh.request("budget.AdjustAllocation")
    assert (sent.user, sent.dataset, sent.allocation) == ("bob", "PENGUIN", approx("3", "0"))
    assert (sent.actor, sent.reason, sent.request_id) == ("root", "more", "a1")


def test_a_grant_with_an_amount_left_out_touches_nothing() -> None:
    """An empty amount reads as 0 on the wire: a grant must say "0" to mean no budget."""
    mesh = grant_mesh()
    for allocation in (approx("", "0.0001"), approx("1", "")):
        grant = resources_pb2.Grant(user="bob", dataset="PENGUIN", allocation=allocation)
        error = refusal(
            mesh.administration.create_grant(
                admin_pb2.CreateGrantRequest(grant=grant), actor="root"
            )
        )
        assert (error.code, error.reason) == (Code.INVALID_ARGUMENT, "FIELD_REQUIRED")
    assert mesh.steps() == []
    grant = resources_pb2.Grant(user="bob", dataset="PENGUIN", allocation=approx("0", "0"))
    run(mesh.administration.create_grant(admin_pb2.CreateGrantRequest(grant=grant), actor="root"))
    assert "budget.OpenLedger" in mesh.steps()

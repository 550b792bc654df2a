"""Thin servicers of the public API: researcher (GatewayService) and administrator (AdminService).

Each method parses its request, calls the query lifecycle (`lifecycle.py`), the administration
(`administration.py`) or, for a call one service answers alone, that service (`relay.py`), and
maps the result to its response. Who may call what is checked before any handler runs
(`policy.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack
from types import ModuleType
from typing import Any, Generic, Literal, Protocol, TypeAlias, TypeVar, overload

import grpc
from google.protobuf.message import Message

from lomas.admin.v1 import admin_store_pb2
from lomas.budget.v1 import budget_pb2
from lomas.executor.v1 import executor_pb2
from lomas.gateway.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from lomas_common.errors import InvalidArgument
from lomas_common.queue import task_priority
from lomas_gateway.administration import (
    CREATE_DATASET,
    FREEZE,
    UNFREEZE,
    UPDATE_DATASET,
    Administration,
)
from lomas_gateway.auth import current_caller
from lomas_gateway.jobs import QueryJobs, release_response
from lomas_gateway.lifecycle import Peers, QueryLifecycle, StartedQuery, query_id_for
from lomas_gateway.limits import QuerySlot, UserLimits
from lomas_gateway.relay import ResponseT, mirror, relay, relay_page

# The servicers read nothing from the context (the caller is in `current_caller()`), so its
# request and response types are left open.
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

ResponseT_co = TypeVar("ResponseT_co", covariant=True)

# Accuracy intervals hold with probability 1 - alpha: 95 % unless the caller says otherwise.
DEFAULT_ALPHA = "0.05"


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(
        self, lifecycle: QueryLifecycle, jobs: QueryJobs, peers: Peers, limits: UserLimits
    ) -> None:
        self._lifecycle = lifecycle
        self._jobs = jobs
        self._peers = peers
        self._limits = limits

    async def ListAccessibleDatasets(
        self, request: gateway_pb2.ListAccessibleDatasetsRequest, context: Context
    ) -> gateway_pb2.ListAccessibleDatasetsResponse:
        page: admin_store_pb2.ListGrantsResponse = await relay_page(
            self._peers.admin,
            "ListGrants",
            admin_store_pb2.ListGrantsRequest(user=current_caller().subject),
            request,
        )
        return gateway_pb2.ListAccessibleDatasetsResponse(
            dataset_names=[grant.dataset for grant in page.grants],
            next_page_token=page.next_page_token,
        )

    async def GetDatasetMetadata(
        self, request: gateway_pb2.GetDatasetMetadataRequest, context: Context
    ) -> gateway_pb2.GetDatasetMetadataResponse:
        access = await self._lifecycle.authorize(current_caller().subject, request.dataset)
        return gateway_pb2.GetDatasetMetadataResponse(metadata_json=access.dataset.metadata_json)

    # Free calls (dummy dataset, cost estimate, dummy query) are rate-limited like every call
    # (GatewayGuard) and hold one of the caller's free-call slots while they run (a cost the
    # gateway already knows is no work: it needs no slot).

    async def GetDummyDataset(
        self, request: gateway_pb2.GetDummyDatasetRequest, context: Context
    ) -> gateway_pb2.GetDummyDatasetResponse:
        subject = current_caller().subject
        async with self._limits.free_call_slot(subject):
            access = await self._lifecycle.authorize(subject, request.dataset)
            rows = self._lifecycle.check_dummy_rows(request.row_count)
            response: executor_pb2.GetDummyDatasetResponse = await self._peers.executor.call(
                "GetDummyDataset",
                executor_pb2.GetDummyDatasetRequest(
                    dataset=access.dataset, row_count=rows, seed=request.seed
                ),
            )
        return gateway_pb2.GetDummyDatasetResponse(arrow_ipc=response.arrow_ipc)

    async def EstimateQueryCost(
        self, request: gateway_pb2.EstimateQueryCostRequest, context: Context
    ) -> gateway_pb2.EstimateQueryCostResponse:
        subject = current_caller().subject
        access = await self._lifecycle.authorize(subject, request.dataset)
        cost = self._lifecycle.known_cost(subject, access.dataset, request.query)
        if cost is None:
            async with self._limits.free_call_slot(subject):
                cost = await self._lifecycle.estimate_cost(subject, access.dataset, request.query)
        return gateway_pb2.EstimateQueryCostResponse(cost=cost)

    async def EstimateQueryAccuracy(
        self, request: gateway_pb2.EstimateQueryAccuracyRequest, context: Context
    ) -> gateway_pb2.EstimateQueryAccuracyResponse:
        subject = current_caller().subject
        alpha = request.alpha or DEFAULT_ALPHA
        async with self._limits.free_call_slot(subject):
            access = await self._lifecycle.authorize(subject, request.dataset)
            self._lifecycle.check_query(request.query)
            response: executor_pb2.EstimateAccuracyResponse = await self._peers.executor.call(
                "EstimateAccuracy",
                executor_pb2.EstimateAccuracyRequest(
                    dataset=access.dataset, query=request.query, alpha=alpha
                ),
            )
        return gateway_pb2.EstimateQueryAccuracyResponse(columns=response.columns, alpha=alpha)

    async def ExecuteQuery(
        self, request: gateway_pb2.ExecuteQueryRequest, context: Context
    ) -> gateway_pb2.ExecuteQueryResponse:
        subject = current_caller().subject
        if request.dummy:
            async with self._limits.free_call_slot(subject), self._limits.padded():
                access = await self._lifecycle.authorize(subject, request.dataset)
                outcome = await self._lifecycle.run_dummy(
                    access.dataset, request.query, request.dummy_row_count, request.dummy_seed
                )
        else:
            access = await self._lifecycle.authorize(subject, request.dataset)
            # A replay the gateway can answer alone does no work and reads no data: no slot, and
            # nothing in its time to pad.
            known = await self._lifecycle.known_replay(subject, access, request)
            if known is not None:
                return release_response(known)
            # The slot is held through the padding, so padded queries count as in flight.
            async with self._limits.query_slot(subject) as slot, self._limits.padded():
                started = await self._start(subject, access, request, slot)
                outcome = await self._lifecycle.finish(started)
        return release_response(outcome)

    async def SubmitQuery(
        self, request: gateway_pb2.SubmitQueryRequest, context: Context
    ) -> gateway_pb2.SubmitQueryResponse:
        subject = current_caller().subject
        # The caller's query slot is held until the query ends, in the background if it runs.
        holding = AsyncExitStack()
        slot = await holding.enter_async_context(self._limits.query_slot(subject))
        try:
            access = await self._lifecycle.authorize(subject, request.dataset)
            started = await self._start(subject, access, request, slot)
        except BaseException:
            await holding.aclose()
            raise
        self._jobs.finish_in_background(started, holding)
        return gateway_pb2.SubmitQueryResponse(
            query_id=started.query_id, done=started.answer is not None
        )

    async def _start(
        self,
        subject: str,
        access: admin_store_pb2.AuthorizeDatasetAccessResponse,
        request: gateway_pb2.ExecuteQueryRequest | gateway_pb2.SubmitQueryRequest,
        slot: QuerySlot,
    ) -> StartedQuery:
        """ExecuteQuery and SubmitQuery: start the query of an authorized caller (or find its
        answer) in the caller's query slot: the caller's queries already in flight set its queue
        priority (fairness)."""
        return await self._lifecycle.start(
            subject,
            access,
            request.query,
            request.request_id,
            fresh=request.fresh,
            priority=task_priority(slot.already_in_flight),
        )

    async def WatchQuery(
        self, request: gateway_pb2.WatchQueryRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.WatchQueryResponse]:
        subject = current_caller().subject
        if not (request.query_id or request.request_id):
            raise InvalidArgument("give query_id or request_id", reason="FIELD_REQUIRED")
        query_id = request.query_id or query_id_for(subject, request.request_id)
        async for event in self._jobs.watch(subject, query_id):
            yield event

    async def CancelQuery(
        self, request: gateway_pb2.CancelQueryRequest, context: Context
    ) -> gateway_pb2.CancelQueryResponse:
        refunded = await self._jobs.cancel(current_caller().subject, request.query_id)
        return gateway_pb2.CancelQueryResponse(query_id=request.query_id, refunded=refunded)

    async def GetBudget(
        self, request: gateway_pb2.GetBudgetRequest, context: Context
    ) -> gateway_pb2.GetBudgetResponse:
        subject = current_caller().subject
        access = await self._lifecycle.authorize(subject, request.dataset)
        found: budget_pb2.GetLedgerResponse = await self._peers.budget.call(
            "GetLedger",
            budget_pb2.GetLedgerRequest(
                user=subject, dataset=access.dataset.name, delta=request.delta
            ),
        )
        ledger = found.ledger
        return gateway_pb2.GetBudgetResponse(
            definition=ledger.definition,
            initial=ledger.allocation,
            spent=ledger.spent,
            reserved=ledger.reserved,
            remaining=ledger.remaining,
            remaining_at_delta=(
                ledger.remaining_at_delta if ledger.HasField("remaining_at_delta") else None
            ),
        )

    async def ListQueries(
        self, request: gateway_pb2.ListQueriesRequest, context: Context
    ) -> gateway_pb2.ListQueriesResponse:
        subject = current_caller().subject
        access = await self._lifecycle.authorize(subject, request.dataset)
        page: admin_store_pb2.ListArchivedQueriesResponse = await relay_page(
            self._peers.admin,
            "ListArchivedQueries",
            admin_store_pb2.ListArchivedQueriesRequest(user=subject, dataset=access.dataset.name),
            request,
        )
        return gateway_pb2.ListQueriesResponse(
            queries=[
                gateway_pb2.PreviousQuery(
                    query_id=q.query_id,
                    dataset=q.dataset,
                    query=q.query,
                    cost=q.cost,
                    release=q.release,
                    error_reason=q.error_reason,
                    submit_time=q.submit_time,
                )
                for q in page.queries
            ],
            next_page_token=page.next_page_token,
        )


def _actor() -> str:
    """The admin making the call (GatewayGuard has already checked the admin role)."""
    return current_caller().subject


class RpcHandler(Protocol[ResponseT_co]):
    """A servicer method as gRPC calls it (bound to its servicer)."""

    def __call__(self, request: Message, context: Context) -> Coroutine[Any, Any, ResponseT_co]: ...


# The messages of each peer an AdminService RPC can be mirrored to (`MirroredRpc`).
_PEER_MESSAGES: dict[str, ModuleType] = {"admin": admin_store_pb2, "budget": budget_pb2}


class MirroredRpc(Generic[ResponseT]):
    """An AdminService method that is the RPC of the same name of the `peer` service, as it is
    (`relay.mirror`): the admin API adds nothing to it but the admin-role check. One line in the
    servicer's class body: `DeleteUser = MirroredRpc("admin", admin_pb2.DeleteUserResponse)`.

    The internal request is the peer's `<Rpc>Request` (Buf's naming), found when the class is
    made; the public response type is given, so that the type checker holds it to the RPC's."""

    def __init__(self, peer: Literal["admin", "budget"], response_type: type[ResponseT]) -> None:
        self._peer = peer
        self._response_type = response_type
        self._method = ""
        self._internal_request_type: type[Message] = Message

    def __set_name__(self, owner: type, name: str) -> None:
        self._method = name
        self._internal_request_type = getattr(_PEER_MESSAGES[self._peer], f"{name}Request")

    @overload
    def __get__(self, servicer: None, owner: type) -> MirroredRpc[ResponseT]: ...

    @overload
    def __get__(self, servicer: AdminServicer, owner: type) -> RpcHandler[ResponseT]: ...

    def __get__(
        self, servicer: AdminServicer | None, owner: type
    ) -> MirroredRpc[ResponseT] | RpcHandler[ResponseT]:
        if servicer is None:
            return self

        async def handler(request: Message, context: Context) -> ResponseT:
            peer = getattr(servicer.peers, self._peer)
            return await mirror(
                peer, self._method, request, self._internal_request_type, self._response_type
            )

        return handler


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Every RPC needs the admin role, checked by GatewayGuard (policy.py) before the handler runs.
    Operations that span services go through the administration (administration.py); a call that
    one service answers alone is relayed to it (relay.py), most as the internal RPC they mirror
    (`MirroredRpc`: one line each)."""

    def __init__(self, peers: Peers) -> None:
        self.peers = peers
        self._administration = Administration(peers.admin, peers.budget, peers.executor)

    # Users

    async def CreateUser(
        self, request: admin_pb2.CreateUserRequest, context: Context
    ) -> admin_pb2.CreateUserResponse:
        return await self._administration.create_user(request, actor=_actor())

    async def FreezeUser(
        self, request: admin_pb2.FreezeUserRequest, context: Context
    ) -> admin_pb2.FreezeUserResponse:
        return await self._administration.switch_user(FREEZE, request, actor=_actor())

    async def UnfreezeUser(
        self, request: admin_pb2.UnfreezeUserRequest, context: Context
    ) -> admin_pb2.UnfreezeUserResponse:
        return await self._administration.switch_user(UNFREEZE, request, actor=_actor())

    # Datasets

    async def CreateDataset(
        self, request: admin_pb2.CreateDatasetRequest, context: Context
    ) -> admin_pb2.CreateDatasetResponse:
        return await self._administration.write_dataset(CREATE_DATASET, request)

    async def UpdateDataset(
        self, request: admin_pb2.UpdateDatasetRequest, context: Context
    ) -> admin_pb2.UpdateDatasetResponse:
        return await self._administration.write_dataset(UPDATE_DATASET, request)

    async def SetDatasetCap(
        self, request: admin_pb2.SetDatasetCapRequest, context: Context
    ) -> admin_pb2.SetDatasetCapResponse:
        return await self._administration.set_dataset_cap(request, actor=_actor())

    # Grants

    async def CreateGrant(
        self, request: admin_pb2.CreateGrantRequest, context: Context
    ) -> admin_pb2.CreateGrantResponse:
        return await self._administration.create_grant(request, actor=_actor())

    # Budgets and archive

    async def AdjustAllocation(
        self, request: admin_pb2.AdjustAllocationRequest, context: Context
    ) -> admin_pb2.AdjustAllocationResponse:
        # The ledger's request adds the actor; the ledger refuses to go below spent + held.
        ledger_request = budget_pb2.AdjustAllocationRequest(
            user=request.user,
            dataset=request.dataset,
            allocation=request.allocation,
            actor=_actor(),
            reason=request.reason,
            request_id=request.request_id,
        )
        return await relay(
            self.peers.budget,
            "AdjustAllocation",
            ledger_request,
            admin_pb2.AdjustAllocationResponse,
        )

    async def VerifyLedgers(
        self, request: admin_pb2.VerifyLedgersRequest, context: Context
    ) -> admin_pb2.VerifyLedgersResponse:
        return await self._administration.verify_ledgers(request)

    # Calls that one service answers alone, as they are (relay.py).
    DeleteUser = MirroredRpc("admin", admin_pb2.DeleteUserResponse)
    ListUsers = MirroredRpc("admin", admin_pb2.ListUsersResponse)
    DeleteDataset = MirroredRpc("admin", admin_pb2.DeleteDatasetResponse)
    ListDatasets = MirroredRpc("admin", admin_pb2.ListDatasetsResponse)
    GetDatasetCap = MirroredRpc("budget", admin_pb2.GetDatasetCapResponse)
    DeleteGrant = MirroredRpc("admin", admin_pb2.DeleteGrantResponse)
    ListGrants = MirroredRpc("admin", admin_pb2.ListGrantsResponse)
    GetLedger = MirroredRpc("budget", admin_pb2.GetLedgerResponse)
    ListLedgers = MirroredRpc("budget", admin_pb2.ListLedgersResponse)
    ListLedgerEntries = MirroredRpc("budget", admin_pb2.ListLedgerEntriesResponse)
    ListArchivedQueries = MirroredRpc("admin", admin_pb2.ListArchivedQueriesResponse)

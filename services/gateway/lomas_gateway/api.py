"""Thin servicers of the public API: researcher (GatewayService) and administrator (AdminService).

Each method parses its request, calls the query lifecycle (`lifecycle.py`), the administration
(`administration.py`) or, for a read one service answers alone, that service, and maps the result
to its response. Who may call what is checked before any handler runs (`policy.py`).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeAlias, TypeVar

import grpc

from lomas.admin.v1 import admin_store_pb2
from lomas.budget.v1 import budget_pb2
from lomas.executor.v1 import executor_pb2
from lomas.gateway.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from lomas_common.queue import task_priority
from lomas_gateway.administration import Administration, Peer
from lomas_gateway.auth import current_caller
from lomas_gateway.lifecycle import Peers, QueryLifecycle
from lomas_gateway.limits import UserLimits

# The servicers read nothing from the context (the caller is in `current_caller()`), so its
# request and response types are left open.
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

# VerifyLedgers reads every entry of every ledger: it may take much longer than a usual call.
VERIFY_TIMEOUT_SECONDS = 600.0


class PageRequest(Protocol):
    """The paging fields every List request has (AIP-158)."""

    page_size: int
    page_token: str


PageRequestT = TypeVar("PageRequestT", bound=PageRequest)


async def relay_page(
    peer: Peer, method: str, store_request: PageRequestT, public: PageRequest
) -> Any:
    """One page of an internal service's list for a public List RPC: the caller's page size and
    token go through unchanged, because the service that owns the rows validates them, caps the
    page size and binds its tokens to the list (filters included)."""
    store_request.page_size = public.page_size
    store_request.page_token = public.page_token
    return await peer.call(method, store_request)


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, lifecycle: QueryLifecycle, peers: Peers, limits: UserLimits) -> None:
        self._lifecycle = lifecycle
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
    # (GatewayGuard) and hold one of the caller's free-call slots while they run.

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
        async with self._limits.free_call_slot(subject):
            access = await self._lifecycle.authorize(subject, request.dataset)
            cost = await self._lifecycle.estimate_cost(subject, access.dataset, request.query)
        return gateway_pb2.EstimateQueryCostResponse(cost=cost)

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
            # The slot is held through the padding, so padded queries count as in flight. The
            # caller's queries already in flight set this one's queue priority (fairness).
            async with self._limits.query_slot(subject) as slot, self._limits.padded():
                access = await self._lifecycle.authorize(subject, request.dataset)
                outcome = await self._lifecycle.run(
                    subject,
                    access,
                    request.query,
                    request.request_id,
                    fresh=request.fresh,
                    priority=task_priority(slot.already_in_flight),
                )
        return gateway_pb2.ExecuteQueryResponse(
            query_id=outcome.query_id,
            release=outcome.release,
            cost=outcome.cost,
            dummy=outcome.dummy,
            replay=outcome.replay,
        )

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


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Every RPC needs the admin role, checked by GatewayGuard (policy.py) before the handler runs.
    Writes go through the administration (what they mean across the stores); reads are relayed
    to the one service that owns the data."""

    def __init__(self, peers: Peers) -> None:
        self._peers = peers
        self._administration = Administration(peers.admin, peers.budget, peers.executor)

    # Users

    async def CreateUser(
        self, request: admin_pb2.CreateUserRequest, context: Context
    ) -> admin_pb2.CreateUserResponse:
        user = await self._administration.create_user(
            request.user, actor=_actor(), request_id=request.request_id
        )
        return admin_pb2.CreateUserResponse(user=user)

    async def DeleteUser(
        self, request: admin_pb2.DeleteUserRequest, context: Context
    ) -> admin_pb2.DeleteUserResponse:
        await self._administration.delete_user(request.name, request_id=request.request_id)
        return admin_pb2.DeleteUserResponse()

    async def ListUsers(
        self, request: admin_pb2.ListUsersRequest, context: Context
    ) -> admin_pb2.ListUsersResponse:
        page: admin_store_pb2.ListUsersResponse = await relay_page(
            self._peers.admin, "ListUsers", admin_store_pb2.ListUsersRequest(), request
        )
        return admin_pb2.ListUsersResponse(users=page.users, next_page_token=page.next_page_token)

    async def FreezeUser(
        self, request: admin_pb2.FreezeUserRequest, context: Context
    ) -> admin_pb2.FreezeUserResponse:
        frozen = await self._administration.freeze_user(
            request.name, actor=_actor(), reason=request.reason, request_id=request.request_id
        )
        return admin_pb2.FreezeUserResponse(user=frozen.user, ledgers=frozen.ledgers)

    async def UnfreezeUser(
        self, request: admin_pb2.UnfreezeUserRequest, context: Context
    ) -> admin_pb2.UnfreezeUserResponse:
        unfrozen = await self._administration.unfreeze_user(
            request.name, actor=_actor(), reason=request.reason, request_id=request.request_id
        )
        return admin_pb2.UnfreezeUserResponse(user=unfrozen.user, ledgers=unfrozen.ledgers)

    # Datasets

    async def CreateDataset(
        self, request: admin_pb2.CreateDatasetRequest, context: Context
    ) -> admin_pb2.CreateDatasetResponse:
        dataset = await self._administration.create_dataset(
            request.dataset, request_id=request.request_id
        )
        return admin_pb2.CreateDatasetResponse(dataset=dataset)

    async def UpdateDataset(
        self, request: admin_pb2.UpdateDatasetRequest, context: Context
    ) -> admin_pb2.UpdateDatasetResponse:
        dataset = await self._administration.update_dataset(
            request.dataset, request_id=request.request_id
        )
        return admin_pb2.UpdateDatasetResponse(dataset=dataset)

    async def DeleteDataset(
        self, request: admin_pb2.DeleteDatasetRequest, context: Context
    ) -> admin_pb2.DeleteDatasetResponse:
        await self._administration.delete_dataset(request.name, request_id=request.request_id)
        return admin_pb2.DeleteDatasetResponse()

    async def ListDatasets(
        self, request: admin_pb2.ListDatasetsRequest, context: Context
    ) -> admin_pb2.ListDatasetsResponse:
        page: admin_store_pb2.ListDatasetsResponse = await relay_page(
            self._peers.admin, "ListDatasets", admin_store_pb2.ListDatasetsRequest(), request
        )
        return admin_pb2.ListDatasetsResponse(
            datasets=page.datasets, next_page_token=page.next_page_token
        )

    async def SetDatasetCap(
        self, request: admin_pb2.SetDatasetCapRequest, context: Context
    ) -> admin_pb2.SetDatasetCapResponse:
        cap = await self._administration.set_dataset_cap(
            request.dataset,
            request.cap if request.HasField("cap") else None,
            actor=_actor(),
            reason=request.reason,
            request_id=request.request_id,
        )
        return admin_pb2.SetDatasetCapResponse(cap=cap)

    async def GetDatasetCap(
        self, request: admin_pb2.GetDatasetCapRequest, context: Context
    ) -> admin_pb2.GetDatasetCapResponse:
        found: budget_pb2.GetDatasetCapResponse = await self._peers.budget.call(
            "GetDatasetCap", budget_pb2.GetDatasetCapRequest(dataset=request.dataset)
        )
        return admin_pb2.GetDatasetCapResponse(cap=found.cap)

    # Grants

    async def CreateGrant(
        self, request: admin_pb2.CreateGrantRequest, context: Context
    ) -> admin_pb2.CreateGrantResponse:
        grant = await self._administration.create_grant(
            request.grant,
            request.already_spent if request.HasField("already_spent") else None,
            actor=_actor(),
            request_id=request.request_id,
        )
        return admin_pb2.CreateGrantResponse(grant=grant)

    async def DeleteGrant(
        self, request: admin_pb2.DeleteGrantRequest, context: Context
    ) -> admin_pb2.DeleteGrantResponse:
        await self._administration.delete_grant(
            request.user, request.dataset, request_id=request.request_id
        )
        return admin_pb2.DeleteGrantResponse()

    async def ListGrants(
        self, request: admin_pb2.ListGrantsRequest, context: Context
    ) -> admin_pb2.ListGrantsResponse:
        page: admin_store_pb2.ListGrantsResponse = await relay_page(
            self._peers.admin,
            "ListGrants",
            admin_store_pb2.ListGrantsRequest(user=request.user),
            request,
        )
        return admin_pb2.ListGrantsResponse(
            grants=page.grants, next_page_token=page.next_page_token
        )

    # Budgets and archive

    async def AdjustAllocation(
        self, request: admin_pb2.AdjustAllocationRequest, context: Context
    ) -> admin_pb2.AdjustAllocationResponse:
        ledger = await self._administration.adjust_allocation(
            request.user,
            request.dataset,
            request.allocation,
            actor=_actor(),
            reason=request.reason,
            request_id=request.request_id,
        )
        return admin_pb2.AdjustAllocationResponse(ledger=ledger)

    async def GetLedger(
        self, request: admin_pb2.GetLedgerRequest, context: Context
    ) -> admin_pb2.GetLedgerResponse:
        found: budget_pb2.GetLedgerResponse = await self._peers.budget.call(
            "GetLedger",
            budget_pb2.GetLedgerRequest(
                user=request.user, dataset=request.dataset, delta=request.delta
            ),
        )
        return admin_pb2.GetLedgerResponse(ledger=found.ledger)

    async def ListLedgers(
        self, request: admin_pb2.ListLedgersRequest, context: Context
    ) -> admin_pb2.ListLedgersResponse:
        page: budget_pb2.ListLedgersResponse = await relay_page(
            self._peers.budget,
            "ListLedgers",
            budget_pb2.ListLedgersRequest(user=request.user, delta=request.delta),
            request,
        )
        return admin_pb2.ListLedgersResponse(
            ledgers=page.ledgers, next_page_token=page.next_page_token
        )

    async def ListLedgerEntries(
        self, request: admin_pb2.ListLedgerEntriesRequest, context: Context
    ) -> admin_pb2.ListLedgerEntriesResponse:
        page: budget_pb2.ListLedgerEntriesResponse = await relay_page(
            self._peers.budget,
            "ListLedgerEntries",
            budget_pb2.ListLedgerEntriesRequest(user=request.user, dataset=request.dataset),
            request,
        )
        return admin_pb2.ListLedgerEntriesResponse(
            ledger=page.ledger, entries=page.entries, next_page_token=page.next_page_token
        )

    async def VerifyLedgers(
        self, request: admin_pb2.VerifyLedgersRequest, context: Context
    ) -> admin_pb2.VerifyLedgersResponse:
        report: budget_pb2.VerifyLedgersResponse = await self._peers.budget.call(
            "VerifyLedgers", budget_pb2.VerifyLedgersRequest(), timeout=VERIFY_TIMEOUT_SECONDS
        )
        return admin_pb2.VerifyLedgersResponse(
            ledgers_checked=report.ledgers_checked,
            entries_checked=report.entries_checked,
            problems=report.problems,
        )

    async def ListArchivedQueries(
        self, request: admin_pb2.ListArchivedQueriesRequest, context: Context
    ) -> admin_pb2.ListArchivedQueriesResponse:
        page: admin_store_pb2.ListArchivedQueriesResponse = await relay_page(
            self._peers.admin,
            "ListArchivedQueries",
            admin_store_pb2.ListArchivedQueriesRequest(user=request.user, dataset=request.dataset),
            request,
        )
        return admin_pb2.ListArchivedQueriesResponse(
            queries=page.queries, next_page_token=page.next_page_token
        )

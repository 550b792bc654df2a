"""Thin servicers of the public API: researcher (GatewayService) and administrator (AdminService)."""

from __future__ import annotations

from lomas.admin.v1 import admin_store_pb2, resources_pb2
from lomas.budget.v1 import budget_pb2
from lomas.common.v1 import dataset_pb2
from lomas.executor.v1 import executor_pb2
from lomas.gateway.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from lomas_common.convert import definition_from_proto, privacy_loss_from_proto
from lomas_common.errors import InvalidArgument
from lomas_common.queue import task_priority
from lomas_gateway.auth import current_caller
from lomas_gateway.lifecycle import Peers, QueryLifecycle
from lomas_gateway.limits import UserLimits


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, lifecycle: QueryLifecycle, peers: Peers, limits: UserLimits) -> None:
        self._lifecycle = lifecycle
        self._peers = peers
        self._limits = limits

    async def ListAccessibleDatasets(self, request, context):  # type: ignore[no-untyped-def]
        names, token = await self._lifecycle.grant_dataset_names(
            current_caller().subject, request.page_size, request.page_token
        )
        return gateway_pb2.ListAccessibleDatasetsResponse(
            dataset_names=names, next_page_token=token
        )

    async def GetDatasetMetadata(self, request, context):  # type: ignore[no-untyped-def]
        access = await self._lifecycle.authorize(current_caller().subject, request.dataset)
        return gateway_pb2.GetDatasetMetadataResponse(metadata_json=access.dataset.metadata_json)

    # Free calls (dummy dataset, cost estimate, dummy query) are rate-limited like every call
    # (GatewayGuard) and hold one of the caller's free-call slots while they run.

    async def GetDummyDataset(self, request, context):  # type: ignore[no-untyped-def]
        subject = current_caller().subject
        async with self._limits.free_call_slot(subject):
            access = await self._lifecycle.authorize(subject, request.dataset)
            rows = self._lifecycle.check_dummy_rows(request.row_count)
            response = await self._peers.executor.call(
                "GetDummyDataset",
                executor_pb2.GetDummyDatasetRequest(
                    dataset=access.dataset, row_count=rows, seed=request.seed
                ),
            )
        return gateway_pb2.GetDummyDatasetResponse(arrow_ipc=response.arrow_ipc)

    async def EstimateQueryCost(self, request, context):  # type: ignore[no-untyped-def]
        subject = current_caller().subject
        async with self._limits.free_call_slot(subject):
            access = await self._lifecycle.authorize(subject, request.dataset)
            response = await self._lifecycle.estimate_cost(subject, access.dataset, request.query)
        return gateway_pb2.EstimateQueryCostResponse(cost=response.cost)

    async def ExecuteQuery(self, request, context):  # type: ignore[no-untyped-def]
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

    async def GetBudget(self, request, context):  # type: ignore[no-untyped-def]
        subject = current_caller().subject
        access = await self._lifecycle.authorize(subject, request.dataset)
        ledger = (
            await self._peers.budget.call(
                "GetLedger",
                budget_pb2.GetLedgerRequest(
                    user=subject, dataset=access.dataset.name, delta=request.delta
                ),
            )
        ).ledger
        response = gateway_pb2.GetBudgetResponse(
            definition=ledger.definition,
            initial=ledger.allocation,
            spent=ledger.spent,
            reserved=ledger.reserved,
            remaining=ledger.remaining,
        )
        if ledger.HasField("remaining_at_delta"):
            response.remaining_at_delta.CopyFrom(ledger.remaining_at_delta)
        return response

    async def ListQueries(self, request, context):  # type: ignore[no-untyped-def]
        subject = current_caller().subject
        access = await self._lifecycle.authorize(subject, request.dataset)
        response = await self._peers.admin.call(
            "ListArchivedQueries",
            admin_store_pb2.ListArchivedQueriesRequest(
                user=subject,
                dataset=access.dataset.name,
                page_size=request.page_size,
                page_token=request.page_token,
            ),
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
                for q in response.queries
            ],
            next_page_token=response.next_page_token,
        )


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Every RPC needs the admin role, checked by GatewayGuard (policy.py) before the handler runs."""

    def __init__(self, peers: Peers) -> None:
        self._peers = peers

    @staticmethod
    def _actor() -> str:
        """The admin making the call (GatewayGuard has already checked the admin role)."""
        return current_caller().subject

    async def CreateUser(self, request, context):  # type: ignore[no-untyped-def]
        response = await self._peers.admin.call(
            "CreateUser",
            admin_store_pb2.CreateUserRequest(user=request.user, request_id=request.request_id),
        )
        if not response.user.may_query:
            # One switch: a user created unable to query is frozen in the ledger too, so that
            # UnfreezeUser lets them query (Lomas collections can say `may_query: false`).
            await self._peers.budget.call(
                "FreezeUser",
                budget_pb2.FreezeUserRequest(
                    user=request.user.name,
                    actor=self._actor(),
                    reason="created with may_query false",
                    request_id=f"{request.request_id}/freeze" if request.request_id else "",
                ),
            )
        return admin_pb2.CreateUserResponse(user=response.user)

    async def DeleteUser(self, request, context):  # type: ignore[no-untyped-def]
        await self._peers.admin.call(
            "DeleteUser", admin_store_pb2.DeleteUserRequest(name=request.name)
        )
        return admin_pb2.DeleteUserResponse()

    async def ListUsers(self, request, context):  # type: ignore[no-untyped-def]
        response = await self._peers.admin.call(
            "ListUsers",
            admin_store_pb2.ListUsersRequest(
                page_size=request.page_size, page_token=request.page_token
            ),
        )
        return admin_pb2.ListUsersResponse(
            users=response.users, next_page_token=response.next_page_token
        )

    async def _validated(self, dataset: resources_pb2.Dataset) -> resources_pb2.Dataset:
        """The dataset with its metadata validated and normalised by an executor."""
        validated = await self._peers.executor.call(
            "ValidateDataset",
            executor_pb2.ValidateDatasetRequest(
                dataset=dataset_pb2.DatasetDescriptor(
                    name=dataset.name,
                    source=dataset.source,
                    format=dataset.format,
                    metadata_json=dataset.metadata_json,
                )
            ),
        )
        stored = resources_pb2.Dataset()
        stored.CopyFrom(dataset)
        stored.metadata_json = validated.dataset.metadata_json
        return stored

    async def CreateDataset(self, request, context):  # type: ignore[no-untyped-def]
        response = await self._peers.admin.call(
            "CreateDataset",
            admin_store_pb2.CreateDatasetRequest(
                dataset=await self._validated(request.dataset), request_id=request.request_id
            ),
        )
        return admin_pb2.CreateDatasetResponse(dataset=response.dataset)

    async def UpdateDataset(self, request, context):  # type: ignore[no-untyped-def]
        response = await self._peers.admin.call(
            "UpdateDataset",
            admin_store_pb2.UpdateDatasetRequest(dataset=await self._validated(request.dataset)),
        )
        return admin_pb2.UpdateDatasetResponse(dataset=response.dataset)

    async def DeleteDataset(self, request, context):  # type: ignore[no-untyped-def]
        await self._peers.admin.call(
            "DeleteDataset", admin_store_pb2.DeleteDatasetRequest(name=request.name)
        )
        return admin_pb2.DeleteDatasetResponse()

    async def ListDatasets(self, request, context):  # type: ignore[no-untyped-def]
        response = await self._peers.admin.call(
            "ListDatasets",
            admin_store_pb2.ListDatasetsRequest(
                page_size=request.page_size, page_token=request.page_token
            ),
        )
        return admin_pb2.ListDatasetsResponse(
            datasets=response.datasets, next_page_token=response.next_page_token
        )

    async def CreateGrant(self, request, context):  # type: ignore[no-untyped-def]
        actor = self._actor()
        grant = request.grant
        allocation = privacy_loss_from_proto(grant.allocation, field="grant.allocation")
        if (
            grant.definition
            and definition_from_proto(grant.definition) is not allocation.definition
        ):
            raise InvalidArgument(
                "grant.definition does not match the kind of grant.allocation",
                reason="PRIVACY_DEFINITION_MISMATCH",
            )
        # Both must exist before a ledger is opened (admins may learn that names do not exist).
        await self._peers.admin.call("GetUser", admin_store_pb2.GetUserRequest(name=grant.user))
        await self._peers.admin.call(
            "GetDataset", admin_store_pb2.GetDatasetRequest(name=grant.dataset)
        )
        opened = await self._peers.budget.call(
            "OpenLedger",
            budget_pb2.OpenLedgerRequest(
                user=grant.user,
                dataset=grant.dataset,
                allocation=grant.allocation,
                already_spent=request.already_spent if request.HasField("already_spent") else None,
                actor=actor,
                request_id=request.request_id,
            ),
        )
        stored = resources_pb2.Grant(
            user=grant.user,
            dataset=grant.dataset,
            definition=opened.ledger.definition,
            allocation=opened.ledger.allocation,
        )
        response = await self._peers.admin.call(
            "CreateGrant",
            admin_store_pb2.CreateGrantRequest(grant=stored, request_id=request.request_id),
        )
        return admin_pb2.CreateGrantResponse(grant=response.grant)

    async def DeleteGrant(self, request, context):  # type: ignore[no-untyped-def]
        await self._peers.admin.call(
            "DeleteGrant",
            admin_store_pb2.DeleteGrantRequest(user=request.user, dataset=request.dataset),
        )
        return admin_pb2.DeleteGrantResponse()

    async def ListGrants(self, request, context):  # type: ignore[no-untyped-def]
        response = await self._peers.admin.call(
            "ListGrants",
            admin_store_pb2.ListGrantsRequest(
                user=request.user, page_size=request.page_size, page_token=request.page_token
            ),
        )
        return admin_pb2.ListGrantsResponse(
            grants=response.grants, next_page_token=response.next_page_token
        )

    async def ListLedgers(self, request, context):  # type: ignore[no-untyped-def]
        response = await self._peers.budget.call(
            "ListLedgers",
            budget_pb2.ListLedgersRequest(
                user=request.user,
                page_size=request.page_size,
                page_token=request.page_token,
                delta=request.delta,
            ),
        )
        return admin_pb2.ListLedgersResponse(
            ledgers=response.ledgers, next_page_token=response.next_page_token
        )

    async def ListArchivedQueries(self, request, context):  # type: ignore[no-untyped-def]
        response = await self._peers.admin.call(
            "ListArchivedQueries",
            admin_store_pb2.ListArchivedQueriesRequest(
                user=request.user,
                dataset=request.dataset,
                page_size=request.page_size,
                page_token=request.page_token,
            ),
        )
        return admin_pb2.ListArchivedQueriesResponse(
            queries=response.queries, next_page_token=response.next_page_token
        )

    async def VerifyLedgers(self, request, context):  # type: ignore[no-untyped-def]
        response = await self._peers.budget.call(
            "VerifyLedgers", budget_pb2.VerifyLedgersRequest(), timeout=600.0
        )
        return admin_pb2.VerifyLedgersResponse(
            ledgers_checked=response.ledgers_checked,
            entries_checked=response.entries_checked,
            problems=response.problems,
        )

    async def GetLedger(self, request, context):  # type: ignore[no-untyped-def]
        response = await self._peers.budget.call(
            "GetLedger",
            budget_pb2.GetLedgerRequest(
                user=request.user, dataset=request.dataset, delta=request.delta
            ),
        )
        return admin_pb2.GetLedgerResponse(ledger=response.ledger)

    async def ListLedgerEntries(self, request, context):  # type: ignore[no-untyped-def]
        response = await self._peers.budget.call(
            "ListLedgerEntries",
            budget_pb2.ListLedgerEntriesRequest(
                user=request.user,
                dataset=request.dataset,
                page_size=request.page_size,
                page_token=request.page_token,
            ),
        )
        return admin_pb2.ListLedgerEntriesResponse(
            ledger=response.ledger,
            entries=response.entries,
            next_page_token=response.next_page_token,
        )

    async def AdjustAllocation(self, request, context):  # type: ignore[no-untyped-def]
        actor = self._actor()
        response = await self._peers.budget.call(
            "AdjustAllocation",
            budget_pb2.AdjustAllocationRequest(
                user=request.user,
                dataset=request.dataset,
                allocation=request.allocation,
                actor=actor,
                reason=request.reason,
                request_id=request.request_id,
            ),
        )
        return admin_pb2.AdjustAllocationResponse(ledger=response.ledger)

    async def FreezeUser(self, request, context):  # type: ignore[no-untyped-def]
        actor = self._actor()
        await self._set_may_query(request.name, may_query=False)
        response = await self._peers.budget.call(
            "FreezeUser",
            budget_pb2.FreezeUserRequest(
                user=request.name,
                actor=actor,
                reason=request.reason,
                request_id=request.request_id,
            ),
        )
        return admin_pb2.FreezeUserResponse(user=response.user, ledgers=response.ledgers)

    async def UnfreezeUser(self, request, context):  # type: ignore[no-untyped-def]
        actor = self._actor()
        await self._set_may_query(request.name, may_query=True)
        response = await self._peers.budget.call(
            "UnfreezeUser",
            budget_pb2.UnfreezeUserRequest(
                user=request.name,
                actor=actor,
                reason=request.reason,
                request_id=request.request_id,
            ),
        )
        return admin_pb2.UnfreezeUserResponse(user=response.user, ledgers=response.ledgers)

    async def _set_may_query(self, name: str, *, may_query: bool) -> None:
        """The admin store's copy of the freeze, which the gateway checks before a query, set
        before the ledger's (NOT_FOUND for an unknown user changes nothing). Until both are set,
        either one stops the user, so a failure in between never lets a frozen user query."""
        await self._peers.admin.call(
            "SetUserMayQuery",
            admin_store_pb2.SetUserMayQueryRequest(name=name, may_query=may_query),
        )

    async def SetDatasetCap(self, request, context):  # type: ignore[no-untyped-def]
        actor = self._actor()
        await self._peers.admin.call(
            "GetDataset", admin_store_pb2.GetDatasetRequest(name=request.dataset)
        )
        response = await self._peers.budget.call(
            "SetDatasetCap",
            budget_pb2.SetDatasetCapRequest(
                dataset=request.dataset,
                cap=request.cap if request.HasField("cap") else None,
                actor=actor,
                reason=request.reason,
                request_id=request.request_id,
            ),
        )
        return admin_pb2.SetDatasetCapResponse(cap=response.cap)

    async def GetDatasetCap(self, request, context):  # type: ignore[no-untyped-def]
        response = await self._peers.budget.call(
            "GetDatasetCap", budget_pb2.GetDatasetCapRequest(dataset=request.dataset)
        )
        return admin_pb2.GetDatasetCapResponse(cap=response.cap)

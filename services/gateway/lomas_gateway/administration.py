"""What an administrator's operation means across the stores: the domain of the AdminService.

An operation of the admin API often touches more than one internal service: users, datasets and
grants live in the admin store, allocations and the freeze in the budget ledger, and an executor
validates dataset metadata. This module says which services each operation touches, in what order,
and why that order is safe after a failure in between. The AdminService servicer (`api.py`) only
parses the public request, calls one method here and maps the result; read-only calls that one
service answers alone go straight through it.

It orchestrates peers, so it speaks their protobuf messages, never gRPC itself: its unit tests run
it against in-memory fakes of the peers.

Idempotency (AIP-155): each write of an operation carries the administrator's `request_id` to the
service it writes to, so a retry changes nothing twice. A step that could meet the same id from
another operation at the same method (CreateUser's freeze and FreezeUser both reach the ledger's
FreezeUser) gets an id derived from it (`step_id`).
"""

from __future__ import annotations

from typing import Any, Protocol

from lomas.admin.v1 import admin_store_pb2, resources_pb2
from lomas.budget.v1 import budget_pb2
from lomas.common.v1 import dataset_pb2, privacy_pb2
from lomas.executor.v1 import executor_pb2
from lomas_common.convert import definition_from_proto, privacy_loss_from_proto
from lomas_common.errors import InvalidArgument


class Peer(Protocol):
    """A client of one internal service (`lomas_common.peers.AsyncPeer` in production)."""

    async def call(self, method: str, request: Any, *, timeout: float | None = None) -> Any: ...


def step_id(request_id: str, step: str) -> str:
    """The request id of a secondary step of an operation ("" when the caller sent none)."""
    return f"{request_id}/{step}" if request_id else ""


class Administration:
    """The admin API's operations that write, or that check across services before they write."""

    def __init__(self, admin: Peer, budget: Peer, executor: Peer) -> None:
        self._admin = admin
        self._budget = budget
        self._executor = executor

    # Users -------------------------------------------------------------------------------------

    async def create_user(
        self, user: resources_pb2.User, *, actor: str, request_id: str
    ) -> resources_pb2.User:
        """Create a user. One switch: a user created unable to query (Lomas collections can say
        `may_query: false`) is frozen in the ledger too, so that UnfreezeUser lets them query."""
        created: admin_store_pb2.CreateUserResponse = await self._admin.call(
            "CreateUser", admin_store_pb2.CreateUserRequest(user=user, request_id=request_id)
        )
        if not created.user.may_query:
            await self._budget.call(
                "FreezeUser",
                budget_pb2.FreezeUserRequest(
                    user=user.name,
                    actor=actor,
                    reason="created with may_query false",
                    request_id=step_id(request_id, "freeze"),
                ),
            )
        return created.user

    async def delete_user(self, name: str, *, request_id: str) -> None:
        """Delete a user and the user's grants (ledgers and the archive keep their history)."""
        await self._admin.call(
            "DeleteUser", admin_store_pb2.DeleteUserRequest(name=name, request_id=request_id)
        )

    async def freeze_user(
        self, name: str, *, actor: str, reason: str, request_id: str
    ) -> budget_pb2.FreezeUserResponse:
        """Stop a user from starting queries: the admin store's copy first, then the ledger's."""
        await self._set_may_query(name, may_query=False, request_id=request_id)
        response: budget_pb2.FreezeUserResponse = await self._budget.call(
            "FreezeUser",
            budget_pb2.FreezeUserRequest(
                user=name, actor=actor, reason=reason, request_id=request_id
            ),
        )
        return response

    async def unfreeze_user(
        self, name: str, *, actor: str, reason: str, request_id: str
    ) -> budget_pb2.UnfreezeUserResponse:
        """Let a frozen user start queries again: the admin store's copy first, then the ledger's."""
        await self._set_may_query(name, may_query=True, request_id=request_id)
        response: budget_pb2.UnfreezeUserResponse = await self._budget.call(
            "UnfreezeUser",
            budget_pb2.UnfreezeUserRequest(
                user=name, actor=actor, reason=reason, request_id=request_id
            ),
        )
        return response

    async def _set_may_query(self, name: str, *, may_query: bool, request_id: str) -> None:
        """The admin store's copy of the freeze, which the gateway checks before a query, set
        before the ledger's (NOT_FOUND for an unknown user changes nothing). Until both are set,
        either one stops the user, so a failure in between never lets a frozen user query."""
        await self._admin.call(
            "SetUserMayQuery",
            admin_store_pb2.SetUserMayQueryRequest(
                name=name, may_query=may_query, request_id=request_id
            ),
        )

    # Datasets ----------------------------------------------------------------------------------

    async def create_dataset(
        self, dataset: resources_pb2.Dataset, *, request_id: str
    ) -> resources_pb2.Dataset:
        """Register a dataset whose metadata an executor has validated and normalised."""
        created: admin_store_pb2.CreateDatasetResponse = await self._admin.call(
            "CreateDataset",
            admin_store_pb2.CreateDatasetRequest(
                dataset=await self._validated(dataset), request_id=request_id
            ),
        )
        return created.dataset

    async def update_dataset(
        self, dataset: resources_pb2.Dataset, *, request_id: str
    ) -> resources_pb2.Dataset:
        """Replace a dataset's source, format and metadata (validated first); the store bumps its
        version, so cached costs and free replays of the old version no longer apply."""
        updated: admin_store_pb2.UpdateDatasetResponse = await self._admin.call(
            "UpdateDataset",
            admin_store_pb2.UpdateDatasetRequest(
                dataset=await self._validated(dataset), request_id=request_id
            ),
        )
        return updated.dataset

    async def delete_dataset(self, name: str, *, request_id: str) -> None:
        """Delete a dataset and the grants on it (ledgers and the archive keep their history)."""
        await self._admin.call(
            "DeleteDataset", admin_store_pb2.DeleteDatasetRequest(name=name, request_id=request_id)
        )

    async def _validated(self, dataset: resources_pb2.Dataset) -> resources_pb2.Dataset:
        """The dataset with its metadata validated and normalised by an executor (no data read)."""
        validated: executor_pb2.ValidateDatasetResponse = await self._executor.call(
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

    async def set_dataset_cap(
        self,
        dataset: str,
        cap: privacy_pb2.PrivacyLoss | None,
        *,
        actor: str,
        reason: str,
        request_id: str,
    ) -> budget_pb2.DatasetCap:
        """Set (or remove, with None) what all users together may spend on a dataset. The ledger
        knows no datasets, so the admin store is asked first whether it exists."""
        await self._admin.call("GetDataset", admin_store_pb2.GetDatasetRequest(name=dataset))
        response: budget_pb2.SetDatasetCapResponse = await self._budget.call(
            "SetDatasetCap",
            budget_pb2.SetDatasetCapRequest(
                dataset=dataset, cap=cap, actor=actor, reason=reason, request_id=request_id
            ),
        )
        return response.cap

    # Grants and budgets ------------------------------------------------------------------------

    async def create_grant(
        self,
        grant: resources_pb2.Grant,
        already_spent: privacy_pb2.PrivacyLoss | None,
        *,
        actor: str,
        request_id: str,
    ) -> resources_pb2.Grant:
        """Grant a user access to a dataset with a budget.

        Order: check both names exist (admins may learn that a name does not exist), open the
        ledger, then record the grant. The grant is what lets the user in, so it is written last:
        a failure in between leaves a ledger nobody can use yet, and a retry with the same request
        id finds the ledger already open and records the grant.
        """
        allocation = privacy_loss_from_proto(grant.allocation, field="grant.allocation")
        if (
            grant.definition
            and definition_from_proto(grant.definition) is not allocation.definition
        ):
            raise InvalidArgument(
                "grant.definition does not match the kind of grant.allocation",
                reason="PRIVACY_DEFINITION_MISMATCH",
            )
        await self._admin.call("GetUser", admin_store_pb2.GetUserRequest(name=grant.user))
        await self._admin.call("GetDataset", admin_store_pb2.GetDatasetRequest(name=grant.dataset))
        opened: budget_pb2.OpenLedgerResponse = await self._budget.call(
            "OpenLedger",
            budget_pb2.OpenLedgerRequest(
                user=grant.user,
                dataset=grant.dataset,
                allocation=grant.allocation,
                already_spent=already_spent,
                actor=actor,
                request_id=request_id,
            ),
        )
        # The ledger's definition and rounded-down allocation are the grant's.
        stored = resources_pb2.Grant(
            user=grant.user,
            dataset=grant.dataset,
            definition=opened.ledger.definition,
            allocation=opened.ledger.allocation,
        )
        created: admin_store_pb2.CreateGrantResponse = await self._admin.call(
            "CreateGrant", admin_store_pb2.CreateGrantRequest(grant=stored, request_id=request_id)
        )
        return created.grant

    async def delete_grant(self, user: str, dataset: str, *, request_id: str) -> None:
        """Revoke a grant: the user can no longer query the dataset; the ledger keeps its history."""
        await self._admin.call(
            "DeleteGrant",
            admin_store_pb2.DeleteGrantRequest(user=user, dataset=dataset, request_id=request_id),
        )

    async def adjust_allocation(
        self,
        user: str,
        dataset: str,
        allocation: privacy_pb2.PrivacyLoss,
        *,
        actor: str,
        reason: str,
        request_id: str,
    ) -> budget_pb2.Ledger:
        """Raise or lower a ledger's allocation (the ledger refuses to go below spent + held)."""
        response: budget_pb2.AdjustAllocationResponse = await self._budget.call(
            "AdjustAllocation",
            budget_pb2.AdjustAllocationRequest(
                user=user,
                dataset=dataset,
                allocation=allocation,
                actor=actor,
                reason=reason,
                request_id=request_id,
            ),
        )
        return response.ledger

"""What an administrator's operation means across the stores: the domain of the AdminService.

An operation of the admin API often touches more than one internal service: users, datasets and
grants live in the admin store, allocations and the freeze in the budget ledger, and an executor
validates dataset metadata. This module says which services each operation touches, in what order,
and why that order is safe after a failure in between. Each operation takes the public request and
the acting administrator (named by the servicer) and returns the public response, so the
AdminService servicer (`api.py`) only delegates. A call that one service answers alone (a read, a
delete, an allocation change) is not an operation here: the servicer relays it (`relay.py`).

It orchestrates peers, so it speaks their protobuf messages, never gRPC itself: its unit tests run
it against in-memory fakes of the peers.

Idempotency (AIP-155): each write of an operation carries the administrator's `request_id` to the
service it writes to, so a retry changes nothing twice. A step that could meet the same id from
another operation at the same method (CreateUser's freeze and FreezeUser both reach the ledger's
FreezeUser) gets an id derived from it (`step_id`).

Twin RPCs that differ only in the names of what they call (FreezeUser and UnfreezeUser,
CreateDataset and UpdateDataset) share one operation; a small table names what differs
(`UserSwitch`, `DatasetWrite`).

VerifyLedgers is one too: the ledger verifies itself (balances, hash chains, checkpoints), then the
ledger and the query archive are reconciled with each other (`reconcile.py`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Generic

from lomas.admin.v1 import admin_store_pb2, resources_pb2
from lomas.budget.v1 import budget_pb2
from lomas.common.v1 import dataset_pb2, privacy_pb2
from lomas.executor.v1 import executor_pb2
from lomas.gateway.v1 import admin_pb2
from lomas_common.convert import definition_from_proto, privacy_loss_from_proto
from lomas_common.errors import InvalidArgument
from lomas_gateway.reconcile import reconcile
from lomas_gateway.relay import Peer, ResponseT, relay

log = logging.getLogger(__name__)

# VerifyLedgers reads every entry of every ledger: it may take much longer than a usual call.
VERIFY_TIMEOUT_SECONDS = 600.0


def step_id(request_id: str, step: str) -> str:
    """The request id of a secondary step of an operation ("" when the caller sent none)."""
    return f"{request_id}/{step}" if request_id else ""


@dataclass(frozen=True)
class UserSwitch(Generic[ResponseT]):
    """One way of the switch that FreezeUser and UnfreezeUser turn: the admin store's `may_query`
    and the ledger's freeze, which the ledger records with the method named here."""

    may_query: bool
    ledger_method: str
    ledger_request: type[budget_pb2.FreezeUserRequest] | type[budget_pb2.UnfreezeUserRequest]
    response: type[ResponseT]


FREEZE = UserSwitch(
    may_query=False,
    ledger_method="FreezeUser",
    ledger_request=budget_pb2.FreezeUserRequest,
    response=admin_pb2.FreezeUserResponse,
)
UNFREEZE = UserSwitch(
    may_query=True,
    ledger_method="UnfreezeUser",
    ledger_request=budget_pb2.UnfreezeUserRequest,
    response=admin_pb2.UnfreezeUserResponse,
)


@dataclass(frozen=True)
class DatasetWrite(Generic[ResponseT]):
    """One of the two writes of a whole dataset, CreateDataset and UpdateDataset: the admin store's
    method that takes the validated dataset."""

    store_method: str
    store_request: (
        type[admin_store_pb2.CreateDatasetRequest] | type[admin_store_pb2.UpdateDatasetRequest]
    )
    response: type[ResponseT]


CREATE_DATASET = DatasetWrite(
    store_method="CreateDataset",
    store_request=admin_store_pb2.CreateDatasetRequest,
    response=admin_pb2.CreateDatasetResponse,
)
UPDATE_DATASET = DatasetWrite(
    store_method="UpdateDataset",
    store_request=admin_store_pb2.UpdateDatasetRequest,
    response=admin_pb2.UpdateDatasetResponse,
)


class Administration:
    """The admin API's operations that span services: they write to more than one, or check in one
    service before they write to another."""

    def __init__(self, admin: Peer, budget: Peer, executor: Peer) -> None:
        self._admin = admin
        self._budget = budget
        self._executor = executor

    # Users -------------------------------------------------------------------------------------

    async def create_user(
        self, request: admin_pb2.CreateUserRequest, *, actor: str
    ) -> admin_pb2.CreateUserResponse:
        """Create a user. One switch: a user created unable to query (Lomas collections can say
        `may_query: false`) is frozen in the ledger too, so that UnfreezeUser lets them query."""
        created: admin_store_pb2.CreateUserResponse = await self._admin.call(
            "CreateUser",
            admin_store_pb2.CreateUserRequest(user=request.user, request_id=request.request_id),
        )
        if not created.user.may_query:
            await self._budget.call(
                "FreezeUser",
                budget_pb2.FreezeUserRequest(
                    user=request.user.name,
                    actor=actor,
                    reason="created with may_query false",
                    request_id=step_id(request.request_id, "freeze"),
                ),
            )
        return admin_pb2.CreateUserResponse(user=created.user)

    async def switch_user(
        self,
        switch: UserSwitch[ResponseT],
        request: admin_pb2.FreezeUserRequest | admin_pb2.UnfreezeUserRequest,
        *,
        actor: str,
    ) -> ResponseT:
        """Stop a user from starting queries (FREEZE) or let them again (UNFREEZE): the admin
        store's copy, which the gateway checks before a query, is set before the ledger's
        (NOT_FOUND for an unknown user changes nothing). Until both are set, either one stops the
        user, so a failure in between never lets a frozen user query."""
        await self._admin.call(
            "SetUserMayQuery",
            admin_store_pb2.SetUserMayQueryRequest(
                name=request.name, may_query=switch.may_query, request_id=request.request_id
            ),
        )
        ledger_request = switch.ledger_request(
            user=request.name, actor=actor, reason=request.reason, request_id=request.request_id
        )
        return await relay(self._budget, switch.ledger_method, ledger_request, switch.response)

    # Datasets ----------------------------------------------------------------------------------

    async def write_dataset(
        self,
        write: DatasetWrite[ResponseT],
        request: admin_pb2.CreateDatasetRequest | admin_pb2.UpdateDatasetRequest,
    ) -> ResponseT:
        """Register a dataset (CREATE_DATASET) or replace its source, format and metadata
        (UPDATE_DATASET: the store bumps its version, so cached costs and free replays of the old
        version no longer apply), in both cases with the metadata that an executor has validated
        and normalised."""
        store_request = write.store_request(
            dataset=await self._validated(request.dataset), request_id=request.request_id
        )
        return await relay(self._admin, write.store_method, store_request, write.response)

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
        self, request: admin_pb2.SetDatasetCapRequest, *, actor: str
    ) -> admin_pb2.SetDatasetCapResponse:
        """Set (or remove, with no cap) what all users together may spend on a dataset. The ledger
        knows no datasets, so the admin store is asked first whether it exists."""
        await self._admin.call(
            "GetDataset", admin_store_pb2.GetDatasetRequest(name=request.dataset)
        )
        ledger_request = budget_pb2.SetDatasetCapRequest(
            dataset=request.dataset,
            cap=request.cap if request.HasField("cap") else None,
            actor=actor,
            reason=request.reason,
            request_id=request.request_id,
        )
        return await relay(
            self._budget, "SetDatasetCap", ledger_request, admin_pb2.SetDatasetCapResponse
        )

    # Grants ------------------------------------------------------------------------------------

    async def create_grant(
        self, request: admin_pb2.CreateGrantRequest, *, actor: str
    ) -> admin_pb2.CreateGrantResponse:
        """Grant a user access to a dataset with a budget.

        Order: check both names exist (admins may learn that a name does not exist), open the
        ledger, then record the grant. The grant is what lets the user in, so it is written last:
        a failure in between leaves a ledger nobody can use yet, and a retry with the same request
        id finds the ledger already open and records the grant.
        """
        grant = request.grant
        _require_every_amount(grant.allocation, "grant.allocation")
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
                already_spent=(
                    request.already_spent if request.HasField("already_spent") else None
                ),
                actor=actor,
                request_id=request.request_id,
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
            "CreateGrant",
            admin_store_pb2.CreateGrantRequest(grant=stored, request_id=request.request_id),
        )
        return admin_pb2.CreateGrantResponse(grant=created.grant)

    # Verification ------------------------------------------------------------------------------

    async def verify_ledgers(
        self, request: admin_pb2.VerifyLedgersRequest
    ) -> admin_pb2.VerifyLedgersResponse:
        """The ledger's own verification (every balance, hash chain, reservation and checkpoint),
        then the reconciliation of the ledger with the query archive: one list of problems, the
        ledger's first. The ledger is read before the archive (see `reconcile.py`)."""
        verified: budget_pb2.VerifyLedgersResponse = await self._budget.call(
            "VerifyLedgers", budget_pb2.VerifyLedgersRequest(), timeout=VERIFY_TIMEOUT_SECONDS
        )
        reconciled = await reconcile(self._admin, self._budget)
        log.info(
            "ledger verify: %d ledgers, %d entries, %d ledger problems; reconciled %d queries "
            "(%d releases, %d charged failures, %d refunds, %d in flight), %d mismatches",
            verified.ledgers_checked,
            verified.entries_checked,
            len(verified.problems),
            reconciled.queries,
            reconciled.releases,
            reconciled.charged_failures,
            reconciled.refunds,
            reconciled.in_flight,
            len(reconciled.problems),
        )
        return admin_pb2.VerifyLedgersResponse(
            ledgers_checked=verified.ledgers_checked,
            entries_checked=verified.entries_checked,
            problems=[*verified.problems, *reconciled.problems],
        )


def _require_every_amount(loss: privacy_pb2.PrivacyLoss, field: str) -> None:
    """An allocation states each of its amounts: on the wire an empty amount reads as 0, and a
    grant left without a budget by a forgotten field would fail only when its user queries. A
    grant without budget says "0"."""
    kind = loss.WhichOneof("loss")
    if kind is None:
        return  # privacy_loss_from_proto says what is missing
    amounts = getattr(loss, kind)
    for name in amounts.DESCRIPTOR.fields_by_name:
        if not getattr(amounts, name):
            raise InvalidArgument(
                f'{field}.{name} must be given ("0" for none)',
                reason="FIELD_REQUIRED",
                metadata={"field": f"{field}.{name}"},
            )

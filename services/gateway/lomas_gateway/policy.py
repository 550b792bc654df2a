"""Who may call which public RPC: one explicit rule per method, checked before any handler runs.

A method without a rule is refused, so a new RPC cannot ship open by accident; the authorization
matrix test walks the proto descriptors and fails for any RPC missing here.
"""

from __future__ import annotations

import enum

from lomas.admin.v1 import admin_store_pb2, admin_store_pb2_grpc, resources_pb2
from lomas_common.errors import AdminRoleRequired, PermissionDenied
from lomas_common.peers import AsyncPeer
from lomas_common.rpc_errors import RemoteError
from lomas_common.server import Authenticator
from lomas_gateway.access import admitted_generation
from lomas_gateway.auth import current_caller
from lomas_gateway.limits import UserLimits


class Rule(enum.Enum):
    """What a verified caller needs, beyond a valid token."""

    RESEARCHER = (
        "researcher"  # any known user; dataset RPCs also check the grant (lifecycle.authorize)
    )
    ADMIN = "admin"  # the admin role in the admin store


_GATEWAY = "/lomas.gateway.v1.GatewayService/"
_ADMIN = "/lomas.gateway.v1.AdminService/"

RULES: dict[str, Rule] = {
    f"{_GATEWAY}ListAccessibleDatasets": Rule.RESEARCHER,
    f"{_GATEWAY}GetDatasetMetadata": Rule.RESEARCHER,
    f"{_GATEWAY}GetDummyDataset": Rule.RESEARCHER,
    f"{_GATEWAY}EstimateQueryCost": Rule.RESEARCHER,
    f"{_GATEWAY}EstimateQueryAccuracy": Rule.RESEARCHER,
    f"{_GATEWAY}ExecuteQuery": Rule.RESEARCHER,
    f"{_GATEWAY}GetBudget": Rule.RESEARCHER,
    f"{_GATEWAY}ListQueries": Rule.RESEARCHER,
    # A query id is checked against the caller (jobs.py): another user's is NOT_FOUND.
    f"{_GATEWAY}SubmitQuery": Rule.RESEARCHER,
    f"{_GATEWAY}WatchQuery": Rule.RESEARCHER,
    f"{_GATEWAY}CancelQuery": Rule.RESEARCHER,
}


def rule_for(method: str) -> Rule:
    """The rule of a public RPC; every AdminService RPC needs the admin role."""
    if method.startswith(_ADMIN):
        return Rule.ADMIN
    try:
        return RULES[method]
    except KeyError:
        raise PermissionDenied(
            "this method has no authorization rule", reason="METHOD_NOT_AUTHORIZED"
        ) from None


class Authorizer:
    """Applies the rule of a method to a verified subject (roles live in the admin store)."""

    def __init__(self, admin: AsyncPeer[admin_store_pb2_grpc.AdminStoreServiceStub]) -> None:
        self._admin = admin

    async def check(self, method: str, subject: str) -> None:
        rule = rule_for(method)
        if rule is Rule.RESEARCHER:
            return
        try:
            user = (
                await self._admin.call("GetUser", admin_store_pb2.GetUserRequest(name=subject))
            ).user
        except RemoteError as error:
            if error.code.value != "NOT_FOUND":
                raise
            user = None
        if user is None or user.role != resources_pb2.ROLE_ADMIN:
            raise AdminRoleRequired("this call needs the admin role")


class GatewayGuard(Authenticator):
    """Runs before every public handler: who is calling (the identity authenticator), whether they are
    within their request rate (which also reads the access generation the call runs under, see
    `access.py`), and whether the method's rule lets them in."""

    def __init__(self, identity: Authenticator, authorizer: Authorizer, limits: UserLimits) -> None:
        self._identity = identity
        self._authorizer = authorizer
        self._limits = limits

    async def authenticate(self, method: str, metadata: dict[str, str]) -> None:
        await self._identity.authenticate(method, metadata)
        if method.startswith(("/grpc.health.", "/grpc.reflection.")):
            return
        subject = current_caller().subject
        admitted_generation.set(await self._limits.admit(subject))
        await self._authorizer.check(method, subject)

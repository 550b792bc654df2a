"""Every RPC of every service against every kind of caller, generated from the proto descriptors.

A new RPC without an authorization rule fails here (and is refused by the gateway at run time).
"""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from mesh_testing import RunningMesh
from rpc_catalog import Rpc, all_rpcs

from lomas.client.admin import approx_dp
from lomas_embedded import demo
from lomas_gateway.policy import Rule, rule_for

ALLOWED = (
    "allowed"  # passes authorization: any outcome but UNAUTHENTICATED/PERMISSION_DENIED/INTERNAL
)
CALLERS = [
    "anonymous",
    "bad_token",
    "researcher_without_grant",
    "researcher_with_grant",
    "admin",
    "peer",
]
REFUSALS = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def names_dataset(rpc: Rpc) -> bool:
    """A public RPC whose request names a dataset by a string field (the grant is checked)."""
    field = rpc.method.input_type.fields_by_name.get("dataset")
    return rpc.public and field is not None and field.type == FieldDescriptor.TYPE_STRING


def expected(rpc: Rpc, caller: str) -> str | tuple[grpc.StatusCode, str]:
    if not rpc.public:  # internal services: mesh peers only
        if caller == "peer":
            return ALLOWED
        return grpc.StatusCode.PERMISSION_DENIED, "PEER_CREDENTIAL_REQUIRED"
    rule = rule_for(rpc.path)
    if caller in ("anonymous", "peer"):
        return grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING"
    if caller == "bad_token":
        return grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"
    if rule is Rule.ADMIN:
        if caller == "admin":
            return ALLOWED
        return grpc.StatusCode.PERMISSION_DENIED, "ADMIN_ROLE_REQUIRED"
    assert rule is Rule.RESEARCHER
    if names_dataset(rpc) and caller != "researcher_with_grant":
        return grpc.StatusCode.PERMISSION_DENIED, "DATASET_ACCESS_DENIED"
    return ALLOWED


@pytest.mark.parametrize("platform", ["embedded"], indirect=True)
def test_every_rpc_applies_its_rule_to_every_caller(platform: RunningMesh) -> None:
    without_grant = f"nogrant-{uuid.uuid4().hex[:6]}"
    with_grant = f"granted-{uuid.uuid4().hex[:6]}"
    with platform.admin() as admin:
        admin.add_user(without_grant)
        admin.add_user(with_grant)
        admin.grant(with_grant, demo.DATASET, approx_dp("0.001", "0"))
    bearer = {
        "bad_token": "Bearer not-a-token",
        "researcher_without_grant": f"Bearer {platform.token(without_grant)}",
        "researcher_with_grant": f"Bearer {platform.token(with_grant)}",
        "admin": f"Bearer {platform.token(demo.ADMIN)}",
    }
    mesh = platform.mesh
    targets = {
        "lomas.gateway.v1.GatewayService": mesh.gateway_target,
        "lomas.gateway.v1.AdminService": mesh.gateway_target,
        "lomas.admin.v1.AdminStoreService": mesh.admin_target,
        "lomas.budget.v1.BudgetService": mesh.budget_target,
        "lomas.executor.v1.ExecutorService": mesh.executor_target,
    }
    channels = {target: grpc.insecure_channel(target) for target in set(targets.values())}
    failures = []
    checked = 0
    try:
        for rpc in all_rpcs():
            request = rpc.request_class()()
            if names_dataset(rpc):
                request.dataset = demo.DATASET
            for caller in CALLERS:
                metadata: tuple[tuple[str, str], ...] = ()
                if caller == "peer":
                    metadata = (("x-lomas-service-token", mesh.config.service_token),)
                elif caller in bearer:
                    metadata = (("authorization", bearer[caller]),)
                code, reason = rpc.call(channels[targets[rpc.service]], request, metadata)
                want = expected(rpc, caller)
                checked += 1
                if want == ALLOWED:
                    # Internal RPCs may answer PERMISSION_DENIED as their result (AuthorizeDatasetAccess
                    # says whether a user may query); what must not happen is a refusal of the caller.
                    refused = (
                        code in REFUSALS if rpc.public else reason == "PEER_CREDENTIAL_REQUIRED"
                    )
                    if refused or code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                        failures.append(f"{rpc.path} as {caller}: {code.name} {reason}")
                elif (code, reason) != want:
                    failures.append(f"{rpc.path} as {caller}: {code.name} {reason}, want {want}")
    finally:
        for channel in channels.values():
            channel.close()
    assert checked == len(CALLERS) * len(list(all_rpcs()))
    assert not failures, "\n".join(failures)

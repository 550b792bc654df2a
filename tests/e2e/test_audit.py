"""Every admin action and every query call is in the audit trail with the caller's verified subject."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
from mesh_testing import RunningMesh

from lomas.admin.v1 import admin_store_pb2, admin_store_pb2_grpc
from lomas.client import AccessDenied
from lomas.client.admin import AdminClient, approx_dp
from lomas_embedded import demo


def audit_events(platform: RunningMesh, actor: str) -> list[admin_store_pb2.AuditEvent]:
    with grpc.insecure_channel(platform.mesh.admin_target) as channel:
        response = admin_store_pb2_grpc.AdminStoreServiceStub(channel).ListAuditEvents(
            admin_store_pb2.ListAuditEventsRequest(actor=actor),
            metadata=(("x-lomas-service-token", platform.mesh.config.service_token),),
        )
    return list(response.events)


@pytest.mark.parametrize("platform", ["embedded"], indirect=True)
def test_admin_actions_and_queries_are_audited_with_the_caller(platform: RunningMesh) -> None:
    name = f"audited-{uuid.uuid4().hex[:6]}"
    with platform.admin() as admin:
        admin.add_user(name)
        admin.grant(name, demo.DATASET, approx_dp("1", "0.001"))
    client = platform.client(name)
    client.smartnoise_sql.query("SELECT COUNT(*) AS n FROM df", epsilon=0.1, delta=0)
    with AdminClient(platform.target, token=platform.token(name)) as intruder:
        with pytest.raises(AccessDenied):
            intruder.add_user("mallory", admin=True)

    admin_methods = {
        (e.method.rsplit("/", 1)[1], e.code) for e in audit_events(platform, demo.ADMIN)
    }
    assert {("CreateUser", "OK"), ("CreateGrant", "OK")} <= admin_methods
    created = [e for e in audit_events(platform, demo.ADMIN) if e.method.endswith("/CreateUser")]
    assert any(name in e.request_json for e in created)

    # Query calls are recorded in the background; a refusal right after its answer (the status
    # reaches the caller before the interceptor's observer runs).
    expected = {
        ("ExecuteQuery", "OK", ""),
        ("CreateUser", "PERMISSION_DENIED", "ADMIN_ROLE_REQUIRED"),
    }
    deadline = time.monotonic() + 10
    while True:
        own = {(e.method.rsplit("/", 1)[1], e.code, e.reason) for e in audit_events(platform, name)}
        if expected <= own or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert ("ExecuteQuery", "OK", "") in own
    assert ("CreateUser", "PERMISSION_DENIED", "ADMIN_ROLE_REQUIRED") in own

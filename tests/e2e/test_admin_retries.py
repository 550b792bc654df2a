"""Administrators' writes through the gateway are safe to retry (AIP-155): the same request id is
answered once, whatever the write, and reused with another request it is refused and changes nothing."""

from __future__ import annotations

import uuid

import pytest
from mesh_testing import RunningMesh

from lomas.client import LomasError
from lomas.client.admin import approx_dp
from lomas_embedded import demo


@pytest.mark.parametrize("platform", ["embedded"], indirect=True)
def test_admin_writes_are_answered_once_per_request_id(platform: RunningMesh) -> None:
    name = f"retry-{uuid.uuid4().hex[:8]}"
    with platform.admin() as admin:
        for _ in range(2):  # the retry is answered, not refused as ALREADY_EXISTS
            admin.add_user(name, request_id=f"{name}-create")
            admin.grant(name, demo.DATASET, approx_dp("5", "0.001"), request_id=f"{name}-grant")
        assert [g.dataset for g in admin.list_grants(name)] == [demo.DATASET]
        assert len(admin.ledger_history(name, demo.DATASET)) == 1  # one allocation entry

        with pytest.raises(LomasError) as reused:  # the same id for another write
            admin.grant(name, demo.DATASET, approx_dp("1", "0"), request_id=f"{name}-grant")
        assert (reused.value.code, reused.value.reason) == ("INVALID_ARGUMENT", "REQUEST_ID_REUSED")

        for _ in range(2):  # deleting twice: the retry gets the first answer, not NOT_FOUND
            admin.revoke(name, demo.DATASET, request_id=f"{name}-revoke")
            admin.remove_user(name, request_id=f"{name}-remove")
        assert name not in {u.name for u in admin.list_users()}

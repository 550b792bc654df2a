"""Request ids (AIP-155) on every mutating call of the admin store: a retry with the same id is
answered once (the first answer, nothing changed), the same id with other arguments is
INVALID_ARGUMENT REQUEST_ID_REUSED, and ids are kept for the retention period."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from decimal import Decimal

import grpc
from admin_testing import FakeClock, audit_event, dataset, grant, refused, user

from lomas.admin.v1 import admin_store_pb2 as pb
from lomas.admin.v1 import admin_store_pb2_grpc
from lomas_admin.records import DatasetRecord, GrantRecord, UserRecord
from lomas_admin.store import AdminStore
from lomas_common.db import Database
from lomas_common.privacy import PrivacyLoss

Stub = admin_store_pb2_grpc.AdminStoreServiceStub
REUSED = (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")


def may_query(stub: Stub, name: str) -> bool:
    return stub.GetUser(pb.GetUserRequest(name=name)).user.may_query


def test_user_calls_are_answered_once(stub: Stub) -> None:
    create = pb.CreateUserRequest(user=user("alice"), request_id="c1")
    created = stub.CreateUser(create)
    freeze = pb.SetUserMayQueryRequest(name="alice", may_query=False, request_id="s1")
    frozen = stub.SetUserMayQuery(freeze)
    stub.SetUserMayQuery(pb.SetUserMayQueryRequest(name="alice", may_query=True, request_id="s2"))
    # Late retries get their first answers and change nothing: alice stays unfrozen.
    assert stub.CreateUser(create) == created
    assert stub.SetUserMayQuery(freeze) == frozen and not frozen.user.may_query
    assert may_query(stub, "alice")
    # The same id with other arguments is refused, and changes nothing either.
    other = pb.SetUserMayQueryRequest(name="alice", may_query=True, request_id="s1")
    metadata = refused(lambda: stub.SetUserMayQuery(other), *REUSED)
    assert metadata == {"requestId": "s1"}
    refused(
        lambda: stub.CreateUser(pb.CreateUserRequest(user=user("bob"), request_id="c1")), *REUSED
    )
    refused(
        lambda: stub.GetUser(pb.GetUserRequest(name="bob")),
        grpc.StatusCode.NOT_FOUND,
        "USER_NOT_FOUND",
    )
    # A delete retried after the user came back does not delete it again.
    delete = pb.DeleteUserRequest(name="alice", request_id="d1")
    stub.DeleteUser(delete)
    stub.CreateUser(pb.CreateUserRequest(user=user("alice")))
    assert stub.DeleteUser(delete) == pb.DeleteUserResponse()
    assert stub.GetUser(pb.GetUserRequest(name="alice")).user.name == "alice"
    # Ids are per method: "c1" is free for a delete.
    stub.DeleteUser(pb.DeleteUserRequest(name="alice", request_id="c1"))


def test_dataset_calls_are_answered_once(stub: Stub) -> None:
    create = pb.CreateDatasetRequest(dataset=dataset("penguins"), request_id="c1")
    created = stub.CreateDataset(create).dataset
    update = pb.UpdateDatasetRequest(dataset=dataset("penguins", "/v2.csv"), request_id="u1")
    updated = stub.UpdateDataset(update).dataset
    assert updated.version == 2
    assert stub.UpdateDataset(update).dataset == updated  # not version 3
    assert stub.CreateDataset(create).dataset == created
    assert stub.GetDataset(pb.GetDatasetRequest(name="penguins")).dataset.version == 2
    moved = pb.UpdateDatasetRequest(dataset=dataset("penguins", "/v3.csv"), request_id="u1")
    refused(lambda: stub.UpdateDataset(moved), *REUSED)
    delete = pb.DeleteDatasetRequest(name="penguins", request_id="d1")
    stub.DeleteDataset(delete)
    stub.CreateDataset(pb.CreateDatasetRequest(dataset=dataset("penguins")))
    stub.DeleteDataset(delete)  # the retry: no NOT_FOUND, and the new dataset stays
    # The new dataset stays, with a version the name never had (2 was the deleted one's).
    assert stub.GetDataset(pb.GetDatasetRequest(name="penguins")).dataset.version == 3
    refused(
        lambda: stub.DeleteDataset(pb.DeleteDatasetRequest(name="iris", request_id="d1")), *REUSED
    )


def test_grant_calls_are_answered_once(stub: Stub) -> None:
    stub.CreateUser(pb.CreateUserRequest(user=user("alice")))
    stub.CreateDataset(pb.CreateDatasetRequest(dataset=dataset("penguins")))
    create = pb.CreateGrantRequest(grant=grant("alice", "penguins"), request_id="g1")
    created = stub.CreateGrant(create).grant
    delete = pb.DeleteGrantRequest(user="alice", dataset="penguins", request_id="g1")
    stub.DeleteGrant(delete)
    # The create's retry returns the first answer and does not bring the grant back.
    assert stub.CreateGrant(create).grant == created
    assert list(stub.ListGrants(pb.ListGrantsRequest(user="alice")).grants) == []
    stub.DeleteGrant(delete)  # the delete's retry: no GRANT_NOT_FOUND
    more = pb.CreateGrantRequest(grant=grant("alice", "penguins", "20"), request_id="g1")
    refused(lambda: stub.CreateGrant(more), *REUSED)
    assert list(stub.ListGrants(pb.ListGrantsRequest(user="alice")).grants) == []


def test_an_audit_event_is_appended_once(stub: Stub) -> None:
    event = pb.RecordAuditEventRequest(event=audit_event("alice"), request_id="a1")
    stub.RecordAuditEvent(event)
    stub.RecordAuditEvent(event)
    assert len(stub.ListAuditEvents(pb.ListAuditEventsRequest(actor="alice")).events) == 1
    other = pb.RecordAuditEventRequest(event=audit_event("bob"), request_id="a1")
    refused(lambda: stub.RecordAuditEvent(other), *REUSED)
    assert len(stub.ListAuditEvents(pb.ListAuditEventsRequest()).events) == 1
    # Without an id every call appends (the trail records what happened, retries included).
    stub.RecordAuditEvent(pb.RecordAuditEventRequest(event=audit_event("alice")))
    stub.RecordAuditEvent(pb.RecordAuditEventRequest(event=audit_event("alice")))
    assert len(stub.ListAuditEvents(pb.ListAuditEventsRequest(actor="alice")).events) == 3


def test_a_request_id_is_bounded(stub: Stub) -> None:
    long_id = pb.DeleteUserRequest(name="root", request_id="x" * 257)
    metadata = refused(
        lambda: stub.DeleteUser(long_id), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"
    )
    assert metadata == {"field": "request_id"}
    assert stub.GetUser(pb.GetUserRequest(name="root")).user.name == "root"


def test_concurrent_calls_with_one_id_are_answered_once(store: AdminStore) -> None:
    store.create_user(UserRecord("alice"))
    errors: list[BaseException] = []

    def delete() -> None:
        try:
            store.delete_user("alice", request_id="d1")
        except BaseException as error:  # a NOT_FOUND here would mean the retry ran again
            errors.append(error)

    threads = [threading.Thread(target=delete) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.list_users(None, 10).items == []


def test_answers_are_kept_for_the_retention_period_only(
    store: AdminStore, clock: FakeClock
) -> None:
    store.create_user(UserRecord("alice"))
    store.set_may_query("alice", False, request_id="s1")
    store.set_may_query("alice", True)
    clock.advance(6 * 24 * 3600)  # within the default 7 days: still a replay
    assert not store.set_may_query("alice", False, request_id="s1").may_query
    assert store.get_user("alice").may_query
    clock.advance(2 * 24 * 3600)  # past it: pruned by the next call with an id, then run anew
    store.set_may_query("alice", True, request_id="s-other")
    assert not store.set_may_query("alice", False, request_id="s1").may_query
    assert not store.get_user("alice").may_query


def _store_answer(
    database: Database, method: str, request_id: str, params: object, response: object
) -> None:
    """An answer as the admin store has always stored it (a fingerprint of the call's arguments)."""
    fingerprint = hashlib.sha256(
        json.dumps(params, separators=(",", ":"), default=str).encode()
    ).hexdigest()
    with database.transaction() as tx:
        tx.execute(
            "INSERT INTO admin_requests (method, request_id, fingerprint, response, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (method, request_id, fingerprint, json.dumps(response), "2030-01-01T00:00:00+00:00"),
        )


def test_stored_answers_keep_their_format(store: AdminStore, database: Database) -> None:
    """Answers stored by an earlier release (or a peer replica) still replay: the fingerprint and
    the stored JSON of every record are pinned here."""
    created = "2030-01-01T00:00:00+00:00"
    when = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    user = {"name": "alice", "role": "admin", "may_query": False}
    _store_answer(database, "CreateUser", "u1", user, {**user, "created_at": created})
    source = {"local": {"path": "/p.csv"}}
    metadata = {"max_ids": 1, "columns": {"b": {}, "a": {}}}
    data = {"name": "penguins", "source": source, "format": "csv", "metadata": metadata}
    _store_answer(
        database, "CreateDataset", "d1", data, {**data, "version": 3, "created_at": created}
    )
    loss = {"definition": "approx_dp", "epsilon": "1.5", "delta": "0.00001", "rho": "0"}
    grant = {"user": "alice", "dataset": "penguins", "allocation": loss}
    _store_answer(database, "CreateGrant", "g1", grant, {**grant, "created_at": created})

    replayed_user = store.create_user(UserRecord("alice", "admin", False), "u1")
    assert (replayed_user, replayed_user.created_at) == (UserRecord("alice", "admin", False), when)
    dataset = DatasetRecord("penguins", source, "csv", metadata)
    replayed_dataset = store.create_dataset(dataset, "d1")
    assert replayed_dataset.version == 3
    assert list(replayed_dataset.metadata["columns"]) == ["b", "a"]
    allocation = PrivacyLoss.approx_dp(Decimal("1.5"), Decimal("0.00001"))
    replayed_grant = store.create_grant(GrantRecord("alice", "penguins", allocation), "g1")
    assert replayed_grant == GrantRecord("alice", "penguins", allocation)
    assert replayed_grant.created_at == when
    assert store.list_users(None, 10).items == []  # replays: nothing was written

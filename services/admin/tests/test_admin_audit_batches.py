"""BatchRecordAuditEvents (AIP-233): a batch of audit events is appended in one transaction, in
order, all or nothing; each event's request id means what it means to RecordAuditEvent, and the
batch may carry one of its own; a batch holds 1 to 500 events."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import grpc
import pytest
from admin_testing import audit_event, refused

from lomas.admin.v1 import admin_store_pb2 as pb
from lomas.admin.v1 import admin_store_pb2_grpc
from lomas_admin import convert
from lomas_admin.archive import MAX_AUDIT_BATCH, QueryArchive
from lomas_admin.records import AuditRecord
from lomas_common.db import Database, Transaction

Stub = admin_store_pb2_grpc.AdminStoreServiceStub
REUSED = (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")


def one(actor: str, method: str = "/a/Call", request_id: str = "") -> pb.RecordAuditEventRequest:
    return pb.RecordAuditEventRequest(event=audit_event(actor, method), request_id=request_id)


def batch(
    *requests: pb.RecordAuditEventRequest, request_id: str = ""
) -> pb.BatchRecordAuditEventsRequest:
    return pb.BatchRecordAuditEventsRequest(requests=requests, request_id=request_id)


def trail(stub: Stub) -> list[tuple[str, str]]:
    """(actor, method) of every event, oldest first."""
    events = stub.ListAuditEvents(pb.ListAuditEventsRequest(page_size=1000)).events
    return [(e.actor, e.method) for e in reversed(events)]


def record(actor: str, method: str = "/a/Call") -> AuditRecord:
    return convert.audit_from_proto(audit_event(actor, method))


def test_a_batch_is_appended_in_order_after_what_came_before(stub: Stub) -> None:
    stub.RecordAuditEvent(one("alice", "/a/Zero"))
    stub.BatchRecordAuditEvents(
        batch(one("bob", "/a/One"), one("alice", "/a/Two"), one("bob", "/a/Three"))
    )
    assert trail(stub) == [
        ("alice", "/a/Zero"),
        ("bob", "/a/One"),
        ("alice", "/a/Two"),
        ("bob", "/a/Three"),
    ]
    written = stub.ListAuditEvents(pb.ListAuditEventsRequest(actor="bob")).events[0]
    assert written == audit_event("bob", "/a/Three")


def test_a_batch_with_one_refused_event_appends_nothing(stub: Stub) -> None:
    stub.RecordAuditEvent(one("alice", "/a/First", request_id="a1"))
    # The refused event comes last: the ones before it were already inserted, and roll back.
    reused = batch(one("bob", "/a/One"), one("carol", "/a/Two"), one("bob", "/a/Other", "a1"))
    refused(lambda: stub.BatchRecordAuditEvents(reused), *REUSED)
    unbounded = batch(one("bob", "/a/One"), one("carol", "/a/Two", request_id="x" * 257))
    refused(
        lambda: stub.BatchRecordAuditEvents(unbounded),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert trail(stub) == [("alice", "/a/First")]


def test_request_ids_in_a_batch_are_those_of_record_audit_event(stub: Stub) -> None:
    stub.RecordAuditEvent(one("alice", "/a/One", request_id="a1"))
    # a1 is a replay of the call above; the second a2 is a replay of the first, within the batch.
    stub.BatchRecordAuditEvents(
        batch(one("alice", "/a/One", "a1"), one("bob", "/a/Two", "a2"), one("bob", "/a/Two", "a2"))
    )
    stub.RecordAuditEvent(one("bob", "/a/Two", request_id="a2"))  # a replay of the batch's a2
    assert trail(stub) == [("alice", "/a/One"), ("bob", "/a/Two")]
    refused(lambda: stub.RecordAuditEvent(one("carol", "/a/Two", request_id="a2")), *REUSED)


def test_a_batch_request_id_appends_the_batch_once(stub: Stub) -> None:
    first = batch(one("alice", "/a/One"), one("bob", "/a/Two"), request_id="b1")
    stub.BatchRecordAuditEvents(first)
    stub.BatchRecordAuditEvents(first)
    assert trail(stub) == [("alice", "/a/One"), ("bob", "/a/Two")]
    other = batch(one("alice", "/a/One"), request_id="b1")
    refused(lambda: stub.BatchRecordAuditEvents(other), *REUSED)
    # The batch's id is its own: the same id on one event is another key.
    stub.RecordAuditEvent(one("carol", "/a/Three", request_id="b1"))
    assert len(trail(stub)) == 3


def test_a_batch_holds_one_to_500_events(stub: Stub) -> None:
    too_many = batch(*(one("alice", f"/a/Call{i}") for i in range(MAX_AUDIT_BATCH + 1)))
    metadata = refused(
        lambda: stub.BatchRecordAuditEvents(too_many),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert metadata == {"field": "requests", "maximum": "500"}
    assert trail(stub) == []
    metadata = refused(
        lambda: stub.BatchRecordAuditEvents(batch()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "FIELD_REQUIRED",
    )
    assert metadata == {"field": "requests"}
    stub.BatchRecordAuditEvents(
        batch(*(one("alice", f"/a/Call{i}") for i in range(MAX_AUDIT_BATCH)))
    )
    assert trail(stub) == [("alice", f"/a/Call{i}") for i in range(MAX_AUDIT_BATCH)]


@pytest.fixture
def write_transactions(database: Database, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Counts the write transactions `database` opens (one entry per transaction, from now on)."""
    opened: list[bool] = []
    original: Callable[..., AbstractContextManager[Transaction]] = database.transaction

    @contextmanager
    def counted(*, readonly: bool = False, pipelined: bool = False) -> Iterator[Transaction]:
        if not readonly:
            opened.append(True)
        with original(readonly=readonly, pipelined=pipelined) as tx:
            yield tx

    monkeypatch.setattr(database, "transaction", counted)
    return opened


def test_a_batch_is_one_transaction(archive: QueryArchive, write_transactions: list[bool]) -> None:
    archive.record_audit_events([(record("alice", f"/a/Call{i}"), f"r{i}") for i in range(50)])
    assert len(write_transactions) == 1
    archive.record_audit_events([(record("bob", f"/a/Call{i}"), "") for i in range(50)], "b1")
    assert len(write_transactions) == 2
    events = archive.list_audit_events("", None, 1000).items
    assert len(events) == 100
    assert events[0].actor == "bob" and events[-1].method == "/a/Call0"


def test_concurrent_batches_sharing_a_request_id_append_it_once(archive: QueryArchive) -> None:
    """The loser of the race for a shared id re-runs its whole batch, which then finds the
    winner's answer for that id and still appends its own other events."""
    start = threading.Barrier(4)
    errors: list[Exception] = []

    def send(i: int) -> None:
        start.wait()
        try:
            archive.record_audit_events(
                [(record("shared", "/a/Same"), "s1"), (record(f"user{i}"), "")]
            )
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    events = archive.list_audit_events("", None, 100).items
    assert sorted(e.actor for e in events) == ["shared", "user0", "user1", "user2", "user3"]

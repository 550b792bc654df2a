"""The query archive (first outcome wins, free replays found by fingerprint) and the audit trail,
through the real servicer."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal
from functools import partial

import grpc
from admin_testing import T0, audit_event, outcome, refused

from lomas.admin.v1 import admin_store_pb2 as pb
from lomas.admin.v1 import admin_store_pb2_grpc
from lomas.common.v1 import archive_pb2
from lomas_admin.archive import QueryArchive
from lomas_admin.records import ArchiveRecord
from lomas_common.privacy import PrivacyLoss

Stub = admin_store_pb2_grpc.AdminStoreServiceStub


def record(stub: Stub, query: archive_pb2.ArchivedQuery) -> archive_pb2.ArchivedQuery:
    return stub.RecordQueryResult(pb.RecordQueryResultRequest(query=query)).query


def test_the_first_outcome_of_a_query_wins_and_a_retry_changes_nothing(stub: Stub) -> None:
    first = record(stub, outcome("q1", release=b"first"))
    assert (first.query_id, first.release, first.status) == (
        "q1",
        b"first",
        archive_pb2.QUERY_STATUS_SUCCEEDED,
    )
    assert first.query.smartnoise_sql.sql == "SELECT COUNT(*) FROM df"
    assert first.cost.approx_dp.epsilon == "1"
    # The query id is the call's idempotency key: a retry, even with another outcome (a redelivered
    # task that ran again), gets the first one back and stores nothing.
    assert record(stub, outcome("q1", release=b"first")) == first
    assert record(stub, outcome("q1", release=b"second")) == first
    assert record(stub, outcome("q1", succeeded=False)) == first
    assert stub.GetArchivedQuery(pb.GetArchivedQueryRequest(query_id="q1")).query == first
    listed = stub.ListArchivedQueries(pb.ListArchivedQueriesRequest(user="alice")).queries
    assert list(listed) == [first]


def test_bad_outcomes_are_refused_and_unknown_ids_are_not_found(stub: Stub) -> None:
    for bad in (
        outcome(""),
        outcome("q", user_name=""),
        outcome("q", dataset_name=""),
        outcome("q" * 257),
    ):
        refused(
            partial(record, stub, bad),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ARCHIVE_ENTRY_INVALID",
        )
    no_cost = outcome("q2")
    no_cost.ClearField("cost")
    refused(lambda: record(stub, no_cost), grpc.StatusCode.INVALID_ARGUMENT, "PRIVACY_LOSS_INVALID")
    refused(
        lambda: stub.GetArchivedQuery(pb.GetArchivedQueryRequest(query_id="q2")),
        grpc.StatusCode.NOT_FOUND,
        "QUERY_NOT_FOUND",
    )
    assert list(stub.ListArchivedQueries(pb.ListArchivedQueriesRequest()).queries) == []


def test_a_released_query_is_found_by_its_users_fingerprint_only(stub: Stub) -> None:
    def find(user_name: str, fingerprint: str) -> pb.FindReleasedQueryResponse:
        return stub.FindReleasedQuery(
            pb.FindReleasedQueryRequest(user=user_name, fingerprint=fingerprint)
        )

    record(stub, outcome("old", fingerprint="fp", submitted=T0, release=b"old"))
    record(
        stub, outcome("new", fingerprint="fp", submitted=T0 + dt.timedelta(hours=1), release=b"new")
    )
    record(stub, outcome("failed", fingerprint="fp-failed", succeeded=False))
    record(stub, outcome("unmarked", fingerprint=""))
    found = find("alice", "fp")
    assert found.found and (found.query.query_id, found.query.release) == ("new", b"new")
    # Another user's release, a failure, or an empty fingerprint is never a free replay.
    assert not find("bob", "fp").found
    assert not find("alice", "fp-failed").found
    assert not find("alice", "").found
    assert not find("alice", "other").found


def test_archived_queries_list_newest_first_and_filter_by_user_and_dataset(stub: Stub) -> None:
    for i, (user_name, dataset_name) in enumerate(
        [("alice", "penguins"), ("bob", "penguins"), ("alice", "iris"), ("alice", "penguins")]
    ):
        record(
            stub,
            outcome(f"q{i}", user_name, dataset_name, submitted=T0 + dt.timedelta(minutes=i)),
        )

    def ids(user: str = "", dataset: str = "") -> list[str]:
        request = pb.ListArchivedQueriesRequest(user=user, dataset=dataset)
        return [q.query_id for q in stub.ListArchivedQueries(request).queries]

    assert ids() == ["q3", "q2", "q1", "q0"]
    assert ids(user="alice") == ["q3", "q2", "q0"]
    assert ids(user="alice", dataset="penguins") == ["q3", "q0"]
    assert ids(dataset="penguins") == ["q3", "q1", "q0"]


def test_audit_events_are_appended_and_listed_newest_first_by_actor(stub: Stub) -> None:
    for actor, method in [("alice", "/a/One"), ("bob", "/a/Two"), ("alice", "/a/Three")]:
        stub.RecordAuditEvent(pb.RecordAuditEventRequest(event=audit_event(actor, method)))
    failed = audit_event("", "/a/Four")
    failed.code, failed.reason = "UNAUTHENTICATED", "TOKEN_MISSING"
    stub.RecordAuditEvent(pb.RecordAuditEventRequest(event=failed))
    events = stub.ListAuditEvents(pb.ListAuditEventsRequest()).events
    assert [(e.actor, e.method) for e in events] == [
        ("", "/a/Four"),
        ("alice", "/a/Three"),
        ("bob", "/a/Two"),
        ("alice", "/a/One"),
    ]
    assert (events[0].code, events[0].reason, events[0].time) == (
        "UNAUTHENTICATED",
        "TOKEN_MISSING",
        failed.time,
    )
    alices = stub.ListAuditEvents(pb.ListAuditEventsRequest(actor="alice")).events
    assert [e.method for e in alices] == ["/a/Three", "/a/One"]


def test_concurrent_outcomes_of_one_query_store_one(archive: QueryArchive) -> None:
    results: list[ArchiveRecord] = []

    def record_one(i: int) -> None:
        results.append(archive.record_query_result(outcome_record("q1", f"release {i}".encode())))

    threads = [threading.Thread(target=record_one, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = archive.get_archived_query("q1")
    assert len(results) == 4 and all(r == stored for r in results)
    assert archive.list_archived_queries("", "", None, 10).items == [stored]


def outcome_record(query_id: str, release: bytes) -> ArchiveRecord:
    return ArchiveRecord(
        query_id=query_id,
        user="alice",
        dataset="penguins",
        query_json="{}",
        cost=PrivacyLoss.pure_dp(Decimal("1")),
        succeeded=True,
        release=release,
        error_reason="",
        error_message="",
        submitted_at=T0,
        completed_at=T0,
    )

"""Every List of the admin store pages by keyset: rows added between two page reads neither repeat
nor push a row out of the walk, and a bad token or page size is INVALID_ARGUMENT."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Callable
from functools import partial

import grpc
from admin_testing import T0, audit_event, dataset, grant, outcome, refused, user

from lomas.admin.v1 import admin_store_pb2 as pb
from lomas.admin.v1 import admin_store_pb2_grpc
from lomas_admin.records import UserRecord
from lomas_admin.store import AdminStore

Stub = admin_store_pb2_grpc.AdminStoreServiceStub
# A List as a function of (page_size, page_token) -> (keys of the page, next_page_token).
Lister = Callable[[int, str], tuple[list[str], str]]


def walk(list_page: Lister, size: int, between: Callable[[int], None]) -> list[str]:
    """Read every page, calling `between(page number)` after each read."""
    keys, token, number = [], "", 0
    while True:
        page, token = list_page(size, token)
        keys.extend(page)
        between(number)
        number += 1
        if not token:
            return keys


def test_users_and_datasets_page_by_name_while_rows_arrive(stub: Stub) -> None:
    for name in ("b", "d", "f", "h"):
        stub.CreateUser(pb.CreateUserRequest(user=user(name)))
        stub.CreateDataset(pb.CreateDatasetRequest(dataset=dataset(name)))

    def users(size: int, token: str) -> tuple[list[str], str]:
        response = stub.ListUsers(pb.ListUsersRequest(page_size=size, page_token=token))
        return [u.name for u in response.users], response.next_page_token

    def datasets(size: int, token: str) -> tuple[list[str], str]:
        response = stub.ListDatasets(pb.ListDatasetsRequest(page_size=size, page_token=token))
        return [d.name for d in response.datasets], response.next_page_token

    def add_users(number: int) -> None:  # one before the page read, one after it
        stub.CreateUser(pb.CreateUserRequest(user=user(f"a{number}")))
        stub.CreateUser(pb.CreateUserRequest(user=user(f"z{number}")))

    def add_datasets(number: int) -> None:
        stub.CreateDataset(pb.CreateDatasetRequest(dataset=dataset(f"a{number}")))
        stub.CreateDataset(pb.CreateDatasetRequest(dataset=dataset(f"z{number}")))

    # With offsets, each "a…" row added in front would shift the list and repeat a row.
    seen_users = walk(users, 2, add_users)
    assert seen_users == sorted(seen_users) and len(set(seen_users)) == len(seen_users)
    assert {"b", "d", "f", "h", "root"} <= set(seen_users)
    assert not any(name.startswith("a") for name in seen_users)
    seen_datasets = walk(datasets, 2, add_datasets)
    assert seen_datasets == sorted(seen_datasets) and len(set(seen_datasets)) == len(seen_datasets)
    assert {"b", "d", "f", "h"} <= set(seen_datasets)


def test_grants_page_by_user_and_dataset_while_rows_arrive(stub: Stub) -> None:
    stub.CreateUser(pb.CreateUserRequest(user=user("alice")))
    for name in ("b", "d", "f", "h", "a0", "a1", "a2", "a3"):
        stub.CreateDataset(pb.CreateDatasetRequest(dataset=dataset(name)))
    for name in ("b", "d", "f", "h"):
        stub.CreateGrant(pb.CreateGrantRequest(grant=grant("alice", name)))

    def grants(size: int, token: str) -> tuple[list[str], str]:
        request = pb.ListGrantsRequest(user="alice", page_size=size, page_token=token)
        response = stub.ListGrants(request)
        return [g.dataset for g in response.grants], response.next_page_token

    def add(number: int) -> None:
        stub.CreateGrant(pb.CreateGrantRequest(grant=grant("alice", f"a{number}")))

    assert walk(grants, 1, add) == ["b", "d", "f", "h"]


def test_the_archive_pages_newest_first_while_queries_land(stub: Stub) -> None:
    for i in range(5):
        query = outcome(f"q{i}", submitted=T0 + dt.timedelta(minutes=i))
        stub.RecordQueryResult(pb.RecordQueryResultRequest(query=query))

    def queries(size: int, token: str) -> tuple[list[str], str]:
        request = pb.ListArchivedQueriesRequest(user="alice", page_size=size, page_token=token)
        response = stub.ListArchivedQueries(request)
        return [q.query_id for q in response.queries], response.next_page_token

    def land(number: int) -> None:  # a newer query lands in front, as in production
        query = outcome(f"new{number}", submitted=T0 + dt.timedelta(hours=1, minutes=number))
        stub.RecordQueryResult(pb.RecordQueryResultRequest(query=query))

    assert walk(queries, 2, land) == ["q4", "q3", "q2", "q1", "q0"]


def test_audit_events_page_newest_first_while_events_arrive(stub: Stub) -> None:
    for i in range(5):
        stub.RecordAuditEvent(pb.RecordAuditEventRequest(event=audit_event("alice", f"/m/{i}")))

    def events(size: int, token: str) -> tuple[list[str], str]:
        request = pb.ListAuditEventsRequest(actor="alice", page_size=size, page_token=token)
        response = stub.ListAuditEvents(request)
        return [e.method for e in response.events], response.next_page_token

    def arrive(number: int) -> None:
        stub.RecordAuditEvent(pb.RecordAuditEventRequest(event=audit_event("alice", "/m/new")))

    assert walk(events, 2, arrive) == ["/m/4", "/m/3", "/m/2", "/m/1", "/m/0"]


def forged(after: list[object], *scope: str) -> str:
    """A token as the server makes them (the list digest is public: anyone can compute it)."""
    digest = hashlib.sha256()
    for part in scope:
        digest.update(len(part.encode()).to_bytes(8, "big"))
        digest.update(part.encode())
    payload = {"after": after, "list": digest.hexdigest()[:24]}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


def test_bad_tokens_and_sizes_are_invalid_argument(stub: Stub) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    for name in ("a", "b", "c"):
        stub.CreateUser(pb.CreateUserRequest(user=user(name)))
    first = stub.ListUsers(pb.ListUsersRequest(page_size=1))
    assert [u.name for u in first.users] == ["a"] and first.next_page_token
    # A token is bound to its list: the users' token does not page datasets or another filter.
    refused(
        lambda: stub.ListDatasets(pb.ListDatasetsRequest(page_token=first.next_page_token)),
        invalid,
        "PAGE_TOKEN_INVALID",
    )
    refused(
        lambda: stub.ListGrants(pb.ListGrantsRequest(page_token=first.next_page_token)),
        invalid,
        "PAGE_TOKEN_INVALID",
    )
    bad_tokens = [
        "not a token",
        forged(["a", "b"], "ListUsers"),  # a key of another shape
        forged([7], "ListUsers"),
        forged(["2030-01-01T00:00:00+00:00"], "ListArchivedQueries", "", ""),
    ]
    for token in bad_tokens[:3]:
        refused(
            partial(stub.ListUsers, pb.ListUsersRequest(page_token=token)),
            invalid,
            "PAGE_TOKEN_INVALID",
        )
    refused(
        lambda: stub.ListArchivedQueries(pb.ListArchivedQueriesRequest(page_token=bad_tokens[3])),
        invalid,
        "PAGE_TOKEN_INVALID",
    )
    refused(
        lambda: stub.ListAuditEvents(
            pb.ListAuditEventsRequest(page_token=forged(["1"], "ListAuditEvents", ""))
        ),
        invalid,
        "PAGE_TOKEN_INVALID",
    )
    refused(lambda: stub.ListUsers(pb.ListUsersRequest(page_size=-1)), invalid, "PAGE_SIZE_INVALID")
    # A well-formed key of the right shape pages from there, whether or not that row exists.
    after_b = stub.ListUsers(pb.ListUsersRequest(page_token=forged(["b"], "ListUsers")))
    assert [u.name for u in after_b.users] == ["c", "root"] and not after_b.next_page_token
    # Page sizes above the maximum are clamped, not refused.
    everyone = stub.ListUsers(pb.ListUsersRequest(page_size=10**6))
    assert [u.name for u in everyone.users] == ["a", "b", "c", "root"]


def test_the_store_reads_one_page_after_a_key(store: AdminStore) -> None:
    for name in ("a", "b", "c"):
        store.create_user(UserRecord(name))
    first = store.list_users(None, 2)
    assert [u.name for u in first.items] == ["a", "b"] and first.next_after == ("b",)
    store.create_user(UserRecord("aa"))  # lands before the position: changes nothing after it
    second = store.list_users(first.next_after, 2)
    assert [u.name for u in second.items] == ["c"] and second.next_after is None

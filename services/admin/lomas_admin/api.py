"""Thin servicer of the internal AdminStoreService: convert, call the store, convert.

It runs on the blocking server (`lomas_common.blocking_server`): the store blocks on its database.
Lists page by keyset (`lomas_common.convert.KeysetPage`): a token holds the sort key of the last row
returned and is bound to its list (the RPC and its filters).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import grpc

from lomas.admin.v1 import admin_store_pb2 as pb
from lomas.admin.v1 import admin_store_pb2_grpc, resources_pb2
from lomas_admin import convert
from lomas_admin.archive import QueryArchive
from lomas_admin.records import DatasetRecord, Listing
from lomas_admin.store import AdminStore
from lomas_common.convert import KeysetPage, PageRequest

Context = grpc.ServicerContext
R = TypeVar("R")
M = TypeVar("M")


def _list(
    request: PageRequest,
    fetch: Callable[..., Listing[R]],
    to_proto: Callable[[R], M],
    *filters: str,
) -> tuple[list[M], str]:
    """One page of a list as messages, and the token of the next page ("" on the last page).

    `fetch(*filters, after, limit)` reads the page; the token is bound to the request's RPC and to
    exactly those filters, so a token cannot be carried over to another list."""
    page = KeysetPage.of_request(request, *filters)
    listing = fetch(*filters, page.after, page.limit)
    messages = [to_proto(record) for record in listing.items]
    return messages, page.next_token(listing.next_after, has_more=listing.next_after is not None)


def _write_dataset(
    write: Callable[[DatasetRecord, str], DatasetRecord],
    request: pb.CreateDatasetRequest | pb.UpdateDatasetRequest,
) -> resources_pb2.Dataset:
    """CreateDataset and UpdateDataset: the same conversions around another store call."""
    written = write(convert.dataset_from_proto(request.dataset), request.request_id)
    return convert.dataset_to_proto(written)


class AdminStoreServicer(admin_store_pb2_grpc.AdminStoreServiceServicer):
    def __init__(self, store: AdminStore, archive: QueryArchive) -> None:
        self._store = store
        self._archive = archive

    # Users -------------------------------------------------------------------------------------

    def CreateUser(self, request: pb.CreateUserRequest, context: Context) -> pb.CreateUserResponse:
        user = self._store.create_user(convert.user_from_proto(request.user), request.request_id)
        return pb.CreateUserResponse(user=convert.user_to_proto(user))

    def GetUser(self, request: pb.GetUserRequest, context: Context) -> pb.GetUserResponse:
        user = self._store.get_user(request.name)
        return pb.GetUserResponse(user=convert.user_to_proto(user))

    def SetUserMayQuery(
        self, request: pb.SetUserMayQueryRequest, context: Context
    ) -> pb.SetUserMayQueryResponse:
        user = self._store.set_may_query(request.name, request.may_query, request.request_id)
        return pb.SetUserMayQueryResponse(user=convert.user_to_proto(user))

    def DeleteUser(self, request: pb.DeleteUserRequest, context: Context) -> pb.DeleteUserResponse:
        self._store.delete_user(request.name, request.request_id)
        return pb.DeleteUserResponse()

    def ListUsers(self, request: pb.ListUsersRequest, context: Context) -> pb.ListUsersResponse:
        users, token = _list(request, self._store.list_users, convert.user_to_proto)
        return pb.ListUsersResponse(users=users, next_page_token=token)

    # Datasets ----------------------------------------------------------------------------------

    def CreateDataset(
        self, request: pb.CreateDatasetRequest, context: Context
    ) -> pb.CreateDatasetResponse:
        dataset = _write_dataset(self._store.create_dataset, request)
        return pb.CreateDatasetResponse(dataset=dataset)

    def UpdateDataset(
        self, request: pb.UpdateDatasetRequest, context: Context
    ) -> pb.UpdateDatasetResponse:
        dataset = _write_dataset(self._store.update_dataset, request)
        return pb.UpdateDatasetResponse(dataset=dataset)

    def GetDataset(self, request: pb.GetDatasetRequest, context: Context) -> pb.GetDatasetResponse:
        dataset = self._store.get_dataset(request.name)
        return pb.GetDatasetResponse(dataset=convert.dataset_to_proto(dataset))

    def DeleteDataset(
        self, request: pb.DeleteDatasetRequest, context: Context
    ) -> pb.DeleteDatasetResponse:
        self._store.delete_dataset(request.name, request.request_id)
        return pb.DeleteDatasetResponse()

    def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: Context
    ) -> pb.ListDatasetsResponse:
        datasets, token = _list(request, self._store.list_datasets, convert.dataset_to_proto)
        return pb.ListDatasetsResponse(datasets=datasets, next_page_token=token)

    # Grants ------------------------------------------------------------------------------------

    def CreateGrant(
        self, request: pb.CreateGrantRequest, context: Context
    ) -> pb.CreateGrantResponse:
        grant = self._store.create_grant(
            convert.grant_from_proto(request.grant), request.request_id
        )
        return pb.CreateGrantResponse(grant=convert.grant_to_proto(grant))

    def DeleteGrant(
        self, request: pb.DeleteGrantRequest, context: Context
    ) -> pb.DeleteGrantResponse:
        self._store.delete_grant(request.user, request.dataset, request.request_id)
        return pb.DeleteGrantResponse()

    def ListGrants(self, request: pb.ListGrantsRequest, context: Context) -> pb.ListGrantsResponse:
        grants, token = _list(
            request, self._store.list_grants, convert.grant_to_proto, request.user
        )
        return pb.ListGrantsResponse(grants=grants, next_page_token=token)

    def AuthorizeDatasetAccess(
        self, request: pb.AuthorizeDatasetAccessRequest, context: Context
    ) -> pb.AuthorizeDatasetAccessResponse:
        access = self._store.authorize(request.user, request.dataset)
        return pb.AuthorizeDatasetAccessResponse(
            user=convert.user_to_proto(access.user),
            grant=convert.grant_to_proto(access.grant),
            dataset=convert.descriptor_to_proto(access.dataset),
        )

    # Archive and audit trail -------------------------------------------------------------------

    def RecordQueryResult(
        self, request: pb.RecordQueryResultRequest, context: Context
    ) -> pb.RecordQueryResultResponse:
        record = self._archive.record_query_result(convert.archive_from_proto(request.query))
        return pb.RecordQueryResultResponse(query=convert.archive_to_proto(record))

    def GetArchivedQuery(
        self, request: pb.GetArchivedQueryRequest, context: Context
    ) -> pb.GetArchivedQueryResponse:
        record = self._archive.get_archived_query(request.query_id)
        return pb.GetArchivedQueryResponse(query=convert.archive_to_proto(record))

    def ListArchivedQueries(
        self, request: pb.ListArchivedQueriesRequest, context: Context
    ) -> pb.ListArchivedQueriesResponse:
        queries, token = _list(
            request,
            self._archive.list_archived_queries,
            convert.archive_to_proto,
            request.user,
            request.dataset,
        )
        return pb.ListArchivedQueriesResponse(queries=queries, next_page_token=token)

    def FindReleasedQuery(
        self, request: pb.FindReleasedQueryRequest, context: Context
    ) -> pb.FindReleasedQueryResponse:
        released, stored = self._archive.look_back(
            request.user, request.fingerprint, request.query_id
        )
        response = pb.FindReleasedQueryResponse(found=released is not None)
        if released is not None:
            response.query.CopyFrom(convert.archive_to_proto(released))
        if stored is not None:
            response.stored.CopyFrom(convert.archive_to_proto(stored))
        return response

    def RecordAuditEvent(
        self, request: pb.RecordAuditEventRequest, context: Context
    ) -> pb.RecordAuditEventResponse:
        self._archive.record_audit_event(
            convert.audit_from_proto(request.event), request.request_id
        )
        return pb.RecordAuditEventResponse()

    def BatchRecordAuditEvents(
        self, request: pb.BatchRecordAuditEventsRequest, context: Context
    ) -> pb.BatchRecordAuditEventsResponse:
        events = [(convert.audit_from_proto(one.event), one.request_id) for one in request.requests]
        self._archive.record_audit_events(events, request.request_id)
        return pb.BatchRecordAuditEventsResponse()

    def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Context
    ) -> pb.ListAuditEventsResponse:
        events, token = _list(
            request, self._archive.list_audit_events, convert.audit_to_proto, request.actor
        )
        return pb.ListAuditEventsResponse(events=events, next_page_token=token)

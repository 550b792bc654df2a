"""Thin servicer of the internal AdminStoreService: convert, call the store, convert.

It runs on the blocking server (`lomas_common.blocking_server`): the store blocks on its database.
Lists page by keyset (`lomas_common.convert.KeysetPage`): a token holds the sort key of the last row
returned and is bound to its list (the RPC and its filters).
"""

from __future__ import annotations

import grpc

from lomas.admin.v1 import admin_store_pb2 as pb
from lomas.admin.v1 import admin_store_pb2_grpc
from lomas_admin import convert
from lomas_admin.archive import QueryArchive
from lomas_admin.store import AdminStore
from lomas_common.convert import KeysetPage

Context = grpc.ServicerContext


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
        page = KeysetPage.of(request.page_size, request.page_token, "ListUsers")
        users = self._store.list_users(page.after, page.limit)
        return pb.ListUsersResponse(
            users=[convert.user_to_proto(u) for u in users.items],
            next_page_token=page.next_token(
                users.next_after, has_more=users.next_after is not None
            ),
        )

    # Datasets ----------------------------------------------------------------------------------

    def CreateDataset(
        self, request: pb.CreateDatasetRequest, context: Context
    ) -> pb.CreateDatasetResponse:
        dataset = self._store.create_dataset(
            convert.dataset_from_proto(request.dataset), request.request_id
        )
        return pb.CreateDatasetResponse(dataset=convert.dataset_to_proto(dataset))

    def UpdateDataset(
        self, request: pb.UpdateDatasetRequest, context: Context
    ) -> pb.UpdateDatasetResponse:
        dataset = self._store.update_dataset(
            convert.dataset_from_proto(request.dataset), request.request_id
        )
        return pb.UpdateDatasetResponse(dataset=convert.dataset_to_proto(dataset))

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
        page = KeysetPage.of(request.page_size, request.page_token, "ListDatasets")
        datasets = self._store.list_datasets(page.after, page.limit)
        return pb.ListDatasetsResponse(
            datasets=[convert.dataset_to_proto(d) for d in datasets.items],
            next_page_token=page.next_token(
                datasets.next_after, has_more=datasets.next_after is not None
            ),
        )

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
        page = KeysetPage.of(request.page_size, request.page_token, "ListGrants", request.user)
        grants = self._store.list_grants(request.user, page.after, page.limit)
        return pb.ListGrantsResponse(
            grants=[convert.grant_to_proto(g) for g in grants.items],
            next_page_token=page.next_token(
                grants.next_after, has_more=grants.next_after is not None
            ),
        )

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
        page = KeysetPage.of(
            request.page_size,
            request.page_token,
            "ListArchivedQueries",
            request.user,
            request.dataset,
        )
        records = self._archive.list_archived_queries(
            request.user, request.dataset, page.after, page.limit
        )
        return pb.ListArchivedQueriesResponse(
            queries=[convert.archive_to_proto(r) for r in records.items],
            next_page_token=page.next_token(
                records.next_after, has_more=records.next_after is not None
            ),
        )

    def FindReleasedQuery(
        self, request: pb.FindReleasedQueryRequest, context: Context
    ) -> pb.FindReleasedQueryResponse:
        record = self._archive.find_released_query(request.user, request.fingerprint)
        if record is None:
            return pb.FindReleasedQueryResponse(found=False)
        return pb.FindReleasedQueryResponse(found=True, query=convert.archive_to_proto(record))

    def RecordAuditEvent(
        self, request: pb.RecordAuditEventRequest, context: Context
    ) -> pb.RecordAuditEventResponse:
        self._archive.record_audit_event(
            convert.audit_from_proto(request.event), request.request_id
        )
        return pb.RecordAuditEventResponse()

    def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Context
    ) -> pb.ListAuditEventsResponse:
        page = KeysetPage.of(
            request.page_size, request.page_token, "ListAuditEvents", request.actor
        )
        events = self._archive.list_audit_events(request.actor, page.after, page.limit)
        return pb.ListAuditEventsResponse(
            events=[convert.audit_to_proto(e) for e in events.items],
            next_page_token=page.next_token(
                events.next_after, has_more=events.next_after is not None
            ),
        )

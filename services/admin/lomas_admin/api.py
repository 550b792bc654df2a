"""Thin servicer of the internal AdminStoreService: convert, call the store, convert.

It runs on the blocking server (`lomas_common.blocking_server`): the store blocks on its database.
"""

from __future__ import annotations

from lomas.admin.v1 import admin_store_pb2, admin_store_pb2_grpc
from lomas_admin import convert
from lomas_admin.store import AdminStore
from lomas_common.convert import Page


class AdminStoreServicer(admin_store_pb2_grpc.AdminStoreServiceServicer):
    def __init__(self, store: AdminStore) -> None:
        self._store = store

    def CreateUser(self, request, context):  # type: ignore[no-untyped-def]
        user = self._store.create_user(convert.user_from_proto(request.user))
        return admin_store_pb2.CreateUserResponse(user=convert.user_to_proto(user))

    def GetUser(self, request, context):  # type: ignore[no-untyped-def]
        user = self._store.get_user(request.name)
        return admin_store_pb2.GetUserResponse(user=convert.user_to_proto(user))

    def SetUserMayQuery(self, request, context):  # type: ignore[no-untyped-def]
        user = self._store.set_may_query(request.name, request.may_query)
        return admin_store_pb2.SetUserMayQueryResponse(user=convert.user_to_proto(user))

    def DeleteUser(self, request, context):  # type: ignore[no-untyped-def]
        self._store.delete_user(request.name)
        return admin_store_pb2.DeleteUserResponse()

    def ListUsers(self, request, context):  # type: ignore[no-untyped-def]
        page = Page.of(request.page_size, request.page_token, "ListUsers")
        users, more = self._store.list_users(page.offset, page.limit)
        return admin_store_pb2.ListUsersResponse(
            users=[convert.user_to_proto(u) for u in users],
            next_page_token=page.next_token(len(users), has_more=more),
        )

    def CreateDataset(self, request, context):  # type: ignore[no-untyped-def]
        dataset = self._store.create_dataset(convert.dataset_from_proto(request.dataset))
        return admin_store_pb2.CreateDatasetResponse(dataset=convert.dataset_to_proto(dataset))

    def UpdateDataset(self, request, context):  # type: ignore[no-untyped-def]
        dataset = self._store.update_dataset(convert.dataset_from_proto(request.dataset))
        return admin_store_pb2.UpdateDatasetResponse(dataset=convert.dataset_to_proto(dataset))

    def GetDataset(self, request, context):  # type: ignore[no-untyped-def]
        dataset = self._store.get_dataset(request.name)
        return admin_store_pb2.GetDatasetResponse(dataset=convert.dataset_to_proto(dataset))

    def DeleteDataset(self, request, context):  # type: ignore[no-untyped-def]
        self._store.delete_dataset(request.name)
        return admin_store_pb2.DeleteDatasetResponse()

    def ListDatasets(self, request, context):  # type: ignore[no-untyped-def]
        page = Page.of(request.page_size, request.page_token, "ListDatasets")
        datasets, more = self._store.list_datasets(page.offset, page.limit)
        return admin_store_pb2.ListDatasetsResponse(
            datasets=[convert.dataset_to_proto(d) for d in datasets],
            next_page_token=page.next_token(len(datasets), has_more=more),
        )

    def CreateGrant(self, request, context):  # type: ignore[no-untyped-def]
        grant = self._store.create_grant(convert.grant_from_proto(request.grant))
        return admin_store_pb2.CreateGrantResponse(grant=convert.grant_to_proto(grant))

    def DeleteGrant(self, request, context):  # type: ignore[no-untyped-def]
        self._store.delete_grant(request.user, request.dataset)
        return admin_store_pb2.DeleteGrantResponse()

    def ListGrants(self, request, context):  # type: ignore[no-untyped-def]
        page = Page.of(request.page_size, request.page_token, "ListGrants", request.user)
        grants, more = self._store.list_grants(request.user, page.offset, page.limit)
        return admin_store_pb2.ListGrantsResponse(
            grants=[convert.grant_to_proto(g) for g in grants],
            next_page_token=page.next_token(len(grants), has_more=more),
        )

    def AuthorizeDatasetAccess(self, request, context):  # type: ignore[no-untyped-def]
        access = self._store.authorize(request.user, request.dataset)
        return admin_store_pb2.AuthorizeDatasetAccessResponse(
            user=convert.user_to_proto(access.user),
            grant=convert.grant_to_proto(access.grant),
            dataset=convert.descriptor_to_proto(access.dataset),
        )

    def RecordQueryResult(self, request, context):  # type: ignore[no-untyped-def]
        record = self._store.record_query_result(convert.archive_from_proto(request.query))
        return admin_store_pb2.RecordQueryResultResponse(query=convert.archive_to_proto(record))

    def GetArchivedQuery(self, request, context):  # type: ignore[no-untyped-def]
        record = self._store.get_archived_query(request.query_id)
        return admin_store_pb2.GetArchivedQueryResponse(query=convert.archive_to_proto(record))

    def ListArchivedQueries(self, request, context):  # type: ignore[no-untyped-def]
        page = Page.of(
            request.page_size,
            request.page_token,
            "ListArchivedQueries",
            request.user,
            request.dataset,
        )
        records, more = self._store.list_archived_queries(
            request.user, request.dataset, page.offset, page.limit
        )
        return admin_store_pb2.ListArchivedQueriesResponse(
            queries=[convert.archive_to_proto(r) for r in records],
            next_page_token=page.next_token(len(records), has_more=more),
        )

    def FindReleasedQuery(self, request, context):  # type: ignore[no-untyped-def]
        record = self._store.find_released_query(request.user, request.fingerprint)
        if record is None:
            return admin_store_pb2.FindReleasedQueryResponse(found=False)
        return admin_store_pb2.FindReleasedQueryResponse(
            found=True, query=convert.archive_to_proto(record)
        )

    def RecordAuditEvent(self, request, context):  # type: ignore[no-untyped-def]
        self._store.record_audit_event(convert.audit_from_proto(request.event))
        return admin_store_pb2.RecordAuditEventResponse()

    def ListAuditEvents(self, request, context):  # type: ignore[no-untyped-def]
        page = Page.of(request.page_size, request.page_token, "ListAuditEvents", request.actor)
        events, more = self._store.list_audit_events(request.actor, page.offset, page.limit)
        return admin_store_pb2.ListAuditEventsResponse(
            events=[convert.audit_to_proto(e) for e in events],
            next_page_token=page.next_token(len(events), has_more=more),
        )

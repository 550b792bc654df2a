"""Users, datasets (with versions) and grants through the real servicer: what is stored, what is
refused (gRPC code and ErrorInfo reason), and what a refusal leaves unchanged."""

from __future__ import annotations

import json
from functools import partial

import grpc
from admin_testing import METADATA_JSON, dataset, grant, refused, user

from lomas.admin.v1 import admin_store_pb2 as pb
from lomas.admin.v1 import admin_store_pb2_grpc, resources_pb2
from lomas.common.v1 import dataset_pb2, privacy_pb2

Stub = admin_store_pb2_grpc.AdminStoreServiceStub
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXISTS = grpc.StatusCode.ALREADY_EXISTS


def create_user(stub: Stub, name: str, **fields: bool) -> resources_pb2.User:
    return stub.CreateUser(pb.CreateUserRequest(user=user(name, **fields))).user


def create_dataset(stub: Stub, name: str) -> resources_pb2.Dataset:
    return stub.CreateDataset(pb.CreateDatasetRequest(dataset=dataset(name))).dataset


def user_names(stub: Stub) -> list[str]:
    return [u.name for u in stub.ListUsers(pb.ListUsersRequest()).users]


def grants_of(stub: Stub, name: str) -> list[tuple[str, str]]:
    return [(g.user, g.dataset) for g in stub.ListGrants(pb.ListGrantsRequest(user=name)).grants]


# Users -----------------------------------------------------------------------------------------


def test_a_user_is_created_once_and_read_back(stub: Stub) -> None:
    created = create_user(stub, "alice", may_query=False)
    assert (created.name, created.role, created.may_query) == (
        "alice",
        resources_pb2.ROLE_RESEARCHER,
        False,
    )
    assert created.create_time.seconds > 0
    # The same user again is the stored one (create time included); another one is refused.
    assert create_user(stub, "alice", may_query=False) == created
    refused(lambda: create_user(stub, "alice", may_query=True), EXISTS, "USER_EXISTS")
    assert stub.GetUser(pb.GetUserRequest(name="alice")).user == created
    # The bootstrap admin of start-up exists too.
    root = stub.GetUser(pb.GetUserRequest(name="root")).user
    assert root.role == resources_pb2.ROLE_ADMIN
    assert user_names(stub) == ["alice", "root"]


def test_bad_users_are_refused_and_nothing_is_stored(stub: Stub) -> None:
    refused(lambda: create_user(stub, ""), INVALID, "USER_INVALID")
    refused(lambda: create_user(stub, "x" * 257), INVALID, "USER_INVALID")
    refused(lambda: create_user(stub, "tab\there"), INVALID, "USER_INVALID")
    refused(lambda: stub.GetUser(pb.GetUserRequest(name="bob")), NOT_FOUND, "USER_NOT_FOUND")
    assert user_names(stub) == ["root"]


def test_may_query_is_switched_and_unknown_users_are_not_found(stub: Stub) -> None:
    create_user(stub, "alice")
    switched = stub.SetUserMayQuery(pb.SetUserMayQueryRequest(name="alice", may_query=False))
    assert not switched.user.may_query
    assert not stub.GetUser(pb.GetUserRequest(name="alice")).user.may_query
    refused(
        lambda: stub.SetUserMayQuery(pb.SetUserMayQueryRequest(name="bob", may_query=False)),
        NOT_FOUND,
        "USER_NOT_FOUND",
    )
    assert user_names(stub) == ["alice", "root"]


def test_deleting_a_user_deletes_the_users_grants(stub: Stub) -> None:
    create_user(stub, "alice")
    create_user(stub, "bob")
    create_dataset(stub, "penguins")
    stub.CreateGrant(pb.CreateGrantRequest(grant=grant("alice", "penguins")))
    stub.CreateGrant(pb.CreateGrantRequest(grant=grant("bob", "penguins")))
    stub.DeleteUser(pb.DeleteUserRequest(name="alice"))
    refused(lambda: stub.GetUser(pb.GetUserRequest(name="alice")), NOT_FOUND, "USER_NOT_FOUND")
    assert grants_of(stub, "alice") == []
    assert grants_of(stub, "bob") == [("bob", "penguins")]
    refused(
        lambda: stub.DeleteUser(pb.DeleteUserRequest(name="alice")), NOT_FOUND, "USER_NOT_FOUND"
    )


# Datasets --------------------------------------------------------------------------------------


def test_a_dataset_keeps_its_metadata_order_and_versions_on_update(stub: Stub) -> None:
    created = create_dataset(stub, "penguins")
    assert created.version == 1
    # Column order is the metadata's key order, so the JSON text keeps it.
    assert list(json.loads(created.metadata_json)["columns"]) == ["b", "a"]
    assert created.source.local.path == "/data/penguins.csv"
    assert create_dataset(stub, "penguins") == created
    moved = dataset("penguins", path="/data/penguins-v2.csv")
    refused(
        lambda: stub.CreateDataset(pb.CreateDatasetRequest(dataset=moved)),
        EXISTS,
        "DATASET_EXISTS",
    )
    updated = stub.UpdateDataset(pb.UpdateDatasetRequest(dataset=moved)).dataset
    assert (updated.version, updated.source.local.path) == (2, "/data/penguins-v2.csv")
    assert updated.create_time == created.create_time
    again = stub.UpdateDataset(pb.UpdateDatasetRequest(dataset=moved)).dataset
    assert again.version == 3  # every update is a new version: caches key on it
    assert stub.GetDataset(pb.GetDatasetRequest(name="penguins")).dataset == again
    refused(
        lambda: stub.UpdateDataset(pb.UpdateDatasetRequest(dataset=dataset("nope"))),
        NOT_FOUND,
        "DATASET_NOT_FOUND",
    )


def test_a_dataset_registered_again_after_its_deletion_takes_a_new_version(stub: Stub) -> None:
    """Free replays are keyed on (name, version): a new dataset under an old name must not meet
    the releases of the old one."""
    assert create_dataset(stub, "reused").version == 1
    stub.UpdateDataset(pb.UpdateDatasetRequest(dataset=dataset("reused", path="/data/v2.csv")))
    stub.DeleteDataset(pb.DeleteDatasetRequest(name="reused"))
    assert create_dataset(stub, "reused").version == 3
    stub.DeleteDataset(pb.DeleteDatasetRequest(name="reused"))
    assert create_dataset(stub, "reused").version == 4
    assert create_dataset(stub, "fresh-name").version == 1


def test_bad_datasets_are_refused_and_nothing_is_stored(stub: Stub) -> None:
    no_format = dataset("a")
    no_format.format = dataset_pb2.DATA_FORMAT_UNSPECIFIED
    no_source = dataset("b")
    no_source.ClearField("source")
    bad_metadata = dataset("c")
    bad_metadata.metadata_json = "[1, 2]"
    for bad, reason in [
        (no_format, "DATASET_FORMAT_INVALID"),
        (no_source, "DATASET_SOURCE_INVALID"),
        (bad_metadata, "METADATA_INVALID"),
        (dataset(""), "DATASET_INVALID"),
    ]:
        refused(
            partial(stub.CreateDataset, pb.CreateDatasetRequest(dataset=bad)),
            INVALID,
            reason,
        )
    assert list(stub.ListDatasets(pb.ListDatasetsRequest()).datasets) == []


def test_deleting_a_dataset_deletes_the_grants_on_it(stub: Stub) -> None:
    create_user(stub, "alice")
    create_dataset(stub, "penguins")
    create_dataset(stub, "iris")
    stub.CreateGrant(pb.CreateGrantRequest(grant=grant("alice", "penguins")))
    stub.CreateGrant(pb.CreateGrantRequest(grant=grant("alice", "iris")))
    stub.DeleteDataset(pb.DeleteDatasetRequest(name="penguins"))
    assert grants_of(stub, "alice") == [("alice", "iris")]
    refused(
        lambda: stub.GetDataset(pb.GetDatasetRequest(name="penguins")),
        NOT_FOUND,
        "DATASET_NOT_FOUND",
    )
    refused(
        lambda: stub.DeleteDataset(pb.DeleteDatasetRequest(name="penguins")),
        NOT_FOUND,
        "DATASET_NOT_FOUND",
    )


# Grants and access -----------------------------------------------------------------------------


def test_a_grant_needs_its_user_and_dataset_and_is_created_once(stub: Stub) -> None:
    refused(
        lambda: stub.CreateGrant(pb.CreateGrantRequest(grant=grant("alice", "penguins"))),
        NOT_FOUND,
        "USER_NOT_FOUND",
    )
    create_user(stub, "alice")
    refused(
        lambda: stub.CreateGrant(pb.CreateGrantRequest(grant=grant("alice", "penguins"))),
        NOT_FOUND,
        "DATASET_NOT_FOUND",
    )
    create_dataset(stub, "penguins")
    created = stub.CreateGrant(pb.CreateGrantRequest(grant=grant("alice", "penguins"))).grant
    assert created.definition == privacy_pb2.PRIVACY_DEFINITION_APPROX_DP
    assert (created.allocation.approx_dp.epsilon, created.allocation.approx_dp.delta) == (
        "10",
        "0.001",
    )
    again = stub.CreateGrant(pb.CreateGrantRequest(grant=grant("alice", "penguins"))).grant
    assert again == created
    refused(
        lambda: stub.CreateGrant(pb.CreateGrantRequest(grant=grant("alice", "penguins", "11"))),
        EXISTS,
        "GRANT_EXISTS",
    )
    no_loss = grant("alice", "penguins")
    no_loss.ClearField("allocation")
    refused(
        lambda: stub.CreateGrant(pb.CreateGrantRequest(grant=no_loss)),
        INVALID,
        "PRIVACY_LOSS_INVALID",
    )
    assert grants_of(stub, "alice") == [("alice", "penguins")]


def test_access_is_authorized_by_grant_and_denied_alike_without_one(stub: Stub) -> None:
    create_user(stub, "alice", may_query=False)
    create_dataset(stub, "penguins")
    create_dataset(stub, "iris")
    stub.CreateGrant(pb.CreateGrantRequest(grant=grant("alice", "penguins")))
    access = stub.AuthorizeDatasetAccess(
        pb.AuthorizeDatasetAccessRequest(user="alice", dataset="penguins")
    )
    assert (access.user.name, access.user.may_query) == ("alice", False)
    assert (access.grant.user, access.grant.dataset) == ("alice", "penguins")
    assert (access.dataset.name, access.dataset.version) == ("penguins", 1)
    assert json.loads(access.dataset.metadata_json) == json.loads(METADATA_JSON)
    # No grant: the same refusal whether or not the dataset exists (names never leak).
    for name in ("iris", "no-such-dataset"):
        refused(
            partial(
                stub.AuthorizeDatasetAccess,
                pb.AuthorizeDatasetAccessRequest(user="alice", dataset=name),
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "DATASET_ACCESS_DENIED",
        )


def test_a_grant_is_deleted_once(stub: Stub) -> None:
    create_user(stub, "alice")
    create_dataset(stub, "penguins")
    stub.CreateGrant(pb.CreateGrantRequest(grant=grant("alice", "penguins")))
    stub.DeleteGrant(pb.DeleteGrantRequest(user="alice", dataset="penguins"))
    assert grants_of(stub, "alice") == []
    refused(
        lambda: stub.DeleteGrant(pb.DeleteGrantRequest(user="alice", dataset="penguins")),
        NOT_FOUND,
        "GRANT_NOT_FOUND",
    )
    refused(
        lambda: stub.AuthorizeDatasetAccess(
            pb.AuthorizeDatasetAccessRequest(user="alice", dataset="penguins")
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "DATASET_ACCESS_DENIED",
    )

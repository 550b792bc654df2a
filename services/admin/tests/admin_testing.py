"""Helpers of the admin store tests: message builders, a controllable clock, refusal checks.

A module of its own (conftest puts this directory on `sys.path`) because test modules import it.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from lomas.admin.v1 import admin_store_pb2 as pb
from lomas.admin.v1 import resources_pb2
from lomas.common.v1 import archive_pb2, dataset_pb2, privacy_pb2, query_pb2
from lomas_common.convert import timestamp_from_datetime

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
METADATA_JSON = (
    '{"max_ids": 1, "rows": 10, "columns": {"b": {"type": "int"}, "a": {"type": "int"}}}'
)


class FakeClock:
    """A clock that moves 1 microsecond per reading and jumps when told (thread-safe)."""

    def __init__(self, start: dt.datetime = T0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        with self._lock:
            self._now += dt.timedelta(microseconds=1)
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += dt.timedelta(seconds=seconds)


def user(name: str, *, may_query: bool = True, admin: bool = False) -> resources_pb2.User:
    role = resources_pb2.ROLE_ADMIN if admin else resources_pb2.ROLE_RESEARCHER
    return resources_pb2.User(name=name, role=role, may_query=may_query)


def dataset(name: str, path: str = "/data/penguins.csv") -> resources_pb2.Dataset:
    return resources_pb2.Dataset(
        name=name,
        source=dataset_pb2.DataSource(local=dataset_pb2.LocalSource(path=path)),
        format=dataset_pb2.DATA_FORMAT_CSV,
        metadata_json=METADATA_JSON,
    )


def approx(epsilon: str, delta: str) -> privacy_pb2.PrivacyLoss:
    return privacy_pb2.PrivacyLoss(approx_dp=privacy_pb2.ApproxDp(epsilon=epsilon, delta=delta))


def grant(user_name: str, dataset_name: str, epsilon: str = "10") -> resources_pb2.Grant:
    return resources_pb2.Grant(
        user=user_name, dataset=dataset_name, allocation=approx(epsilon, "0.001")
    )


def outcome(
    query_id: str,
    user_name: str = "alice",
    dataset_name: str = "penguins",
    *,
    submitted: dt.datetime = T0,
    succeeded: bool = True,
    release: bytes = b"release",
    fingerprint: str = "",
) -> archive_pb2.ArchivedQuery:
    return archive_pb2.ArchivedQuery(
        query_id=query_id,
        user=user_name,
        dataset=dataset_name,
        query=query_pb2.Query(
            smartnoise_sql=query_pb2.SmartnoiseSqlQuery(sql="SELECT COUNT(*) FROM df", epsilon="1")
        ),
        cost=approx("1", "0"),
        status=(
            archive_pb2.QUERY_STATUS_SUCCEEDED if succeeded else archive_pb2.QUERY_STATUS_FAILED
        ),
        release=release if succeeded else b"",
        error_reason="" if succeeded else "QUERY_EXECUTION_FAILED",
        submit_time=timestamp_from_datetime(submitted),
        complete_time=timestamp_from_datetime(submitted + dt.timedelta(seconds=1)),
        fingerprint=fingerprint,
    )


def audit_event(
    actor: str, method: str = "/lomas.gateway.v1.AdminService/ListUsers"
) -> pb.AuditEvent:
    return pb.AuditEvent(
        time=timestamp_from_datetime(T0), actor=actor, method=method, request_json="{}", code="OK"
    )


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo of a refused call's rich status."""
    assert isinstance(error, grpc.Call), error
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            assert isinstance(value, bytes)
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return info
    raise AssertionError(f"no ErrorInfo in {error!r}")


def refused(call: Callable[[], Any], code: grpc.StatusCode, reason: str) -> dict[str, str]:
    """Run a gRPC call that must fail with `code` and `reason`; returns the ErrorInfo metadata."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error = raised.value
    assert isinstance(error, grpc.Call), error
    info = error_info(error)
    assert (error.code(), info.reason) == (code, reason), (error.code(), info.reason)
    return dict(info.metadata)

"""Reading the error model off a failed call: the `google.rpc.Status` and its details.

Tests assert the gRPC code AND the `ErrorInfo` reason of every refusal; these read the details
from a sync or a grpc.aio error alike.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

from lomas_common.rpc_errors import status_of_error


def status_of(error: grpc.RpcError) -> status_pb2.Status:
    """The rich status of `error` (fails the test if it has none)."""
    status = status_of_error(error)
    if status is None:
        raise AssertionError(f"no rich status in {error!r}")
    return status


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The `ErrorInfo` of `error` (fails the test if it has none)."""
    for detail in status_of(error).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError("the error carries no ErrorInfo")


def retry_info(error: grpc.RpcError) -> error_details_pb2.RetryInfo | None:
    """The `RetryInfo` of `error`, if it has one."""
    for detail in status_of(error).details:
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(retry):
            return retry
    return None

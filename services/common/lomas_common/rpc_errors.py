"""The gRPC edge of the error model: `LomasError` <-> `google.rpc.Status` with one `ErrorInfo`.

Servers turn domain errors into a rich status (code, message, ErrorInfo, RetryInfo); peers and clients
turn that status back into a `LomasError` carrying the same code and reason, so an error raised deep in
the budget ledger reaches the researcher unchanged through the gateway.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from lomas_common.errors import ERROR_DOMAIN, BackendUnavailable, Code, LomasError

log = logging.getLogger(__name__)

_GRPC_CODES: dict[Code, grpc.StatusCode] = {code: grpc.StatusCode[code.value] for code in Code}
_CODES_BY_GRPC: dict[grpc.StatusCode, Code] = {v: k for k, v in _GRPC_CODES.items()}


def grpc_code(error: LomasError) -> grpc.StatusCode:
    return _GRPC_CODES[error.code]


# Statuses travel in HTTP/2 trailers (about 8 KiB in all): messages may echo caller input (a name),
# so both are capped here, once, for every error.
MAX_MESSAGE_CHARS = 1024
MAX_METADATA_VALUE_CHARS = 256


def _capped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_status(error: LomasError) -> status_pb2.Status:
    """A domain error as a `google.rpc.Status` with its ErrorInfo (and RetryInfo when it has one)."""
    details = []
    metadata = {
        _capped(k, 64): _capped(v, MAX_METADATA_VALUE_CHARS) for k, v in error.metadata.items()
    }
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata)
    packed = any_pb2.Any()
    packed.Pack(info)
    details.append(packed)
    if error.retry_after_seconds is not None:
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(
                seconds=int(error.retry_after_seconds),
                nanos=int((error.retry_after_seconds % 1) * 1e9),
            )
        )
        packed_retry = any_pb2.Any()
        packed_retry.Pack(retry)
        details.append(packed_retry)
    return status_pb2.Status(
        code=getattr(code_pb2, error.code.value),
        message=_capped(error.message, MAX_MESSAGE_CHARS),
        details=details,
    )


def internal_status() -> status_pb2.Status:
    """What a caller sees for an unexpected failure: nothing about its cause."""
    return to_status(LomasError("internal error", reason="INTERNAL"))


class RemoteError(LomasError):
    """An error reported by a peer service, re-raised with the peer's code, reason and retry advice."""

    def __init__(
        self,
        code: Code,
        message: str,
        reason: str,
        metadata: dict[str, str],
        retry_after_seconds: float | None = None,
    ) -> None:
        self.code = code
        super().__init__(
            message, reason=reason, metadata=metadata, retry_after_seconds=retry_after_seconds
        )


def status_of_error(error: grpc.RpcError) -> status_pb2.Status | None:
    """The rich status in the trailing metadata (works for sync calls and grpc.aio errors alike)."""
    trailing = getattr(error, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def _retry_after(status: status_pb2.Status) -> float | None:
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            return float(retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9)
    return None


# How long a caller should wait before retrying a call that failed because a peer was unreachable:
# long enough for a supervised restart to begin, short enough not to hold a researcher back.
PEER_RETRY_AFTER_SECONDS = 1.0

# Transport failures: the peer was not reached, went away mid-call, or did not answer in time. They
# carry no ErrorInfo because no Lomas code produced them.
# A peer that is stopping cancels the calls it had not started: CANCELLED, retryable like those.
_TRANSPORT_CODES = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
)


def peer_unavailable(peer: str) -> BackendUnavailable:
    """The error a caller gets while `peer` (e.g. "executor") is down or restarting."""
    return BackendUnavailable(
        "a backend service is unavailable; retry later",
        peer=peer,
        retry_after_seconds=PEER_RETRY_AFTER_SECONDS,
    )


def from_rpc_error(error: grpc.RpcError, peer: str = "") -> LomasError:
    """Rebuild the domain error from a peer's status; transport failures become BACKEND_UNAVAILABLE
    naming `peer`, with retry advice."""
    code_method = getattr(error, "code", None)
    code = code_method() if callable(code_method) else None
    status = status_of_error(error)
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                domain_code = _CODES_BY_GRPC.get(code, Code.INTERNAL) if code else Code.INTERNAL
                return RemoteError(
                    domain_code,
                    status.message,
                    info.reason,
                    dict(info.metadata),
                    retry_after_seconds=_retry_after(status),
                )
    if code in _TRANSPORT_CODES:
        log.warning("peer %s unreachable: %s", peer or "?", code)
        return peer_unavailable(peer)
    log.warning("peer %s call failed without ErrorInfo: %s", peer or "?", code)
    return LomasError("internal error", reason="INTERNAL")

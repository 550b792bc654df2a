"""Server interceptors that time every gRPC call by method and status code
(`lomas_rpc_server_duration_seconds`).

They stand outside the edge interceptors (authentication, the error model), so a refused call is
timed too, with the code the caller receives. Unknown methods are not recorded (their names come
from callers and would make the label unbounded), nor are health checks and reflection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any, TypeVar, cast

import grpc

from lomas_common import metrics
from lomas_common.interceptors import AroundCall, AroundEachCall

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
SyncUnary = Callable[[Any, grpc.ServicerContext], Any]
SyncStream = Callable[[Any, grpc.ServicerContext], Iterator[Any]]


def measured(method: str) -> bool:
    """Health checks (probes, peer watchers: every few seconds) and reflection are not timed."""
    return not method.startswith(("/grpc.health.", "/grpc.reflection."))


def _code_name(code: grpc.StatusCode | None, failed: BaseException | None) -> str:
    """The status a call ended with: what the handler set (an abort sets it), else UNKNOWN for an
    escaped exception (CANCELLED for a cancellation), else OK."""
    if code is not None:
        return code.name
    if isinstance(failed, asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN" if failed is not None else "OK"


def _sync_code(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    """The code a thread-pool server's handler set (grpc's stubs omit `ServicerContext.code`)."""
    code = getattr(context, "code", None)
    value = code() if callable(code) else None
    return value if isinstance(value, grpc.StatusCode) else None


@contextmanager
def _timed(method: str, code: Callable[[], grpc.StatusCode | None]) -> Iterator[None]:
    """Record the call that runs inside: its duration, and the status it ended with (`code()`:
    the code its handler set, if any, read once it has ended)."""
    started, failed = time.perf_counter(), None
    try:
        yield
    except BaseException as error:
        failed = error
        raise
    finally:
        metrics.rpc_served(method, _code_name(code(), failed), time.perf_counter() - started)


class AsyncRpcMetrics(AroundEachCall):
    """Times unary and server-streaming calls on an asyncio server."""

    def around(self, method: str) -> AroundCall | None:
        if not measured(method):
            return None

        @asynccontextmanager
        async def timed(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[None]:
            with _timed(method, context.code):
                yield

        return timed


class SyncRpcMetrics(grpc.ServerInterceptor):
    """Times unary and server-streaming calls on a thread-pool server."""

    def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], grpc.RpcMethodHandler[RequestT, ResponseT] | None
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[RequestT, ResponseT] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not measured(method):
            return handler
        deserializer, serializer = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary is not None:
            answer = cast(SyncUnary, handler.unary_unary)

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                with _timed(method, partial(_sync_code, context)):
                    return answer(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, deserializer, serializer)
        if handler.unary_stream is not None:
            events = cast(SyncStream, handler.unary_stream)

            def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                with _timed(method, partial(_sync_code, context)):
                    yield from events(request, context)

            return grpc.unary_stream_rpc_method_handler(streaming, deserializer, serializer)
        return handler

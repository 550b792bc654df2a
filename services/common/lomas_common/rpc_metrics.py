"""Server interceptors that time every gRPC call by method and status code
(`lomas_rpc_server_duration_seconds`).

They stand outside the edge interceptors (authentication, the error model), so a refused call is
timed too, with the code the caller receives. Unknown methods are not recorded (their names come
from callers and would make the label unbounded), nor are health checks and reflection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar, cast

import grpc

from lomas_common import metrics

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
AsyncUnary = Callable[[Any, "grpc.aio.ServicerContext[Any, Any]"], Awaitable[Any]]
AsyncStream = Callable[[Any, "grpc.aio.ServicerContext[Any, Any]"], AsyncIterator[Any]]
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


class AsyncRpcMetrics(grpc.aio.ServerInterceptor):
    """Times unary and server-streaming calls on an asyncio server."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[RequestT, ResponseT] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[RequestT, ResponseT] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not measured(method):
            return handler
        deserializer, serializer = handler.request_deserializer, handler.response_serializer
        # On an asyncio server a unary behaviour is a coroutine function and a server-streaming one
        # an async generator function (grpc's stubs type them for the thread-pool server).
        if handler.unary_unary is not None:
            answer = cast(AsyncUnary, handler.unary_unary)

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                started, failed = time.perf_counter(), None
                try:
                    return await answer(request, context)
                except BaseException as error:
                    failed = error
                    raise
                finally:
                    code = _code_name(context.code(), failed)
                    metrics.rpc_served(method, code, time.perf_counter() - started)

            return grpc.unary_unary_rpc_method_handler(unary, deserializer, serializer)
        if handler.unary_stream is not None:
            events = cast(AsyncStream, handler.unary_stream)

            async def streaming(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                started, failed = time.perf_counter(), None
                try:
                    async for response in events(request, context):
                        yield response
                except BaseException as error:
                    failed = error
                    raise
                finally:
                    code = _code_name(context.code(), failed)
                    metrics.rpc_served(method, code, time.perf_counter() - started)

            return grpc.unary_stream_rpc_method_handler(streaming, deserializer, serializer)
        return handler  # client streams: only reflection has them


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
                started, failed = time.perf_counter(), None
                try:
                    return answer(request, context)
                except BaseException as error:
                    failed = error
                    raise
                finally:
                    code = _code_name(_sync_code(context), failed)
                    metrics.rpc_served(method, code, time.perf_counter() - started)

            return grpc.unary_unary_rpc_method_handler(unary, deserializer, serializer)
        if handler.unary_stream is not None:
            events = cast(SyncStream, handler.unary_stream)

            def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                started, failed = time.perf_counter(), None
                try:
                    yield from events(request, context)
                except BaseException as error:
                    failed = error
                    raise
                finally:
                    code = _code_name(_sync_code(context), failed)
                    metrics.rpc_served(method, code, time.perf_counter() - started)

            return grpc.unary_stream_rpc_method_handler(streaming, deserializer, serializer)
        return handler

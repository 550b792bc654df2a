"""The base of the asyncio server interceptors that run each call inside a context of their own
(the edges of `lomas_common.server`, the timing of `lomas_common.rpc_metrics`).

A subclass says which context a method's calls run in (`around`); the base wraps the method's
handler once, whether it answers once (unary) or streams its answers (server streaming), so the
context opens before the handler runs and closes after its last answer, its error or its
cancellation. Client-streaming handlers (only gRPC reflection has them) are passed through.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar, cast

import grpc

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
# A servicer method as an asyncio server runs it (grpc's stubs type them for the thread-pool server).
AsyncBehavior = Callable[[Any, "grpc.aio.ServicerContext[Any, Any]"], Awaitable[Any]]
StreamBehavior = Callable[[Any, "grpc.aio.ServicerContext[Any, Any]"], AsyncIterator[Any]]
# The context one call runs in, opened with the call's request and context.
AroundCall = Callable[[Any, "grpc.aio.ServicerContext[Any, Any]"], AbstractAsyncContextManager[Any]]
Deserializer = Callable[[bytes], Any]


class AroundEachCall(grpc.aio.ServerInterceptor, abc.ABC):
    """An asyncio server interceptor that runs each unary or server-streaming call of a method
    inside the context `around(method)` gives (None: the method's calls are left alone)."""

    @abc.abstractmethod
    def around(self, method: str) -> AroundCall | None:
        """The context each call of `method` runs in, or None to leave its calls alone."""

    def request_deserializer(self, deserializer: Deserializer | None) -> Deserializer | None:
        """The request deserializer of a wrapped handler: the handler's own unless overridden."""
        return deserializer

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[RequestT, ResponseT] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[RequestT, ResponseT] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        around = self.around(handler_call_details.method)
        if around is None:
            return handler
        deserializer = self.request_deserializer(handler.request_deserializer)
        serializer = handler.response_serializer
        # On an asyncio server a unary behaviour is a coroutine function and a server-streaming
        # one an async generator function (grpc's stubs type them for the thread-pool server).
        if handler.unary_unary is not None:
            answer = cast(AsyncBehavior, handler.unary_unary)

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                async with around(request, context):
                    return await answer(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, deserializer, serializer)
        if handler.unary_stream is not None:
            events = cast(StreamBehavior, handler.unary_stream)

            async def streaming(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                async with around(request, context):
                    async for response in events(request, context):
                        yield response

            return grpc.unary_stream_rpc_method_handler(streaming, deserializer, serializer)
        return handler  # client streams: only gRPC reflection has them

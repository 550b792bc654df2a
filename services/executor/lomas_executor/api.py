"""Thin servicer of the internal ExecutorService: validation, cost and dummy data. No private data.

Every call is free to its caller and parses what the caller wrote, so none runs in the server
process: each RPC's request bytes go, undecoded, to a child of the free-call pool
(`lomas_executor.sandbox`), which runs `lomas_executor.free_calls` under memory and time limits and
sends back the response's bytes. The server process neither decodes nor encodes a message, and
this module imports no engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import grpc

from lomas.executor.v1 import executor_pb2
from lomas_executor.sandbox import FreeCallPool

SERVICE_NAME = "lomas.executor.v1.ExecutorService"
# Every RPC of the service, from its descriptor: a new RPC is forwarded as soon as it is declared
# (and `free_calls` must answer it, or the child refuses it as unknown).
METHODS = tuple(executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"].methods_by_name)

BytesHandler = Callable[[bytes, grpc.ServicerContext], bytes]


class Registrar(Protocol):
    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None: ...


class ExecutorServicer:
    def __init__(self, pool: FreeCallPool) -> None:
        self._pool = pool

    def forwarder(self, method: str) -> BytesHandler:
        """The handler of `method`: its request's bytes run in a child, within the caller's
        deadline; the child is killed if the caller leaves."""

        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            return self._pool.call(
                method,
                request,
                time_remaining=context.time_remaining(),
                is_active=context.is_active,
            )

        return forward


def add_executor_service(servicer: ExecutorServicer, server: Registrar) -> None:
    """Register every ExecutorService RPC as bytes in, bytes out (no (de)serializer)."""
    server.add_registered_method_handlers(
        SERVICE_NAME,
        {
            method: grpc.unary_unary_rpc_method_handler(servicer.forwarder(method))
            for method in METHODS
        },
    )

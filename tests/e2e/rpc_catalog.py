"""Every RPC of every service, read from the generated descriptors, with a generic way to call it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from mesh_testing import status_of

from lomas.admin.v1 import admin_store_pb2
from lomas.budget.v1 import budget_pb2
from lomas.executor.v1 import executor_pb2
from lomas.gateway.v1 import admin_pb2, gateway_pb2


@dataclass(frozen=True)
class Rpc:
    service: str  # full name, e.g. lomas.budget.v1.BudgetService
    method: descriptor.MethodDescriptor
    public: bool  # served by the gateway

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method.name}"

    def request_class(self) -> type[Any]:
        return message_factory.GetMessageClass(self.method.input_type)

    def call(
        self, channel: grpc.Channel, request: Any, metadata: tuple[tuple[str, str], ...]
    ) -> tuple[grpc.StatusCode, str]:
        """The status code and ErrorInfo reason of one call ("" when there is none)."""
        response_class = message_factory.GetMessageClass(self.method.output_type)
        try:
            if self.method.server_streaming:
                stream: grpc.UnaryStreamMultiCallable[Any, Message] = channel.unary_stream(
                    self.path,
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=response_class.FromString,
                )
                for _ in stream(request, metadata=metadata, timeout=30):
                    pass
            else:
                stub: grpc.UnaryUnaryMultiCallable[Any, Message] = channel.unary_unary(
                    self.path,
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=response_class.FromString,
                )
                stub(request, metadata=metadata, timeout=30)
        except grpc.RpcError as error:
            return error.code(), reason_of(error)
        return grpc.StatusCode.OK, ""


SERVICES: list[tuple[descriptor.ServiceDescriptor, bool]] = [
    (gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"], True),
    (admin_pb2.DESCRIPTOR.services_by_name["AdminService"], True),
    (admin_store_pb2.DESCRIPTOR.services_by_name["AdminStoreService"], False),
    (budget_pb2.DESCRIPTOR.services_by_name["BudgetService"], False),
    (executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"], False),
]


def all_rpcs() -> Iterator[Rpc]:
    for service, public in SERVICES:
        for method in service.methods:
            yield Rpc(service.full_name, method, public)


def reason_of(error: grpc.RpcError) -> str:
    for detail in status_of(error).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason: str = info.reason  # googleapis' stubs are not on mypy's path: info is Any
            return reason
    return ""

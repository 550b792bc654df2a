"""Reflection v1 and v1alpha on both server kinds, and the v1 file checked against its published form.

The end-to-end test (tests/e2e/test_reflection.py) asks every service of a running platform; these
start one server of each kind on port 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest
from common_testing import EXECUTOR, AsyncExecutor, BlockingExecutor, settings
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from lomas.executor.v1 import executor_pb2_grpc
from lomas_common.blocking_server import start_blocking_server
from lomas_common.reflection import V1_SERVICE, V1ALPHA_SERVICE, v1_file_descriptor
from lomas_common.server import Service, start_server

HEALTH = "grpc.health.v1.Health"
LISTED = {EXECUTOR, HEALTH, V1_SERVICE, V1ALPHA_SERVICE}
TOKEN = "peer-secret"

# grpc/reflection/v1/reflection.proto as grpc-proto publishes it: (message, field) -> (number,
# type name). Written out here, not derived from v1alpha, so that a rename that lost or moved a
# field would fail.
V1_FIELDS = {
    ("ServerReflectionRequest", "host"): (1, ""),
    ("ServerReflectionRequest", "file_by_filename"): (3, ""),
    ("ServerReflectionRequest", "file_containing_symbol"): (4, ""),
    ("ServerReflectionRequest", "file_containing_extension"): (
        5,
        ".grpc.reflection.v1.ExtensionRequest",
    ),
    ("ServerReflectionRequest", "all_extension_numbers_of_type"): (6, ""),
    ("ServerReflectionRequest", "list_services"): (7, ""),
    ("ExtensionRequest", "containing_type"): (1, ""),
    ("ExtensionRequest", "extension_number"): (2, ""),
    ("ServerReflectionResponse", "valid_host"): (1, ""),
    ("ServerReflectionResponse", "original_request"): (
        2,
        ".grpc.reflection.v1.ServerReflectionRequest",
    ),
    ("ServerReflectionResponse", "file_descriptor_response"): (
        4,
        ".grpc.reflection.v1.FileDescriptorResponse",
    ),
    ("ServerReflectionResponse", "all_extension_numbers_response"): (
        5,
        ".grpc.reflection.v1.ExtensionNumberResponse",
    ),
    ("ServerReflectionResponse", "list_services_response"): (
        6,
        ".grpc.reflection.v1.ListServiceResponse",
    ),
    ("ServerReflectionResponse", "error_response"): (7, ".grpc.reflection.v1.ErrorResponse"),
    ("FileDescriptorResponse", "file_descriptor_proto"): (1, ""),
    ("ExtensionNumberResponse", "base_type_name"): (1, ""),
    ("ExtensionNumberResponse", "extension_number"): (2, ""),
    ("ListServiceResponse", "service"): (1, ".grpc.reflection.v1.ServiceResponse"),
    ("ServiceResponse", "name"): (1, ""),
    ("ErrorResponse", "error_code"): (1, ""),
    ("ErrorResponse", "error_message"): (2, ""),
}


def test_the_v1_file_is_the_published_one() -> None:
    proto = v1_file_descriptor()
    assert (proto.name, proto.package) == (
        "grpc/reflection/v1/reflection.proto",
        "grpc.reflection.v1",
    )
    assert not proto.options.deprecated and not proto.dependency
    fields = {
        (message.name, field.name): (field.number, field.type_name)
        for message in proto.message_type
        for field in message.field
    }
    assert fields == V1_FIELDS
    [service] = proto.service
    [method] = service.method
    assert (service.name, method.name) == ("ServerReflection", "ServerReflectionInfo")
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert method.output_type == ".grpc.reflection.v1.ServerReflectionResponse"
    assert method.client_streaming and method.server_streaming


def ask(
    port: int, service: str, requests: list[reflection_pb2.ServerReflectionRequest]
) -> Iterator[reflection_pb2.ServerReflectionResponse]:
    """Send `requests` on one reflection stream of `service` (v1 or v1alpha: the same bytes)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call: grpc.StreamStreamMultiCallable[
            reflection_pb2.ServerReflectionRequest, reflection_pb2.ServerReflectionResponse
        ] = channel.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        yield from call(iter(requests), timeout=10)


def check_both_versions(port: int) -> None:
    for service in (V1_SERVICE, V1ALPHA_SERVICE):
        listed, v1_file, unknown = ask(
            port,
            service,
            [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=V1_SERVICE),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Symbol"),
            ],
        )
        assert {s.name for s in listed.list_services_response.service} == LISTED, service
        [serialized] = v1_file.file_descriptor_response.file_descriptor_proto
        assert descriptor_pb2.FileDescriptorProto.FromString(serialized) == v1_file_descriptor()
        assert unknown.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


@pytest.mark.parametrize("token", ["", TOKEN])
def test_the_blocking_server_answers_both_versions(token: str) -> None:
    executor = Service(
        executor_pb2_grpc.add_ExecutorServiceServicer_to_server, BlockingExecutor(), EXECUTOR
    )
    # With a service token, reflection stays open to callers without it (like health).
    server = start_blocking_server(settings(service_token=token), [executor], threads=2)
    try:
        check_both_versions(server.port)
    finally:
        server.stop()


def test_the_asyncio_server_answers_both_versions() -> None:
    async def scenario() -> None:
        executor = Service(
            executor_pb2_grpc.add_ExecutorServiceServicer_to_server, AsyncExecutor(), EXECUTOR
        )
        running = await start_server(settings(service_token=TOKEN), [executor])
        try:
            await asyncio.to_thread(check_both_versions, running.port)
        finally:
            await running.stop()

    asyncio.run(scenario())

"""gRPC server reflection in both versions, `grpc.reflection.v1` and `grpc.reflection.v1alpha`.

grpcio-reflection serves v1alpha only, and current tools (grpcurl, Postman, grpcui) ask v1 first.
The two versions are the same messages under another package name (grpc/reflection/v1/reflection.proto
is v1alpha's file renamed, field for field), so the same bytes travel on the wire: one
grpcio-reflection servicer answers both method paths, with v1alpha's (de)serializers.

A client that lists `grpc.reflection.v1.ServerReflection` may ask for its file like any other
service's. That file is v1alpha's descriptor with the package renamed; it lives in a pool of its
own, searched before the process's default pool, so the default pool stays exactly what generated
code made it (a later import of a real v1 module cannot then clash with ours).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA_SERVICE = reflection.SERVICE_NAME  # "grpc.reflection.v1alpha.ServerReflection"
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"  # the path grpc-proto publishes it under
METHOD = "ServerReflectionInfo"

T = TypeVar("T")


def v1_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto: v1alpha's file with the package (and the language
    packages of its options) renamed, and without v1alpha's `deprecated` option."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old_prefix = f".{proto.package}."
    new_prefix = f".{V1_PACKAGE}."

    def renamed(type_name: str) -> str:
        return new_prefix + type_name.removeprefix(old_prefix)

    proto.name = V1_FILE
    proto.package = V1_PACKAGE
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    proto.options.ClearField("deprecated")
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # message fields; setting it on a string would be wrong
                field.type_name = renamed(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type = renamed(method.input_type)
            method.output_type = renamed(method.output_type)
    return proto


class ReflectionPool:
    """What the reflection servicer looks descriptors up in: the v1 reflection file, then the
    process's default pool (every generated module the server imported). grpcio-reflection calls
    only these five methods."""

    def __init__(self) -> None:
        own = descriptor_pool.DescriptorPool()
        own.Add(v1_file_descriptor())
        self._pools = (own, descriptor_pool.Default())

    def FindFileByName(self, name: str) -> descriptor.FileDescriptor:
        return self._first(lambda pool: pool.FindFileByName(name))

    def FindFileContainingSymbol(self, symbol: str) -> descriptor.FileDescriptor:
        return self._first(lambda pool: pool.FindFileContainingSymbol(symbol))

    def FindMessageTypeByName(self, name: str) -> descriptor.Descriptor:
        return self._first(lambda pool: pool.FindMessageTypeByName(name))

    # A message's extensions live in the pool of the message's own file.
    def FindExtensionByNumber(
        self, message: descriptor.Descriptor, number: int
    ) -> descriptor.FieldDescriptor:
        return message.file.pool.FindExtensionByNumber(message, number)

    def FindAllExtensions(self, message: descriptor.Descriptor) -> list[descriptor.FieldDescriptor]:
        return list(message.file.pool.FindAllExtensions(message))

    def _first(self, find: Callable[[descriptor_pool.DescriptorPool], T]) -> T:
        for pool in self._pools:
            try:
                return find(pool)
            except KeyError:
                continue
        raise KeyError("not found")  # the servicer answers NOT_FOUND


def add_reflection(server: Any, service_names: Sequence[str]) -> None:
    """Serve reflection v1 and v1alpha on `server`, listing `service_names` and both reflection
    services.

    `server` is a `grpc.aio.Server`, a `grpc.Server`, or what stands in for one at registration (the
    blocking server's registrar): anything with `add_generic_rpc_handlers` and
    `add_registered_method_handlers`."""
    names = [*service_names, V1_SERVICE, V1ALPHA_SERVICE]
    pool = ReflectionPool()
    servicer: reflection.ReflectionServicer | reflection.aio.ReflectionServicer = (
        reflection.aio.ReflectionServicer(names, pool=pool)
        if isinstance(server, grpc.aio.Server)
        else reflection.ReflectionServicer(names, pool=pool)
    )
    handlers = {
        METHOD: grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    for service in (V1ALPHA_SERVICE, V1_SERVICE):
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        server.add_registered_method_handlers(service, handlers)

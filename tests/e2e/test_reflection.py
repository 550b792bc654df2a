"""gRPC conventions on every service of a running platform, asked as tools ask them (grpcurl,
Postman, Kubernetes probes): no credentials, a reflection client, the standard health service.

* Reflection answers in both versions, `grpc.reflection.v1` (what current tools ask first) and
  `grpc.reflection.v1alpha`, and lists every service the server's protos declare; every listed
  service's file, with its imports, resolves into descriptors equal to the generated ones.
* Health has a status for each service by name, besides the server's own name "".
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from base64 import b64decode
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message, message_factory
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from mesh_testing import RunningMesh

from lomas_common.peers import health_check

HEALTH = "grpc.health.v1.Health"
V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
DOMAINS = ["gateway", "admin", "budget", "executor"]


def declared_services(domain: str) -> dict[str, Any]:
    """Every service the protos of `lomas.<domain>.v1` declare, by full name (its descriptor)."""
    package = importlib.import_module(f"lomas.{domain}.v1")
    services: dict[str, Any] = {}
    for module in pkgutil.iter_modules(package.__path__):
        if module.name.endswith("_pb2"):
            generated = importlib.import_module(f"{package.__name__}.{module.name}")
            for service in generated.DESCRIPTOR.services_by_name.values():
                services[service.full_name] = service
    return services


def target(platform: RunningMesh, domain: str) -> str:
    if domain == "gateway":
        return platform.target
    return str(getattr(platform.mesh, f"{domain}_target"))


@pytest.mark.parametrize("domain", DOMAINS)
def test_v1alpha_lists_every_service_and_their_files_resolve(
    platform: RunningMesh, domain: str
) -> None:
    declared = declared_services(domain)
    assert declared, domain
    with grpc.insecure_channel(target(platform, domain)) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert set(database.get_services()) == {*declared, HEALTH, V1, V1ALPHA}
        # A pool fed only by the server's answers (each file and its imports, on demand).
        pool = descriptor_pool.DescriptorPool(database)
        for name, generated in declared.items():
            reflected = pool.FindServiceByName(name)
            assert describe(reflected) == describe(generated), name
        for name in (HEALTH, V1, V1ALPHA):
            assert pool.FindServiceByName(name).methods, name


def describe(service: Any) -> list[tuple[str, str, str, bool, bool]]:
    """A service's methods: name, request and response types, streaming."""
    return [
        (
            m.name,
            m.input_type.full_name,
            m.output_type.full_name,
            m.client_streaming,
            m.server_streaming,
        )
        for m in service.methods
    ]


def v1_messages(channel: grpc.Channel) -> tuple[type[message.Message], type[message.Message]]:
    """The v1 request and response classes, built from the file the server serves for the v1
    service (this test ships no v1 code of its own)."""
    file = ProtoReflectionDescriptorDatabase(channel).FindFileContainingSymbol(V1)
    assert (file.name, file.package) == (
        "grpc/reflection/v1/reflection.proto",
        "grpc.reflection.v1",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
        ),
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
        ),
    )


def ask_v1(channel: grpc.Channel, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send `requests` (JSON form) on one v1 reflection stream; the responses in JSON form."""
    request_class, response_class = v1_messages(channel)
    call: grpc.StreamStreamMultiCallable[message.Message, message.Message] = channel.stream_stream(
        f"/{V1}/ServerReflectionInfo",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_class.FromString,
    )

    def stream() -> Iterator[message.Message]:
        for request in requests:
            yield json_format.ParseDict(request, request_class())

    return [json_format.MessageToDict(response) for response in call(stream(), timeout=30)]


@pytest.mark.parametrize("domain", DOMAINS)
def test_v1_lists_every_service_and_resolves_their_files(
    platform: RunningMesh, domain: str
) -> None:
    declared = declared_services(domain)
    with grpc.insecure_channel(target(platform, domain)) as channel:
        listed, *files, missing = ask_v1(
            channel,
            [
                {"listServices": ""},
                *({"fileContainingSymbol": name} for name in sorted(declared)),
                {"fileByFilename": "no/such/file.proto"},
            ],
        )
    assert {s["name"] for s in listed["listServicesResponse"]["service"]} == {
        *declared,
        HEALTH,
        V1,
        V1ALPHA,
    }
    for name, answer in zip(sorted(declared), files, strict=True):
        serialized = answer["fileDescriptorResponse"]["fileDescriptorProto"]  # base64 in JSON
        protos = [descriptor_pb2.FileDescriptorProto.FromString(b64decode(s)) for s in serialized]
        # The first file declares the service; the others are its imports.
        expected = declared[name].file
        assert protos[0].name == expected.name, name
        assert {p.name for p in protos} >= {d.name for d in expected.dependencies}, name
    assert missing["errorResponse"]["errorCode"] == grpc.StatusCode.NOT_FOUND.value[0]


def health_of(channel: grpc.Channel, service: str) -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return int(health_check(channel)(request, timeout=5).status)


@pytest.mark.parametrize("domain", DOMAINS)
def test_health_reports_each_service_by_name(platform: RunningMesh, domain: str) -> None:
    declared = declared_services(domain)
    with grpc.insecure_channel(target(platform, domain)) as channel:
        # Another test of the session may have stopped a peer; the supervisor restarts it and
        # the gateway's services serve again once their peers do.
        deadline = time.monotonic() + 60
        names = ["", *sorted(declared)]
        while any(health_of(channel, n) != health_pb2.HealthCheckResponse.SERVING for n in names):
            assert time.monotonic() < deadline, {n: health_of(channel, n) for n in names}
            time.sleep(0.5)
        with pytest.raises(grpc.RpcError) as unknown:
            health_of(channel, "lomas.nosuch.v1.NoSuchService")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

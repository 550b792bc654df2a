"""Contracts as other languages meet them: every field of every Lomas message says its behaviour
(`google.api.field_behavior`), and every mutating request of the public API can be retried safely
(a `request_id`, or a query id that plays that role)."""

from __future__ import annotations

import importlib
import pkgutil

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor

DOMAINS = ("admin", "budget", "common", "executor", "gateway")
# Public mutating RPCs whose request carries its idempotency key under another name.
KEYED_BY_QUERY_ID = {"lomas.gateway.v1.ExecuteQueryRequest", "lomas.gateway.v1.CancelQueryRequest"}
READ_ONLY_PREFIXES = (
    "Get",
    "List",
    "Estimate",
    "Verify",
    "Find",
    "Authorize",
    "Validate",
    "Run",
    "Watch",
)


def _messages() -> list[Descriptor]:
    found: list[Descriptor] = []

    def walk(descriptor: Descriptor) -> None:
        if descriptor.GetOptions().map_entry:
            return
        found.append(descriptor)
        for nested in descriptor.nested_types:
            walk(nested)

    for domain in DOMAINS:
        package = importlib.import_module(f"lomas.{domain}.v1")
        for module in pkgutil.iter_modules(package.__path__):
            if module.name.endswith("_pb2"):
                generated = importlib.import_module(f"lomas.{domain}.v1.{module.name}")
                for descriptor in generated.DESCRIPTOR.message_types_by_name.values():
                    walk(descriptor)
    return found


def test_every_field_says_its_behaviour() -> None:
    fields = [field for message in _messages() for field in message.fields]
    assert len(fields) > 300
    missing = [
        field.full_name
        for field in fields
        if not field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    ]
    assert missing == []


def test_every_public_mutating_request_can_be_retried() -> None:
    from lomas.gateway.v1 import admin_pb2, gateway_pb2

    missing = []
    for generated in (admin_pb2, gateway_pb2):
        for service in generated.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                request = method.input_type
                if method.name.startswith(READ_ONLY_PREFIXES):
                    continue
                if "request_id" not in request.fields_by_name:
                    missing.append(request.full_name)
    assert [name for name in missing if name not in KEYED_BY_QUERY_ID] == []

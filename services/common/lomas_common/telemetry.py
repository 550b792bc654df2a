"""OpenTelemetry wiring: traces on every gRPC server and client when an exporter is configured.

`LOMAS_OTEL_EXPORTER` is `none` (default: no instrumentation, no overhead), `console` or `otlp`.
"""

from __future__ import annotations

import functools
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter


@functools.cache
def _configure(exporter: str) -> bool:
    if exporter == "none":
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": "lomas-mesh"}))
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        raise SystemExit("LOMAS_OTEL_EXPORTER must be none, console or otlp")
    trace.set_tracer_provider(provider)
    return True


def server_interceptors(exporter: str) -> list[Any]:
    if not _configure(exporter):
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def blocking_server_interceptors(exporter: str) -> list[Any]:
    if not _configure(exporter):
        return []
    from opentelemetry.instrumentation.grpc import server_interceptor

    return [server_interceptor()]


def client_interceptors(exporter: str) -> list[Any]:
    if not _configure(exporter):
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())

"""OpenTelemetry for every process of the mesh: traces, metrics and logs, set up once per process.

One trace follows a query from the gateway's server span through the admin store, the executor and
the budget ledger (gRPC interceptors on every server and client), across the Celery queue (the
task's headers carry the W3C `traceparent`: `publishing` at the gateway, `processing` in the
worker), to the worker's peer calls (the archive write, the commit). Health checks and reflection
are not traced.

| variable | default | meaning |
|---|---|---|
| `LOMAS_OTEL_EXPORTER` | `none` | where spans go: `none`, `console` or `otlp`; with `otlp` metrics are pushed there too (not by Celery workers: their pool forks) |
| `LOMAS_TRACE_FILE` | empty | also append every span to this file, one JSON line each (tests, local debugging) |
| `LOMAS_METRICS_LISTEN` | empty: off | host:port of the Prometheus endpoint (`/metrics`); port 0 picks one and logs it. Kubernetes: `0.0.0.0:9464` |
| `LOMAS_LOG_FORMAT` | `text` | `json` (one JSON object per line, with trace ids; Kubernetes) or `text` |
| `LOMAS_LOG_LEVEL` | `INFO` | |
| `OTEL_SERVICE_NAME` | the program's name | `service.name` of spans, metrics and log lines |
| `OTEL_EXPORTER_OTLP_PROTOCOL` | `grpc` | `grpc` or `http/protobuf`; the other `OTEL_EXPORTER_OTLP_*` variables (endpoint, headers, timeout) and `OTEL_TRACES_SAMPLER` are read by the SDK |

A service's `main()` calls `setup` (through `server.configure_logging`); a Celery worker calls
`setup_worker` in its main process (logs and the metrics endpoint) and `setup_worker_child` in each
pool child (traces; metrics relayed to the main process, see `lomas_common.metrics`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
from opentelemetry import propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import SpanKind, Status, StatusCode

from lomas_common import metrics
from lomas_common.logs import LOG_FORMATS, configure_logs
from lomas_common.rpc_metrics import AsyncRpcMetrics, SyncRpcMetrics
from lomas_common.trace_file import JsonLinesSpanExporter

log = logging.getLogger(__name__)

EXPORTERS = ("none", "console", "otlp")
OTLP_PROTOCOLS = ("grpc", "http/protobuf")


@dataclass(frozen=True)
class TelemetrySettings:
    """What a process reports and where (see the module's table)."""

    service: str = "lomas"
    exporter: str = "none"
    trace_file: str = ""
    metrics_listen: str = ""
    log_format: str = "text"
    log_level: str = "INFO"
    otlp_protocol: str = "grpc"

    def __post_init__(self) -> None:
        if self.exporter not in EXPORTERS:
            raise SystemExit("LOMAS_OTEL_EXPORTER must be none, console or otlp")
        if self.log_format not in LOG_FORMATS:
            raise SystemExit("LOMAS_LOG_FORMAT must be json or text")
        if self.otlp_protocol not in OTLP_PROTOCOLS:
            raise SystemExit("OTEL_EXPORTER_OTLP_PROTOCOL must be grpc or http/protobuf")
        if self.metrics_listen:
            self.metrics_address  # noqa: B018 - checks the address

    @property
    def traced(self) -> bool:
        return self.exporter != "none" or bool(self.trace_file)

    @property
    def metrics_address(self) -> tuple[str, int]:
        host, _, port = self.metrics_listen.rpartition(":")
        if not host or not port.isdigit():
            raise SystemExit("LOMAS_METRICS_LISTEN must be host:port")
        return host, int(port)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, log_level: str | None = None
    ) -> TelemetrySettings:
        env = os.environ if env is None else env
        return cls(
            service=env.get("OTEL_SERVICE_NAME") or program_service_name(),
            exporter=env.get("LOMAS_OTEL_EXPORTER") or "none",
            trace_file=env.get("LOMAS_TRACE_FILE", ""),
            metrics_listen=env.get("LOMAS_METRICS_LISTEN", ""),
            log_format=env.get("LOMAS_LOG_FORMAT") or "text",
            log_level=log_level or env.get("LOMAS_LOG_LEVEL") or "INFO",
            otlp_protocol=env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc",
        )


def program_service_name() -> str:
    """This program's name as a service name: `python -m lomas_gateway.main` -> "lomas-gateway",
    `python -m lomas_executor.worker` -> "lomas-worker", the `lomas-budget` script -> itself."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is None or not spec.name:
        return Path(sys.argv[0]).stem or "lomas"
    package, _, module = str(spec.name).rpartition(".")
    if module == "main" and package:
        return package.replace("_", "-")
    return f"lomas-{module}" if package.startswith("lomas") else module.replace("_", "-")


@functools.cache
def _untraced() -> Callable[[Any], bool]:
    """Calls that make no span: health checks (a peer watcher's, every few seconds) and
    reflection."""
    from opentelemetry.instrumentation.grpc import filters

    untraced: Callable[[Any], bool] = filters.any_of(
        filters.service_prefix("grpc.health."), filters.service_prefix("grpc.reflection.")
    )
    return untraced


def _not_health_or_reflection(details: Any) -> bool:
    return not _untraced()(details)


class Telemetry:
    """A process's telemetry: its tracer provider (None: not traced) and whether its metrics are
    recorded (a meter provider bound to `lomas_common.metrics`, or a relay to a worker's main
    process)."""

    def __init__(
        self, tracer_provider: TracerProvider | None = None, *, measured: bool = False
    ) -> None:
        self.tracer_provider = tracer_provider
        self.measured = measured
        self.tracer = (tracer_provider or trace.NoOpTracerProvider()).get_tracer("lomas")
        self.metrics_port: int | None = None  # the bound Prometheus port, when there is one

    def server_interceptors(self) -> list[Any]:
        """For an asyncio server (first in its list: they see every call and its final status)."""
        found: list[Any] = []
        if self.tracer_provider is not None:
            from opentelemetry.instrumentation.grpc import aio_server_interceptor

            found.append(
                aio_server_interceptor(self.tracer_provider, filter_=_not_health_or_reflection)
            )
        if self.measured:
            found.append(AsyncRpcMetrics())
        return found

    def blocking_server_interceptors(self) -> list[Any]:
        found: list[Any] = []
        if self.tracer_provider is not None:
            from opentelemetry.instrumentation.grpc import server_interceptor

            found.append(
                server_interceptor(self.tracer_provider, filter_=_not_health_or_reflection)
            )
        if self.measured:
            found.append(SyncRpcMetrics())
        return found

    def client_interceptors(self) -> list[Any]:
        """For an asyncio channel: each call is a client span, its context sent to the peer."""
        if self.tracer_provider is None:
            return []
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        return list(
            aio_client_interceptors(self.tracer_provider, filter_=_not_health_or_reflection)
        )

    def traced_channel(self, channel: grpc.Channel) -> grpc.Channel:
        """A blocking channel (a worker's peers) whose calls are client spans, their context sent
        to the peer (OpenTelemetry's own interceptor API for blocking channels)."""
        if self.tracer_provider is None:
            return channel
        from opentelemetry.instrumentation.grpc import client_interceptor
        from opentelemetry.instrumentation.grpc.grpcext import intercept_channel

        interceptor = client_interceptor(self.tracer_provider, filter_=_not_health_or_reflection)
        return cast(grpc.Channel, intercept_channel(channel, interceptor))

    def shutdown(self) -> None:
        """Send what is buffered (spans in a batch) and stop the exporters."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()


_DISABLED = Telemetry()
# The process's telemetry (`install`); the interceptor functions below hand out its interceptors.
_current: Telemetry | None = None


def install(telemetry: Telemetry | None) -> Telemetry | None:
    """Make `telemetry` this process's (None: none); returns the one it replaces."""
    global _current
    previous, _current = _current, telemetry
    return previous


def current() -> Telemetry:
    return _current or _DISABLED


def _for(exporter: str) -> Telemetry:
    """The process's telemetry; a process that never set one up (a library user, a test) gets
    traces to `exporter` when it names one, and nothing else."""
    if _current is None and exporter != "none":
        install(Telemetry(_tracer_provider(TelemetrySettings(exporter=exporter))))
    return current()


# The servers' and peers' entry points (they pass LOMAS_OTEL_EXPORTER from their settings).
def server_interceptors(exporter: str) -> list[Any]:
    return _for(exporter).server_interceptors()


def blocking_server_interceptors(exporter: str) -> list[Any]:
    return _for(exporter).blocking_server_interceptors()


def client_interceptors(exporter: str) -> list[Any]:
    return _for(exporter).client_interceptors()


def traced_channel(exporter: str, channel: grpc.Channel) -> grpc.Channel:
    return _for(exporter).traced_channel(channel)


def _resource(settings: TelemetrySettings) -> Resource:
    return Resource.create({"service.name": settings.service})


def _otlp_span_exporter(settings: TelemetrySettings) -> SpanExporter:
    if settings.otlp_protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcSpanExporter,
    )

    return GrpcSpanExporter()


def _otlp_metric_reader(settings: TelemetrySettings) -> MetricReader:
    if settings.otlp_protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        return PeriodicExportingMetricReader(OTLPMetricExporter())
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
        OTLPMetricExporter as GrpcMetricExporter,
    )

    return PeriodicExportingMetricReader(GrpcMetricExporter())


def _tracer_provider(settings: TelemetrySettings) -> TracerProvider | None:
    processors: list[SpanProcessor] = []
    if settings.exporter == "console":
        processors.append(BatchSpanProcessor(ConsoleSpanExporter()))
    elif settings.exporter == "otlp":
        processors.append(BatchSpanProcessor(_otlp_span_exporter(settings)))
    if settings.trace_file:
        # Written as each span ends: a test reads the file as soon as the call returns.
        processors.append(SimpleSpanProcessor(JsonLinesSpanExporter(settings.trace_file)))
    if not processors:
        return None
    provider = TracerProvider(resource=_resource(settings))
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


def _scraped_meter(settings: TelemetrySettings, push: bool) -> tuple[MeterProvider | None, int]:
    """The meter provider of a process (None: no metrics) and its Prometheus port (0: none):
    a Prometheus endpoint when LOMAS_METRICS_LISTEN is set, OTLP pushes if `push`."""
    readers: list[MetricReader] = []
    port = 0
    if settings.metrics_listen:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        readers.append(PrometheusMetricReader())
        host, wanted = settings.metrics_address
        server, _ = start_http_server(wanted, addr=host)
        port = int(server.server_port)
    if push:
        readers.append(_otlp_metric_reader(settings))
    if not readers:
        return None, 0
    return MeterProvider(metric_readers=readers, resource=_resource(settings)), port


def setup(settings: TelemetrySettings) -> Telemetry:
    """Set up a service process: logs, traces, metrics. Once per process (a second call returns
    the first setup)."""
    if _current is not None:
        return _current
    configure_logs(settings.service, settings.log_level, settings.log_format)
    tracer_provider = _tracer_provider(settings)
    if tracer_provider is not None:
        trace.set_tracer_provider(tracer_provider)
    meter_provider, port = _scraped_meter(settings, push=settings.exporter == "otlp")
    metrics.bind(meter_provider)
    telemetry = Telemetry(tracer_provider, measured=meter_provider is not None)
    _announce(telemetry, port)
    install(telemetry)
    return telemetry


def setup_worker(settings: TelemetrySettings) -> tuple[Telemetry, metrics.ChildRelay | None]:
    """Set up a Celery worker's main process, before its pool forks: logs and the Prometheus
    endpoint, which also serves what the children relay. No traces here: the children make them,
    each with its own exporter (threads and connections do not survive a fork)."""
    configure_logs(settings.service, settings.log_level, settings.log_format)
    meter_provider, port = _scraped_meter(settings, push=False)
    metrics.bind(meter_provider)
    relay = None
    if meter_provider is not None:
        relay = metrics.ChildRelay()
        relay.serve()
    telemetry = Telemetry(measured=meter_provider is not None)
    _announce(telemetry, port)
    install(telemetry)
    return telemetry, relay


def setup_worker_child(settings: TelemetrySettings, relay: metrics.ChildRelay | None) -> Telemetry:
    """Set up a pool child of a Celery worker, right after its fork: its own traces; its metrics
    go to the main process through `relay`."""
    tracer_provider = _tracer_provider(settings)
    if tracer_provider is not None:
        trace.set_tracer_provider(tracer_provider)
    metrics.relay_to(relay)
    telemetry = Telemetry(tracer_provider, measured=relay is not None)
    install(telemetry)
    return telemetry


def _announce(telemetry: Telemetry, port: int) -> None:
    if port:
        telemetry.metrics_port = port
        log.info("metrics for Prometheus on port %d (/metrics)", port)


@contextmanager
def publishing(task_name: str, task_id: str, queue: str) -> Iterator[dict[str, str]]:
    """A producer span around a task's publication; yields the headers that carry its context to
    the worker (empty when the process is not traced)."""
    attributes = {
        "messaging.system": "celery",
        "messaging.operation.type": "send",
        "messaging.destination.name": queue,
        "messaging.message.id": task_id,
        "celery.task_name": task_name,
    }
    with current().tracer.start_as_current_span(
        f"send {queue}", kind=SpanKind.PRODUCER, attributes=attributes
    ):
        headers: dict[str, str] = {}
        propagate.inject(headers)
        yield headers


@contextmanager
def processing(request: Any, task_name: str, queue: str) -> Iterator[None]:
    """A consumer span around a task's run in a worker, in the trace its headers carry (Celery
    puts a message's custom headers on `request`). An exception marks the span failed by its
    class only: its message might quote data."""
    carrier = {
        name: value
        for name in propagate.get_global_textmap().fields
        if isinstance(value := getattr(request, name, None), str)
    }
    attributes = {
        "messaging.system": "celery",
        "messaging.operation.type": "process",
        "messaging.destination.name": queue,
        "messaging.message.id": str(getattr(request, "id", "") or ""),
        "celery.task_name": task_name,
    }
    with current().tracer.start_as_current_span(
        f"process {queue}",
        context=propagate.extract(carrier),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield
        except BaseException as error:
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise

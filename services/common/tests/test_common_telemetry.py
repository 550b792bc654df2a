"""Telemetry with in-memory exporters: real servers and peers make one trace and time each call
by method and code; the Celery hop keeps the trace; a worker child's recordings reach the main
process; a scrape names exactly `PROMETHEUS_NAMES`; JSON logs carry trace ids and no messages of
exceptions."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from common_testing import (
    ESTIMATE_COST,
    EXECUTOR,
    AsyncExecutor,
    BlockingExecutor,
    settings,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from lomas.common.v1 import privacy_pb2
from lomas.executor.v1 import executor_pb2, executor_pb2_grpc
from lomas_common import metrics, telemetry
from lomas_common.blocking_server import start_blocking_server
from lomas_common.errors import InvalidQuery, LomasError, PermissionDenied
from lomas_common.logs import JsonFormatter
from lomas_common.peers import AsyncPeer, PeerSettings, SyncPeer
from lomas_common.server import Service, start_server
from lomas_common.telemetry import Telemetry, TelemetrySettings, processing, publishing


@dataclass
class Observed:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, data point) of metric `name`, as collected now."""
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [(dict(p.attributes or {}), p) for p in metric.data.data_points]
        return found


@pytest.fixture
def observed() -> Iterator[Observed]:
    """This process's telemetry, exporting to memory, for one test."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    metrics.bind(meter_provider)
    previous = telemetry.install(Telemetry(tracer_provider, measured=True))
    try:
        yield Observed(spans, reader, tracer_provider)
    finally:
        telemetry.install(previous)
        metrics.bind(None)
        meter_provider.shutdown()
        tracer_provider.shutdown()


def executor_service(servicer: Any) -> Service:
    return Service(executor_pb2_grpc.add_ExecutorServiceServicer_to_server, servicer, EXECUTOR)


def test_peers_and_servers_make_one_trace_and_time_each_call(observed: Observed) -> None:
    server = start_blocking_server(settings(), [executor_service(BlockingExecutor())], threads=2)
    guarded = start_blocking_server(
        settings(service_token="secret"), [executor_service(BlockingExecutor())], threads=2
    )
    try:
        peer = SyncPeer(
            f"127.0.0.1:{server.port}", executor_pb2_grpc.ExecutorServiceStub, PeerSettings()
        )
        intruder = SyncPeer(
            f"127.0.0.1:{guarded.port}", executor_pb2_grpc.ExecutorServiceStub, PeerSettings()
        )
        try:
            peer.call("EstimateCost", executor_pb2.EstimateCostRequest())
            with pytest.raises(LomasError):
                intruder.call("EstimateCost", executor_pb2.EstimateCostRequest())
        finally:
            peer.close()
            intruder.close()
    finally:
        server.stop()
        guarded.stop()

    spans = observed.spans.get_finished_spans()
    client = next(s for s in spans if s.kind is SpanKind.CLIENT)
    served = next(s for s in spans if s.kind is SpanKind.SERVER and s.name == ESTIMATE_COST)
    assert served.context.trace_id == client.context.trace_id
    assert served.parent is not None and served.parent.span_id == client.context.span_id
    codes = {
        p[0]["code"]
        for p in observed.points(metrics.RPC_SERVER_DURATION)
        if p[0]["method"] == ESTIMATE_COST
    }
    assert codes == {"OK", "PERMISSION_DENIED"}


def test_asyncio_servers_and_peers_are_traced_and_timed_but_not_health(observed: Observed) -> None:
    async def scenario() -> None:
        running = await start_server(
            settings(service_token="secret"), [executor_service(AsyncExecutor())]
        )
        target = f"127.0.0.1:{running.port}"
        stub = executor_pb2_grpc.ExecutorServiceStub
        peer = AsyncPeer(target, stub, PeerSettings(service_token="secret"))
        intruder = AsyncPeer(target, stub, PeerSettings())
        try:
            await peer.call("EstimateCost", executor_pb2.EstimateCostRequest())
            with pytest.raises(LomasError):
                await intruder.call("EstimateCost", executor_pb2.EstimateCostRequest())
            assert await peer.serving()
        finally:
            await peer.close()
            await intruder.close()
            await running.stop()

    asyncio.run(scenario())
    spans = observed.spans.get_finished_spans()
    assert {(s.kind, s.name) for s in spans} == {
        (SpanKind.CLIENT, ESTIMATE_COST),
        (SpanKind.SERVER, ESTIMATE_COST),
    }
    assert len(spans) == 4
    assert len({s.context.trace_id for s in spans}) == 2  # one per call, client and server
    timed = {(a["method"], a["code"]) for a, _ in observed.points(metrics.RPC_SERVER_DURATION)}
    assert timed == {(ESTIMATE_COST, "OK"), (ESTIMATE_COST, "PERMISSION_DENIED")}


def test_the_queue_hop_keeps_the_trace(observed: Observed) -> None:
    tracer = observed.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("gateway call") as call:
        with publishing("lomas.execute_query", "q-1", "lomas.light") as headers:
            pass
    assert "traceparent" in headers
    # Celery hands a worker the message's custom headers as attributes of the task's request.
    request = SimpleNamespace(id="q-1", **headers)
    with pytest.raises(ValueError):
        with processing(request, "lomas.execute_query", "lomas.light"):
            with tracer.start_as_current_span("archive write"):
                raise ValueError("a data value, 1234.5")

    spans = {s.name: s for s in observed.spans.get_finished_spans()}
    producer, consumer = spans["send lomas.light"], spans["process lomas.light"]
    assert producer.kind is SpanKind.PRODUCER and consumer.kind is SpanKind.CONSUMER
    trace_id = call.get_span_context().trace_id
    assert {s.context.trace_id for s in spans.values()} == {trace_id}
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
    assert spans["archive write"].parent is not None
    assert spans["archive write"].parent.span_id == consumer.context.span_id
    # A failed run is marked by its class: the message, which might quote data, is not kept.
    assert consumer.status.status_code is StatusCode.ERROR
    assert consumer.status.description == "ValueError"
    assert not consumer.events


def test_without_telemetry_nothing_is_propagated() -> None:
    assert telemetry.current().tracer_provider is None
    with publishing("lomas.execute_query", "q-2", "lomas.light") as headers:
        assert headers == {}


def _child_records(relay: metrics.ChildRelay) -> None:
    metrics.relay_to(relay)
    metrics.query_stored(True)
    metrics.query_stored(False, "QUERY_TIMEOUT")
    cost = privacy_pb2.PrivacyLoss(approx_dp=privacy_pb2.ApproxDp(epsilon="0.5", delta="0.001"))
    metrics.budget_committed("PENGUIN", cost)
    metrics.cache_lookups(2, 1)
    metrics.task_ran("done", 0.25)


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_worker_childs_recordings_reach_the_main_process(observed: Observed) -> None:
    relay = metrics.ChildRelay()
    relay.serve()
    try:
        child = multiprocessing.get_context("fork").Process(target=_child_records, args=(relay,))
        child.start()
        child.join(10)
        assert child.exitcode == 0

        def values(name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
            return {tuple(sorted(a.items())): p.value for a, p in observed.points(name)}

        # A child's datagrams arrive in order: its last recording comes last.
        wait_for(lambda: observed.points(metrics.TASK_RUN_DURATION))
        assert values(metrics.QUERIES) == {
            (("outcome", "released"), ("reason", "")): 1,
            (("outcome", "failed"), ("reason", "QUERY_TIMEOUT")): 1,
        }
        penguin = (("dataset", "PENGUIN"),)
        assert values(metrics.BUDGET_SPENT["epsilon"]) == {penguin: pytest.approx(0.5)}
        assert values(metrics.BUDGET_SPENT["delta"]) == {penguin: pytest.approx(0.001)}
        assert values(metrics.CACHE_LOOKUPS) == {(("result", "hit"),): 2, (("result", "miss"),): 1}
    finally:
        relay.close()
    # This process records here: nothing made it a child.
    metrics.replayed("release")
    assert any(a == {"kind": "release"} for a, _ in observed.points(metrics.REPLAYS))


def test_refusals_are_counted_with_their_reason(observed: Observed) -> None:
    @metrics.counts_refusals(lambda error: not isinstance(error, PermissionDenied))
    async def start(error: LomasError | None) -> str:
        if error is not None:
            raise error
        return "started"

    async def scenario() -> None:
        assert await start(None) == "started"
        for error in (InvalidQuery("bad", reason="QUERY_INVALID"), PermissionDenied("no")):
            with pytest.raises(LomasError):
                await start(error)

    asyncio.run(scenario())
    refused = [a for a, _ in observed.points(metrics.QUERIES)]
    assert refused == [{"outcome": "refused", "reason": "QUERY_INVALID"}]


def test_a_scrape_shows_exactly_the_named_metrics() -> None:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import REGISTRY, generate_latest

    provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    metrics.bind(provider)
    try:
        metrics.rpc_served("/lomas.budget.v1.BudgetService/ReserveBudget", "OK", 0.01)
        metrics.query_stored(True)
        metrics.replayed("release")
        cost = privacy_pb2.PrivacyLoss(approx_dp=privacy_pb2.ApproxDp(epsilon="0.5", delta="0.001"))
        metrics.budget_committed("PENGUIN", cost)
        metrics.budget_committed(
            "PENGUIN", privacy_pb2.PrivacyLoss(rho_zcdp=privacy_pb2.RhoZcdp(rho="0.1"))
        )
        metrics.cache_lookups(1, 1)
        metrics.task_ran("done", 0.5)
        metrics.observe_queue_depth(lambda: [("lomas.light", 3)])
        text = generate_latest(REGISTRY).decode()
    finally:
        metrics.bind(None)
        provider.shutdown()
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE lomas_")}
    assert families == metrics.PROMETHEUS_NAMES
    assert (
        'lomas_queue_depth{otel_scope_name="lomas",otel_scope_schema_url="",otel_scope_version="",queue="lomas.light"} 3.0'
        in text
    )


def test_json_logs_carry_the_trace_and_no_exception_message(observed: Observed) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("lomas-test"))
    logger = logging.getLogger("lomas.telemetry-test")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("outside any span")
        with observed.tracer_provider.get_tracer("test").start_as_current_span("call") as span:
            try:
                raise KeyError("secret-value-1234") from ValueError("secret-value-5678")
            except KeyError:
                logger.exception("query %s failed", "q-9")
    finally:
        logger.removeHandler(handler)
    outside, inside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert set(outside) == {"time", "level", "service", "logger", "message"}
    assert outside["service"] == "lomas-test" and outside["level"] == "WARNING"
    context = span.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert inside["message"] == "query q-9 failed"
    assert inside["error"] == "KeyError <- ValueError"
    assert "test_common_telemetry.py" in inside["stack"]
    assert "secret-value" not in stream.getvalue()


def test_settings_come_from_the_environment() -> None:
    read = TelemetrySettings.from_env(
        {
            "OTEL_SERVICE_NAME": "lomas-budget-eu",
            "LOMAS_OTEL_EXPORTER": "otlp",
            "LOMAS_METRICS_LISTEN": "0.0.0.0:9464",
            "LOMAS_LOG_FORMAT": "json",
            "LOMAS_TRACE_FILE": "/tmp/spans.jsonl",
        },
        log_level="DEBUG",
    )
    assert read == TelemetrySettings(
        service="lomas-budget-eu",
        exporter="otlp",
        trace_file="/tmp/spans.jsonl",
        metrics_listen="0.0.0.0:9464",
        log_format="json",
        log_level="DEBUG",
    )
    assert read.metrics_address == ("0.0.0.0", 9464) and read.traced
    assert not TelemetrySettings().traced
    for bad in (
        {"LOMAS_OTEL_EXPORTER": "zipkin"},
        {"LOMAS_LOG_FORMAT": "xml"},
        {"LOMAS_METRICS_LISTEN": "9464"},
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
    ):
        with pytest.raises(SystemExit):
            TelemetrySettings.from_env(bad)

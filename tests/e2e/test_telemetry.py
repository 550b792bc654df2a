"""Telemetry across a real mesh: one trace from the gateway's call to the worker's archive write,
every service's Prometheus endpoint scraped after queries, and JSON logs.

Every process appends its spans to one file (LOMAS_TRACE_FILE, a real span exporter), serves
metrics on a port of its own (LOMAS_METRICS_LISTEN with port 0; the port is read from the
service's JSON log) and logs JSON lines (LOMAS_LOG_FORMAT=json)."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lomas.client import BudgetExhausted
from lomas_common.metrics import PROMETHEUS_NAMES
from lomas_embedded import demo
from lomas_embedded.local import LocalMesh, local_mesh

SQL = "SELECT COUNT(*) AS n FROM df WHERE bill_length_mm > 40"
GATEWAY_CALL = "/lomas.gateway.v1.GatewayService/ExecuteQuery"
SERVICES = {
    "gateway": "lomas-gateway",
    "admin": "lomas-admin",
    "budget": "lomas-budget",
    "executor": "lomas-executor",
    "worker-0": "lomas-worker",
}


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalMesh, Path]]:
    data_dir = tmp_path_factory.mktemp("telemetry")
    spans = data_dir / "spans.jsonl"
    env = {
        "LOMAS_TRACE_FILE": str(spans),
        "LOMAS_METRICS_LISTEN": "127.0.0.1:0",
        "LOMAS_LOG_FORMAT": "json",
    }
    with local_mesh(data_dir, extra_env=env) as mesh:
        yield mesh, spans


def read_spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def service_of(span: dict[str, Any]) -> str:
    return str(span["resource"]["attributes"]["service.name"])


def trace_of(path: Path, trace_id: str, until: Any, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The spans of one trace, once `until(spans)` holds (the worker's span ends after the
    gateway has answered)."""
    deadline = time.monotonic() + timeout
    while True:
        spans = [s for s in read_spans(path) if s["context"]["trace_id"] == trace_id]
        if until(spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.1)


def json_log(mesh: LocalMesh, name: str) -> list[dict[str, Any]]:
    """The JSON lines of a service's log (Celery prints its banner as text)."""
    lines = mesh.mesh.service(name).log_path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def metrics_port(mesh: LocalMesh, name: str) -> int:
    """The port the process announced last (a restarted process announces a new one)."""
    for event in reversed(json_log(mesh, name)):
        found = re.fullmatch(r"metrics for Prometheus on port (\d+) \(/metrics\)", event["message"])
        if found:
            return int(found.group(1))
    raise AssertionError(f"{name} announced no metrics port")


def scrape(port: int) -> dict[str, list[str]]:
    """The `lomas_` series of a scrape, by metric family name (histogram series under theirs)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    families: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("lomas_"):
            name = re.sub(r"_(bucket|sum|count)$", "", line.split("{")[0].split(" ")[0])
            families.setdefault(name, []).append(line)
    return families


def test_one_trace_from_the_gateway_to_the_archive_write(observed: tuple[LocalMesh, Path]) -> None:
    mesh, spans_file = observed
    with mesh.client() as client:
        client.smartnoise_sql.query(SQL, epsilon="0.1", delta="0.00001")

    calls = [
        s
        for s in read_spans(spans_file)
        if s["name"] == GATEWAY_CALL and service_of(s) == "lomas-gateway"
    ]
    assert len(calls) == 1
    trace_id = calls[0]["context"]["trace_id"]

    def archived_by_the_worker(spans: list[dict[str, Any]]) -> bool:
        return any(
            service_of(s) == "lomas-worker" and s["name"].endswith("RecordQueryResult")
            for s in spans
        ) and any(s["kind"] == "SpanKind.CONSUMER" for s in spans)

    trace = trace_of(spans_file, trace_id, archived_by_the_worker)
    seen = {(service_of(s), s["name"]) for s in trace}
    admin, budget = "/lomas.admin.v1.AdminStoreService/", "/lomas.budget.v1.BudgetService/"
    # The gateway's own peer calls, served by the admin store, the executor and the ledger.
    assert ("lomas-admin", f"{admin}AuthorizeDatasetAccess") in seen
    assert ("lomas-budget", f"{budget}ReserveBudget") in seen
    assert any(svc == "lomas-executor" for svc, _ in seen)
    # The Celery hop: the gateway's producer span, the worker's consumer span under it.
    producer = next(s for s in trace if s["kind"] == "SpanKind.PRODUCER")
    consumer = next(s for s in trace if s["kind"] == "SpanKind.CONSUMER")
    assert service_of(producer) == "lomas-gateway"
    assert service_of(consumer) == "lomas-worker"
    assert consumer["parent_id"] == producer["context"]["span_id"]
    # The worker's peer calls join the trace: the charge (made with the access mark), the archive
    # write.
    for server, method in [
        ("lomas-budget", f"{budget}MarkReservationAccessed"),
        ("lomas-admin", f"{admin}RecordQueryResult"),
    ]:
        assert ("lomas-worker", method) in seen
        assert (server, method) in seen
    # No health check or reflection call is traced.
    assert not any("grpc.health" in name for _, name in seen)


def test_every_service_is_scraped_for_the_named_metrics(observed: tuple[LocalMesh, Path]) -> None:
    mesh, _ = observed
    with mesh.client() as client:
        client.smartnoise_sql.query(SQL, epsilon="0.2", delta="0.00001")
        client.smartnoise_sql.query(SQL, epsilon="0.2", delta="0.00001")  # a free replay
        with pytest.raises(BudgetExhausted):
            client.smartnoise_sql.query(SQL, epsilon="1000", delta="0.00001")

    expected = {
        "gateway": {
            "lomas_rpc_server_duration_seconds",
            "lomas_queries_total",
            "lomas_replays_total",
        },
        "admin": {"lomas_rpc_server_duration_seconds"},
        "budget": {"lomas_rpc_server_duration_seconds"},
        "executor": {"lomas_rpc_server_duration_seconds"},
        "worker-0": {
            "lomas_queries_total",
            "lomas_budget_spent_epsilon_total",
            "lomas_dataset_cache_lookups_total",
            "lomas_task_run_duration_seconds",
            "lomas_queue_depth",
        },
    }
    scraped = {name: scrape(metrics_port(mesh, name)) for name in SERVICES}
    for name, families in scraped.items():
        assert expected[name] <= set(families), name
        assert set(families) <= PROMETHEUS_NAMES, name

    gateway, worker = scraped["gateway"], scraped["worker-0"]
    assert any(
        'method="/lomas.gateway.v1.GatewayService/ExecuteQuery"' in line and 'code="OK"' in line
        for line in gateway["lomas_rpc_server_duration_seconds"]
    )
    assert any('outcome="replayed"' in line for line in gateway["lomas_queries_total"])
    assert any(
        'outcome="refused"' in line and 'reason="PRIVACY_BUDGET_EXHAUSTED"' in line
        for line in gateway["lomas_queries_total"]
    )
    assert any('outcome="released"' in line for line in worker["lomas_queries_total"])
    assert any(
        f'dataset="{demo.DATASET}"' in line for line in worker["lomas_budget_spent_epsilon_total"]
    )
    assert any('queue="' in line for line in worker["lomas_queue_depth"])
    # No label names a user.
    for families in scraped.values():
        for lines in families.values():
            assert not any(demo.RESEARCHER in line for line in lines)


def test_logs_are_json_lines_of_their_service(observed: tuple[LocalMesh, Path]) -> None:
    mesh, _ = observed
    for name, service in SERVICES.items():
        events = json_log(mesh, name)
        assert events, name
        for event in events:
            assert {"time", "level", "service", "logger", "message"} <= set(event)
            assert event["service"] == service

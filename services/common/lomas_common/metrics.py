"""The platform's metrics: their names, and the one-line calls that record them.

Every name starts with `lomas_`. The recording calls are module functions, like `logging`'s: they
record into the instruments of the meter provider that `lomas_common.telemetry` binds for the
process (LOMAS_METRICS_LISTEN or the OTLP exporter); unbound, they record nothing. `PROMETHEUS_NAMES` lists what a scrape shows; the
Grafana dashboard (k8s/observability) may use nothing else.

| metric (Prometheus name) | labels | recorded by |
|---|---|---|
| `lomas_rpc_server_duration_seconds` (histogram) | method, code | every gRPC server, per call |
| `lomas_queries_total` | outcome (released, failed, refused, replayed), reason | workers (a run's stored outcome, or a refund before data access), gateway (refusals before any charge, free replays) |
| `lomas_replays_total` | kind (release, retry, redelivery) | gateway (a free replay, a request-id retry), worker (a redelivered task whose outcome is stored) |
| `lomas_budget_spent_{epsilon,delta,rho}_total` | dataset | workers, when the charge of a query they ran is committed |
| `lomas_dataset_cache_lookups_total` | result (hit, miss) | workers' dataset caches |
| `lomas_task_run_duration_seconds` (histogram) | outcome (done, retry, error) | workers, per task delivery |
| `lomas_queue_depth` (gauge) | queue | workers: tasks waiting in the queues they consume, read from Redis at each scrape |

Labels never hold a user, a query or a data value: only methods, codes, registry reasons, outcome
kinds, queue names and dataset names. Budget counters are floats for display; the ledger stays
the exact account.

A Celery worker's children run the tasks but cannot be scraped: the pool forks them, and a copy of
the main process's meter in each would never be read. A child sends its recordings to the main
process instead (`ChildRelay`), which records them into the one meter that is scraped.
"""

from __future__ import annotations

import functools
import json
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from decimal import Decimal
from typing import ParamSpec, TypeVar

from opentelemetry import metrics as otel_metrics

from lomas.common.v1 import privacy_pb2
from lomas_common.errors import LomasError

log = logging.getLogger(__name__)

RPC_SERVER_DURATION = "lomas_rpc_server_duration"
QUERIES = "lomas_queries"
REPLAYS = "lomas_replays"
BUDGET_SPENT = {
    component: f"lomas_budget_spent_{component}" for component in ("epsilon", "delta", "rho")
}
CACHE_LOOKUPS = "lomas_dataset_cache_lookups"
TASK_RUN_DURATION = "lomas_task_run_duration"
QUEUE_DEPTH = "lomas_queue_depth"

# How a scrape names them: counters gain `_total`, histograms in seconds `_seconds` (and their
# series `_bucket`, `_sum`, `_count`).
_COUNTERS = (QUERIES, REPLAYS, *BUDGET_SPENT.values(), CACHE_LOOKUPS)
_HISTOGRAMS = (RPC_SERVER_DURATION, TASK_RUN_DURATION)
PROMETHEUS_NAMES: frozenset[str] = frozenset(
    [f"{name}_total" for name in _COUNTERS]
    + [f"{name}_seconds" for name in _HISTOGRAMS]
    + [QUEUE_DEPTH]
)

# Seconds: a cached price takes milliseconds, a query on a large dataset minutes.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

_counters: dict[str, otel_metrics.Counter] = {}
_histograms: dict[str, otel_metrics.Histogram] = {}
_meter: otel_metrics.Meter | None = None


def bind(provider: otel_metrics.MeterProvider | None) -> None:
    """Record into `provider`'s instruments from now on (None: record nothing)."""
    global _meter
    _counters.clear()
    _histograms.clear()
    _meter = None
    if provider is None:
        return
    _meter = meter = provider.get_meter("lomas")
    _counters[QUERIES] = meter.create_counter(QUERIES, description="Queries by outcome")
    _counters[REPLAYS] = meter.create_counter(
        REPLAYS, description="Answers given again from storage, without new noise"
    )
    for component, name in BUDGET_SPENT.items():
        _counters[name] = meter.create_counter(
            name, description=f"Privacy loss ({component}) committed, per dataset"
        )
    _counters[CACHE_LOOKUPS] = meter.create_counter(
        CACHE_LOOKUPS, description="Dataset cache lookups of the workers, hits and misses"
    )
    _histograms[RPC_SERVER_DURATION] = meter.create_histogram(
        RPC_SERVER_DURATION,
        unit="s",
        description="gRPC calls served, by method and status code",
        explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
    )
    _histograms[TASK_RUN_DURATION] = meter.create_histogram(
        TASK_RUN_DURATION,
        unit="s",
        description="Query task deliveries run by the workers",
        explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
    )


Attributes = Mapping[str, str]
P = ParamSpec("P")
R = TypeVar("R")


class ChildRelay:
    """Recordings of a Celery worker's children, sent to its main process over a datagram socket
    pair made before the pool forks.

    A datagram carries one recording and arrives whole or not at all; a child never blocks on it
    (a full socket drops the recording: metrics must never slow or stop a query). A child killed
    mid-send loses at most its own recording, and holds no lock that its siblings need."""

    MAX_DATAGRAM_BYTES = 4096

    def __init__(self) -> None:
        self._receiver, self._sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)

    def send(self, name: str, value: float, attributes: Attributes) -> None:
        payload = json.dumps([name, value, dict(attributes)]).encode()
        try:
            self._sender.send(payload)
        except OSError:  # full (the main process is behind) or gone: drop the recording
            log.debug("metric %s dropped", name)

    def serve(self) -> threading.Thread:
        """In the main process: record what the children send, on a daemon thread."""
        thread = threading.Thread(target=self._receive, name="metrics-relay", daemon=True)
        thread.start()
        return thread

    def _receive(self) -> None:
        while True:
            try:
                name, value, attributes = json.loads(self._receiver.recv(self.MAX_DATAGRAM_BYTES))
                _record_here(
                    str(name), float(value), {str(k): str(v) for k, v in attributes.items()}
                )
            except OSError:
                return  # closed
            except (ValueError, TypeError, AttributeError, KeyError):
                log.warning("unreadable metric from a worker child; ignored")

    def close(self) -> None:
        self._receiver.close()
        self._sender.close()


# Set in a worker's child (`relay_to`): recordings go to the main process instead of this one.
_relay: ChildRelay | None = None


def relay_to(relay: ChildRelay | None) -> None:
    """Send this process's recordings through `relay` (a worker's child), or record here (None)."""
    global _relay
    _relay = relay


def _record_here(name: str, value: float, attributes: Attributes) -> None:
    if name in _counters:
        _counters[name].add(value, attributes)
    elif name in _histograms:
        _histograms[name].record(value, attributes)


def _record(name: str, value: float, attributes: Attributes) -> None:
    if _relay is not None:
        _relay.send(name, value, attributes)
    else:
        _record_here(name, value, attributes)


def rpc_served(method: str, code: str, seconds: float) -> None:
    """A gRPC call ended with status `code` (a `grpc.StatusCode` name) after `seconds`."""
    _record(RPC_SERVER_DURATION, seconds, {"method": method, "code": code})


def query_stored(succeeded: bool, reason: str = "") -> None:
    """A worker stored the outcome of a query it ran: a release, or a failure with its reason."""
    if succeeded:
        _record(QUERIES, 1, {"outcome": "released", "reason": ""})
    else:
        _record(QUERIES, 1, {"outcome": "failed", "reason": reason})


def query_refused(reason: str) -> None:
    """A query ended before any charge (refused, or refunded before any data access)."""
    _record(QUERIES, 1, {"outcome": "refused", "reason": reason})


def replayed(kind: str) -> None:
    """An answer given again from storage: `release` (a free replay of an earlier release, also
    a query outcome), `retry` (a request id's first answer) or `redelivery` (a worker found a
    redelivered task's outcome stored)."""
    if kind == "release":
        _record(QUERIES, 1, {"outcome": "replayed", "reason": ""})
    _record(REPLAYS, 1, {"kind": kind})


def budget_committed(dataset: str, cost: privacy_pb2.PrivacyLoss) -> None:
    """A charge of `cost` was committed on `dataset` (a malformed cost records nothing: a metric
    never stops a query)."""
    kind = cost.WhichOneof("loss")
    if kind is None:
        return
    fields = {"pure_dp": ("epsilon",), "approx_dp": ("epsilon", "delta"), "rho_zcdp": ("rho",)}
    loss = getattr(cost, kind)
    for component in fields[kind]:
        try:
            value = float(Decimal(getattr(loss, component)))
        except (ArithmeticError, ValueError):
            continue
        if value:
            _record(BUDGET_SPENT[component], value, {"dataset": dataset})


def cache_lookups(hits: int, misses: int) -> None:
    """Lookups in a worker's dataset cache since its last report."""
    if hits:
        _record(CACHE_LOOKUPS, hits, {"result": "hit"})
    if misses:
        _record(CACHE_LOOKUPS, misses, {"result": "miss"})


def task_ran(outcome: str, seconds: float) -> None:
    """A worker's task delivery ended: `done`, `retry` (sent again later) or `error`."""
    _record(TASK_RUN_DURATION, seconds, {"outcome": outcome})


def observe_queue_depth(depths: Callable[[], Iterable[tuple[str, int]]]) -> None:
    """Report `depths()` (queue name, waiting tasks) at each collection (a scrape): register once
    per process, in the process that is scraped."""

    def observe(_: otel_metrics.CallbackOptions) -> Iterable[otel_metrics.Observation]:
        try:
            return [otel_metrics.Observation(n, {"queue": q}) for q, n in depths()]
        except Exception as error:  # Redis away: no sample this time
            log.warning("queue depth not sampled (%s)", type(error).__name__)
            return []

    if _meter is not None:
        _meter.create_observable_gauge(
            QUEUE_DEPTH, callbacks=[observe], description="Tasks waiting in a queue (sampled)"
        )


def counts_refusals(
    is_refusal: Callable[[LomasError], bool],
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorate the step that starts a query: each `LomasError` it raises for which
    `is_refusal(error)` holds is counted as a refused query, with its reason (then raised on)."""

    def decorate(start: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(start)
        async def counted(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await start(*args, **kwargs)
            except LomasError as error:
                if is_refusal(error):
                    query_refused(error.reason)
                raise

        return counted

    return decorate

"""The one server factory: production and test servers are built the same way.

Every server gets: a request-id interceptor, an optional authentication interceptor, the error-mapping
interceptor, gRPC health checking (a status per service name) and reflection (v1 and v1alpha,
`lomas_common.reflection`), explicit message-size limits, OpenTelemetry when an exporter is
configured, and a graceful shutdown on SIGTERM/SIGINT.

Health tells the truth: every name (the server "" and each service) is NOT_SERVING until the server
has started, and again from the moment it starts shutting down. A server with `dependencies` (the
gateway's peers) also reports its own services NOT_SERVING while one of them is unreachable; the
server's own name "" keeps describing the process alone, so probes that restart or unlist a process
(Kubernetes, the embedded launcher) never act on a peer's outage.

A request whose bytes do not decode as the method's request message is refused with
INVALID_ARGUMENT, reason REQUEST_UNDECODABLE (gRPC alone would answer UNKNOWN or INTERNAL, with no
ErrorInfo).
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
import hmac
import logging
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import grpc
from google.rpc import status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from lomas_common.errors import InvalidArgument, LomasError, PermissionDenied
from lomas_common.interceptors import AroundCall, AroundEachCall, Deserializer
from lomas_common.reflection import add_reflection
from lomas_common.rpc_errors import internal_status, to_status
from lomas_common.settings import ServerSettings
from lomas_common.telemetry import TelemetrySettings, server_interceptors
from lomas_common.telemetry import setup as setup_telemetry

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
SERVICE_TOKEN_HEADER = "x-lomas-service-token"  # noqa: S105 - a header name

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

ResponseT = TypeVar("ResponseT")


class Authenticator(abc.ABC):
    """Decides who is calling; raises a LomasError to refuse. Runs before every handler."""

    @abc.abstractmethod
    async def authenticate(self, method: str, metadata: dict[str, str]) -> None:
        """Refuse the call by raising, or record the caller (for example in a context variable)."""


class ServiceTokenAuthenticator(Authenticator):
    """Internal services: only mesh peers holding the shared service token may call (health excepted)."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def check(self, method: str, metadata: dict[str, str]) -> None:
        """Refuse a call without the service token (the blocking servers call this directly)."""
        if method.startswith("/grpc.health.") or method.startswith("/grpc.reflection."):
            return
        presented = metadata.get(SERVICE_TOKEN_HEADER, "").encode()
        if not hmac.compare_digest(presented, self._token):
            raise PermissionDenied(
                "this service accepts calls from mesh peers only", reason="PEER_CREDENTIAL_REQUIRED"
            )

    async def authenticate(self, method: str, metadata: dict[str, str]) -> None:
        self.check(method, metadata)


@dataclass(frozen=True)
class CallOutcome:
    """How one call ended, for observers such as an audit trail (code name, ErrorInfo reason)."""

    method: str
    request: Any
    code: str
    reason: str


Observer = Callable[[CallOutcome], Awaitable[None]]


def observe_all(*observers: Observer) -> Observer:
    """One observer that runs `observers` in order, each even when one before it failed."""

    async def observe(outcome: CallOutcome) -> None:
        for observer in observers:
            try:
                await observer(outcome)
            except Exception:
                log.exception("observer failed for %s", outcome.method)

    return observe


UNDECODABLE_REASON = "REQUEST_UNDECODABLE"


class UndecodableRequest:
    """What a handler receives instead of a request whose bytes did not decode. `empty` is an empty
    request of the method's type, for observers (an audit trail records the call, not the bytes)."""

    def __init__(self, empty: Any) -> None:
        self.empty = empty


def tolerant_deserializer(
    deserializer: Callable[[bytes], Any] | None,
) -> Callable[[bytes], Any] | None:
    """`deserializer`, returning an `UndecodableRequest` instead of raising, so that the handler can
    answer with the error model rather than gRPC's bare UNKNOWN/INTERNAL."""
    if deserializer is None:
        return None
    decode = deserializer

    def deserialize(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception:
            return UndecodableRequest(decode(b""))  # empty bytes are every message's default

    return deserialize


def undecodable_error(method: str) -> InvalidArgument:
    return InvalidArgument(
        "the request does not decode as the method's request message",
        reason=UNDECODABLE_REASON,
        metadata={"method": method},
    )


def with_tolerant_deserializer(
    handler: grpc.RpcMethodHandler[Any, ResponseT],
) -> grpc.RpcMethodHandler[Any, ResponseT]:
    """A method handler whose request deserializer never raises (see `tolerant_deserializer`)."""
    deserializer = tolerant_deserializer(handler.request_deserializer)
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(handler.unary_unary, deserializer, serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(handler.unary_stream, deserializer, serializer)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(handler.stream_unary, deserializer, serializer)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            handler.stream_stream, deserializer, serializer
        )
    return handler


@asynccontextmanager
async def _edge(
    method: str,
    request: Any,
    context: grpc.aio.ServicerContext[Any, Any],
    *,
    authenticator: Authenticator | None,
    observer: Observer | None,
) -> AsyncIterator[None]:
    """What every call goes through, around its handler: the request id, authentication, the
    error model (a LomasError becomes its status; anything else INTERNAL) and the observer."""
    metadata = call_metadata(context)
    set_request_id(metadata)
    code, reason = "OK", ""
    try:
        if authenticator is not None:
            await authenticator.authenticate(method, metadata)
        if isinstance(request, UndecodableRequest):
            raise undecodable_error(method)
        yield
    except LomasError as error:
        code, reason = error.code.value, error.reason
        log.info("%s refused: %s %s", method, code, reason)
        await context.abort_with_status(rich_status(to_status(error)))
    except asyncio.CancelledError:
        code, reason = "CANCELLED", ""
        raise
    except Exception as error:
        if isinstance(error, grpc.aio.AbortError):
            raise
        code, reason = "INTERNAL", "INTERNAL"
        log.exception("%s failed (request %s)", method, request_id_var.get())
        await context.abort_with_status(rich_status(internal_status()))
    finally:
        if observer is not None and not method.startswith("/grpc."):
            if isinstance(request, UndecodableRequest):
                request = request.empty
            try:
                await observer(CallOutcome(method, request, code, reason))
            except Exception:
                log.exception("observer failed for %s", method)


def call_metadata(
    context: grpc.ServicerContext | grpc.aio.ServicerContext[Any, Any],
) -> dict[str, str]:
    """A call's text metadata as a dict (binary `-bin` entries are left out)."""
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def set_request_id(metadata: dict[str, str]) -> None:
    """Adopt the caller's request id (for logs and peers), or make one."""
    request_id_var.set(metadata.get(REQUEST_ID_HEADER) or uuid.uuid4().hex)


def rich_status(status: status_pb2.Status) -> grpc.Status:
    return rpc_status.to_status(status)


class _EdgeInterceptor(AroundEachCall):
    """Request id, authentication and error mapping around every unary handler, whether it answers
    once or streams; a request that does not decode reaches it as an `UndecodableRequest`. Client
    streams (only gRPC reflection has them, and it is public) pass as they are."""

    def __init__(self, authenticator: Authenticator | None, observer: Observer | None) -> None:
        self._authenticator = authenticator
        self._observer = observer

    def around(self, method: str) -> AroundCall:
        return partial(_edge, method, authenticator=self._authenticator, observer=self._observer)

    def request_deserializer(self, deserializer: Deserializer | None) -> Deserializer | None:
        return tolerant_deserializer(deserializer)


@dataclass
class Service:
    """A servicer and how to register it."""

    # The generated `add_..._to_server`; its server is a grpc.aio.Server, a grpc.Server, or the
    # registrar that stands in for one in `lomas_common.blocking_server`.
    add_to_server: Callable[[Any, Any], None]
    servicer: Any
    full_name: str  # e.g. "lomas.budget.v1.BudgetService"


class Dependency(Protocol):
    """A peer this server needs to serve its own services (an `AsyncPeer` is one)."""

    name: str

    async def serving(self) -> bool:
        """Whether the peer answers its health check with SERVING (never raises)."""
        ...


# How often a server with dependencies checks them (each check times out after about 1 s).
DEPENDENCY_CHECK_SECONDS = 2.0


async def _watch_dependencies(
    health_servicer: health.aio.HealthServicer,
    names: Sequence[str],
    dependencies: Sequence[Dependency],
    interval: float,
) -> None:
    """Report `names` NOT_SERVING while a dependency is not SERVING, SERVING otherwise."""
    down: set[str] | None = None  # unknown before the first check
    while True:
        try:
            results = await asyncio.gather(*(d.serving() for d in dependencies))
            now_down = {d.name for d, ok in zip(dependencies, results, strict=True) if not ok}
            if now_down != down:
                if now_down:
                    log.warning("peers not serving: %s", ", ".join(sorted(now_down)))
                elif down:
                    log.info("all peers serving again")
                status = (
                    health_pb2.HealthCheckResponse.NOT_SERVING
                    if now_down
                    else health_pb2.HealthCheckResponse.SERVING
                )
                for name in names:
                    await health_servicer.set(name, status)
                down = now_down
        except Exception:  # keep watching: a stale report is worse than a logged failure
            log.exception("checking the peers failed")
        await asyncio.sleep(interval)


class RunningServer:
    """A started server with its bound port."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        grace: float,
        health_servicer: health.aio.HealthServicer | None = None,
        watcher: asyncio.Task[None] | None = None,
    ) -> None:
        self.server = server
        self.port = port
        self._grace = grace
        self.health = health_servicer
        self._watcher = watcher

    async def stop(self) -> None:
        """Report NOT_SERVING everywhere, refuse new calls, drain in-flight ones for the grace period."""
        if self._watcher is not None:
            self._watcher.cancel()
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        await self.server.stop(self._grace)

    async def wait(self) -> None:
        await self.server.wait_for_termination()


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """Channel options every server gets: message-size limits, and no port sharing (a second
    process on the same port must fail to start, not silently split the traffic)."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


def add_health_and_reflection(
    server: Any,
    health_servicer: health.HealthServicer | health.aio.HealthServicer,
    services: Sequence[Service],
) -> list[str]:
    """Serve gRPC health checking and reflection (v1 and v1alpha) beside `services`; returns their
    full names, the names health reports a status for.

    `server` is a `grpc.aio.Server`, a `grpc.Server`, or what stands in for one at registration
    (the blocking server's registrar). Health starts with the server's own name "" SERVING (gRPC's
    default): the caller sets every name NOT_SERVING until the server is ready."""
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [s.full_name for s in services]
    add_reflection(server, [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
    return names


async def start_server(
    settings: ServerSettings,
    services: Sequence[Service],
    *,
    authenticator: Authenticator | None = None,
    credentials: grpc.ServerCredentials | None = None,
    observer: Observer | None = None,
    dependencies: Sequence[Dependency] = (),
    dependency_check_seconds: float = DEPENDENCY_CHECK_SECONDS,
) -> RunningServer:
    """Build, bind and start a server (port 0 picks a free port; see `RunningServer.port`).

    With `dependencies`, the services' health follows theirs (checked every
    `dependency_check_seconds`); the server's own name "" stays SERVING while the process serves."""
    if authenticator is None and settings.service_token:
        authenticator = ServiceTokenAuthenticator(settings.service_token)
    options = server_options(settings)
    interceptors: list[grpc.aio.ServerInterceptor] = [
        *server_interceptors(settings.otel_exporter),
        _EdgeInterceptor(authenticator, observer),
    ]
    server = grpc.aio.server(interceptors=interceptors, options=options)
    for service in services:
        service.add_to_server(service.servicer, server)
    health_servicer = health.aio.HealthServicer()
    names = add_health_and_reflection(server, health_servicer, services)
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if credentials is None:
        port = server.add_insecure_port(settings.listen)
    else:
        port = server.add_secure_port(settings.listen, credentials)
    if port == 0:
        raise SystemExit(f"cannot listen on {settings.listen}")
    await server.start()
    watcher = None
    if dependencies:
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        watcher = asyncio.create_task(
            _watch_dependencies(health_servicer, names, dependencies, dependency_check_seconds)
        )
    else:
        for name in ["", *names]:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %s on port %d", ", ".join(names), port)
    return RunningServer(server, port, settings.grace_seconds, health_servicer, watcher)


async def serve_until_signalled(
    running: RunningServer, on_stop: Iterable[Callable[[], Awaitable[None] | None]] = ()
) -> None:
    """Serve until SIGTERM or SIGINT, then drain in-flight calls for the grace period and clean up."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(running.wait())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    log.info("shutting down")
    await running.stop()
    for callback in on_stop:
        result = callback()
        if result is not None:
            await result
    stopper.cancel()


def configure_logging(level: str) -> None:
    """Set up this process's logs (at `level`), traces and metrics: `lomas_common.telemetry`."""
    setup_telemetry(TelemetrySettings.from_env(log_level=level))

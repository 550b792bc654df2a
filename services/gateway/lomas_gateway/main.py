"""Run the gateway: `lomas-gateway` (configured by LOMAS_ environment variables)."""

from __future__ import annotations

import asyncio
import logging

from lomas.gateway.v1 import admin_pb2_grpc, gateway_pb2_grpc
from lomas_common.queue import make_celery_app
from lomas_common.server import (
    RunningServer,
    Service,
    configure_logging,
    observe_all,
    serve_until_signalled,
    start_server,
)
from lomas_gateway.access import AccessCache
from lomas_gateway.api import AdminServicer, GatewayServicer
from lomas_gateway.audit import AuditTrail
from lomas_gateway.auth import make_authenticator
from lomas_gateway.claims import QueryFlights, RequestClaims
from lomas_gateway.completion import CompletionWaiter
from lomas_gateway.jobs import QueryJobs
from lomas_gateway.lifecycle import Peers, QueryLifecycle
from lomas_gateway.limits import UserLimits
from lomas_gateway.lost_tasks import LostTaskFinder
from lomas_gateway.policy import Authorizer, GatewayGuard
from lomas_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


class Gateway:
    """A running gateway and everything it holds open."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.peers = Peers(settings)
        self.waiter = CompletionWaiter(settings.queue)
        self.lost_tasks = LostTaskFinder(settings.queue)
        self.claims = RequestClaims(settings.queue)
        # A flight is held at most as long as its query may run (then its key expires).
        self.flights = QueryFlights(
            settings.queue, self.waiter, settings.query_timeout_seconds + 30
        )
        self.celery = make_celery_app(settings.queue)
        self.limits = UserLimits(settings.queue.broker_url, settings.queue.prefix, settings.limits)
        self.access = AccessCache(
            settings.queue.broker_url,
            settings.queue.prefix,
            max_age_seconds=settings.access_cache_seconds,
        )
        self.audit = AuditTrail(self.peers.admin)
        self.server: RunningServer | None = None
        self.jobs: QueryJobs | None = None

    async def start(self) -> RunningServer:
        await self.waiter.start()
        lifecycle = QueryLifecycle(
            self.settings,
            self.peers,
            self.celery,
            self.waiter,
            self.lost_tasks,
            self.claims,
            self.flights,
            self.access,
        )
        self.jobs = QueryJobs(self.settings, lifecycle, self.peers, self.waiter, self.lost_tasks)
        log.info("authentication: %s", self.settings.auth.describe())
        self.server = await start_server(
            self.settings.server,
            [
                Service(
                    gateway_pb2_grpc.add_GatewayServiceServicer_to_server,
                    GatewayServicer(lifecycle, self.jobs, self.peers, self.limits),
                    "lomas.gateway.v1.GatewayService",
                ),
                Service(
                    admin_pb2_grpc.add_AdminServiceServicer_to_server,
                    AdminServicer(self.peers),
                    "lomas.gateway.v1.AdminService",
                ),
            ],
            authenticator=GatewayGuard(
                make_authenticator(self.settings.auth), Authorizer(self.peers.admin), self.limits
            ),
            observer=observe_all(self.audit.observe, self.access.observe),
            # The public services report NOT_SERVING while a peer they need is down.
            dependencies=[self.peers.admin, self.peers.budget, self.peers.executor],
        )
        return self.server

    async def close(self) -> None:
        if self.jobs is not None:
            await self.jobs.close()
        await self.audit.close()
        await self.waiter.close()
        await self.lost_tasks.close()
        await self.claims.close()
        await self.flights.close()
        await self.limits.close()
        await self.access.close()
        await self.peers.close()
        self.celery.close()


async def run(settings: GatewaySettings) -> None:
    gateway = Gateway(settings)
    running = await gateway.start()
    await serve_until_signalled(running, on_stop=[gateway.close])


def main() -> None:
    settings = GatewaySettings.from_env()
    configure_logging(settings.server.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()

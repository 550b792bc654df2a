"""Grants kept per access generation (`access.AccessCache`), against the machine's Redis.

Two caches stand for two gateway replicas: they share nothing but Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import pytest
import redis

from lomas.admin.v1 import admin_store_pb2
from lomas_common.queue import QueueSettings
from lomas_common.server import CallOutcome
from lomas_gateway.access import AccessCache, admitted_generation, generation_key, may_write
from lomas_gateway.limits import LimitSettings, UserLimits
from lomas_testing.redis_keys import scratch_queue_settings

REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN = "/lomas.gateway.v1.AdminService/"


@pytest.fixture
def settings() -> Iterator[QueueSettings]:
    with scratch_queue_settings("access-test") as settings:
        yield settings


class Store:
    """The admin store's answer, counting how often it is asked."""

    def __init__(self) -> None:
        self.reads = 0
        self.may_query = True

    async def read(self) -> admin_store_pb2.AuthorizeDatasetAccessResponse:
        self.reads += 1
        access = admin_store_pb2.AuthorizeDatasetAccessResponse()
        access.user.may_query = self.may_query
        return access


class Gateway:
    """What one scenario needs: the admission (rate check and generation read), one access cache
    per replica (each with `max_age_seconds`), and the admin store's answer."""

    def __init__(self, settings: QueueSettings, replicas: int, max_age_seconds: float) -> None:
        self.limits = UserLimits(
            REDIS_URL,
            settings.prefix,
            LimitSettings(requests_per_second=0, concurrent_queries=0, query_timeout_seconds=30.0),
        )
        self.caches = [
            AccessCache(REDIS_URL, settings.prefix, max_age_seconds=max_age_seconds)
            for _ in range(replicas)
        ]
        self.store = Store()

    async def admitted(self) -> None:
        """What GatewayGuard does before a handler: the call runs under the generation it read."""
        admitted_generation.set(await self.limits.admit("alice"))

    async def authorize(self, replica: int = 0) -> admin_store_pb2.AuthorizeDatasetAccessResponse:
        return await self.caches[replica].authorize("alice", "PENGUIN", self.store.read)

    async def close(self) -> None:
        for cache in self.caches:
            await cache.close()
        await self.limits.close()


def run(
    settings: QueueSettings,
    scenario: Callable[[Gateway], Awaitable[None]],
    *,
    replicas: int = 1,
    max_age_seconds: float = 30.0,
) -> None:
    async def main() -> None:
        gateway = Gateway(settings, replicas, max_age_seconds)
        try:
            await scenario(gateway)
        finally:
            await gateway.close()

    asyncio.run(main())


def admin_call(method: str, code: str = "OK") -> CallOutcome:
    return CallOutcome(f"{ADMIN}{method}", None, code, "")


def test_a_grant_is_read_once_until_an_administrator_writes(settings: QueueSettings) -> None:
    async def scenario(gateway: Gateway) -> None:
        for _ in range(3):
            await gateway.admitted()
            assert (await gateway.authorize()).user.may_query
        assert gateway.store.reads == 1

        # An administrator freezes alice through the other replica: both read again.
        gateway.store.may_query = False
        await gateway.caches[1].observe(admin_call("FreezeUser"))
        await gateway.admitted()
        assert not (await gateway.authorize()).user.may_query
        assert gateway.store.reads == 2

        # Reads and calls of the researcher API change nothing.
        await gateway.caches[1].observe(admin_call("ListGrants"))
        await gateway.caches[1].observe(
            CallOutcome("/lomas.gateway.v1.GatewayService/ExecuteQuery", None, "OK", "")
        )
        await gateway.admitted()
        await gateway.authorize()
        assert gateway.store.reads == 2

    run(settings, scenario, replicas=2)


def test_a_failed_admin_write_still_makes_a_new_generation(settings: QueueSettings) -> None:
    """An operation that spans services may fail after its first write."""

    async def scenario(gateway: Gateway) -> None:
        await gateway.admitted()
        await gateway.authorize()
        await gateway.caches[0].observe(admin_call("CreateGrant", "UNAVAILABLE"))
        await gateway.admitted()
        await gateway.authorize()
        assert gateway.store.reads == 2

    run(settings, scenario)


def test_nothing_is_kept_without_a_generation(settings: QueueSettings) -> None:
    async def scenario(gateway: Gateway) -> None:
        admitted_generation.set(None)  # a call that was not admitted (no generation known)
        await gateway.authorize()
        await gateway.authorize()
        assert gateway.store.reads == 2

    run(settings, scenario)


def test_nothing_is_kept_with_caching_off(settings: QueueSettings) -> None:
    async def scenario(gateway: Gateway) -> None:
        await gateway.admitted()
        await gateway.authorize()
        await gateway.authorize()
        assert gateway.store.reads == 2

    run(settings, scenario, max_age_seconds=0)


def test_a_grant_ages_out_even_if_no_new_generation_came(settings: QueueSettings) -> None:
    """A replica that died between an administrator's write and its new generation."""

    async def scenario(gateway: Gateway) -> None:
        await gateway.admitted()
        await gateway.authorize()
        await gateway.authorize()
        await asyncio.sleep(0.1)
        await gateway.authorize()
        assert gateway.store.reads == 2

    run(settings, scenario, max_age_seconds=0.05)


def test_a_refusal_is_never_kept(settings: QueueSettings) -> None:
    async def scenario(gateway: Gateway) -> None:
        reads = 0

        async def refuse() -> admin_store_pb2.AuthorizeDatasetAccessResponse:
            nonlocal reads
            reads += 1
            raise PermissionError("no grant")

        await gateway.admitted()
        for _ in range(2):
            with pytest.raises(PermissionError):
                await gateway.caches[0].authorize("alice", "PENGUIN", refuse)
        assert reads == 2

    run(settings, scenario)


def test_a_redis_that_lost_the_generation_starts_a_new_one(settings: QueueSettings) -> None:
    """Not a counter: an emptied Redis must not bring back a generation stale grants were kept
    under."""

    async def scenario(gateway: Gateway) -> None:
        first = await gateway.limits.admit("alice")
        assert first == await gateway.limits.admit("alice")
        with redis.Redis.from_url(REDIS_URL) as direct:
            direct.delete(generation_key(settings.prefix))
        assert await gateway.limits.admit("alice") != first

    run(settings, scenario)


def test_which_admin_methods_may_write() -> None:
    writes = ["CreateUser", "FreezeUser", "DeleteGrant", "UpdateDataset", "AdjustAllocation"]
    reads = ["GetLedger", "ListUsers", "ListArchivedQueries", "VerifyLedgers"]
    assert all(may_write(f"{ADMIN}{name}") for name in writes)
    assert not any(may_write(f"{ADMIN}{name}") for name in reads)
    assert not may_write("/lomas.gateway.v1.GatewayService/ExecuteQuery")

"""Grants kept per access generation (`access.AccessCache`), against the machine's Redis.

Two caches stand for two gateway replicas: they share nothing but Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

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


def admission(settings: QueueSettings) -> UserLimits:
    return UserLimits(
        REDIS_URL,
        settings.prefix,
        LimitSettings(requests_per_second=0, concurrent_queries=0, query_timeout_seconds=30.0),
    )


async def admitted(limits: UserLimits) -> None:
    """What GatewayGuard does before a handler: the call runs under the generation it read."""
    admitted_generation.set(await limits.admit("alice"))


def test_a_grant_is_read_once_until_an_administrator_writes(settings: QueueSettings) -> None:
    async def scenario() -> None:
        limits = admission(settings)
        replicas = [AccessCache(REDIS_URL, settings.prefix) for _ in range(2)]
        store = Store()
        try:
            for _ in range(3):
                await admitted(limits)
                assert (await replicas[0].authorize("alice", "PENGUIN", store.read)).user.may_query
            assert store.reads == 1

            # An administrator freezes alice through the other replica: both read again.
            store.may_query = False
            await replicas[1].observe(CallOutcome(f"{ADMIN}FreezeUser", None, "OK", ""))
            await admitted(limits)
            access = await replicas[0].authorize("alice", "PENGUIN", store.read)
            assert not access.user.may_query
            assert store.reads == 2

            # Reads and calls of the researcher API change nothing.
            for method in (f"{ADMIN}ListGrants", "/lomas.gateway.v1.GatewayService/ExecuteQuery"):
                await replicas[1].observe(CallOutcome(method, None, "OK", ""))
            await admitted(limits)
            await replicas[0].authorize("alice", "PENGUIN", store.read)
            assert store.reads == 2
        finally:
            for cache in replicas:
                await cache.close()
            await limits.close()

    asyncio.run(scenario())


def test_a_failed_admin_write_still_makes_a_new_generation(settings: QueueSettings) -> None:
    """An operation that spans services may fail after its first write."""

    async def scenario() -> None:
        limits = admission(settings)
        cache = AccessCache(REDIS_URL, settings.prefix)
        store = Store()
        try:
            await admitted(limits)
            await cache.authorize("alice", "PENGUIN", store.read)
            await cache.observe(CallOutcome(f"{ADMIN}CreateGrant", None, "UNAVAILABLE", "X"))
            await admitted(limits)
            await cache.authorize("alice", "PENGUIN", store.read)
            assert store.reads == 2
        finally:
            await cache.close()
            await limits.close()

    asyncio.run(scenario())


def test_nothing_is_kept_without_a_generation_or_with_caching_off(
    settings: QueueSettings,
) -> None:
    async def scenario() -> None:
        limits = admission(settings)
        off = AccessCache(REDIS_URL, settings.prefix, max_age_seconds=0)
        on = AccessCache(REDIS_URL, settings.prefix)
        store = Store()
        try:
            admitted_generation.set(None)  # a call that was not admitted (no generation known)
            await on.authorize("alice", "PENGUIN", store.read)
            await on.authorize("alice", "PENGUIN", store.read)
            await admitted(limits)
            await off.authorize("alice", "PENGUIN", store.read)
            await off.authorize("alice", "PENGUIN", store.read)
            assert store.reads == 4
        finally:
            await on.close()
            await off.close()
            await limits.close()

    asyncio.run(scenario())


def test_a_grant_ages_out_even_if_no_new_generation_came(settings: QueueSettings) -> None:
    """A replica that died between an administrator's write and its new generation."""

    async def scenario() -> None:
        limits = admission(settings)
        cache = AccessCache(REDIS_URL, settings.prefix, max_age_seconds=0.05)
        store = Store()
        try:
            await admitted(limits)
            await cache.authorize("alice", "PENGUIN", store.read)
            await cache.authorize("alice", "PENGUIN", store.read)
            await asyncio.sleep(0.1)
            await cache.authorize("alice", "PENGUIN", store.read)
            assert store.reads == 2
        finally:
            await cache.close()
            await limits.close()

    asyncio.run(scenario())


def test_a_refusal_is_never_kept(settings: QueueSettings) -> None:
    async def scenario() -> None:
        limits = admission(settings)
        cache = AccessCache(REDIS_URL, settings.prefix)
        reads = 0

        async def refuse() -> admin_store_pb2.AuthorizeDatasetAccessResponse:
            nonlocal reads
            reads += 1
            raise PermissionError("no grant")

        try:
            await admitted(limits)
            for _ in range(2):
                with pytest.raises(PermissionError):
                    await cache.authorize("alice", "PENGUIN", refuse)
            assert reads == 2
        finally:
            await cache.close()
            await limits.close()

    asyncio.run(scenario())


def test_a_redis_that_lost_the_generation_starts_a_new_one(settings: QueueSettings) -> None:
    """Not a counter: an emptied Redis must not bring back a generation stale grants were kept
    under."""

    async def scenario() -> None:
        limits = admission(settings)
        try:
            first = await limits.admit("alice")
            assert first == await limits.admit("alice")
            with redis.Redis.from_url(REDIS_URL) as direct:
                direct.delete(generation_key(settings.prefix))
            assert await limits.admit("alice") != first
        finally:
            await limits.close()

    asyncio.run(scenario())


def test_which_admin_methods_may_write() -> None:
    writes = ["CreateUser", "FreezeUser", "DeleteGrant", "UpdateDataset", "AdjustAllocation"]
    reads = ["GetLedger", "ListUsers", "ListArchivedQueries", "VerifyLedgers"]
    assert all(may_write(f"{ADMIN}{name}") for name in writes)
    assert not any(may_write(f"{ADMIN}{name}") for name in reads)
    assert not may_write("/lomas.gateway.v1.GatewayService/ExecuteQuery")

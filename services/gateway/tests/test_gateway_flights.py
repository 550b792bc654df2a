"""Single flight of identical queries (`claims.QueryFlights`), against the machine's Redis.

Two flight objects stand for two gateway replicas: they share nothing but Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import pytest
import redis
import redis.asyncio

from lomas_common.errors import BackendUnavailable
from lomas_common.queue import QueueSettings
from lomas_gateway.claims import LANDED, QueryFlights
from lomas_gateway.completion import CompletionWaiter
from lomas_testing.redis_keys import scratch_queue_settings

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def settings() -> Iterator[QueueSettings]:
    with scratch_queue_settings("flight-test") as settings:
        yield settings


Replicas = tuple[QueryFlights, QueryFlights]


def with_replicas(settings: QueueSettings, scenario: Callable[[Replicas], Awaitable[None]]) -> None:
    """Run `scenario` with two replicas' flights, each with its own completion waiter."""

    async def run() -> None:
        waiters = [CompletionWaiter(settings), CompletionWaiter(settings)]
        flights = [QueryFlights(settings, waiter, hold_seconds=30) for waiter in waiters]
        for waiter in waiters:
            await waiter.start()
        try:
            await scenario((flights[0], flights[1]))
        finally:
            for flight, waiter in zip(flights, waiters, strict=True):
                await flight.close()
                await waiter.close()

    asyncio.run(run())


def test_the_first_query_leads_and_the_others_learn_its_id(settings: QueueSettings) -> None:
    async def scenario(replicas: Replicas) -> None:
        one, other = replicas
        assert await one.take_off("fp", "q1") is None
        assert await other.take_off("fp", "q2") == "q1"
        assert await one.take_off("fp", "q1") is None  # the leader asking again still leads
        assert await other.take_off("another-fp", "q3") is None  # other queries fly alone

    with_replicas(settings, scenario)


def test_a_landing_wakes_followers_on_other_replicas_at_once(settings: QueueSettings) -> None:
    async def scenario(replicas: Replicas) -> None:
        one, other = replicas
        assert await one.take_off("fp", "q1") is None
        follower = asyncio.ensure_future(other.wait_for_landing("fp", "q1", timeout=30))
        await asyncio.sleep(0.2)
        assert not follower.done()
        loop = asyncio.get_running_loop()
        landed_at = loop.time()
        await one.land("fp", "q1", released=False)
        assert await asyncio.wait_for(follower, 1.5) is True
        assert loop.time() - landed_at < 1.5  # the announcement, not the 2 s poll
        assert await other.take_off("fp", "q2") is None  # the next flight may take off

    with_replicas(settings, scenario)


def test_a_follower_that_arrives_after_the_landing_does_not_wait(settings: QueueSettings) -> None:
    async def scenario(replicas: Replicas) -> None:
        one, other = replicas
        assert await one.take_off("fp", "q1") is None
        await one.land("fp", "q1", released=False)
        assert await asyncio.wait_for(other.wait_for_landing("fp", "q1", timeout=30), 1.0)

    with_replicas(settings, scenario)


def test_landing_someone_elses_flight_changes_nothing(settings: QueueSettings) -> None:
    async def scenario(replicas: Replicas) -> None:
        one, other = replicas
        assert await one.take_off("fp", "q1") is None
        await other.land(
            "fp", "q2", released=True
        )  # a stale leader (its key expired, another took off)
        assert await other.take_off("fp", "q2") == "q1"
        assert await other.wait_for_landing("fp", "q1", timeout=0.3) is False  # timed out

    with_replicas(settings, scenario)


def test_a_dead_leader_holds_nobody_up_longer_than_its_hold(settings: QueueSettings) -> None:
    async def scenario() -> None:
        waiter = CompletionWaiter(settings)
        flights = QueryFlights(settings, waiter, hold_seconds=1)
        try:
            assert await flights.take_off("fp", "q1") is None
            await asyncio.sleep(1.5)  # q1's gateway died without landing: the key expired
            assert await flights.take_off("fp", "q2") is None
        finally:
            await flights.close()
            await waiter.close()

    asyncio.run(scenario())


def test_redis_down_is_backend_unavailable_naming_redis() -> None:
    async def scenario() -> None:
        settings = QueueSettings(broker_url="redis://127.0.0.1:1/0", prefix="flight-down")
        waiter = CompletionWaiter(settings)
        flights = QueryFlights(settings, waiter, hold_seconds=30)
        try:
            with pytest.raises(BackendUnavailable) as down:
                await flights.take_off("fp", "q1")
            assert down.value.metadata["peer"] == "redis"
        finally:
            await flights.close()
            await waiter.close()

    asyncio.run(scenario())


def test_a_flight_that_released_leaves_a_mark_so_late_identical_queries_replay(
    settings: QueueSettings,
) -> None:
    async def scenario(replicas: Replicas) -> None:
        one, other = replicas
        assert await one.take_off("fp", "q1") is None
        await one.land("fp", "q1", released=True)
        # A query whose look back ran before the release was stored must not take off again.
        assert await other.take_off("fp", "q2") == LANDED
        assert await other.wait_for_landing("fp", LANDED, timeout=0.1) is True

    with_replicas(settings, scenario)


def test_the_landed_mark_expires(settings: QueueSettings) -> None:
    async def scenario(replicas: Replicas) -> None:
        one, _ = replicas
        assert await one.take_off("fp", "q1") is None
        await one.land("fp", "q1", released=True)
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        try:
            ttl = await client.ttl(f"{settings.prefix}:flight:fp")
        finally:
            await client.aclose()
        assert 0 < ttl <= 60

    with_replicas(settings, scenario)

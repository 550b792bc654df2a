"""Per-user limits and queue fairness, against the machine's Redis and real Celery messages.

The gateway gives each query a queue priority: how many of its user's queries were already in
flight (the per-user counter of `UserLimits.query_slot`), capped at the last step. A worker takes
the next task the way Celery's does (kombu's Redis BRPOP, prefetch 1), so a user's backlog cannot
starve another user's first query. Free calls hold a per-user slot of their own.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from contextlib import AsyncExitStack

import pytest
from kombu import Message, Queue

from lomas.executor.v1 import task_pb2
from lomas_common.errors import LomasError
from lomas_common.queue import MAX_TASK_PRIORITY, QueueSettings, make_celery_app, task_priority
from lomas_gateway.lifecycle import send_query_task
from lomas_gateway.limits import LimitSettings, UserLimits
from lomas_testing.redis_keys import scratch_queue_settings

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def settings() -> Iterator[QueueSettings]:
    with scratch_queue_settings("fair-test") as settings:
        yield settings


def limits(settings: QueueSettings, **overrides: int) -> UserLimits:
    values = LimitSettings(
        requests_per_second=0,
        concurrent_queries=64,
        query_timeout_seconds=30.0,
        concurrent_free_calls=2,
    )
    return UserLimits(REDIS_URL, settings.prefix, dataclasses.replace(values, **overrides))


def take_next(settings: QueueSettings) -> str:
    """The id of the task a worker takes next (kombu's BRPOP over the priority lists, prefetch 1),
    acknowledged as a worker does when it has run it."""
    app = make_celery_app(settings)
    taken: list[str] = []

    def run(_: object, message: Message) -> None:
        taken.append(message.headers["id"])
        message.ack()

    try:
        with app.connection_for_read() as connection:
            queue = Queue(settings.light_queue, routing_key=settings.light_queue)
            with connection.Consumer([queue], accept=["json"], callbacks=[run]) as consumer:
                consumer.qos(prefetch_count=1)
                connection.drain_events(timeout=10)
    finally:
        app.close()
    assert len(taken) == 1
    return taken[0]


def test_lower_priorities_are_served_first_one_list_per_priority(settings: QueueSettings) -> None:
    app = make_celery_app(settings)
    try:
        for priority in (2, 1, MAX_TASK_PRIORITY, 0):
            send_query_task(
                app,
                settings.light_queue,
                task_pb2.ExecuteQueryTask(query_id=f"p{priority}"),
                priority,
            )
    finally:
        app.close()
    # 1 and 2 would share kombu's default step (0, 3, 6, 9) and come out in sending order.
    assert [take_next(settings) for _ in range(4)] == ["p0", "p1", "p2", f"p{MAX_TASK_PRIORITY}"]
    assert [task_priority(n) for n in (-1, 0, 1, 9, 10, 500)] == [0, 0, 1, 9, 9, 9]


def test_another_users_first_query_goes_before_a_backlog(settings: QueueSettings) -> None:
    """User A has 20 queries in flight (each holds its slot while it waits, as in ExecuteQuery);
    user B's single query is taken right after A's first, before the rest of A's backlog."""

    async def scenario() -> None:
        user_limits = limits(settings)
        app = make_celery_app(settings)
        try:
            async with AsyncExitStack() as held:
                for index in range(20):
                    slot = await held.enter_async_context(user_limits.query_slot("alice"))
                    assert slot.already_in_flight == index
                    send_query_task(
                        app,
                        settings.light_queue,
                        task_pb2.ExecuteQueryTask(query_id=f"alice-{index}"),
                        task_priority(slot.already_in_flight),
                    )
                assert await user_limits.queries_in_flight("alice") == 20
                async with user_limits.query_slot("bob") as slot:
                    assert slot.already_in_flight == 0
                    send_query_task(
                        app,
                        settings.light_queue,
                        task_pb2.ExecuteQueryTask(query_id="bob-0"),
                        task_priority(slot.already_in_flight),
                    )
            assert await user_limits.queries_in_flight("alice") == 0  # every slot given back
        finally:
            app.close()
            await user_limits.close()

    asyncio.run(scenario())
    assert [take_next(settings) for _ in range(3)] == ["alice-0", "bob-0", "alice-1"]


def test_a_resent_task_keeps_its_priority(settings: QueueSettings) -> None:
    app = make_celery_app(settings)
    try:
        for index in range(3):
            send_query_task(
                app,
                settings.light_queue,
                task_pb2.ExecuteQueryTask(query_id=f"alice-{index}"),
                task_priority(index),
            )
        # The lost-task finder re-sends with the priority the task was first sent with.
        send_query_task(app, settings.light_queue, task_pb2.ExecuteQueryTask(query_id="alice-2"), 2)
        send_query_task(app, settings.light_queue, task_pb2.ExecuteQueryTask(query_id="bob-0"), 0)
    finally:
        app.close()
    assert [take_next(settings) for _ in range(3)] == ["alice-0", "bob-0", "alice-1"]


def test_free_calls_hold_a_per_user_slot(settings: QueueSettings) -> None:
    async def scenario() -> None:
        user_limits = limits(settings, concurrent_free_calls=2)
        try:
            async with user_limits.free_call_slot("alice"), user_limits.free_call_slot("alice"):
                with pytest.raises(LomasError) as error:
                    async with user_limits.free_call_slot("alice"):
                        pass
                assert (error.value.code.value, error.value.reason) == (
                    "RESOURCE_EXHAUSTED",
                    "TOO_MANY_CONCURRENT_CALLS",
                )
                assert error.value.retry_after_seconds == 1.0
                async with user_limits.free_call_slot("bob"):  # another user is not affected
                    pass
                # Free calls and real queries are counted apart.
                async with user_limits.query_slot("alice") as slot:
                    assert slot.already_in_flight == 0
            async with user_limits.free_call_slot("alice"):  # the slots were given back
                pass
        finally:
            await user_limits.close()

    asyncio.run(scenario())


def test_the_concurrent_query_limit_still_holds(settings: QueueSettings) -> None:
    async def scenario() -> None:
        user_limits = limits(settings, concurrent_queries=1)
        try:
            async with user_limits.query_slot("alice"):
                with pytest.raises(LomasError) as error:
                    async with user_limits.query_slot("alice"):
                        pass
                assert error.value.reason == "TOO_MANY_CONCURRENT_QUERIES"
            assert await user_limits.queries_in_flight("alice") == 0
        finally:
            await user_limits.close()

    asyncio.run(scenario())

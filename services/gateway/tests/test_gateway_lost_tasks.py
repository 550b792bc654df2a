"""Finding tasks the queue lost, against the machine's Redis and real Celery messages.

No worker consumes these queues: the tests send a task with the gateway's own Celery app, then play
the part of a dead worker whose BRPOP took the task (the task is popped and dropped), of a live
worker that holds it, and of one that started it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
import redis

from lomas_common.queue import EXECUTE_QUERY_TASK, QueueSettings, make_celery_app
from lomas_gateway.lost_tasks import MAX_RESENDS, LostTaskFinder
from lomas_testing.redis_keys import scratch_queue_settings

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def settings() -> Iterator[QueueSettings]:
    with scratch_queue_settings("lost-test") as settings:
        yield settings


def send(settings: QueueSettings, query_id: str, priority: int | None = None) -> None:
    app = make_celery_app(settings)
    try:
        app.send_task(
            EXECUTE_QUERY_TASK,
            args=["{}"],
            task_id=query_id,
            queue=settings.light_queue,
            priority=priority,
        )
    finally:
        app.close()


def is_lost(settings: QueueSettings, query_id: str) -> bool:
    async def check() -> bool:
        finder = LostTaskFinder(settings)
        try:
            return await finder.is_lost(query_id, settings.light_queue)
        finally:
            await finder.close()

    return asyncio.run(check())


def pop_all(settings: QueueSettings) -> list[bytes]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        popped: list[bytes] = []
        for key in settings.broker_lists(settings.light_queue):
            while (item := client.rpop(key)) is not None:
                assert isinstance(item, bytes)  # one item: rpop without a count
                popped.append(item)
        return popped
    finally:
        client.close()


@pytest.mark.parametrize("priority", [None, 9])
def test_a_waiting_task_is_not_lost_and_a_popped_one_is(
    settings: QueueSettings, priority: int | None
) -> None:
    send(settings, "q-waiting", priority)
    send(settings, "q-other", priority)
    assert not is_lost(settings, "q-waiting")
    # A dead worker's BRPOP took both messages: nothing holds them and nobody started them.
    assert len(pop_all(settings)) == 2
    assert is_lost(settings, "q-waiting")


def test_a_held_or_started_task_is_not_lost(settings: QueueSettings) -> None:
    send(settings, "q-held")
    send(settings, "q-started")
    messages = {json.loads(m)["headers"]["id"]: m for m in pop_all(settings)}
    client = redis.Redis.from_url(REDIS_URL)
    try:
        # A live worker records what it took in the unacked hash (message, exchange, routing key).
        held = json.dumps([json.loads(messages["q-held"]), "", settings.light_queue])
        client.hset(settings.unacked_key, "delivery-tag-1", held)
        # A worker that started a task counted the delivery first.
        client.hincrby(settings.attempts_key("q-started"), "0", 1)
    finally:
        client.close()
    assert not is_lost(settings, "q-held")
    assert not is_lost(settings, "q-started")


def test_a_task_missing_at_two_polls_in_a_row_is_sent_again_a_bounded_number_of_times(
    settings: QueueSettings,
) -> None:
    async def scenario() -> list[str]:
        finder = LostTaskFinder(settings)
        events: list[str] = []

        async def resend() -> None:
            events.append("resent")

        try:
            watch = finder.watch("q-lost", settings.light_queue, resend)
            send(settings, "q-lost")
            await watch.check()
            events.append("waiting")
            pop_all(settings)
            await watch.check()
            events.append("missing once")
            send(settings, "q-lost")  # back in the queue: the count starts again
            await watch.check()
            pop_all(settings)
            await watch.check()
            events.append("missing once")
            await watch.check()  # the second poll in a row: sent again
            for _ in range(2 * MAX_RESENDS + 2):
                await watch.check()
            return events
        finally:
            await finder.close()

    events = asyncio.run(scenario())
    assert events == ["waiting", "missing once", "missing once"] + ["resent"] * MAX_RESENDS

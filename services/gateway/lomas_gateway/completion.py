"""Waiting for a query's outcome: workers announce it on Redis pub/sub; the archive is the truth.

One pattern subscription serves every waiting call. A missed announcement (a reconnect, say) costs at
most one poll interval, because the waiter also checks the archive periodically. An announcement
carries the archive's copy of a small outcome (a serialized `ArchivedQuery`), so the gateway need
not read it back; an empty one says only that the outcome is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from lomas_common.queue import QueueSettings

log = logging.getLogger(__name__)

POLL_INTERVAL_SECONDS = 2.0


@dataclass
class _Waiting:
    done: asyncio.Event = field(default_factory=asyncio.Event)
    announced: bytes = b""  # the announcement's payload, if one arrived
    holders: int = 0  # calls waiting on it (a query and the identical queries that follow it)


@dataclass(frozen=True)
class Completion:
    """A finished query: `announced` is the announcement's payload (empty when the announcement
    carried no outcome or the archive poll found the outcome first)."""

    announced: bytes


class CompletionWaiter:
    def __init__(self, settings: QueueSettings) -> None:
        self._settings = settings
        self._redis = aioredis.Redis.from_url(settings.broker_url)
        self._waiting: dict[str, _Waiting] = {}
        self._listener: asyncio.Task[None] | None = None
        self._prefix = settings.done_channel("")

    async def start(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.psubscribe(self._settings.done_pattern)
        self._listener = asyncio.create_task(self._listen(pubsub))

    async def _listen(self, pubsub: aioredis.client.PubSub) -> None:
        while True:
            try:
                message = await pubsub.get_message(timeout=5.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("completion listener lost Redis; retrying", exc_info=True)
                await asyncio.sleep(1.0)
                with contextlib.suppress(Exception):
                    await pubsub.psubscribe(self._settings.done_pattern)
                continue
            if message is None:
                continue
            channel = message["channel"].decode()
            waiting = self._waiting.get(channel.removeprefix(self._prefix))
            if waiting is not None:
                waiting.announced = bytes(message["data"])
                waiting.done.set()

    def expect(self, query_id: str) -> None:
        """Register interest before the task is sent, so an early announcement is not missed. Each
        `expect` is paired with one `wait` (or one `forget` if the wait never starts)."""
        self._waiting.setdefault(query_id, _Waiting()).holders += 1

    def forget(self, query_id: str) -> None:
        waiting = self._waiting.get(query_id)
        if waiting is not None:
            waiting.holders -= 1
            if waiting.holders <= 0:
                self._waiting.pop(query_id, None)

    async def wait(
        self,
        query_id: str,
        timeout: float,
        is_done: Callable[[], Awaitable[bool]],
        on_poll: Callable[[], Awaitable[None]] | None = None,
    ) -> Completion | None:
        """The completion once the outcome is stored, None on timeout. `on_poll` runs at each poll
        that finds the outcome not stored yet. Call `expect` first: `wait` ends its registration."""
        waiting = self._waiting.setdefault(query_id, _Waiting())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                try:
                    await asyncio.wait_for(
                        waiting.done.wait(), min(POLL_INTERVAL_SECONDS, remaining)
                    )
                    return Completion(waiting.announced)
                except TimeoutError:
                    if await is_done():
                        return Completion(b"")
                    if on_poll is not None:
                        await on_poll()
        finally:
            self.forget(query_id)

    async def announce(self, query_id: str, payload: bytes) -> None:
        """Announce an outcome as a worker does (a cancellation, say), to every gateway replica."""
        await self._redis.publish(self._settings.done_channel(query_id), payload)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._redis.aclose()

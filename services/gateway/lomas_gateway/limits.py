"""Per-user limits shared by every gateway replica (kept in Redis), and response-time padding.

- request rate: a fixed one-second window per subject (every public call, free ones included);
- concurrent real queries: a counter per subject, with a safety expiry so a crashed gateway cannot
  leave a user blocked for longer than one query timeout. The count is always kept (even with no
  limit): it also gives a query its queue priority (`QuerySlot.already_in_flight`);
- concurrent free calls (cost estimates, dummy queries, dummy datasets): a second counter per
  subject, so free work is bounded per user too;
- timing protection (`ResponsePadding`): every response that depends on the data (a query's answer or
  error, a dummy run, a watched query's outcome) is held back to a minimum duration and rounded up
  to a quantum, so its time says nothing about the data unless the work itself crosses a quantum.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from lomas_common.errors import BackendUnavailable, RateLimited, TooManyConcurrentQueries
from lomas_gateway.access import generation_key, new_generation

# How long a free call may hold its slot if its gateway dies (the counter's safety expiry).
FREE_CALL_SLOT_TTL_SECONDS = 600
# The end of a padded response's wait spent awake (see `ResponsePadding.hold`).
WAKE_MARGIN_SECONDS = 0.005


@dataclass(frozen=True)
class LimitSettings:
    requests_per_second: int  # per subject; 0 disables
    concurrent_queries: int  # real queries in flight per subject; 0 disables
    query_timeout_seconds: float
    response_min_seconds: float = 0.0
    response_quantum_seconds: float = 0.0
    concurrent_free_calls: int = 4  # estimates and dummy runs in flight per subject; 0 disables


@dataclass(frozen=True)
class ResponsePadding:
    """How long a data-dependent response is held: at least `minimum_seconds`, then rounded up to
    a multiple of `quantum_seconds` (0 disables either). Only the number of quanta the work took
    can show through, and none while the work stays under the minimum."""

    minimum_seconds: float = 0.0
    quantum_seconds: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.minimum_seconds > 0 or self.quantum_seconds > 0

    def target(self, elapsed: float) -> float:
        """When a response whose work took `elapsed` seconds may leave."""
        target = max(elapsed, self.minimum_seconds)
        if self.quantum_seconds > 0:
            target = math.ceil(target / self.quantum_seconds) * self.quantum_seconds
        return target

    async def hold(self, elapsed: float) -> None:
        """Wait out the rest of the padding of a response whose work took `elapsed` seconds so far.

        A timer's wake-up is late by more after a longer idle (the CPU sleeps deeper): measured
        here, a fast query's padded answer came ~1 ms later than a slow one's, enough for a
        two-sample test to tell the data apart. So the last `WAKE_MARGIN_SECONDS` are spent awake,
        yielding to the event loop until the deadline, and every response leaves from the same
        state whatever the work before it."""
        if not self.enabled:
            return
        deadline = time.monotonic() + self.target(elapsed) - elapsed
        rest = deadline - time.monotonic() - WAKE_MARGIN_SECONDS
        if rest > 0:
            await asyncio.sleep(rest)
        while time.monotonic() < deadline:
            await asyncio.sleep(0)

    @asynccontextmanager
    async def padded(self) -> AsyncIterator[None]:
        """Pad the block's duration, whether it returns or raises."""
        start = time.monotonic()
        try:
            yield
        finally:
            await self.hold(time.monotonic() - start)


@dataclass(frozen=True)
class QuerySlot:
    """A held query slot: how many of the subject's other real queries were in flight when it was
    taken (the query's queue priority comes from it)."""

    already_in_flight: int


class UserLimits:
    def __init__(self, redis_url: str, prefix: str, settings: LimitSettings) -> None:
        self._redis = aioredis.Redis.from_url(redis_url)
        self._prefix = prefix
        self._generation_key = generation_key(prefix)
        self._settings = settings
        self._padding = ResponsePadding(
            settings.response_min_seconds, settings.response_quantum_seconds
        )

    async def admit(self, subject: str) -> str:
        """Count one call of the subject against its request rate (RATE_LIMITED past it) and
        read the access generation (`access.py`) in the same round trip; returns the generation
        (set to a new one first if Redis has none)."""
        limit = self._settings.requests_per_second
        rate_key = f"{self._prefix}:rate:{subject}:{int(time.time())}"
        with _redis_unavailable():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(rate_key)
                pipe.expire(rate_key, 2)
                pipe.set(self._generation_key, new_generation(), nx=True)
                pipe.get(self._generation_key)
                count, _, _, generation = await pipe.execute()
        if 0 < limit < int(count):
            raise RateLimited(f"more than {limit} requests per second", retry_after_seconds=1.0)
        return generation.decode() if isinstance(generation, bytes) else str(generation)

    def _inflight_key(self, subject: str) -> str:
        return f"{self._prefix}:inflight:{subject}"

    async def queries_in_flight(self, subject: str) -> int:
        """How many real queries of the subject are in flight now (across gateway replicas)."""
        with _redis_unavailable():
            return int(await self._redis.get(self._inflight_key(subject)) or 0)

    @asynccontextmanager
    async def query_slot(self, subject: str) -> AsyncIterator[QuerySlot]:
        """Hold one of the subject's concurrent-query slots for the duration of a real query."""
        limit = self._settings.concurrent_queries
        ttl = int(self._settings.query_timeout_seconds) + 60
        async with self._counted(self._inflight_key(subject), ttl) as count:
            if 0 < limit < count:
                raise TooManyConcurrentQueries(
                    f"at most {limit} queries may run at once per user", retry_after_seconds=1.0
                )
            yield QuerySlot(already_in_flight=count - 1)

    @asynccontextmanager
    async def free_call_slot(self, subject: str) -> AsyncIterator[None]:
        """Hold one of the subject's slots for free work (a cost estimate, a dummy run)."""
        limit = self._settings.concurrent_free_calls
        if limit <= 0:
            yield
            return
        key = f"{self._prefix}:inflight-free:{subject}"
        async with self._counted(key, FREE_CALL_SLOT_TTL_SECONDS) as count:
            if count > limit:
                raise TooManyConcurrentQueries(
                    f"at most {limit} cost estimates or dummy runs may run at once per user",
                    reason="TOO_MANY_CONCURRENT_CALLS",
                    retry_after_seconds=1.0,
                )
            yield

    @asynccontextmanager
    async def _counted(self, key: str, ttl_seconds: int) -> AsyncIterator[int]:
        """Count one more in `key` while the block runs (the count includes this one)."""
        with _redis_unavailable():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, ttl_seconds)
                count, _ = await pipe.execute()
        try:
            yield int(count)
        finally:
            with _redis_unavailable():
                await self._redis.decr(key)

    def padded(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the response back to the configured minimum / quantum, whatever the outcome."""
        return self._padding.padded()

    async def close(self) -> None:
        await self._redis.aclose()


@contextmanager
def _redis_unavailable() -> Iterator[None]:
    """Redis down or restarting is a backend outage for the caller (retry later), not INTERNAL."""
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError):
        raise BackendUnavailable(
            "the limits store is unavailable", peer="redis", retry_after_seconds=1.0
        ) from None

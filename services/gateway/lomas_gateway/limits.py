"""Per-user limits shared by every gateway replica (kept in Redis), and response-time padding.

- request rate: a fixed one-second window per subject;
- concurrent real queries: a counter per subject, with a safety expiry so a crashed gateway cannot
  leave a user blocked for longer than one query timeout;
- timing protection (as Lomas offers): query responses, answers and errors alike, are held back to a
  minimum duration and/or rounded up to a quantum, so response times say less about the data.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import redis.asyncio as aioredis

from lomas_common.errors import RateLimited, TooManyConcurrentQueries


@dataclass(frozen=True)
class LimitSettings:
    requests_per_second: int  # per subject; 0 disables
    concurrent_queries: int  # real queries in flight per subject; 0 disables
    query_timeout_seconds: float
    response_min_seconds: float = 0.0
    response_quantum_seconds: float = 0.0


class UserLimits:
    def __init__(self, redis_url: str, prefix: str, settings: LimitSettings) -> None:
        self._redis = aioredis.Redis.from_url(redis_url)
        self._prefix = prefix
        self._settings = settings

    async def check_rate(self, subject: str) -> None:
        limit = self._settings.requests_per_second
        if limit <= 0:
            return
        key = f"{self._prefix}:rate:{subject}:{int(time.time())}"
        async with self._redis.pipeline(transaction=True) as pipe:
            count, _ = await pipe.incr(key).expire(key, 2).execute()
        if int(count) > limit:
            raise RateLimited(f"more than {limit} requests per second", retry_after_seconds=1.0)

    @asynccontextmanager
    async def query_slot(self, subject: str) -> AsyncIterator[None]:
        """Hold one of the subject's concurrent-query slots for the duration of a real query."""
        limit = self._settings.concurrent_queries
        if limit <= 0:
            yield
            return
        key = f"{self._prefix}:inflight:{subject}"
        ttl = int(self._settings.query_timeout_seconds) + 60
        async with self._redis.pipeline(transaction=True) as pipe:
            count, _ = await pipe.incr(key).expire(key, ttl).execute()
        try:
            if int(count) > limit:
                raise TooManyConcurrentQueries(
                    f"at most {limit} queries may run at once per user", retry_after_seconds=1.0
                )
            yield
        finally:
            await self._redis.decr(key)

    @asynccontextmanager
    async def padded(self) -> AsyncIterator[None]:
        """Hold the response back to the configured minimum / quantum, whatever the outcome."""
        minimum = self._settings.response_min_seconds
        quantum = self._settings.response_quantum_seconds
        if minimum <= 0 and quantum <= 0:
            yield
            return
        start = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - start
            target = max(elapsed, minimum)
            if quantum > 0:
                target = math.ceil(target / quantum) * quantum
            if target > elapsed:
                await asyncio.sleep(target - elapsed)

    async def close(self) -> None:
        await self._redis.aclose()

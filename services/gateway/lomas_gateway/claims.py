"""Claims in Redis that every gateway replica sees: request ids bound to their query, and single
flight of identical queries.

A request id names one query: its retry must be the same query, or a client bug would silently get
another query's release (same query id, charged once). The binding is a Redis key per query id,
set once (SET NX) to the query's fingerprint before anything is reserved; a later request with the
same id and another fingerprint is refused (INVALID_ARGUMENT, REQUEST_ID_REUSED) and charges
nothing. The archive keeps the fingerprint of every outcome too, so the binding outlives the key.

Single flight: identical queries (one fingerprint) sent at the same moment would each find no
earlier release and each be charged for its own draw of noise. The first takes a flight key
(SET NX, holding its query id) and runs; the others wait for it to land and then find its release,
a free replay. A flight that lands without a release (refused, failed) lets the next one take off.
After a release the key is marked `landed` for a minute, so an identical query whose look back ran
just before the release was stored replays it instead of taking off again. The key expires on its
own, so a gateway that dies mid-flight holds nobody up for longer than a query may take.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from lomas_common.errors import BackendUnavailable, InvalidArgument
from lomas_common.queue import QueueSettings
from lomas_gateway.completion import CompletionWaiter

# Long enough for any retry of a query that has not finished; after that the archive answers.
CLAIM_SECONDS = 7 * 24 * 3600

# What a flight key holds after a flight that released: identical queries arriving later find the
# release (their look back may have run just before it was stored), and nobody takes off again.
LANDED = "landed"
# How long that mark stays: far longer than the moment between a query's look back and its
# take-off; after it, the archive alone answers.
LANDED_MARK_SECONDS = 60
# Ends the flight only while the key still names the landing query (not a later flight's): marks it
# landed after a release (ARGV[2] = "1"), deletes it otherwise so the next query may take off.
_LAND_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[2] == '1' then
    return redis.call('SET', KEYS[1], 'landed', 'EX', ARGV[3])
  end
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def request_id_reused(query_id: str) -> InvalidArgument:
    return InvalidArgument(
        "this request id was used for another query: use a new request id for a new query",
        reason="REQUEST_ID_REUSED",
        metadata={"queryId": query_id},
    )


@contextlib.contextmanager
def redis_unavailable_as_backend_error(what: str) -> Iterator[None]:
    """Redis down or slow is BACKEND_UNAVAILABLE naming the peer, retryable."""
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError):
        raise BackendUnavailable(
            f"the {what} is unavailable", peer="redis", retry_after_seconds=1.0
        ) from None


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class RequestClaims:
    """Binds each query id (from a caller's request id) to the fingerprint of its query."""

    def __init__(self, settings: QueueSettings) -> None:
        self._prefix = settings.prefix
        self._redis = aioredis.Redis.from_url(settings.broker_url)

    def _key(self, query_id: str) -> str:
        return f"{self._prefix}:request-claim:{query_id}"

    async def bind(self, query_id: str, fingerprint: str) -> bool:
        """Bind `query_id` to `fingerprint`, or refuse if it is bound to another query. True when
        this is the id's first use (no request with it came within `CLAIM_SECONDS`)."""
        key = self._key(query_id)
        with redis_unavailable_as_backend_error("request store"):
            if await self._redis.set(key, fingerprint, nx=True, ex=CLAIM_SECONDS):
                return True
            bound = _text(await self._redis.get(key))
        if bound is not None and bound != fingerprint:
            raise request_id_reused(query_id)
        return False

    async def close(self) -> None:
        await self._redis.aclose()


class QueryFlights:
    """Single flight of identical queries across replicas (see the module docstring)."""

    def __init__(
        self, settings: QueueSettings, waiter: CompletionWaiter, hold_seconds: float
    ) -> None:
        self._settings = settings
        self._redis = aioredis.Redis.from_url(settings.broker_url)
        self._waiter = waiter
        self._hold_seconds = max(1, int(hold_seconds))

    def _key(self, fingerprint: str) -> str:
        return f"{self._settings.prefix}:flight:{fingerprint}"

    @staticmethod
    def _landing_name(fingerprint: str) -> str:
        # Announced on the query-done channel family, so the one subscription serves it too.
        return f"flight-{fingerprint}"

    async def take_off(self, fingerprint: str, query_id: str) -> str | None:
        """None when `query_id` now leads the flight of `fingerprint`; else the leader's query id,
        or `LANDED` when an identical query released a moment ago (look back again)."""
        key = self._key(fingerprint)
        with redis_unavailable_as_backend_error("query store"):
            while True:
                if await self._redis.set(key, query_id, nx=True, ex=self._hold_seconds):
                    return None
                leader = _text(await self._redis.get(key))
                if leader is not None:  # else it landed in between: try again
                    return None if leader == query_id else leader

    async def land(self, fingerprint: str, query_id: str, *, released: bool) -> None:
        """End the flight `query_id` leads (marked `LANDED` when it released) and wake its
        followers (best effort: the key expires)."""
        key = self._key(fingerprint)
        channel = self._settings.done_channel(self._landing_name(fingerprint))
        mark = "1" if released else "0"
        with contextlib.suppress(redis_errors.RedisError):
            await self._redis.eval(_LAND_SCRIPT, 1, key, query_id, mark, LANDED_MARK_SECONDS)
            await self._redis.publish(channel, b"")

    async def wait_for_landing(self, fingerprint: str, leader: str, timeout: float) -> bool:
        """Wait until the flight `leader` leads has landed; False on timeout."""
        if leader == LANDED:
            return True
        key = self._key(fingerprint)

        async def landed() -> bool:
            with redis_unavailable_as_backend_error("query store"):
                return _text(await self._redis.get(key)) != leader

        name = self._landing_name(fingerprint)
        self._waiter.expect(name)
        try:
            already = await landed()  # it may have landed before we listened
        except BaseException:
            self._waiter.forget(name)
            raise
        if already:
            self._waiter.forget(name)
            return True
        return await self._waiter.wait(name, timeout, landed) is not None

    async def close(self) -> None:
        await self._redis.aclose()

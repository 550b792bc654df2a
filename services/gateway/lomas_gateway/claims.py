"""Request ids bound to their query, across every gateway replica.

A request id names one query: its retry must be the same query, or a client bug would silently get
another query's release (same query id, charged once). The binding is a Redis key per query id,
set once (SET NX) to the query's fingerprint before anything is reserved; a later request with the
same id and another fingerprint is refused (INVALID_ARGUMENT, REQUEST_ID_REUSED) and charges
nothing. The archive keeps the fingerprint of every outcome too, so the binding outlives the key.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from lomas_common.errors import BackendUnavailable, InvalidArgument
from lomas_common.queue import QueueSettings

# Long enough for any retry of a query that has not finished; after that the archive answers.
CLAIM_SECONDS = 7 * 24 * 3600


def request_id_reused(query_id: str) -> InvalidArgument:
    return InvalidArgument(
        "this request id was used for another query: use a new request id for a new query",
        reason="REQUEST_ID_REUSED",
        metadata={"queryId": query_id},
    )


class RequestClaims:
    """Binds each query id (from a caller's request id) to the fingerprint of its query."""

    def __init__(self, settings: QueueSettings) -> None:
        self._prefix = settings.prefix
        self._redis = aioredis.Redis.from_url(settings.broker_url)

    def _key(self, query_id: str) -> str:
        return f"{self._prefix}:request-claim:{query_id}"

    async def bind(self, query_id: str, fingerprint: str) -> None:
        """Bind `query_id` to `fingerprint`, or refuse if it is bound to another query."""
        try:
            key = self._key(query_id)
            if await self._redis.set(key, fingerprint, nx=True, ex=CLAIM_SECONDS):
                return
            bound = await self._redis.get(key)
        except (redis_errors.ConnectionError, redis_errors.TimeoutError):
            raise BackendUnavailable(
                "the request store is unavailable",
                metadata={"peer": "redis"},
                retry_after_seconds=1.0,
            ) from None
        text = bound.decode() if isinstance(bound, bytes) else bound
        if text is not None and text != fingerprint:
            raise request_id_reused(query_id)

    async def close(self) -> None:
        await self._redis.aclose()

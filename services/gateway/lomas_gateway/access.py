"""Grants as this gateway last read them, trusted until an administrator changes anything.

Every dataset call needs the caller's grant (the admin store's `AuthorizeDatasetAccess`, a peer hop
of about 0.8 ms, a third of a free replay). Users, datasets and grants change only through the
AdminService of some gateway replica, so:

- after every AdminService call that may write (anything but Get/List/Verify), the replica that
  answered it sets the *access generation*, one Redis key every replica shares, to a new random
  token, before the administrator gets the answer;
- every public call reads the generation at admission, in the round trip of its rate check
  (`limits.UserLimits.admit`), and a grant this replica read under that same token is the truth:
  nothing that could change it has been acknowledged since. Any change makes a new token, and the
  next call reads the grant again.

A random token rather than a counter: a Redis that restarts empty must not bring back an old
number under which stale grants are kept. No token (Redis lost it) means no cached grant. A
replica that dies between an administrator's change and its new token leaves the others one entry
old for at most `max_age_seconds`; only successful grants are kept (a refusal is read every time).
"""

from __future__ import annotations

import contextvars
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from lomas.admin.v1 import admin_store_pb2
from lomas_common.server import CallOutcome
from lomas_gateway.recent import RecentlyUsed

log = logging.getLogger(__name__)

_ADMIN_SERVICE = "/lomas.gateway.v1.AdminService/"
# AdminService methods that only read: they leave the generation as it is.
_READ_ONLY_PREFIXES = ("Get", "List", "Verify")

# The generation a call was admitted under (None: unknown, so nothing cached is used).
admitted_generation: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "admitted_generation", default=None
)


def generation_key(prefix: str) -> str:
    return f"{prefix}:access-generation"


def new_generation() -> str:
    return secrets.token_hex(16)


def may_write(method: str) -> bool:
    """Whether a public method may change users, datasets or grants."""
    if not method.startswith(_ADMIN_SERVICE):
        return False
    return not method.removeprefix(_ADMIN_SERVICE).startswith(_READ_ONLY_PREFIXES)


@dataclass(frozen=True)
class _Entry:
    generation: str
    read_at: float
    access: admin_store_pb2.AuthorizeDatasetAccessResponse


Authorize = Callable[[], Awaitable[admin_store_pb2.AuthorizeDatasetAccessResponse]]


class AccessCache:
    """Grants by (subject, dataset), each with the generation it was read under."""

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        *,
        max_age_seconds: float = 30.0,
        max_entries: int = 10_000,
    ) -> None:
        self._redis = aioredis.Redis.from_url(redis_url)
        self._key = generation_key(prefix)
        self._max_age = max_age_seconds
        self._entries: RecentlyUsed[tuple[str, str], _Entry] = RecentlyUsed(max_entries)

    async def authorize(
        self, subject: str, dataset: str, read: Authorize
    ) -> admin_store_pb2.AuthorizeDatasetAccessResponse:
        """The grant read under the call's generation, or `read()` (kept when it succeeds)."""
        generation = admitted_generation.get()
        if generation is None or self._max_age <= 0:
            return await read()
        key = (subject, dataset)
        entry = self._entries.get(key)
        now = time.monotonic()
        if (
            entry is not None
            and entry.generation == generation
            and now - entry.read_at < self._max_age
        ):
            return entry.access
        access = await read()
        self._entries.put(key, _Entry(generation, now, access))
        return access

    async def observe(self, outcome: CallOutcome) -> None:
        """After an AdminService call that may have written (even one that failed half-way): a new
        generation, so every replica reads grants again."""
        if not may_write(outcome.method):
            return
        try:
            await self._redis.set(self._key, new_generation())
        except redis_errors.RedisError:
            log.exception(
                "could not start a new access generation after %s; cached grants may be %s s old",
                outcome.method,
                self._max_age,
            )

    async def close(self) -> None:
        await self._redis.aclose()

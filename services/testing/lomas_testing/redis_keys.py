"""Queue settings on the machine's Redis under a prefix of their own, its keys deleted afterwards,
so tests that share the Redis never see each other's keys."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from lomas_common.queue import QueueSettings

SYSTEM_REDIS_URL = "redis://127.0.0.1:6379/0"


@contextmanager
def scratch_queue_settings(name: str, url: str = SYSTEM_REDIS_URL) -> Iterator[QueueSettings]:
    """Settings whose prefix is `name` and a random suffix; every key it starts is deleted on exit
    (queue names as well as `prefix:` keys)."""
    settings = QueueSettings(broker_url=url, prefix=f"{name}-{secrets.token_hex(4)}")
    try:
        yield settings
    finally:
        client = redis.Redis.from_url(url)
        try:
            keys = list(client.scan_iter(match=f"{settings.prefix}*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()

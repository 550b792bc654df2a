"""Counting the deliveries of a query's task in Redis (see `execution` for what the count decides).

A module of its own because the Celery main process counts too, and it must not import the engines:
a child forked after Polars is imported runs its queries without Polars' worker threads (measured
here: a group-by 1.8 times slower in the child than in the parent).
"""

from __future__ import annotations

import redis

from lomas_common.queue import QueueSettings


def count_delivery(
    client: redis.Redis, queue: QueueSettings, query_id: str, retries: int = 0
) -> int:
    """Count one delivery of a query's task and return its number (1 for the first).

    Deliveries are counted per Celery retry number: a retry after a backend outage is a new series,
    while a redelivery after a dead worker (a crash, the memory or time limit) repeats the series.
    """
    key = queue.attempts_key(query_id)
    with client.pipeline() as pipe:
        pipe.hincrby(key, str(retries), 1)
        pipe.expire(key, 7 * 24 * 3600)
        count, _ = pipe.execute()
    return int(count)

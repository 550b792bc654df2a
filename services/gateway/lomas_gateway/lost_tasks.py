"""Finding and re-sending tasks the queue lost before any worker started them.

Kombu's Redis transport takes a task off its list with BRPOP and only then records it as held
(unacknowledged). A worker that dies while its BRPOP is pending can still be handed a task: the
kernel may close a dead process's socket a little after the process is gone, and a vanished node
never closes it at all before the BRPOP's timeout. Such a task is nowhere: not in the queue, not
held, never started, so no redelivery follows and its caller would wait for the query timeout.

While the gateway waits for a query, it therefore checks, at each poll, whether the query's task is
still somewhere: started (the worker counts every delivery in Redis before anything else), waiting
in its queue, or held by a worker. A task found nowhere at two polls in a row is sent again, with
the same task id. That is safe even when the check is wrong: tasks are idempotent on the query id,
and the archive keeps the first outcome, so a duplicate never makes a second release.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from lomas_common.queue import QueueSettings

log = logging.getLogger(__name__)

# Polls in a row that must find a task nowhere before it is sent again (one poll could fall in the
# instant between a worker's BRPOP and its record of the held task).
MISSING_POLLS_BEFORE_RESEND = 2
# Re-sends per wait; a queue that keeps losing the same task has a problem no re-send fixes.
MAX_RESENDS = 3

# True if any of the lists KEYS[1..n-1] or any value of the hash KEYS[n] contains ARGV[1] (a query
# id: it appears in the task message's headers). Lists are read in slices, so a long backlog never
# builds one large reply inside Redis.
_FIND_TASK_SCRIPT = """
local needle = ARGV[1]
local slice = 500
for i = 1, #KEYS - 1 do
  local start = 0
  while true do
    local items = redis.call('LRANGE', KEYS[i], start, start + slice - 1)
    if #items == 0 then break end
    for _, item in ipairs(items) do
      if string.find(item, needle, 1, true) then return 1 end
    end
    start = start + slice
  end
end
for _, held in ipairs(redis.call('HVALS', KEYS[#KEYS])) do
  if string.find(held, needle, 1, true) then return 1 end
end
return 0
"""


# The 1-based place of the task holding ARGV[1] among the tasks waiting in the lists KEYS[1..n], in
# the order workers take them: the lists are in priority order, and kombu pushes on the left and
# pops on the right, so within a list the tasks to the right of it go first. 0: not waiting.
_POSITION_SCRIPT = """
local needle = ARGV[1]
local slice = 500
local ahead = 0
for i = 1, #KEYS do
  local length = redis.call('LLEN', KEYS[i])
  local start = 0
  while start < length do
    local items = redis.call('LRANGE', KEYS[i], start, start + slice - 1)
    for j, item in ipairs(items) do
      if string.find(item, needle, 1, true) then
        return ahead + (length - (start + j)) + 1
      end
    end
    start = start + slice
  end
  ahead = ahead + length
end
return 0
"""


# Removes the waiting task that holds ARGV[1] from the lists KEYS[1..n]; 1 if one was removed.
_REMOVE_SCRIPT = """
local needle = ARGV[1]
local slice = 500
for i = 1, #KEYS do
  local start = 0
  while true do
    local items = redis.call('LRANGE', KEYS[i], start, start + slice - 1)
    if #items == 0 then break end
    for _, item in ipairs(items) do
      if string.find(item, needle, 1, true) then
        redis.call('LREM', KEYS[i], 1, item)
        return 1
      end
    end
    start = start + slice
  end
end
return 0
"""


class LostTaskFinder:
    """Tells whether a query's task is still known to the queue, and where it waits (one per
    gateway)."""

    def __init__(self, settings: QueueSettings) -> None:
        self._settings = settings
        self._redis = aioredis.Redis.from_url(settings.broker_url)
        self._find = self._redis.register_script(_FIND_TASK_SCRIPT)
        self._position = self._redis.register_script(_POSITION_SCRIPT)
        self._remove = self._redis.register_script(_REMOVE_SCRIPT)

    async def is_lost(self, query_id: str, queue: str) -> bool:
        """True if no worker started the task and it is neither waiting in `queue` nor held."""
        if await self._redis.exists(self._settings.attempts_key(query_id)):
            return False
        keys = [*self._settings.broker_lists(queue), self._settings.unacked_key]
        return not await self._find(keys=keys, args=[query_id])

    async def position(self, query_id: str, queues: list[str]) -> int:
        """The task's place among the tasks waiting in the first of `queues` that holds it (1: next
        for a worker); 0 when it waits in none (being handed to a worker, say)."""
        for queue in queues:
            keys = self._settings.broker_lists(queue)
            place = int(await self._position(keys=keys, args=[query_id]))
            if place:
                return place
        return 0

    async def remove(self, query_id: str, queues: list[str]) -> bool:
        """Take a cancelled query's task out of its queue, so no worker spends time on it and the
        tasks behind it move up (a worker that got it anyway finds no live reservation and drops
        it). True if it was waiting."""
        for queue in queues:
            if int(await self._remove(keys=self._settings.broker_lists(queue), args=[query_id])):
                return True
        return False

    def watch(self, query_id: str, queue: str, resend: Callable[[], Awaitable[None]]) -> TaskWatch:
        return TaskWatch(self, query_id, queue, resend)

    async def close(self) -> None:
        await self._redis.aclose()


class TaskWatch:
    """One waiting query's watch: call `check` at each poll until the query is done."""

    def __init__(
        self,
        finder: LostTaskFinder,
        query_id: str,
        queue: str,
        resend: Callable[[], Awaitable[None]],
    ) -> None:
        self._finder = finder
        self._query_id = query_id
        self._queue = queue
        self._resend = resend
        self._missing_polls = 0
        self.resends = 0

    async def check(self) -> None:
        if self.resends >= MAX_RESENDS:
            return
        try:
            lost = await self._finder.is_lost(self._query_id, self._queue)
        except Exception:  # Redis unreachable: the next poll looks again
            log.warning("could not check the task of query %s", self._query_id, exc_info=True)
            return
        self._missing_polls = self._missing_polls + 1 if lost else 0
        if self._missing_polls < MISSING_POLLS_BEFORE_RESEND:
            return
        log.warning("the task of query %s was lost by the queue; sending it again", self._query_id)
        self._missing_polls = 0
        self.resends += 1
        await self._resend()

"""Long queries: submit now and collect later, follow their progress, cancel before data access.

job = client.smartnoise_sql.submit("SELECT COUNT(*) AS n FROM df", epsilon=1.0, delta=1e-5)
job.status()           # QueryStatus(state="queued", queue_position=3)
job.result(timeout=60) # the release, as `query` returns it
job.cancel()           # before a worker touched the data: the reservation comes back in full

`query` itself shows a progress bar (tqdm) when the query takes longer than about a second and
standard error is a terminal (`progress=True` or `False` decides instead).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from decimal import Decimal
from typing import IO, TYPE_CHECKING, Never

import grpc
import pandas as pd
from tqdm import tqdm

from lomas.client.errors import QueryTimeout, from_rpc_error
from lomas.gateway.v1 import gateway_pb2

if TYPE_CHECKING:
    from grpc import _CallIterator

    # What the stub's server-streaming call returns: the events, and a call that can be cancelled.
    WatchCall = _CallIterator[gateway_pb2.WatchQueryResponse]

# A query that answers within this many seconds shows no progress bar.
PROGRESS_AFTER_SECONDS = 1.0
_STATES = {
    gateway_pb2.QUERY_STATE_QUEUED: "queued",
    gateway_pb2.QUERY_STATE_RUNNING: "running",
    gateway_pb2.QUERY_STATE_DONE: "done",
}


@dataclass(frozen=True)
class QueryStatus:
    """Where a query stands: "queued" (with its place: 1 is next; 0 not known), "running" (a worker
    touched the data; it can no longer be cancelled) or "done"."""

    state: str
    queue_position: int = 0

    @classmethod
    def of(cls, event: gateway_pb2.WatchQueryResponse) -> QueryStatus:
        return cls(_STATES.get(event.state, "unknown"), event.queue_position)

    def describe(self) -> str:
        if self.state == "queued" and self.queue_position:
            return f"queued ({self.queue_position - 1} ahead)"
        return self.state


class QueryJob:
    """A submitted query of yours, by its query id (`client.job(query_id)` finds it again)."""

    def __init__(
        self,
        query_id: str,
        *,
        watch: Callable[[float | None], Iterator[gateway_pb2.WatchQueryResponse]],
        cancel: Callable[[], dict[str, Decimal]],
        frame: Callable[[gateway_pb2.ExecuteQueryResponse], pd.DataFrame],
    ) -> None:
        self.query_id = query_id
        self._watch = watch
        self._cancel = cancel
        self._frame = frame

    def __repr__(self) -> str:
        return f"QueryJob({self.query_id!r})"

    def events(self, timeout: float | None = None) -> Iterator[gateway_pb2.WatchQueryResponse]:
        """The query's steps as the gateway reports them, ending with the release; a failed query
        raises its typed error."""
        return self._watch(timeout)

    def status(self) -> QueryStatus:
        """Where the query stands now; a failed or cancelled query raises its typed error."""
        events = self.events()
        try:
            return QueryStatus.of(next(events))
        finally:
            _close(events)

    def result(self, timeout: float | None = None) -> pd.DataFrame:
        """Wait for the release (at most `timeout` seconds: then QueryTimeout, and the query goes
        on: ask again) and return it as `query` does."""
        for event in self.events(timeout):
            if event.state == gateway_pb2.QUERY_STATE_DONE:
                return self._frame(event.result)
        raise QueryTimeout("DEADLINE_EXCEEDED", "QUERY_TIMEOUT", "the watch ended early", {})

    def cancel(self) -> dict[str, Decimal]:
        """Cancel the query if no worker touched the data yet; returns the refunded cost. Too late
        raises DataAccessed: the query runs to its end and its charge stands."""
        return self._cancel()


def _close(events: Iterator[object]) -> None:
    close = getattr(events, "close", None)
    if close is not None:
        close()


def progress_wanted(choice: bool | None, stream: IO[str] | None = None) -> bool:
    """An explicit choice, else a bar only where someone watches: standard error is a terminal."""
    if choice is not None:
        return choice
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def with_progress(
    call: Callable[[], gateway_pb2.ExecuteQueryResponse],
    watch: Callable[[], WatchCall],
    *,
    after: float = PROGRESS_AFTER_SECONDS,
    file: IO[str] | None = None,
) -> gateway_pb2.ExecuteQueryResponse:
    """Run `call` (the query, unchanged); if it has not answered after `after` seconds, show a
    progress bar fed by `watch` (a WatchQuery call on the same query) until it does."""
    with ThreadPoolExecutor(1, thread_name_prefix="lomas-query") as pool:
        answer = pool.submit(call)
        try:
            return answer.result(timeout=after)
        except FutureTimeout:
            pass
        bar = tqdm(desc="query: waiting", bar_format="{desc} [{elapsed}]", file=file, leave=False)
        follower = _Follower(watch, bar)
        follower.start()
        try:
            while True:
                try:
                    return answer.result(timeout=0.25)
                except FutureTimeout:
                    bar.refresh()
        finally:
            follower.stop()
            bar.close()


class _Follower(threading.Thread):
    """Feeds a progress bar with a query's events; the watch is opened again if it ends early (it
    may start before the query is reserved, say)."""

    def __init__(self, watch: Callable[[], WatchCall], bar: tqdm[Never]) -> None:
        super().__init__(name="lomas-progress", daemon=True)
        self._watch = watch
        self._bar = bar
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._call: WatchCall | None = None

    def run(self) -> None:
        while not self._stopped.is_set():
            with self._lock:
                if self._stopped.is_set():
                    return
                self._call = self._watch()
            try:
                for event in self._call:
                    self._bar.set_description_str(
                        f"query: {QueryStatus.of(event).describe()}", refresh=False
                    )
            except grpc.RpcError:  # the query's own answer reports its errors, not the bar
                pass
            self._stopped.wait(0.5)

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()
            if self._call is not None:
                self._call.cancel()  # grpc calls may be cancelled from any thread
        self.join(timeout=2.0)


def watch_events(call: WatchCall) -> Iterator[gateway_pb2.WatchQueryResponse]:
    """A WatchQuery call's events, its errors the client's typed errors; closing it cancels it."""
    try:
        yield from call
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None
    finally:
        call.cancel()

"""Free calls run bounded: a small pool of child processes runs them, never the server process.

Validation, cost estimates, dummy data and dummy runs are free, so anyone with a grant can send
many, and a hostile one (a resize to 10**12 rows, a dummy run on a million rows) can take gigabytes
or minutes. The executor service hands each call to a child of `FreeCallPool`:

* each child has an address-space limit (RLIMIT_AS, `memory_mb`), no core dumps, and a CPU-time
  limit per call (RLIMIT_CPU, `cpu_seconds`; SIGXCPU ends the child);
* each call has a wall-clock deadline (`timeout_seconds`, never beyond the caller's gRPC deadline);
  when it passes, or the caller goes away, the child running the call is killed (SIGKILL);
* a child that dies (killed, MemoryError, an abort in a native library) is replaced, and its call
  fails with RESOURCE_EXHAUSTED, FREE_CALL_LIMIT_EXCEEDED, metadata `limit` = memory or time;
* `workers` calls run at once; up to `queue` more wait for a child; beyond that a call is refused
  at once with RESOURCE_EXHAUSTED, FREE_CALLS_BUSY and a retry delay;
* `spares` children stay started beyond the running ones, so a replacement's imports (about 2 s)
  are rarely on a caller's path; a child is also replaced after `max_calls_per_child` calls (each
  child after its own number between half that and that, so children that started together are not
  replaced together) or when it keeps more than half its memory limit resident after a call.

Children are started with `spawn` (Polars and OpenDP are not fork-safe once their thread pools
run), all from one keeper thread, and die with the server: PR_SET_PDEATHSIG, which Linux ties to
the thread that started the child, so that thread lives as long as the pool.

Nothing is pickled between the processes: a request is the gRPC request's protobuf bytes with its
method name; a reply is the response's protobuf bytes, or an error as (code, reason, message,
metadata), re-raised in the server as the same `LomasError`. Each message is one frame: a 4-byte
length, a small JSON header, then the bytes.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import json
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import queue
import random
import resource
import signal
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from lomas_common.errors import Code, LomasError
from lomas_executor.failures import chain_names, exception_chain
from lomas_executor.settings import FreeCallSettings, QueryLimits
from lomas_executor.sources import S3Secrets

log = logging.getLogger(__name__)

FREE_CALL_LIMIT_EXCEEDED = "FREE_CALL_LIMIT_EXCEEDED"
FREE_CALLS_BUSY = "FREE_CALLS_BUSY"
# How long a new child may take to import the engines and report ready.
CHILD_START_SECONDS = 60.0
# After a child fails to start, the next attempt waits this long (doubling up to the maximum).
START_RETRY_SECONDS = (1.0, 30.0)
# How long past the caller's gRPC deadline a call may run before our own wall-clock limit ends it.
CALLER_DEADLINE_GRACE_SECONDS = 0.5
# How often a waiting call looks at its caller and its deadline.
POLL_SECONDS = 0.05
# A child that keeps more than this share of its memory limit resident after a call is replaced.
RETIRE_RESIDENT_SHARE = 0.5
_HEADER = struct.Struct("!I")
_PR_SET_PDEATHSIG = 1
_ARROW_POOL = "ARROW_DEFAULT_MEMORY_POOL"


class FreeCallLimitExceeded(LomasError):
    """A free call used more memory or time than a child of the pool may (metadata `limit`)."""

    code = Code.RESOURCE_EXHAUSTED
    reason = FREE_CALL_LIMIT_EXCEEDED


class FreeCallsBusy(LomasError):
    """Every child is busy and the waiting line is full (or the wait outlasted the deadline)."""

    code = Code.RESOURCE_EXHAUSTED
    reason = FREE_CALLS_BUSY


class _RelayedError(LomasError):
    """An error a child reported, with the child's code and reason."""

    def __init__(self, code: Code, message: str, reason: str, metadata: dict[str, str]) -> None:
        self.code = code
        super().__init__(message, reason=reason, metadata=metadata)


# -- framing (both sides) --------------------------------------------------------------------------


def _send(conn: Connection, header: dict[str, Any], body: bytes = b"") -> None:
    head = json.dumps(header).encode()
    conn.send_bytes(_HEADER.pack(len(head)) + head + body)


def _receive(conn: Connection) -> tuple[dict[str, Any], bytes]:
    frame = conn.recv_bytes()
    (size,) = _HEADER.unpack_from(frame)
    header = json.loads(frame[_HEADER.size : _HEADER.size + size])
    if not isinstance(header, dict):
        raise ValueError("malformed frame")
    return header, frame[_HEADER.size + size :]


# -- the child -------------------------------------------------------------------------------------


def _child_main(
    conn: Connection,
    parent_pid: int,
    settings: FreeCallSettings,
    limits: QueryLimits,
    level: str,
    s3_secrets: S3Secrets,
) -> None:
    """A child's life: limit itself, import the engines, then serve calls until the pipe closes."""
    _die_with_parent(parent_pid)
    logging.basicConfig(level=level.upper(), format="%(levelname)s free-call %(name)s: %(message)s")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Free work yields the CPU to real queries (the workers run at the normal priority).
    os.nice(settings.niceness)
    if settings.memory_mb:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = settings.memory_mb * 1024 * 1024
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    # Imported here, in the child only: the server process never loads an engine (this is not
    # about an import cycle: `free_calls` imports nothing of the pool or of the servicer).
    from lomas_executor.free_calls import free_call_handler

    handler = free_call_handler(limits, s3_secrets)
    _send(conn, {"ready": True})
    while True:
        try:
            header, body = _receive(conn)
        except (EOFError, OSError):
            return  # the server closed the pipe: retire
        _limit_cpu(settings.cpu_seconds)
        try:
            reply = handler(str(header.get("method")), body)
        except LomasError as error:
            _send(conn, _error_header(error))
        except Exception as error:
            if _out_of_memory(error):
                _send(conn, _error_header(_memory_exceeded()))
                return  # what is left of this process is not worth keeping
            # Class names only: library messages quote SQL parameters and values.
            log.error("free call %s failed: %s", header.get("method"), chain_names(error))
            _send(conn, _error_header(LomasError("internal error", reason="INTERNAL")))
        else:
            _send(conn, {"ok": True}, reply)


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this child when the thread that started it (the keeper) ends."""
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _limit_cpu(seconds: int) -> None:
    """This call may use `seconds` more CPU time (RLIMIT_CPU counts since the process started)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = math.ceil(usage.ru_utime + usage.ru_stime)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = used + seconds
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _out_of_memory(error: BaseException) -> bool:
    """Whether a failure is the memory limit, however a library wrapped it (SQLAlchemy wraps
    SQLite's SQLITE_NOMEM, pandas and NumPy raise MemoryError subclasses)."""
    return any(
        isinstance(e, MemoryError) or getattr(e, "sqlite_errorname", "") == "SQLITE_NOMEM"
        for e in exception_chain(error)
    )


def _error_header(error: LomasError) -> dict[str, Any]:
    return {
        "ok": False,
        "code": error.code.value,
        "reason": error.reason,
        "message": error.message,
        "metadata": error.metadata,
        "retry": error.retry_after_seconds,
    }


def _memory_exceeded() -> FreeCallLimitExceeded:
    return FreeCallLimitExceeded(
        "the call needed more memory than a free call may use: ask for fewer dummy rows or a "
        "smaller query",
        metadata={"limit": "memory"},
    )


def _time_exceeded() -> FreeCallLimitExceeded:
    return FreeCallLimitExceeded(
        "the call took longer than a free call may: ask for fewer dummy rows or a smaller query",
        metadata={"limit": "time"},
    )


# -- the pool (in the server process) --------------------------------------------------------------


@dataclass(eq=False)
class _Child:
    process: Any  # multiprocessing's SpawnProcess
    conn: Connection
    # Retired after this many calls: each child draws its own, between half the setting and the
    # setting, so children that started together are not all replaced at once (a replacement
    # imports the engines for about 2 CPU-seconds, and calls wait for it).
    retire_after: int
    calls: int = 0

    @property
    def pid(self) -> int:
        return int(self.process.pid)


@dataclass
class _Counters:
    """What the pool has done, for tests and logs."""

    started: int = 0
    killed: int = 0
    retired: int = 0
    refused: int = 0


@dataclass
class FreeCallPool:
    """Children that run free calls under limits (see the module docstring); `start` before use,
    `close` at shutdown (it kills every child)."""

    settings: FreeCallSettings
    limits: QueryLimits = field(default_factory=QueryLimits)
    log_level: str = "INFO"
    counters: _Counters = field(default_factory=_Counters)
    # The named S3 credentials ValidateDataset reads a dataset's S3 object with.
    s3_secrets: S3Secrets = field(default_factory=S3Secrets)

    def __post_init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._cond = threading.Condition()
        self._idle: collections.deque[_Child] = collections.deque()
        self._all: set[_Child] = set()
        self._running = 0
        self._waiting = 0
        self._closed = False
        self._requests: queue.SimpleQueue[_Child | None] = queue.SimpleQueue()
        self._keeper = threading.Thread(target=self._keep, name="free-call-keeper", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, wait_seconds: float = CHILD_START_SECONDS) -> FreeCallPool:
        """Start the children; return once one is ready (or `wait_seconds` passed)."""
        self._keeper.start()
        deadline = time.monotonic() + wait_seconds
        with self._cond:
            while not self._idle and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
        return self

    def close(self) -> None:
        """Kill every child and stop the keeper (no child outlives this call)."""
        with self._cond:
            self._closed = True
            children = list(self._all)
            self._idle.clear()
            self._cond.notify_all()
        for child in children:
            self._kill(child)
        self._requests.put(None)
        if self._keeper.is_alive():
            self._keeper.join(CHILD_START_SECONDS)
        for child in children:
            child.process.join(5)
        with self._cond:
            self._all.clear()

    def pids(self) -> list[int]:
        """The process ids of the live children (for tests and operators)."""
        with self._cond:
            return sorted(child.pid for child in self._all)

    def _keep(self) -> None:
        """The keeper thread: starts every child (so they die with the server, see
        `_die_with_parent`), waits for each to be ready, and reaps the ones let go."""
        retry = START_RETRY_SECONDS[0]
        for _ in range(self.settings.workers + self.settings.spares):
            self._requests.put(_START)
        while True:
            request = self._requests.get()
            if request is None:
                return
            if request is not _START:
                request.process.join(10)  # a retired child exits when its pipe closes
                self._kill(request)
                request.process.join()
                request.conn.close()
                with self._cond:
                    self._all.discard(request)
                if self._closed:
                    continue
            elif self._closed:
                continue
            if self._start_child():
                retry = START_RETRY_SECONDS[0]
            else:
                time.sleep(retry)
                retry = min(retry * 2, START_RETRY_SECONDS[1])
                self._requests.put(_START)

    def _start_child(self) -> bool:
        parent, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_child_main,
            args=(
                child_end,
                os.getpid(),
                self.settings,
                self.limits,
                self.log_level,
                self.s3_secrets,
            ),
            name="lomas-free-call",
            daemon=True,
        )
        # Arrow's default allocator (mimalloc) reserves 1 GiB of address space on first use, which
        # RLIMIT_AS counts in full; the system allocator takes what it uses. Arrow reads this
        # variable when it is imported, which a spawned child does before `_child_main` runs, so
        # the child gets it in its environment.
        previous = os.environ.get(_ARROW_POOL)
        os.environ[_ARROW_POOL] = "system"
        try:
            process.start()
        finally:
            child_end.close()
            if previous is None:
                os.environ.pop(_ARROW_POOL, None)
            else:
                os.environ[_ARROW_POOL] = previous
        most = self.settings.max_calls_per_child
        child = _Child(process, parent, retire_after=random.randint(max(1, most // 2), most))
        with self._cond:
            if self._closed:
                self._kill(child)
                return True
            self._all.add(child)
        deadline = time.monotonic() + CHILD_START_SECONDS
        ready = False
        while time.monotonic() < deadline and not self._closed:
            if parent.poll(0.2):
                try:
                    ready = _receive(parent)[0].get("ready") is True
                except (EOFError, OSError, ValueError):
                    ready = False
                break
            if not process.is_alive():
                break
        if not ready and not self._closed:
            log.error(
                "a free-call child did not start (exit code %s): is LOMAS_FREE_CALL_MEMORY_MB "
                "(%d) too low for the engines?",
                process.exitcode,
                self.settings.memory_mb,
            )
        if not ready:
            self._kill(child)
            process.join()
            parent.close()
            with self._cond:
                self._all.discard(child)
            return self._closed  # at shutdown, no retry
        with self._cond:
            self.counters.started += 1
            self._idle.append(child)
            self._cond.notify_all()
        return True

    # -- calls -------------------------------------------------------------------------------------

    def call(
        self,
        method: str,
        request: bytes,
        *,
        time_remaining: float | None = None,
        is_active: Callable[[], bool] = lambda: True,
    ) -> bytes:
        """Run `method` on `request` (protobuf bytes) in a child; its response's bytes.

        Raises what the call raised (the same code, reason and metadata), FreeCallLimitExceeded
        when the child ran out of memory or time, or FreeCallsBusy when no child is free in time.
        """
        timeout = self.settings.timeout_seconds
        if time_remaining is not None:
            # A little past the caller's own deadline: the caller sees DEADLINE_EXCEEDED (its call
            # ends and the child is killed as for any caller who left), not a limit of ours.
            timeout = min(timeout, max(time_remaining, 0.0) + CALLER_DEADLINE_GRACE_SECONDS)
        deadline = time.monotonic() + timeout
        child = self._acquire(deadline, is_active)
        try:
            return self._run(child, method, request, deadline, is_active)
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def _acquire(self, deadline: float, is_active: Callable[[], bool]) -> _Child:
        with self._cond:
            if self._closed:
                raise FreeCallsBusy("the executor is shutting down", retry_after_seconds=1.0)
            free = self._running < self.settings.workers and self._idle
            if not free and self._waiting >= self.settings.queue:
                self.counters.refused += 1
                raise _busy()
            self._waiting += 1
            try:
                while not (self._running < self.settings.workers and self._idle):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not is_active() or self._closed:
                        self.counters.refused += 1
                        raise _busy()
                    self._cond.wait(min(remaining, POLL_SECONDS * 4))
            finally:
                self._waiting -= 1
            self._running += 1
            return self._idle.popleft()

    def _run(
        self,
        child: _Child,
        method: str,
        request: bytes,
        deadline: float,
        is_active: Callable[[], bool],
    ) -> bytes:
        try:
            _send(child.conn, {"method": method}, request)
        except (OSError, ValueError):
            self._replace(child, kill=True)
            raise _memory_exceeded() from None
        sentinel = child.process.sentinel
        while True:
            remaining = deadline - time.monotonic()
            ready = multiprocessing.connection.wait(
                [child.conn, sentinel], timeout=max(min(remaining, POLL_SECONDS), 0)
            )
            if child.conn in ready:
                try:
                    header, body = _receive(child.conn)
                except (EOFError, OSError, ValueError):
                    return self._died(child, method)
                child.calls += 1
                self._release(child, retire=header.get("ok") is not True and _is_memory(header))
                if header.get("ok") is True:
                    return body
                raise _relayed(header)
            if sentinel in ready:
                return self._died(child, method)
            if time.monotonic() >= deadline or not is_active():
                log.warning(
                    "free call %s: %s; killing child %d",
                    method,
                    "time limit" if is_active() else "caller went away",
                    child.pid,
                )
                self._replace(child, kill=True)
                raise _time_exceeded()

    def _died(self, child: _Child, method: str) -> bytes:
        child.process.join(5)
        code = child.process.exitcode
        self._replace(child, kill=True)
        log.warning("free call %s: child %d died (exit code %s)", method, child.pid, code)
        if code == -signal.SIGXCPU:
            raise _time_exceeded()
        raise _memory_exceeded()

    def _release(self, child: _Child, *, retire: bool) -> None:
        """Back to the idle children, unless it is worn: too many calls or too much memory kept."""
        worn = (
            retire
            or child.calls >= child.retire_after
            or _resident_bytes(child.pid)
            > RETIRE_RESIDENT_SHARE * self.settings.memory_mb * 1024 * 1024
            > 0
        )
        if worn:
            self.counters.retired += 1
            self._replace(child, kill=False)
            return
        with self._cond:
            if self._closed:
                return
            self._idle.append(child)
            self._cond.notify_all()

    def _replace(self, child: _Child, *, kill: bool) -> None:
        """Let `child` go (killed now, or told to exit by closing its pipe) and start another."""
        if kill:
            self.counters.killed += 1
            self._kill(child)
        else:
            with contextlib.suppress(OSError):
                child.conn.close()
        self._requests.put(child)

    @staticmethod
    def _kill(child: _Child) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            child.process.kill()


_START: Any = object()  # a keeper request: start one more child


def _busy() -> FreeCallsBusy:
    return FreeCallsBusy(
        "every free-call worker is busy: retry in a moment", retry_after_seconds=1.0
    )


def _is_memory(header: dict[str, Any]) -> bool:
    metadata = header.get("metadata")
    return (
        header.get("reason") == FREE_CALL_LIMIT_EXCEEDED
        and isinstance(metadata, dict)
        and metadata.get("limit") == "memory"
    )


def _relayed(header: dict[str, Any]) -> LomasError:
    try:
        code = Code(header.get("code"))
    except ValueError:
        code = Code.INTERNAL
    metadata = header.get("metadata")
    error = _RelayedError(
        code,
        str(header.get("message", "")),
        str(header.get("reason", "INTERNAL")),
        {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {},
    )
    retry = header.get("retry")
    if isinstance(retry, int | float) and not isinstance(retry, bool):
        error.retry_after_seconds = float(retry)
    return error


def _resident_bytes(pid: int) -> int:
    """A process's resident memory (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0

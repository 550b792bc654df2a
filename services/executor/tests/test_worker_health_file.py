"""The worker's health file (LOMAS_WORKER_HEALTH_FILE), which Kubernetes probes: a real `lomas-worker`
process on the machine's Redis keeps it fresh while it consumes, and removes it when it stops; with
its broker out of reach it never writes it."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from lomas_executor.health_file import TOUCH_INTERVAL_SECONDS

REDIS_URL = "redis://127.0.0.1:6379/0"
# The worker imports the engines before it consumes (seconds on a slow 2-core machine).
START_SECONDS = 60.0


def start_worker(
    health_file: Path, redis_url: str, prefix: str, log: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LOMAS_REDIS_URL": redis_url,
        "LOMAS_QUEUE_PREFIX": prefix,
        "LOMAS_ADMIN_TARGET": "127.0.0.1:1",
        "LOMAS_BUDGET_TARGET": "127.0.0.1:2",
        "LOMAS_WORKER_CONCURRENCY": "1",
        "LOMAS_WORKER_HEALTH_FILE": str(health_file),
    }
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "lomas_executor.worker"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


@pytest.fixture()
def prefix() -> Iterator[str]:
    prefix = f"lomas-test-{secrets.token_hex(4)}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


def wait_for(condition: Callable[[], bool], worker: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while not condition():
        assert worker.poll() is None, f"the worker exited before {what}"
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.2)


def test_the_worker_keeps_its_health_file_fresh_while_it_consumes_only(
    tmp_path: Path, prefix: str
) -> None:
    """Two workers start together: one with its broker, one with nothing listening there."""
    health_file, unconnected_health_file = tmp_path / "alive", tmp_path / "unconnected-alive"
    health_file.write_text("left by a previous container")
    unconnected_log = tmp_path / "unconnected.log"
    worker = start_worker(health_file, REDIS_URL, prefix, tmp_path / "worker.log")
    unconnected = start_worker(
        unconnected_health_file, "redis://127.0.0.1:1/0", prefix, unconnected_log
    )
    try:
        # The stale file goes at start; a new one appears once the worker consumes.
        wait_for(
            lambda: health_file.exists() and health_file.read_text() == "",
            worker,
            "health file",
        )
        first = health_file.stat().st_mtime
        wait_for(
            lambda: b"consumer: Cannot connect to redis://" in unconnected_log.read_bytes(),
            unconnected,
            "attempt to reach the broker",
        )
        time.sleep(TOUCH_INTERVAL_SECONDS + 1)
        # Touched again since (the loop's period is the interval, give or take a scheduling tick).
        assert health_file.stat().st_mtime > first
        assert unconnected.poll() is None  # still trying to connect
        assert not unconnected_health_file.exists()
    finally:
        stop(worker)
        stop(unconnected)
    assert worker.returncode == 0
    assert not health_file.exists()

"""Executor and worker settings, from `LOMAS_` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from lomas_common.peers import PeerSettings
from lomas_common.queue import QueueSettings
from lomas_common.settings import ServerSettings, env_int, env_required, env_str

DEFAULT_PORT = 50054


@dataclass(frozen=True)
class ExecutorSettings:
    server: ServerSettings

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ExecutorSettings:
        env = os.environ if env is None else env
        return cls(server=ServerSettings.from_env(env, default_port=DEFAULT_PORT))


@dataclass(frozen=True)
class WorkerSettings:
    queue: QueueSettings
    peers: PeerSettings
    admin_target: str
    budget_target: str
    cache_bytes: int  # per worker process: loaded tables and their prepared engines
    concurrency: int
    log_level: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if env is None else env
        return cls(
            queue=QueueSettings(
                broker_url=env_required(env, "REDIS_URL"),
                prefix=env_str(env, "QUEUE_PREFIX", "lomas"),
                task_time_limit_seconds=env_int(env, "TASK_TIME_LIMIT_SECONDS", 300),
            ),
            peers=PeerSettings(
                service_token=env_str(env, "SERVICE_TOKEN", ""),
                max_message_bytes=env_int(env, "MAX_MESSAGE_BYTES", 64 * 1024 * 1024),
            ),
            admin_target=env_required(env, "ADMIN_TARGET"),
            budget_target=env_required(env, "BUDGET_TARGET"),
            cache_bytes=env_int(env, "CACHE_BYTES", 2 * 1024**3),
            concurrency=env_int(env, "WORKER_CONCURRENCY", 2),
            log_level=env_str(env, "LOG_LEVEL", "INFO"),
        )

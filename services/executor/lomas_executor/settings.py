"""Executor and worker settings, from `LOMAS_` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from lomas_common.peers import PeerSettings
from lomas_common.queue import QueueSettings, WorkloadClass, parse_workload_classes
from lomas_common.settings import ServerSettings, env_int, env_required, env_str
from lomas_executor.sources import S3Secrets

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
    """One Celery worker (a main process and `concurrency` child processes).

    * `workloads` (LOMAS_WORKER_QUEUES, e.g. "light" or "light,heavy"): the queues it consumes.
    * `max_tasks_per_child` (LOMAS_WORKER_MAX_TASKS_PER_CHILD): a child is replaced after that many
      tasks (its caches go with it).
    * `max_memory_per_child_kb` (LOMAS_WORKER_MAX_MEMORY_PER_CHILD_KB, 0 = off): a child whose
      resident memory exceeds it is replaced after its current task.
    * `task_memory_limit_mb` (LOMAS_TASK_MEMORY_LIMIT_MB, 0 = off): the address-space limit
      (RLIMIT_AS) of each child, so one query cannot take the machine's memory: allocations beyond
      it fail inside the task, which records a failure (the charge is kept).
    * `max_attempts` (LOMAS_TASK_MAX_ATTEMPTS): deliveries of one query before a query that keeps
      killing its worker is recorded as failed (charge kept) instead of being run again.
    * `s3_secrets` (LOMAS_S3_CREDENTIALS_FILE): named S3 credentials, kept out of the admin store.
    """

    queue: QueueSettings
    peers: PeerSettings
    admin_target: str
    budget_target: str
    cache_bytes: int  # per worker process: loaded tables and their prepared engines
    concurrency: int
    log_level: str
    workloads: tuple[WorkloadClass, ...] = (WorkloadClass.LIGHT,)
    max_tasks_per_child: int = 100
    max_memory_per_child_kb: int = 0
    task_memory_limit_mb: int = 0
    max_attempts: int = 3
    s3_secrets: S3Secrets = field(default_factory=S3Secrets)

    def __post_init__(self) -> None:
        if self.max_tasks_per_child < 1:
            raise SystemExit("LOMAS_WORKER_MAX_TASKS_PER_CHILD must be at least 1")
        if self.max_attempts < 1:
            raise SystemExit("LOMAS_TASK_MAX_ATTEMPTS must be at least 1")
        if self.max_memory_per_child_kb < 0 or self.task_memory_limit_mb < 0:
            raise SystemExit("memory limits must not be negative")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if env is None else env
        try:
            queue = QueueSettings(
                broker_url=env_required(env, "REDIS_URL"),
                prefix=env_str(env, "QUEUE_PREFIX", "lomas"),
                task_time_limit_seconds=env_int(env, "TASK_TIME_LIMIT_SECONDS", 300),
                visibility_timeout_seconds=env_int(env, "QUEUE_VISIBILITY_TIMEOUT_SECONDS", 0),
            )
            workloads = parse_workload_classes(env_str(env, "WORKER_QUEUES", "light"))
            credentials_file = env_str(env, "S3_CREDENTIALS_FILE", "")
            secrets = S3Secrets.from_file(credentials_file) if credentials_file else S3Secrets()
        except ValueError as error:
            raise SystemExit(f"invalid worker settings: {error}") from None
        return cls(
            queue=queue,
            peers=PeerSettings(
                service_token=env_str(env, "SERVICE_TOKEN", ""),
                max_message_bytes=env_int(env, "MAX_MESSAGE_BYTES", 64 * 1024 * 1024),
            ),
            admin_target=env_required(env, "ADMIN_TARGET"),
            budget_target=env_required(env, "BUDGET_TARGET"),
            cache_bytes=env_int(env, "CACHE_BYTES", 2 * 1024**3),
            concurrency=env_int(env, "WORKER_CONCURRENCY", 2),
            log_level=env_str(env, "LOG_LEVEL", "INFO"),
            workloads=workloads,
            max_tasks_per_child=env_int(env, "WORKER_MAX_TASKS_PER_CHILD", 100),
            max_memory_per_child_kb=env_int(env, "WORKER_MAX_MEMORY_PER_CHILD_KB", 0),
            task_memory_limit_mb=env_int(env, "TASK_MEMORY_LIMIT_MB", 0),
            max_attempts=env_int(env, "TASK_MAX_ATTEMPTS", 3),
            s3_secrets=secrets,
        )

"""Executor and worker settings, from `LOMAS_` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from lomas_common.peers import PeerSettings
from lomas_common.queue import QueueSettings, WorkloadClass, parse_workload_classes
from lomas_common.settings import ServerSettings, env_float, env_int, env_required, env_str
from lomas_executor.sources import S3Secrets

DEFAULT_PORT = 50054
# A heavy worker child's default address-space limit: DiffPrivLib's logistic regression on 1,000,000
# rows peaks at about 2.4 GB of address space (0.5 GB resident; bench/diffprivlib_bench.py), and the
# heavy pods' memory limit is 8 GiB (k8s/base/worker/heavy.yaml).
HEAVY_TASK_MEMORY_LIMIT_MB = 6144
# Local Parquet files from this size on are scanned lazily by OpenDP Polars plans.
DEFAULT_LAZY_PARQUET_BYTES = 512 * 1024**2


@dataclass(frozen=True)
class SqlLimits:
    """Ceilings on a SmartNoise-SQL query, checked before any charge.

    * `max_parenthesis_depth`: nesting of parentheses outside literals and comments. The engine
      nests the query two levels deeper when it rewrites it; SQLite's parser overflows near 100.
    * `max_numeric_literal_length`: characters of one number (digits, point, exponent).
    * `max_string_literal_length`: characters between the quotes of one string literal.
    * `max_tokens`: lexical tokens (smartnoise-sql's parser recurses once per operator of a chain
      and runs out of stack past ~1,000).
    * `max_group_key_combinations`: rows of a GROUP BY release over declared categories (the
      product of the key sets), each of which gets a row and noise.

    Each is set by LOMAS_SQL_<FIELD> (e.g. LOMAS_SQL_MAX_PARENTHESIS_DEPTH).
    """

    max_parenthesis_depth: int = 32
    max_numeric_literal_length: int = 40
    max_string_literal_length: int = 1_000
    max_tokens: int = 2_000
    max_group_key_combinations: int = 10_000

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 1:
                raise SystemExit(f"LOMAS_SQL_{name.upper()} must be at least 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SqlLimits:
        default = cls()
        return cls(
            **{
                name: env_int(env, f"SQL_{name.upper()}", value)
                for name, value in vars(default).items()
            }
        )


@dataclass(frozen=True)
class SynthLimits:
    """SmartNoise-Synth queries (`lomas_executor.smartnoise_synth`).

    * `max_samples` (LOMAS_SYNTH_MAX_SAMPLES): samples one query may ask for.
    * `gan` (LOMAS_SYNTH_GAN): whether the GAN synthesizers (PyTorch, on the heavy pool) can run:
      `auto` looks for PyTorch and Opacus in this process, `on` says the heavy pool has them (an
      executor service without them prices GAN queries for heavy workers that have them), `off`
      refuses them.
    """

    max_samples: int = 100_000
    gan: str = "auto"

    def __post_init__(self) -> None:
        if self.max_samples < 1:
            raise SystemExit("LOMAS_SYNTH_MAX_SAMPLES must be at least 1")
        if self.gan not in ("auto", "on", "off"):
            raise SystemExit("LOMAS_SYNTH_GAN must be auto, on or off")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SynthLimits:
        return cls(
            max_samples=env_int(env, "SYNTH_MAX_SAMPLES", cls.max_samples),
            gan=env_str(env, "SYNTH_GAN", cls.gan).strip().lower(),
        )


@dataclass(frozen=True)
class QueryLimits:
    """Ceilings on the sizes one query may ask for, checked before anything is allocated (the
    executor service and the workers alike, so a refusal comes before any charge).

    * `opendp_max_rows` (LOMAS_OPENDP_MAX_ROWS) and `opendp_rows_factor`
      (LOMAS_OPENDP_ROWS_FACTOR): a row-like size in an OpenDP pipeline (`make_resize` size, the
      sized sums' size) may not exceed the metadata's `rows` times the factor, nor the maximum.
    * `opendp_max_elements` (LOMAS_OPENDP_MAX_ELEMENTS): categories, bin edges, candidates,
      b-ary tree leaves and branching, rows of a Polars key set.
    * `max_dummy_cells` (LOMAS_MAX_DUMMY_CELLS): rows x columns of one dummy frame.
    * `sql` (`SqlLimits`, LOMAS_SQL_*): the SmartNoise-SQL ceilings.
    * `synth` (`SynthLimits`, LOMAS_SYNTH_*): SmartNoise-Synth's ceilings and GAN availability.
    """

    opendp_max_rows: int = 10_000_000
    opendp_rows_factor: int = 2
    opendp_max_elements: int = 100_000
    max_dummy_cells: int = 5_000_000
    sql: SqlLimits = field(default_factory=SqlLimits)
    synth: SynthLimits = field(default_factory=SynthLimits)

    def __post_init__(self) -> None:
        for name in ("opendp_max_rows", "opendp_rows_factor", "opendp_max_elements"):
            if getattr(self, name) < 1:
                raise SystemExit(f"LOMAS_{name.upper()} must be at least 1")
        if self.max_dummy_cells < 0:
            raise SystemExit("LOMAS_MAX_DUMMY_CELLS must not be negative")

    def opendp_row_ceiling(self, rows: int) -> int:
        """The largest row-like size a pipeline may choose for a dataset of about `rows` rows."""
        return min(rows * self.opendp_rows_factor, self.opendp_max_rows)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> QueryLimits:
        default = cls()
        return cls(
            opendp_max_rows=env_int(env, "OPENDP_MAX_ROWS", default.opendp_max_rows),
            opendp_rows_factor=env_int(env, "OPENDP_ROWS_FACTOR", default.opendp_rows_factor),
            opendp_max_elements=env_int(env, "OPENDP_MAX_ELEMENTS", default.opendp_max_elements),
            max_dummy_cells=env_int(env, "MAX_DUMMY_CELLS", default.max_dummy_cells),
            sql=SqlLimits.from_env(env),
            synth=SynthLimits.from_env(env),
        )


@dataclass(frozen=True)
class FreeCallSettings:
    """The executor service's pool of child processes for free calls (validation, cost estimates,
    dummy data and dummy runs): the server process runs none of them itself.

    * `workers` (LOMAS_FREE_CALL_WORKERS): calls running at once, one child each.
    * `spares` (LOMAS_FREE_CALL_SPARES): children kept started beyond those, so that replacing a
      killed child does not put the engines' imports (about 2 s) on the next caller's path.
    * `queue` (LOMAS_FREE_CALL_QUEUE): calls that may wait for a child; beyond it a call is refused
      at once (RESOURCE_EXHAUSTED, FREE_CALLS_BUSY, with a retry delay). Real queries need a cost
      estimate too, so the line is long enough for a burst of distinct queries; the server runs at
      least `workers + queue + 4` threads, so health checks always find one.
    * `memory_mb` (LOMAS_FREE_CALL_MEMORY_MB): each child's address-space limit (RLIMIT_AS). The
      engines' libraries and thread stacks take about 0.95 GB of address space before any work;
      the default leaves about 1 GB for the call.
    * `cpu_seconds` (LOMAS_FREE_CALL_CPU_SECONDS): CPU time one call may use (RLIMIT_CPU, a
      backstop to the wall-clock limit: a call's threads may use more CPU than wall time).
    * `timeout_seconds` (LOMAS_FREE_CALL_TIMEOUT_SECONDS): wall-clock limit of one call, waiting
      included, never beyond the caller's own gRPC deadline.
    * `max_calls_per_child` (LOMAS_FREE_CALL_MAX_CALLS_PER_CHILD, default 10,000): a child is
      replaced after that many calls (the memory it kept goes with it). A replacement imports the
      engines again (about 2 CPU-seconds), and every real query is priced here, so the default is
      high: with 1,000, replacements took a third of the executor's CPU in a 20-second burst of
      distinct queries. Memory a child keeps is bounded anyway (it is replaced when it keeps half
      its limit resident).
    * `niceness` (LOMAS_FREE_CALL_NICENESS): how much lower the children's CPU priority is than the
      service's (0 to 19): under a flood of free work, real queries keep the CPU they need.
    """

    workers: int = 2
    spares: int = 1
    queue: int = 32
    memory_mb: int = 2048
    cpu_seconds: int = 60
    timeout_seconds: float = 20.0
    max_calls_per_child: int = 10_000
    niceness: int = 10

    def __post_init__(self) -> None:
        if not 0 <= self.niceness <= 19:
            raise SystemExit("LOMAS_FREE_CALL_NICENESS must be from 0 to 19")
        if self.workers < 1 or self.max_calls_per_child < 1 or self.cpu_seconds < 1:
            raise SystemExit(
                "LOMAS_FREE_CALL_WORKERS, LOMAS_FREE_CALL_CPU_SECONDS and "
                "LOMAS_FREE_CALL_MAX_CALLS_PER_CHILD must be at least 1"
            )
        if self.spares < 0 or self.queue < 0 or self.memory_mb < 0:
            raise SystemExit("free call spares, queue and memory must not be negative")
        if not self.timeout_seconds > 0:
            raise SystemExit("LOMAS_FREE_CALL_TIMEOUT_SECONDS must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FreeCallSettings:
        default = cls()
        return cls(
            workers=env_int(env, "FREE_CALL_WORKERS", default.workers),
            spares=env_int(env, "FREE_CALL_SPARES", default.spares),
            queue=env_int(env, "FREE_CALL_QUEUE", default.queue),
            memory_mb=env_int(env, "FREE_CALL_MEMORY_MB", default.memory_mb),
            cpu_seconds=env_int(env, "FREE_CALL_CPU_SECONDS", default.cpu_seconds),
            timeout_seconds=env_float(env, "FREE_CALL_TIMEOUT_SECONDS", default.timeout_seconds),
            max_calls_per_child=env_int(
                env, "FREE_CALL_MAX_CALLS_PER_CHILD", default.max_calls_per_child
            ),
            niceness=env_int(env, "FREE_CALL_NICENESS", default.niceness),
        )


def s3_secrets_from_env(env: Mapping[str, str]) -> S3Secrets:
    """The named S3 credentials of LOMAS_S3_CREDENTIALS_FILE and PostgreSQL credentials of
    LOMAS_POSTGRES_CREDENTIALS_FILE (none when unset; see `lomas_executor.sources`)."""
    credentials_file = env_str(env, "S3_CREDENTIALS_FILE", "")
    secrets = S3Secrets.from_file(credentials_file) if credentials_file else S3Secrets()
    postgres_file = env_str(env, "POSTGRES_CREDENTIALS_FILE", "")
    return secrets.with_postgres_file(postgres_file) if postgres_file else secrets


@dataclass(frozen=True)
class SparkSettings:
    """Where a worker's Spark session runs (see `lomas_executor.pushdown_spark`).

    * `master` (LOMAS_SPARK_MASTER, default `local[2]`): Spark's master URL.
    * `driver_memory` (LOMAS_SPARK_DRIVER_MEMORY, default `1g`): the driver JVM's heap.
    * `conf` (LOMAS_SPARK_CONF, `key=value,key=value`): more Spark settings.
    """

    master: str = "local[2]"
    driver_memory: str = "1g"
    conf: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SparkSettings:
        default = cls()
        conf: dict[str, str] = {}
        for item in env_str(env, "SPARK_CONF", "").split(","):
            if not item.strip():
                continue
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise SystemExit("LOMAS_SPARK_CONF must be key=value pairs separated by commas")
            conf[key.strip()] = value.strip()
        return cls(
            master=env_str(env, "SPARK_MASTER", default.master),
            driver_memory=env_str(env, "SPARK_DRIVER_MEMORY", default.driver_memory),
            conf=conf,
        )


@dataclass(frozen=True)
class ExecutorSettings:
    """The executor service.

    * `s3_secrets` (LOMAS_S3_CREDENTIALS_FILE): the workers' named S3 credentials, which
      ValidateDataset needs to check that a dataset's S3 object can be read before it is registered.
    """

    server: ServerSettings
    free_calls: FreeCallSettings = field(default_factory=FreeCallSettings)
    limits: QueryLimits = field(default_factory=QueryLimits)
    s3_secrets: S3Secrets = field(default_factory=S3Secrets)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ExecutorSettings:
        env = os.environ if env is None else env
        try:
            secrets = s3_secrets_from_env(env)
        except ValueError as error:
            raise SystemExit(f"invalid executor settings: {error}") from None
        return cls(
            server=ServerSettings.from_env(env, default_port=DEFAULT_PORT),
            free_calls=FreeCallSettings.from_env(env),
            limits=QueryLimits.from_env(env),
            s3_secrets=secrets,
        )


@dataclass(frozen=True)
class WorkerSettings:
    """One Celery worker (a main process and `concurrency` child processes).

    * `workloads` (LOMAS_WORKER_QUEUES, e.g. "light" or "light,heavy"): the queues it consumes.
    * `max_tasks_per_child` (LOMAS_WORKER_MAX_TASKS_PER_CHILD, default 10,000): a child is
      replaced after that many tasks. The engines are imported before the fork, but its caches
      (loaded tables, prepared engines, rewritten queries) go with it, and the queries that meet
      the new child reload them: 0.2-0.7 s on the 344-row demo, measured. So recycling is rare;
      `max_memory_per_child_kb` is the guard against a child that grows.
    * `max_memory_per_child_kb` (LOMAS_WORKER_MAX_MEMORY_PER_CHILD_KB, 0 = off): a child whose
      resident memory exceeds it is replaced after its current task.
    * `task_memory_limit_mb` (LOMAS_TASK_MEMORY_LIMIT_MB, 0 = off): the address-space limit
      (RLIMIT_AS) of each child, so one query cannot take the machine's memory: allocations beyond
      it fail inside the task, which records a failure (the charge is kept). Off by default for
      light workers; `HEAVY_TASK_MEMORY_LIMIT_MB` by default for a worker that consumes the heavy
      queue (DP machine learning and synthetic data train on whole tables).
    * Time: every task, heavy ones included, has the queue's soft and hard time limits
      (LOMAS_TASK_TIME_LIMIT_SECONDS, default 300 s; `QueueSettings`). One limit serves every queue
      on purpose: the Redis visibility timeout follows it, and any worker restores any queue's
      unacknowledged tasks past it, so a longer heavy limit would have heavy tasks run twice.
    * `max_attempts` (LOMAS_TASK_MAX_ATTEMPTS): deliveries of one query before a query that keeps
      killing its worker is recorded as failed (charge kept) instead of being run again.
    * `s3_secrets` (LOMAS_S3_CREDENTIALS_FILE): named S3 credentials, kept out of the admin store.
    * `health_file` (LOMAS_WORKER_HEALTH_FILE, empty = none): a file the worker keeps fresh while
      it consumes its queues, for probes (`lomas_executor.health_file`).
    * `limits` (`QueryLimits`, the same LOMAS_ variables as the executor service): a worker
      refuses what the service refused, before it loads data.
    * `spark` (LOMAS_SPARK_*: `SparkSettings`): the Spark session that runs queries on Spark
      datasets (local by default, or a cluster).
    * `lazy_parquet_bytes` (LOMAS_LAZY_PARQUET_BYTES): local Parquet files from this size on are
      scanned lazily by OpenDP Polars plans, never loaded nor cached (`lomas_executor.pushdown`).
    """

    queue: QueueSettings
    peers: PeerSettings
    admin_target: str
    budget_target: str
    cache_bytes: int  # per worker process: loaded tables and their prepared engines
    concurrency: int
    log_level: str
    workloads: tuple[WorkloadClass, ...] = (WorkloadClass.LIGHT,)
    max_tasks_per_child: int = 10_000
    max_memory_per_child_kb: int = 0
    task_memory_limit_mb: int = 0
    max_attempts: int = 3
    s3_secrets: S3Secrets = field(default_factory=S3Secrets)
    health_file: str = ""
    limits: QueryLimits = field(default_factory=QueryLimits)
    spark: SparkSettings = field(default_factory=SparkSettings)
    lazy_parquet_bytes: int = DEFAULT_LAZY_PARQUET_BYTES

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
            secrets = s3_secrets_from_env(env)
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
            max_tasks_per_child=env_int(env, "WORKER_MAX_TASKS_PER_CHILD", 10_000),
            max_memory_per_child_kb=env_int(env, "WORKER_MAX_MEMORY_PER_CHILD_KB", 0),
            task_memory_limit_mb=env_int(
                env,
                "TASK_MEMORY_LIMIT_MB",
                HEAVY_TASK_MEMORY_LIMIT_MB if WorkloadClass.HEAVY in workloads else 0,
            ),
            max_attempts=env_int(env, "TASK_MAX_ATTEMPTS", 3),
            s3_secrets=secrets,
            health_file=env_str(env, "WORKER_HEALTH_FILE", ""),
            limits=QueryLimits.from_env(env),
            spark=SparkSettings.from_env(env),
            lazy_parquet_bytes=env_int(env, "LAZY_PARQUET_BYTES", DEFAULT_LAZY_PARQUET_BYTES),
        )

"""Queues by workload class, worker settings and limits, with the machine's real Redis."""

from __future__ import annotations

import json
import resource
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from lomas.common.v1 import archive_pb2, dataset_pb2, query_pb2
from lomas.executor.v1 import task_pb2
from lomas_common.queue import (
    EXECUTE_QUERY_TASK,
    QueueSettings,
    WorkloadClass,
    make_celery_app,
    parse_workload_classes,
    query_kind_of_task,
)
from lomas_executor.deliveries import count_delivery
from lomas_executor.demo import penguin_metadata
from lomas_executor.execution import QueryRunner
from lomas_executor.settings import WorkerSettings
from lomas_executor.worker import create_app, worker_argv

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture()
def queue_settings() -> Iterator[QueueSettings]:
    settings = QueueSettings(broker_url=REDIS_URL, prefix=f"lomas-test-{secrets.token_hex(4)}")
    yield settings
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{settings.prefix}*"):
        client.delete(key)
    client.close()


def _task(kind: str) -> str:
    return json.dumps({"query_id": "q", "query": {kind: {}}})


def test_tasks_are_routed_to_the_queue_of_their_workload(queue_settings: QueueSettings) -> None:
    app = make_celery_app(queue_settings)
    for kind in ("smartnoise_sql", "opendp", "smartnoise_synth", "diffprivlib", "smartnoise_sql"):
        app.send_task(EXECUTE_QUERY_TASK, args=[_task(kind)])
    client = redis.Redis.from_url(REDIS_URL)
    try:
        light = client.llen(f"{queue_settings.prefix}:{queue_settings.light_queue}")
        heavy = client.llen(f"{queue_settings.prefix}:{queue_settings.heavy_queue}")
    finally:
        client.close()
    assert (light, heavy) == (3, 2)
    assert queue_settings.queue_for("opendp") == f"{queue_settings.prefix}.light"
    assert queue_settings.queue_for("smartnoise_synth") == f"{queue_settings.prefix}.heavy"
    assert queue_settings.queue_for(None) == queue_settings.light_queue
    assert query_kind_of_task("not json") is None
    assert query_kind_of_task(_task("opendp")) == "opendp"


def test_workers_consume_the_queues_their_settings_name(queue_settings: QueueSettings) -> None:
    env = {
        "LOMAS_REDIS_URL": REDIS_URL,
        "LOMAS_QUEUE_PREFIX": queue_settings.prefix,
        "LOMAS_ADMIN_TARGET": "127.0.0.1:1",
        "LOMAS_BUDGET_TARGET": "127.0.0.1:2",
        "LOMAS_WORKER_QUEUES": "heavy",
        "LOMAS_WORKER_MAX_TASKS_PER_CHILD": "7",
        "LOMAS_WORKER_MAX_MEMORY_PER_CHILD_KB": "500000",
        "LOMAS_TASK_TIME_LIMIT_SECONDS": "20",
        "LOMAS_QUEUE_VISIBILITY_TIMEOUT_SECONDS": "30",
    }
    settings = WorkerSettings.from_env(env)
    assert settings.workloads == (WorkloadClass.HEAVY,)
    assert f"--queues={queue_settings.prefix}.heavy" in worker_argv(settings)
    both = WorkerSettings.from_env({**env, "LOMAS_WORKER_QUEUES": "light, heavy"})
    assert f"--queues={queue_settings.prefix}.light,{queue_settings.prefix}.heavy" in worker_argv(
        both
    )
    app = create_app(settings)
    assert app.conf.worker_max_tasks_per_child == 7
    assert app.conf.worker_max_memory_per_child == 500000
    assert app.conf.task_time_limit == 20 and app.conf.task_soft_time_limit == 15
    assert app.conf.broker_transport_options["visibility_timeout"] == 30
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert (
        app.conf.task_acks_on_timeout is False
    )  # a hard time limit requeues: the redelivery reports it
    # The default visibility timeout outlasts the time limit.
    assert QueueSettings(REDIS_URL, task_time_limit_seconds=300).visibility_timeout == 660

    for bad in (
        {"LOMAS_WORKER_QUEUES": "medium"},
        {"LOMAS_QUEUE_VISIBILITY_TIMEOUT_SECONDS": "10"},
    ):
        with pytest.raises(SystemExit):
            WorkerSettings.from_env({**env, **bad})
    with pytest.raises(ValueError, match="at least one"):
        parse_workload_classes(" , ")


def test_the_child_memory_limit_makes_large_allocations_fail_inside_the_process() -> None:
    before = resource.getrlimit(resource.RLIMIT_AS)
    # In a separate process, as a worker child would: the limit stops a 2 GiB allocation.
    code = (
        "from lomas_executor.worker import limit_child_memory\n"
        "import resource\n"
        "limit_child_memory(1024)\n"
        "print(resource.getrlimit(resource.RLIMIT_AS)[0])\n"
        "try:\n"
        "    bytearray(2 * 1024**3)\n"
        "except MemoryError:\n"
        "    print('MemoryError')\n"
    )
    assert _python_output(code).split() == [str(1024 * 1024 * 1024), "MemoryError"]
    assert resource.getrlimit(resource.RLIMIT_AS) == before  # not this process


def test_deliveries_are_counted_and_bound_crash_loops_and_timeouts(
    monkeypatch: pytest.MonkeyPatch, queue_settings: QueueSettings, penguin_csv: Path
) -> None:
    """The runner's decision per delivery, with real Redis and a real dataset (no peer is called)."""
    settings = WorkerSettings.from_env(
        {
            "LOMAS_REDIS_URL": REDIS_URL,
            "LOMAS_QUEUE_PREFIX": queue_settings.prefix,
            "LOMAS_ADMIN_TARGET": "127.0.0.1:1",
            "LOMAS_BUDGET_TARGET": "127.0.0.1:2",
            "LOMAS_TASK_MAX_ATTEMPTS": "2",
        }
    )
    runner = QueryRunner(settings)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        task = task_pb2.ExecuteQueryTask(
            query_id="q-1",
            user="u",
            dataset=dataset_pb2.DatasetDescriptor(
                name="PENGUIN",
                version=1,
                source=dataset_pb2.DataSource(local=dataset_pb2.LocalSource(path=str(penguin_csv))),
                format=dataset_pb2.DATA_FORMAT_CSV,
                metadata_json=json.dumps(penguin_metadata().to_dict()),
            ),
            query=query_pb2.Query(
                smartnoise_sql=query_pb2.SmartnoiseSqlQuery(
                    sql="SELECT COUNT(*) AS n FROM df", epsilon="1", delta="0"
                )
            ),
        )
        counts = [count_delivery(client, queue_settings, "q-1") for _ in range(3)]
        assert counts == [1, 2, 3]
        assert count_delivery(client, queue_settings, "q-1", retries=1) == 1  # a new series

        ran = runner._attempt(task, attempt=2, started=time.monotonic())
        assert ran.status == archive_pb2.QUERY_STATUS_SUCCEEDED and ran.release
        crashed = runner._attempt(task, attempt=3, started=time.monotonic())
        assert crashed.status == archive_pb2.QUERY_STATUS_FAILED
        assert crashed.error_reason == "QUERY_EXECUTION_FAILED"
        assert "stopped its worker 2 times" in crashed.error_message

        # A failure once the soft limit has passed is a timeout, even when a library lost the
        # SoftTimeLimitExceeded on the way (as pyarrow can, when the limit lands in a callback).
        def lost_the_cause(*_: object) -> None:
            raise OSError("read interrupted")

        monkeypatch.setattr(runner.engine, "run", lost_the_cause)
        soft_limit = settings.queue.soft_time_limit_seconds
        late = runner._attempt(task, attempt=1, started=time.monotonic() - soft_limit)
        assert late.error_reason == "QUERY_TIME_LIMIT_EXCEEDED"
        early = runner._attempt(task, attempt=1, started=time.monotonic())
        assert early.error_reason == "QUERY_EXECUTION_FAILED"
        monkeypatch.undo()
        client.set(queue_settings.timed_out_key("q-1"), b"1")
        timed_out = runner._attempt(task, attempt=1, started=time.monotonic())
        assert (timed_out.error_reason, timed_out.status) == (
            "QUERY_TIME_LIMIT_EXCEEDED",
            archive_pb2.QUERY_STATUS_FAILED,
        )
    finally:
        runner.close()
        client.close()


def test_the_worker_main_process_does_not_load_the_engines() -> None:
    """Children forked after Polars is imported lose its thread pool; the engines load in them."""
    code = (
        "import sys\n"
        "from lomas_executor.settings import WorkerSettings\n"
        "from lomas_executor.worker import create_app\n"
        "create_app(WorkerSettings.from_env({'LOMAS_REDIS_URL': 'redis://127.0.0.1:6379/0',"
        " 'LOMAS_ADMIN_TARGET': '127.0.0.1:1', 'LOMAS_BUDGET_TARGET': '127.0.0.1:2'}))\n"
        "print(sorted(m for m in ('polars', 'opendp', 'snsql') if m in sys.modules))\n"
    )
    assert _python_output(code).strip() == "[]"


def _python_output(code: str) -> str:
    """What `code` prints, run in a fresh interpreter (as a worker process would start)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout

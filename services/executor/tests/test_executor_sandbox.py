"""The free-call pool through a real executor gRPC server: children out of memory or time are
replaced, a caller that leaves takes its child with it, a full line is refused, and the server
process stays small under a flood and leaves no child behind when it stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import yaml

from lomas.common.v1 import dataset_pb2, query_pb2
from lomas.executor.v1 import executor_pb2, executor_pb2_grpc
from lomas_executor.demo import penguin_metadata_text
from lomas_executor.main import start
from lomas_executor.sandbox import FreeCallPool
from lomas_executor.settings import ExecutorSettings, FreeCallSettings
from lomas_testing.rich_status import error_info, retry_info

AVG_BY_SPECIES = "SELECT species, AVG(bill_length_mm) AS bill FROM df GROUP BY species"
# About 5 s and 1.8 GB of address space on the test machine (the largest dummy run allowed).
BIG_ROWS = 700_000


def dataset() -> dataset_pb2.DatasetDescriptor:
    return dataset_pb2.DatasetDescriptor(
        name="PENGUIN",
        version=1,
        format=dataset_pb2.DATA_FORMAT_CSV,
        metadata_json=json.dumps(yaml.safe_load(penguin_metadata_text())),
        source=dataset_pb2.DataSource(local=dataset_pb2.LocalSource(path="/nowhere.csv")),
    )


def dummy_sql(rows: int, sql: str = AVG_BY_SPECIES) -> executor_pb2.RunDummyQueryRequest:
    query = query_pb2.Query(
        smartnoise_sql=query_pb2.SmartnoiseSqlQuery(sql=sql, epsilon="1", delta="0")
    )
    return executor_pb2.RunDummyQueryRequest(dataset=dataset(), query=query, row_count=rows, seed=1)


class Executor:
    """A real executor service on port 0 (the production `start`), with a client stub."""

    def __init__(self, **env: str) -> None:
        settings = ExecutorSettings.from_env({"LOMAS_LISTEN": "127.0.0.1:0", **env})
        self.server, self.pool = start(settings)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.stub = executor_pb2_grpc.ExecutorServiceStub(self.channel)

    def stop(self) -> None:
        self.channel.close()
        self.server.stop()
        self.pool.close()

    def wait_for_children(self, count: int, timeout: float = 60.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while len(self.pool.pids()) < count or self.pool.counters.started < count:
            assert time.monotonic() < deadline, "the pool did not start its children"
            time.sleep(0.1)
        return self.pool.pids()


def small_executor(**env: str) -> Executor:
    """One child at a time, no spare and a waiting line of one, so tests exhaust them cheaply."""
    settings = {
        "LOMAS_FREE_CALL_WORKERS": "1",
        "LOMAS_FREE_CALL_SPARES": "0",
        "LOMAS_FREE_CALL_QUEUE": "1",
        "LOMAS_FREE_CALL_TIMEOUT_SECONDS": "20",
    }
    return Executor(**{**settings, **env})


@pytest.fixture
def small_pool() -> Iterator[Executor]:
    executor = small_executor()
    try:
        yield executor
    finally:
        executor.stop()


@pytest.fixture
def low_memory_pool() -> Iterator[Executor]:
    """1.2 GB of address space per child: the engines take about 0.95 GB before any work."""
    executor = small_executor(LOMAS_FREE_CALL_MEMORY_MB="1200")
    try:
        yield executor
    finally:
        executor.stop()


def assert_limit(error: grpc.RpcError, limit: str) -> None:
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    info = error_info(error)
    assert info.reason == "FREE_CALL_LIMIT_EXCEEDED"
    assert info.metadata["limit"] == limit


def test_a_call_beyond_the_memory_limit_is_refused_and_the_next_one_runs(
    low_memory_pool: Executor,
) -> None:
    [first] = low_memory_pool.wait_for_children(1)
    with pytest.raises(grpc.RpcError) as caught:
        low_memory_pool.stub.RunDummyQuery(dummy_sql(BIG_ROWS), timeout=30)
    assert_limit(caught.value, "memory")
    # The server is untouched and a new child serves the next call.
    reply = low_memory_pool.stub.RunDummyQuery(dummy_sql(1_000), timeout=30)
    assert reply.cost.HasField("approx_dp") and reply.arrow_ipc
    assert first not in low_memory_pool.pool.pids()


def test_a_caller_that_leaves_takes_its_child_with_it(small_pool: Executor) -> None:
    [first] = small_pool.wait_for_children(1)
    # Slow: COUNT(*) on 300,000 dummy rows takes seconds.
    slow = dummy_sql(300_000, "SELECT COUNT(*) AS n FROM df")
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        small_pool.stub.RunDummyQuery(slow, timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 10
    while first in small_pool.pool.pids():
        assert time.monotonic() < deadline, "the child of a call whose caller left still runs"
        time.sleep(0.05)
    assert time.monotonic() - started < 10
    assert small_pool.pool.counters.killed == 1
    reply = small_pool.stub.RunDummyQuery(dummy_sql(1_000), timeout=30)
    assert reply.arrow_ipc


def test_the_wall_clock_limit_kills_the_child() -> None:
    executor = Executor(
        LOMAS_FREE_CALL_WORKERS="1",
        LOMAS_FREE_CALL_SPARES="1",
        # Room for a fresh child's first small call on a loaded CI machine; the slow call takes
        # well over it (BIG_ROWS dummy rows: 300,000 took over a second everywhere).
        LOMAS_FREE_CALL_TIMEOUT_SECONDS="2",
    )
    try:
        executor.wait_for_children(2)
        slow = dummy_sql(BIG_ROWS, "SELECT COUNT(*) AS n FROM df")
        with pytest.raises(grpc.RpcError) as caught:
            executor.stub.RunDummyQuery(slow, timeout=30)
        assert_limit(caught.value, "time")
        assert executor.pool.counters.killed == 1
        # The spare takes the next call at once: no imports (about 2 CPU-seconds) on its path.
        started = time.monotonic()
        assert executor.stub.RunDummyQuery(dummy_sql(100), timeout=30).arrow_ipc
        assert time.monotonic() - started < 2.0
    finally:
        executor.stop()


def test_calls_beyond_the_waiting_line_are_refused_with_retry_advice(
    small_pool: Executor,
) -> None:
    small_pool.wait_for_children(1)
    slow = dummy_sql(300_000, "SELECT COUNT(*) AS n FROM df")
    with ThreadPoolExecutor(2) as threads:
        running = threads.submit(small_pool.stub.RunDummyQuery, slow, timeout=30)
        time.sleep(0.5)  # it holds the only child
        waiting = threads.submit(small_pool.stub.RunDummyQuery, dummy_sql(10), timeout=30)
        time.sleep(0.2)  # it holds the only place in line
        with pytest.raises(grpc.RpcError) as caught:
            small_pool.stub.RunDummyQuery(dummy_sql(10), timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(caught.value).reason == "FREE_CALLS_BUSY"
        advice = retry_info(caught.value)
        assert advice is not None and advice.retry_delay.seconds >= 1
        assert running.result().arrow_ipc and waiting.result().arrow_ipc


def test_errors_of_a_call_keep_their_code_reason_and_metadata(small_pool: Executor) -> None:
    small_pool.wait_for_children(1)
    pid = small_pool.pool.pids()
    with pytest.raises(grpc.RpcError) as caught:
        small_pool.stub.RunDummyQuery(dummy_sql(10, "SELECT COUNT(*) FROM nowhere"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason.startswith("QUERY")
    with pytest.raises(grpc.RpcError) as caught:
        small_pool.stub.GetDummyDataset(
            executor_pb2.GetDummyDatasetRequest(dataset=dataset(), row_count=1_000_000), timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert (info.reason, info.metadata["limit"]) == ("QUERY_LIMIT_EXCEEDED", "maxDummyCells")
    assert small_pool.pool.pids() == pid  # a refusal is no reason to replace a child


def test_the_server_process_imports_no_engine() -> None:
    code = (
        "import sys\n"
        "import lomas_executor.main\n"
        "print(sorted(m for m in ('polars', 'opendp', 'snsql', 'pandas') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


# -- the server as operators run it --------------------------------------------------------------


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as status:
        return dict(line.split(":", 1) for line in status.read().splitlines() if ":" in line)


def _kb(pid: int, field: str) -> int:
    return int(_status(pid)[field].split()[0])


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_status(int(entry.name))["PPid"]) == pid:
                    found.append(int(entry.name))
            except (OSError, KeyError):
                pass
    return found


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_flood_leaves_the_server_small_and_sigterm_leaves_no_child(tmp_path: Path) -> None:
    """Eight concurrent dummy runs on 300,000 rows: they wait for the two children; the server's
    peak resident memory stays where it started, while each child grows by far more. SIGTERM then
    stops the server and every child."""
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LOMAS_")},
        "LOMAS_LISTEN": f"127.0.0.1:{port}",
        "LOMAS_FREE_CALL_QUEUE": "8",  # all of them wait, however many children are ready
        "LOMAS_FREE_CALL_TIMEOUT_SECONDS": "600",  # about memory: time for 8 calls on a slow CI
    }
    log = (tmp_path / "executor.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "lomas_executor.main"], env=env, stdout=log, stderr=log
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = executor_pb2_grpc.ExecutorServiceStub(channel)
            stub.RunDummyQuery(dummy_sql(10), timeout=60, wait_for_ready=True)
            before = _kb(server.pid, "VmHWM")
            with ThreadPoolExecutor(8) as threads:
                calls = [
                    threads.submit(stub.RunDummyQuery, dummy_sql(300_000), timeout=600)
                    for _ in range(8)
                ]
                child_peak = 0
                while not all(call.done() for call in calls):
                    for pid in _children(server.pid):
                        try:
                            child_peak = max(child_peak, _kb(pid, "VmRSS"))
                        except (OSError, KeyError):
                            pass
                    time.sleep(0.1)
                replies = [call.result() for call in calls]
            assert all(reply.arrow_ipc for reply in replies)
            after = _kb(server.pid, "VmHWM")
            print(f"server peak RSS {before} -> {after} kB; a child's peak {child_peak} kB")
            assert after - before < 50 * 1024, (before, after)
            assert child_peak - before > 100 * 1024
        children = _children(server.pid)
        assert len(children) >= 3  # two workers and a spare (and multiprocessing's tracker)
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in children):
            assert time.monotonic() < deadline, "a free-call child outlived the server"
            time.sleep(0.1)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        log.close()


def test_children_die_with_a_killed_server(tmp_path: Path) -> None:
    """SIGKILL leaves no time to clean up: the children go anyway (PR_SET_PDEATHSIG)."""
    code = (
        "import time\n"
        "from lomas_executor.sandbox import FreeCallPool\n"
        "from lomas_executor.settings import FreeCallSettings\n"
        "if __name__ == '__main__':\n"
        "    pool = FreeCallPool(FreeCallSettings(workers=1, spares=1)).start()\n"
        "    print(' '.join(map(str, pool.pids())), flush=True)\n"
        "    time.sleep(600)\n"
    )
    script = tmp_path / "pool.py"
    script.write_text(code)
    # A spare still starting when its parent dies exits on an EOFError from spawn's bootstrap:
    # keep that (harmless) traceback in a file, not in the test run's output.
    log = (tmp_path / "pool.log").open("w")
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=log, text=True
    )
    try:
        assert parent.stdout is not None
        children = [int(pid) for pid in parent.stdout.readline().split()]
        assert children
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children):
            assert time.monotonic() < deadline, "a free-call child outlived its killed parent"
            time.sleep(0.1)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        log.close()


def _alive(pid: int) -> bool:
    try:
        return _status(pid)["State"].split()[0] not in ("Z", "X")
    except (OSError, KeyError):
        return False


def test_a_pool_refuses_calls_once_closed() -> None:
    pool = FreeCallPool(ExecutorSettings.from_env({}).free_calls)
    pool.close()
    with pytest.raises(Exception) as caught:
        pool.call("EstimateCost", b"")
    assert getattr(caught.value, "reason", "") == "FREE_CALLS_BUSY"


def test_free_call_children_run_at_a_lower_cpu_priority() -> None:
    pool = FreeCallPool(FreeCallSettings(workers=1, spares=0, niceness=7)).start()
    try:
        [child] = pool.pids()
        assert os.getpriority(os.PRIO_PROCESS, child) == os.getpriority(os.PRIO_PROCESS, 0) + 7
    finally:
        pool.close()


def test_children_are_retired_after_their_own_number_of_calls() -> None:
    """Each child is replaced after between half `max_calls_per_child` and all of it, so children
    that started together are not replaced together."""
    pool = FreeCallPool(FreeCallSettings(workers=1, spares=1, max_calls_per_child=6)).start()
    try:
        request = dummy_sql(5, "SELECT COUNT(*) AS n FROM df").SerializeToString()
        for _ in range(14):
            executor_pb2.RunDummyQueryResponse.FromString(pool.call("RunDummyQuery", request))
        assert pool.counters.retired >= 2  # 14 calls, at most 6 per child
        assert pool.counters.killed == 0
        draws = {child.retire_after for child in pool._all}
        assert all(3 <= draw <= 6 for draw in draws)
    finally:
        pool.close()

"""Long queries as jobs, on a real mesh that starts with no worker (so queries wait in the queue
for as long as a test needs), then gets one: submit, watch (queued with the place in the queue,
running, done), result, cancel before and after data access, another user's id, and the Python
client's progress bar."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from mesh_testing import RunningMesh, start_mode, status_of

from lomas.client import Client, DataAccessed, NotFound, QueryCancelled, QueryJob
from lomas.client.admin import approx_dp
from lomas.client.jobs import progress_wanted
from lomas.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from lomas_embedded import demo

ALICE, BOB = "jobs-alice", "jobs-bob"
SQL = "SELECT COUNT(*) AS n FROM df WHERE bill_length_mm > {}"


@pytest.fixture(scope="module")
def idle_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    """An embedded mesh without workers: every real query stays queued until one is started."""
    for mesh in start_mode("embedded", tmp_path_factory.mktemp("jobs"), worker_count=0):
        with mesh.admin() as admin:
            for user in (ALICE, BOB):
                admin.add_user(user)
                admin.grant(user, demo.DATASET, approx_dp("10", "0.001"))
        yield mesh


def client_of(mesh: RunningMesh, user: str) -> Client:
    return Client(mesh.target, demo.DATASET, token=mesh.token(user))


def budget(client: Client) -> tuple[Decimal, Decimal]:
    spent = client.get_total_spent_budget()["total_spent_epsilon"]
    return spent, client.get_remaining_budget()["remaining_epsilon"]


def first_event(job: QueryJob) -> gateway_pb2.WatchQueryResponse:
    return next(iter(job.events()))


def test_jobs_queue_cancel_and_finish(idle_mesh: RunningMesh) -> None:
    alice, bob = client_of(idle_mesh, ALICE), client_of(idle_mesh, BOB)
    priced = alice.smartnoise_sql.cost(SQL.format(1), epsilon="0.5", delta="0.00001")
    cost = priced["epsilon"]
    jobs = [
        alice.smartnoise_sql.submit(SQL.format(n), epsilon="0.5", delta="0.00001")
        for n in (1, 2, 3)
    ]
    # Queued in submit order, each with its place; the reservations are held, nothing spent.
    for place, job in enumerate(jobs, start=1):
        event = first_event(job)
        assert event.state == gateway_pb2.QUERY_STATE_QUEUED
        assert event.queue_position == place
        assert job.status().describe() == f"queued ({place - 1} ahead)"
    assert budget(alice) == (Decimal(0), Decimal(10) - 3 * cost)

    # Another user's query id is refused exactly like an unknown one: existence is not revealed.
    for other in (bob.job(jobs[0].query_id), bob.job("no-such-query")):
        with pytest.raises(NotFound) as refused:
            other.status()
        assert refused.value.reason == "QUERY_NOT_FOUND"
        assert refused.value.message == "no query of yours has this id"
        with pytest.raises(NotFound):
            other.cancel()
    assert first_event(jobs[0]).state == gateway_pb2.QUERY_STATE_QUEUED  # untouched by Bob

    # Cancel before data access: the whole reservation comes back; cancelling again changes nothing.
    # A pure Laplace COUNT: its reservation holds no delta, although the query passes one.
    assert priced == {"epsilon": cost, "delta": Decimal(0)}
    assert jobs[1].cancel() == priced
    assert jobs[1].cancel() == priced
    assert budget(alice) == (Decimal(0), Decimal(10) - 2 * cost)
    with pytest.raises(QueryCancelled) as cancelled:
        jobs[1].result(timeout=30)
    assert cancelled.value.code == "CANCELLED"
    assert first_event(jobs[2]).queue_position == 2  # the cancelled task is no longer ahead

    # A worker arrives: the watch goes on to running and done, with the release.
    idle_mesh.mesh.start_service("worker-0")
    states = [event.state for event in jobs[0].events(timeout=120)]
    assert states[-1] == gateway_pb2.QUERY_STATE_DONE
    assert set(states) <= {
        gateway_pb2.QUERY_STATE_QUEUED,
        gateway_pb2.QUERY_STATE_RUNNING,
        gateway_pb2.QUERY_STATE_DONE,
    }
    release = jobs[0].result(timeout=120)
    assert list(release.columns) == ["n"] and release.attrs["cost"]["epsilon"] == cost
    assert len(jobs[2].result(timeout=120)) == 1
    # The cancelled query never ran: charged twice, not three times, exactly.
    assert budget(alice) == (2 * cost, Decimal(10) - 2 * cost)

    # Cancel after data access: refused, and the charge stands.
    with pytest.raises(DataAccessed) as too_late:
        jobs[0].cancel()
    assert too_late.value.code == "FAILED_PRECONDITION"
    assert budget(alice) == (2 * cost, Decimal(10) - 2 * cost)
    # A cancelled query stays cancelled: the worker dropped its task without running it.
    with pytest.raises(QueryCancelled):
        jobs[1].status()


def test_refusals_come_back_at_submit_before_any_charge(idle_mesh: RunningMesh) -> None:
    bob = client_of(idle_mesh, BOB)
    before = budget(bob)
    with pytest.raises(Exception) as refused:
        bob.smartnoise_sql.submit("SELECT no_such_column FROM df", epsilon="0.5", delta="0.00001")
    assert getattr(refused.value, "reason", "") == "QUERY_INVALID"
    assert budget(bob) == before


def test_watch_needs_an_id_and_a_token(idle_mesh: RunningMesh) -> None:
    with grpc.insecure_channel(idle_mesh.target) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as anonymous:
            list(stub.WatchQuery(gateway_pb2.WatchQueryRequest(query_id="x"), timeout=10))
        assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED
        metadata = (("authorization", f"Bearer {idle_mesh.token(BOB)}"),)
        with pytest.raises(grpc.RpcError) as empty:
            list(stub.WatchQuery(gateway_pb2.WatchQueryRequest(), metadata=metadata, timeout=10))
        assert empty.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert any(b"FIELD_REQUIRED" in detail.value for detail in status_of(empty.value).details)


def test_a_slow_query_shows_a_progress_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a mesh whose worker comes late, `query(progress=True)` draws the bar while it waits."""
    with contextmanager(start_mode)("embedded", tmp_path / "late", worker_count=0) as mesh:
        client = Client(mesh.target, demo.DATASET, token=mesh.token(demo.RESEARCHER))
        answers: list[object] = []
        running = threading.Thread(
            target=lambda: answers.append(
                client.smartnoise_sql.query(
                    "SELECT COUNT(*) AS n FROM df", epsilon="0.5", delta="0.00001", progress=True
                )
            )
        )
        running.start()
        time.sleep(3.0)
        mesh.mesh.start_service("worker-0")
        running.join(timeout=120)
        assert len(answers) == 1
        drawn = capsys.readouterr().err
        assert "query: queued (0 ahead)" in drawn


class _Stream(io.StringIO):
    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self._terminal = terminal

    def isatty(self) -> bool:
        return self._terminal


def test_the_bar_is_on_by_default_only_on_a_terminal() -> None:
    assert progress_wanted(None, _Stream(terminal=True))
    assert not progress_wanted(None, _Stream(terminal=False))
    assert not progress_wanted(False, _Stream(terminal=True))
    assert progress_wanted(True, _Stream(terminal=False))

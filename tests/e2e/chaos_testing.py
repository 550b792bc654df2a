"""Chaos on a real local mesh, shared by tests/e2e/test_chaos.py (bounded, in the test command) and
bench/chaos.py (longer): under a steady load of queries, kill -9 each service in turn, restart
Redis and PostgreSQL, SIGTERM each service; after each round, check that nothing was lost or
charged twice.

The mesh (`chaos_mesh`): every service as its own supervised process, as `lomas-mesh run` starts
them (the launcher restarts what dies); the launcher's private Redis (the machine's Redis serves
other tests: restarting it would disturb them); and the stores on a private PostgreSQL cluster made
with the machine's PostgreSQL binaries in a temporary directory, on a port of its own
(`PrivatePostgres`): restarting the machine's PostgreSQL server would cut every other test's
connections, and a crash of this one is as real.

The load (`Load`): a few client threads, one user each, send distinct queries (so no answer is a
free replay of another), each with a request id, and retry with the same request id on UNAVAILABLE
and DEADLINE_EXCEEDED (and on rate limits), as a careful client does, until the query ends. They
retry INTERNAL too (a request id makes any retry safe), so that a query whose answer was lost still
ends, but every retried answer is counted by kind (`Load.take_answers`): the platform should answer
UNAVAILABLE with retry advice, never INTERNAL, while a piece is down.

The checks (`check_round`), once the load is paused and every query it sent has ended:
`ledger verify` (balances, hash chains, checkpoints, reconciliation with the archive) finds
nothing; no query is charged twice; no release lacks a charge; every query that reached the ledger
ended as a release, a reported failure or a refund (no reservation left open); every client's
answer is the archived one; and each ledger's spent budget equals the sum of the costs archived for
its queries (and of its commit entries).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from lomas.budget.v1 import budget_pb2
from lomas.client import Client, LomasError
from lomas.client.admin import AdminClient, approx_dp
from lomas.common.v1 import archive_pb2, privacy_pb2
from lomas_embedded import demo
from lomas_embedded.local import LocalMesh, local_mesh
from lomas_embedded.ports import free_port
from lomas_embedded.supervision import Backoff
from lomas_gateway.lifecycle import query_id_for

SQL = "SELECT COUNT(*) AS n FROM df"
SERVICES = ("gateway", "admin", "budget", "executor", "worker-0")
RESTART_SECONDS = 60.0  # generous: a restart takes a few seconds on 2 busy cores
REQUEST_SECONDS = 150.0  # a query that has not ended by then, retries included, is stuck
GRACE_SECONDS = 10.0
CHAOS_ENV = {
    # A killed worker's task is redelivered within seconds (default: 11 minutes).
    "LOMAS_TASK_TIME_LIMIT_SECONDS": "12",
    "LOMAS_QUEUE_VISIBILITY_TIMEOUT_SECONDS": "13",
    # A query waiting on a lost dependency answers DEADLINE_EXCEEDED (retry with the same id).
    "LOMAS_QUERY_TIMEOUT_SECONDS": "40",
    "LOMAS_GRACE_SECONDS": str(GRACE_SECONDS),
    "LOMAS_LEDGER_CHECKPOINT_INTERVAL_SECONDS": "1",
}
# Answers after which the load sends the same request (same request id) again.
RETRIED_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL")
RETRIED_REASONS = ("RATE_LIMITED", "TOO_MANY_CONCURRENT_QUERIES", "TOO_MANY_CONCURRENT_CALLS")
STEP_EPSILON = Decimal("0.001")
SETTLE_SECONDS = 30.0  # for the last commits once every client has its answer
_SETTLING = (budget_pb2.LEDGER_ENTRY_KIND_COMMIT, budget_pb2.LEDGER_ENTRY_KIND_RELEASE)


# --- a PostgreSQL cluster of the test's own ------------------------------------------------------


def postgres_bindir() -> Path:
    """Where the server's programs are (Debian: /usr/lib/postgresql/<version>/bin)."""
    if shutil.which("pg_config"):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if found.returncode == 0 and (Path(found.stdout.strip()) / "initdb").exists():
            return Path(found.stdout.strip())
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda initdb: [int(part) for part in initdb.parts[-3].split(".") if part.isdigit()],
    )
    if not versions:
        raise RuntimeError("no PostgreSQL server programs (initdb, pg_ctl) on this machine")
    return versions[-1].parent


class PrivatePostgres:
    """A PostgreSQL cluster in a temporary directory, on a port of its own, that can be crashed and
    restarted (`crash_and_restart`: an immediate shutdown, recovered from the WAL at start).

    PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="lomas-chaos-postgres-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.restarts = 0
        self._bindir = postgres_bindir()
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
            self._as_owner = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self._as_owner, str(self._bindir / tool), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} "
            "-c max_connections=200"
        )
        log = str(self.directory / "postgres.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "start")

    def crash_and_restart(self) -> None:
        """Stop at once, as a crash would (no checkpoint, every connection cut), then start: the
        server recovers from its write-ahead log."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self.start()
        self.restarts += 1

    def close(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def chaos_mesh(data_dir: Path, clients: int) -> Iterator[Chaos]:
    """A supervised mesh on a private PostgreSQL and the launcher's private Redis, with `clients`
    users granted the demo dataset."""
    postgres = PrivatePostgres()
    try:
        # `local_mesh` makes its stores' databases on the server this variable names.
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("LOMAS_TEST_POSTGRES_URL", postgres.url)
            with local_mesh(
                data_dir,
                stores="postgresql",
                worker_concurrency=2,
                extra_env=CHAOS_ENV,
                restart_backoff=Backoff(initial_seconds=0.2, max_seconds=1.0),
            ) as running:
                users = [f"chaos-{index}" for index in range(clients)]
                with running.admin() as admin:
                    for user in users:
                        admin.add_user(user)
                        admin.grant(user, demo.DATASET, approx_dp("100000", "0.1"))
                yield Chaos(running, postgres, users)
    finally:
        postgres.close()


# --- the load ------------------------------------------------------------------------------------


@dataclass
class Request:
    """One query a client sent, under one request id, and how it ended."""

    user: str
    request_id: str
    epsilon: Decimal
    attempts: int = 0
    retried: list[str] = field(default_factory=list)  # "CODE REASON" of each retried answer
    outcome: str = ""  # "release", or the reason of the reported failure
    released_id: str = ""

    @property
    def query_id(self) -> str:
        """The gateway's query id for this request (the same for every retry)."""
        return query_id_for(self.user, self.request_id)


class Load:
    """One thread per user, each sending its next distinct query as soon as the last one ended."""

    def __init__(self, running: LocalMesh, users: list[str]) -> None:
        self._running = running
        self._users = users
        self.requests: list[Request] = []
        self._answers = Counter[str]()  # retried answers since `take_answers`, by "CODE REASON"
        self._lock = threading.Lock()
        self._sent = Counter[str]()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._run, args=(user,), name=f"load-{user}", daemon=True)
            for user in self._users
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Send nothing new; return once every query sent has ended (retries included)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_SECONDS + 30)
            assert not thread.is_alive(), f"{thread.name} is stuck"

    def take_answers(self) -> Counter[str]:
        """The retried answers since the last call, by "CODE REASON"."""
        with self._lock:
            answers, self._answers = self._answers, Counter()
        return answers

    def _client(self, user: str) -> Client:
        return Client(
            self._running.target, demo.DATASET, token=self._running.token(user), timeout_seconds=60
        )

    def _run(self, user: str) -> None:
        client = self._client(user)
        try:
            while not self._stop.is_set():
                with self._lock:
                    self._sent[user] += 1
                    number = self._sent[user]
                    request = Request(user, f"{user}-{number}", STEP_EPSILON * number)
                    self.requests.append(request)
                client = self._finish(request, client)
        finally:
            client.close()

    def _finish(self, request: Request, client: Client) -> Client:
        """Send `request` until it ends; returns the client to go on with."""
        deadline = time.monotonic() + REQUEST_SECONDS
        while time.monotonic() < deadline:
            request.attempts += 1
            try:
                release = client.smartnoise_sql.query(
                    SQL, request.epsilon, 0, request_id=request.request_id, progress=False
                )
            except LomasError as error:
                if not retried(error):
                    request.outcome = error.reason or error.code
                    return client
                answer = f"{error.code} {error.reason}"
                request.retried.append(answer)
                with self._lock:
                    self._answers[answer] += 1
                if error.code == "UNAVAILABLE":
                    # A fresh channel connects at once; the old one may wait out its backoff.
                    client.close()
                    client = self._client(request.user)
                time.sleep(0.2)
                continue
            request.outcome = "release"
            request.released_id = str(release.attrs["query_id"])
            return client
        request.outcome = "STUCK"
        return client


def retried(error: LomasError) -> bool:
    """Whether the load sends the same request again after `error`.

    A stored failure (a query past its time limit, QUERY_TIME_LIMIT_EXCEEDED, included) carries
    `charged*` metadata: it is the query's final outcome (sending it again returns it again)."""
    if any(key.startswith("charged") for key in error.metadata):
        return False
    return error.code in RETRIED_CODES or error.reason in RETRIED_REASONS


# --- the disruptions -----------------------------------------------------------------------------


class Chaos:
    """A running chaos mesh: its load, its disruptions, and what they did."""

    def __init__(self, running: LocalMesh, postgres: PrivatePostgres, users: list[str]) -> None:
        self.running = running
        self.postgres = postgres
        self.users = users
        self.load = Load(running, users)
        self.kills = 0
        self.terminations = 0
        self.redis_restarts = 0
        self.exit_codes: dict[str, int] = {}  # of the SIGTERM'd services

    @property
    def service_restarts(self) -> int:
        return sum(service.restarts for service in self.running.mesh.processes)

    def kill(self, name: str) -> None:
        """kill -9 a service's whole process group, as a crash of its container would."""
        old = self.running.mesh.service(name).process.pid
        self.running.mesh.kill(name, signal.SIGKILL, restart=True)
        self.kills += 1
        self._wait_back(name, old)

    def terminate(self, name: str) -> int:
        """SIGTERM a service's main process, as Kubernetes does: it drains and exits by itself
        (its exit code is returned), then the launcher starts it again."""
        process = self.running.mesh.service(name).process
        os.kill(process.pid, signal.SIGTERM)
        code = process.wait(GRACE_SECONDS + 30)
        self.terminations += 1
        self.exit_codes[name] = code
        self._wait_back(name, process.pid)
        return code

    def _wait_back(self, name: str, old: int) -> None:
        mesh = self.running.mesh
        deadline = time.monotonic() + RESTART_SECONDS
        while mesh.service(name).process.pid == old:
            assert time.monotonic() < deadline, f"{name} was not restarted"
            time.sleep(0.05)
        if mesh.service(name).target:
            mesh.wait_serving(name, RESTART_SECONDS)

    def restart_redis(self) -> None:
        """kill -9 the private Redis (the launcher restarts it, empty: it keeps nothing on disk)."""
        server = self.running.redis
        assert server is not None
        old = server.pid
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + RESTART_SECONDS
        client = redis.Redis.from_url(server.url, socket_timeout=1)
        try:
            while True:
                assert time.monotonic() < deadline, "the private Redis was not restarted"
                try:
                    if server.pid != old and client.ping():
                        break
                except redis.RedisError:
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        self.redis_restarts += 1

    def restart_postgres(self) -> None:
        self.postgres.crash_and_restart()


# --- the checks ----------------------------------------------------------------------------------


@dataclass
class Tally:
    """What one check covered."""

    queries: int = 0
    attempts: int = 0
    retried: int = 0
    releases: int = 0
    charged_failures: int = 0
    refunds: int = 0
    ledger_entries: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def _components(loss: privacy_pb2.PrivacyLoss) -> tuple[Decimal, Decimal]:
    return Decimal(loss.approx_dp.epsilon or 0), Decimal(loss.approx_dp.delta or 0)


def _plus(a: tuple[Decimal, Decimal], b: tuple[Decimal, Decimal]) -> tuple[Decimal, Decimal]:
    return a[0] + b[0], a[1] + b[1]


def open_queries(admin: AdminClient, users: list[str]) -> list[str]:
    """The queries whose reservation is neither committed nor released yet."""
    found: list[str] = []
    for user in users:
        reserved, settled = set(), set()
        for entry in admin.ledger_history(user, demo.DATASET):
            if entry.kind == budget_pb2.LEDGER_ENTRY_KIND_RESERVATION:
                reserved.add(entry.query_id)
            elif entry.kind in _SETTLING:
                settled.add(entry.query_id)
        found += sorted(reserved - settled)
    return found


def check_round(chaos: Chaos) -> Tally:
    """Every invariant, over every query sent so far (the load must be stopped).

    A client may have its answer before its query's charge is committed: the worker stores the
    outcome and commits at once, and a commit that meets a ledger going down is retried a second
    later. So the checks wait (a bounded time) until no reservation is left open."""
    tally = Tally()
    with chaos.running.admin() as admin:
        deadline = time.monotonic() + SETTLE_SECONDS
        while open_queries(admin, chaos.users) and time.monotonic() < deadline:
            time.sleep(0.2)
        verified = admin.verify_ledgers()
        tally.problems += [f"ledger verify: {problem}" for problem in verified.problems]
        tally.ledger_entries = int(verified.entries_checked)
        for user in chaos.users:
            history = admin.ledger_history(user, demo.DATASET)
            archive = {q.query_id: q for q in admin.archive(user=user)}
            spent = _components(admin.ledger(user, demo.DATASET).spent)
            _check_user(user, history, archive, spent, chaos.load.requests, tally)
    return tally


def _check_user(
    user: str,
    history: list[budget_pb2.LedgerEntry],
    archive: dict[str, archive_pb2.ArchivedQuery],
    spent: tuple[Decimal, Decimal],
    requests: list[Request],
    tally: Tally,
) -> None:
    kinds: dict[str, Counter[int]] = {}
    committed = (Decimal(0), Decimal(0))
    for entry in history:
        if entry.query_id:
            kinds.setdefault(entry.query_id, Counter())[entry.kind] += 1
        if entry.kind == budget_pb2.LEDGER_ENTRY_KIND_COMMIT:
            committed = _plus(committed, _components(entry.amount))
    problem = tally.problems.append
    for query_id, counted in kinds.items():
        reservations = counted[budget_pb2.LEDGER_ENTRY_KIND_RESERVATION]
        commits = counted[budget_pb2.LEDGER_ENTRY_KIND_COMMIT]
        releases = counted[budget_pb2.LEDGER_ENTRY_KIND_RELEASE]
        if reservations != 1 or commits + releases > 1:
            problem(f"query {query_id}: {dict(counted)} (charged or reserved twice)")
        elif commits + releases == 0:
            problem(f"query {query_id}: still reserved once every client had its answer")
    for query_id, outcome in archive.items():
        counted = kinds.get(query_id, Counter())
        if outcome.status == archive_pb2.QUERY_STATUS_SUCCEEDED and (
            counted[budget_pb2.LEDGER_ENTRY_KIND_COMMIT] != 1
        ):
            problem(f"query {query_id}: released without exactly one charge")
    archived = (Decimal(0), Decimal(0))
    for outcome in archive.values():
        archived = _plus(archived, _components(outcome.cost))
    if not spent == committed == archived:
        problem(f"{user}: spent {spent}, commits add up to {committed}, archive to {archived}")

    for request in (r for r in requests if r.user == user):
        tally.queries += 1
        tally.attempts += request.attempts
        tally.retried += len(request.retried)
        tally.outcomes[request.outcome] += 1
        _check_request(request, kinds.get(request.query_id), archive.get(request.query_id), tally)


def _check_request(
    request: Request,
    counted: Counter[int] | None,
    stored: archive_pb2.ArchivedQuery | None,
    tally: Tally,
) -> None:
    """How one client's query ended, against what the ledger and the archive hold for it."""
    where = f"request {request.request_id} (query {request.query_id})"
    if request.outcome == "STUCK":
        answers = Counter(request.retried).most_common(3)
        tally.problems.append(f"{where}: not ended after {REQUEST_SECONDS:.0f} s ({answers})")
        return
    if request.outcome == "release":
        tally.releases += 1
        if request.released_id != request.query_id:
            tally.problems.append(f"{where}: answered with query {request.released_id}")
        if stored is None or stored.status != archive_pb2.QUERY_STATUS_SUCCEEDED:
            tally.problems.append(f"{where}: released, but the archive holds no release")
        return
    if stored is not None:
        # A reported failure: the archived one, charged (after data access) or refunded.
        if stored.status == archive_pb2.QUERY_STATUS_SUCCEEDED:
            tally.problems.append(f"{where}: answered {request.outcome}, but it was released")
        elif stored.error_reason != request.outcome:
            tally.problems.append(
                f"{where}: answered {request.outcome}, archived {stored.error_reason}"
            )
        elif any(_components(stored.cost)):
            tally.charged_failures += 1
        else:
            tally.refunds += 1
        return
    if counted is None:
        # Every query of the load is valid and within its budget: nothing should refuse it.
        tally.problems.append(f"{where}: answered {request.outcome} before any charge")
    elif counted[budget_pb2.LEDGER_ENTRY_KIND_RELEASE] == 1:
        tally.refunds += 1
    else:
        tally.problems.append(f"{where}: answered {request.outcome} but charged without outcome")


def describe(tally: Tally) -> str:
    outcomes = ", ".join(f"{name} {count}" for name, count in sorted(tally.outcomes.items()))
    return (
        f"{tally.queries} queries ({tally.attempts} attempts, {tally.retried} retried): "
        f"{tally.releases} releases, {tally.charged_failures} charged failures, "
        f"{tally.refunds} refunds [{outcomes}]; "
        f"{tally.ledger_entries} ledger entries verified"
    )


def timed(action: Any) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started

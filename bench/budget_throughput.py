"""Reserve + commit pairs per second over gRPC, with concurrent clients (aim on PostgreSQL: at least
1,000 pairs/s on a 2-core machine).

Starts a real budget service (`python -m lomas_budget.main`, as an operator runs it) on a fresh
PostgreSQL database and/or a SQLite file, opens one ledger per client, and runs N asyncio gRPC
clients (one channel each) that reserve a query's cost and commit it, as the gateway and a worker
do, for a fixed time after a warm-up. Prints pairs/s, pair latency and where the CPU went (the
service process, this client process and, when it runs on this machine, PostgreSQL), with the
throughput that CPU cost would allow if every core did nothing else.

    .venv/bin/python bench/budget_throughput.py [--store postgresql|sqlite|both] [--clients 8]
        [--seconds 10] [--shared-ledger] [--references]

`--references` adds the two ceilings on this machine: the ledger called in-process by the same
number of threads (no gRPC), and Python gRPC with handlers that do nothing (no ledger).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from lomas.budget.v1 import budget_pb2, budget_pb2_grpc
from lomas.common.v1 import privacy_pb2
from lomas_budget.ledger import BudgetLedger
from lomas_budget.store import LedgerStore
from lomas_common.convert import privacy_loss_from_proto
from lomas_common.db import Database
from lomas_common.peers import HEALTH_CHECK_METHOD
from lomas_testing.databases import fresh_postgres_url, sqlite_url

ALLOCATION = privacy_pb2.PrivacyLoss(
    approx_dp=privacy_pb2.ApproxDp(epsilon="1000000000", delta="0.9")
)
COST = privacy_pb2.PrivacyLoss(
    approx_dp=privacy_pb2.ApproxDp(epsilon="0.001", delta="0.0000000001")
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU time of this machine's PostgreSQL processes (0 when PostgreSQL runs elsewhere)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the process ended
        if text.split(" (", 1)[1].startswith("postgres)"):
            total += cpu_seconds(int(stat.parent.name))
    return total


async def wait_healthy(target: str, process: subprocess.Popen[bytes]) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        health: grpc.aio.UnaryUnaryMultiCallable[
            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        ] = channel.unary_unary(
            HEALTH_CHECK_METHOD,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        for _ in range(600):
            if process.poll() is not None:
                raise SystemExit("the budget service exited")
            try:
                reply = await health(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                await asyncio.sleep(0.05)
    raise SystemExit("the budget service did not start")


async def bench(store: str, url: str, args: argparse.Namespace) -> None:
    target = f"127.0.0.1:{free_port()}"
    token = secrets.token_urlsafe(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOMAS_")}
    env |= {
        "LOMAS_LISTEN": target,
        "LOMAS_DATABASE_URL": url,
        "LOMAS_SERVICE_TOKEN": token,
        "LOMAS_LOG_LEVEL": "WARNING",
        "LOMAS_SERVER_THREADS": str(args.threads),
    }
    process = subprocess.Popen([sys.executable, "-m", "lomas_budget.main"], env=env)
    metadata = (("x-lomas-service-token", token),)
    try:
        await wait_healthy(target, process)
        users = (
            ["bench-shared"] if args.shared_ledger else [f"bench-{i}" for i in range(args.clients)]
        )
        async with grpc.aio.insecure_channel(target) as channel:
            stub = budget_pb2_grpc.BudgetServiceStub(channel)
            for user in users:
                await stub.OpenLedger(
                    budget_pb2.OpenLedgerRequest(
                        user=user, dataset="bench", allocation=ALLOCATION, actor="bench"
                    ),
                    metadata=metadata,
                )
        latencies: list[float] = []
        counting = False
        stop = False

        async def client(index: int) -> None:
            user = users[index % len(users)]
            async with grpc.aio.insecure_channel(target) as channel:
                stub = budget_pb2_grpc.BudgetServiceStub(channel)
                while not stop:
                    query_id = uuid.uuid4().hex
                    started = time.perf_counter()
                    await stub.ReserveBudget(
                        budget_pb2.ReserveBudgetRequest(
                            query_id=query_id, user=user, dataset="bench", cost=COST, actor="gw"
                        ),
                        metadata=metadata,
                    )
                    await stub.CommitReservation(
                        budget_pb2.CommitReservationRequest(query_id=query_id),
                        metadata=metadata,
                    )
                    if counting:
                        latencies.append(time.perf_counter() - started)

        tasks = [asyncio.create_task(client(i)) for i in range(args.clients)]
        await asyncio.sleep(args.warmup)
        counting = True
        server_cpu, client_cpu = cpu_seconds(process.pid), _own_cpu()
        database_cpu = postgres_cpu_seconds() if store == "postgresql" else 0.0
        started = time.perf_counter()
        await asyncio.sleep(args.seconds)
        counting = False
        elapsed = time.perf_counter() - started
        server_cpu, client_cpu = cpu_seconds(process.pid) - server_cpu, _own_cpu() - client_cpu
        if store == "postgresql":
            database_cpu = postgres_cpu_seconds() - database_cpu
        stop = True
        await asyncio.gather(*tasks)
        pairs = len(latencies)
        ordered = sorted(latencies)
        print(
            f"{store:10s} {args.clients} clients{' (one shared ledger)' if args.shared_ledger else ''}: "
            f"{pairs / elapsed:,.0f} reserve+commit pairs/s; pair latency p50 "
            f"{statistics.median(ordered) * 1e3:.1f} ms, p99 {ordered[int(pairs * 0.99)] * 1e3:.1f} ms; "
            f"CPU per pair: service {server_cpu / pairs * 1e3:.2f} ms, "
            f"clients {client_cpu / pairs * 1e3:.2f} ms"
            + (f", PostgreSQL {database_cpu / pairs * 1e3:.2f} ms" if database_cpu else ""),
            flush=True,
        )
        # The ceiling that CPU alone sets: every core busy with exactly this work.
        machine = (server_cpu + client_cpu + database_cpu) / pairs
        cores = os.cpu_count() or 1
        print(
            f"{'':10s} all of it: {machine * 1e3:.2f} ms of CPU per pair; {cores} cores "
            f"could do at most {cores / machine:,.0f} pairs/s at this cost",
            flush=True,
        )
    finally:
        process.terminate()
        process.wait(30)


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ledger_in_process(store: str, url: str, args: argparse.Namespace) -> None:
    """The ledger alone: `args.clients` threads calling reserve and commit directly (no gRPC)."""
    db = Database.from_url(url, max_connections=args.clients)
    try:
        ledger_store = LedgerStore(db)
        ledger_store.create_schema(reservation_ttl_seconds=900)
        ledger = BudgetLedger(ledger_store)
        allocation = privacy_loss_from_proto(ALLOCATION, field="allocation")
        cost = privacy_loss_from_proto(COST, field="cost")
        users = [f"direct-{i}" for i in range(args.clients)]
        for user in users:
            ledger.open_ledger(user, "bench", allocation, None, "bench")
        pairs = [0]
        stop = threading.Event()

        def client(user: str) -> None:
            while not stop.is_set():
                query_id = uuid.uuid4().hex
                ledger.reserve(query_id, user, "bench", cost, "gw")
                ledger.commit(query_id)
                pairs[0] += 1

        threads = [threading.Thread(target=client, args=(user,)) for user in users]
        for thread in threads:
            thread.start()
        time.sleep(args.warmup)
        before, cpu = pairs[0], _own_cpu()
        time.sleep(args.seconds)
        done, cpu = pairs[0] - before, _own_cpu() - cpu
        stop.set()
        for thread in threads:
            thread.join()
        print(
            f"{store:10s} reference, the ledger in-process ({args.clients} threads, no gRPC): "
            f"{done / args.seconds:,.0f} pairs/s; CPU per pair {cpu / done * 1e3:.2f} ms",
            flush=True,
        )
    finally:
        db.close()


def _nothing(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b""


def _empty_server(port_queue: multiprocessing.Queue[int], threads: int) -> None:
    server = grpc.server(ThreadPoolExecutor(threads))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bench.Empty", {"Call": grpc.unary_unary_rpc_method_handler(_nothing)}
            ),
        )
    )
    port_queue.put(server.add_insecure_port("127.0.0.1:0"))
    server.start()
    server.wait_for_termination()


async def grpc_floor(args: argparse.Namespace) -> None:
    """Python gRPC alone: the same clients and server threads, handlers that do nothing."""
    ports: multiprocessing.Queue[int] = multiprocessing.Queue()
    process = multiprocessing.Process(target=_empty_server, args=(ports, args.threads))
    process.start()
    try:
        target = f"127.0.0.1:{ports.get(timeout=30)}"
        calls = [0]
        counting = stop = False

        async def client() -> None:
            async with grpc.aio.insecure_channel(target) as channel:
                # No serializers: empty bytes out and back.
                call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                    "/bench.Empty/Call"
                )
                while not stop:
                    await call(b"")
                    await call(b"")
                    if counting:
                        calls[0] += 1

        tasks = [asyncio.create_task(client()) for _ in range(args.clients)]
        await asyncio.sleep(args.warmup)
        counting = True
        await asyncio.sleep(args.seconds)
        counting = False
        stop = True
        await asyncio.gather(*tasks)
        print(
            f"{'reference':10s} Python gRPC with empty handlers ({args.clients} clients, "
            f"{args.threads} server threads): {calls[0] / args.seconds:,.0f} pairs of calls/s",
            flush=True,
        )
    finally:
        process.terminate()
        process.join()


def databases(store: str, directory: Path) -> Iterator[tuple[str, str]]:
    if store in ("postgresql", "both"):
        url, drop = fresh_postgres_url("lomas_bench_throughput")
        try:
            yield "postgresql", url
        finally:
            drop()
    if store in ("sqlite", "both"):
        yield "sqlite", sqlite_url(directory / "budget.db")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["postgresql", "sqlite", "both"], default="both")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=8, help="budget server threads")
    parser.add_argument(
        "--shared-ledger", action="store_true", help="all clients charge one ledger (contention)"
    )
    parser.add_argument(
        "--references",
        action="store_true",
        help="also time the ledger without gRPC and gRPC without the ledger (the two ceilings)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        for store, url in databases(args.store, Path(directory)):
            asyncio.run(bench(store, url, args))
            if args.references:
                ledger_in_process(store, url, args)
    if args.references:
        asyncio.run(grpc_floor(args))


if __name__ == "__main__":
    main()

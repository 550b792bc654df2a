"""The same query through each client (Python, TypeScript, Go) against one embedded platform, and
the install time of each client on a fresh clone.

Latency: a SmartNoise-SQL COUNT on PENGUIN, each client as its own user in its own process running
its own loop (this file's `--loop` for Python, clients/typescript/src/bench.ts, clients/go/cmd/
lomas-bench): after a call that opens the connection, the first query (charged), N repeats of it
(free replays of that release) and N repeats with fresh=True (each a new, charged draw); p50/p90
as each process timed them, release decoding included (pandas, apache-arrow, the Go IPC reader).
The clients run one after another, never at once.

Install: `git clone` of the repository's HEAD into a temporary directory, then in it, each timed
alone: scripts/setup-typescript.sh (npm ci from the lock, then tsc), scripts/setup-go.sh (Debian
packages, then the build, with an empty Go build cache) and the Python client into a new venv
(`pip install -e clients/python`, pinned by constraints.txt, as scripts/setup.sh does). The npm
cache, pip's wheel sources and the Debian packages are already on this machine: the times are
those of a machine that has installed them before, not downloads.

    .venv/bin/python bench/client_latency.py [--runs 50] [--quick] [--no-install]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lomas.client import Client
from lomas.client.admin import approx_dp
from lomas_embedded import demo
from lomas_embedded.local import LocalMesh, local_mesh

ROOT = Path(__file__).resolve().parents[1]
SQL = "SELECT COUNT(*) AS n FROM df"
EPSILON, DELTA = "1.0", "0.00001"
GRANT_EPSILON, GRANT_DELTA = "1000000", "0.9"
# Generous per-user limits: the loops measure the clients and the platform, not its guards.
LIMITS = {
    "LOMAS_RATE_LIMIT_PER_SECOND": "100000",
    "LOMAS_MAX_CONCURRENT_QUERIES_PER_USER": "1000",
}
TYPESCRIPT_LOOP = ROOT / "clients" / "typescript" / "dist" / "bench.js"
CLIENTS = ["python", "typescript", "go"]


# -- the Python client's loop (run in its own process, like the others) ------------------------------


def python_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """The loop of bench.ts and lomas-bench, through the Python client."""
    with Client(spec["target"], dataset=spec["dataset"], token=spec["token"]) as client:
        client.list_datasets()  # opens the channel, untimed

        def query(fresh: bool) -> tuple[float, bool]:
            started = time.perf_counter()
            frame = client.smartnoise_sql.query(
                spec["sql"],
                epsilon=spec["epsilon"],
                delta=spec["delta"],
                fresh=fresh,
                progress=False,
            )
            return (time.perf_counter() - started) * 1000, bool(frame.attrs["replay"])

        first, _ = query(False)
        replays = [query(False) for _ in range(spec["runs"])]
        fresh = [query(True) for _ in range(spec["runs"])]
    return {
        "first_ms": first,
        "replay_ms": [ms for ms, _ in replays],
        "fresh_ms": [ms for ms, _ in fresh],
        "replays": sum(replay for _, replay in replays),
        "fresh_replays": sum(replay for _, replay in fresh),
    }


# -- latency -------------------------------------------------------------------------------------------


def percentile(times: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p90 of 50 times is the 45th smallest)."""
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


@dataclass(frozen=True)
class Timings:
    client: str
    first: float
    replay: list[float]
    fresh: list[float]
    replays: int
    fresh_replays: int

    def rows(self) -> list[str]:
        return [
            f"{self.client:<11} {'first query (charged)':<24} {1:>4} {self.first:8.1f}  (one run)",
            row(self.client, "replayed (free)", self.replay),
            row(self.client, "fresh=True (charged)", self.fresh),
        ]


def row(client: str, kind: str, times: list[float]) -> str:
    p50, p90 = statistics.median(times), percentile(times, 0.9)
    return f"{client:<11} {kind:<24} {len(times):>4} {p50:8.1f} {p90:8.1f} {max(times):8.1f}"


def build_go_loop(directory: Path) -> Path:
    """Build clients/go/cmd/lomas-bench offline, as clients/go/build.sh builds the scenario runner."""
    binary = directory / "lomas-bench"
    subprocess.run(
        [
            "bash",
            "-c",
            'source clients/go/goenv.sh && go build -o "$1" "$import_root/cmd/lomas-bench"',
            "build",
            str(binary),
        ],
        cwd=ROOT,
        check=True,
    )
    return binary


def loop_command(client: str, go_loop: Path) -> list[str]:
    if client == "python":
        return [sys.executable, __file__, "--loop"]
    if client == "typescript":
        return ["node", str(TYPESCRIPT_LOOP)]
    return [str(go_loop)]


def run_loop(client: str, command: list[str], spec: dict[str, Any], directory: Path) -> Timings:
    spec_path = directory / f"{client}-loop.json"
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run(
        [*command, str(spec_path)], capture_output=True, text=True, cwd=ROOT, timeout=1800
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {client} loop failed: {done.stderr[-3000:]}")
    out = json.loads(done.stdout)
    return Timings(
        client,
        out["first_ms"],
        out["replay_ms"],
        out["fresh_ms"],
        out["replays"],
        out["fresh_replays"],
    )


def latencies(directory: Path, runs: int) -> tuple[str, list[Timings]]:
    go_loop = build_go_loop(directory)
    if not TYPESCRIPT_LOOP.exists():
        raise RuntimeError(f"{TYPESCRIPT_LOOP} is missing: run scripts/setup-typescript.sh")
    with local_mesh(directory / "mesh", extra_env=LIMITS) as running:
        cost = warm_up(running)
        out = []
        for client in CLIENTS:
            user = f"bench-{client}"
            with running.admin() as admin:
                admin.add_user(user)
                admin.grant(user, demo.DATASET, approx_dp(GRANT_EPSILON, GRANT_DELTA))
            spec = {
                "target": running.target,
                "token": running.token(user),
                "dataset": demo.DATASET,
                "sql": SQL,
                "epsilon": EPSILON,
                "delta": DELTA,
                "runs": runs,
            }
            print(f"{client}: running its loop (load average {load_average()})", flush=True)
            out.append(run_loop(client, loop_command(client, go_loop), spec, directory))
        config = running.mesh.config
        setup = (
            f"mesh: embedded (private Redis, SQLite stores), {config.worker_count} worker(s) x "
            f"concurrency {config.worker_concurrency}; the query costs {cost}"
        )
    return setup, out


def warm_up(running: LocalMesh) -> str:
    """The platform's first queries, untimed, by another user: as many at once as the worker runs,
    twice, so that no client meets a worker process's first task (it loads the data). Returns the
    query's cost."""
    with running.client() as client:
        cost = client.smartnoise_sql.cost(SQL, epsilon=EPSILON, delta=DELTA)
        at_once = running.mesh.config.worker_concurrency
        with ThreadPoolExecutor(at_once) as pool:
            for _ in range(2):
                answers = [
                    pool.submit(
                        client.smartnoise_sql.query,
                        SQL,
                        epsilon=EPSILON,
                        delta=DELTA,
                        fresh=True,
                        progress=False,
                    )
                    for _ in range(at_once)
                ]
                for answer in answers:
                    answer.result()
    return ", ".join(f"{key} {value}" for key, value in cost.items())


# -- install on a fresh clone --------------------------------------------------------------------------


@dataclass(frozen=True)
class Install:
    client: str
    what: str
    seconds: float


def timed_run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return seconds


def installs(directory: Path) -> tuple[str, list[Install]]:
    clone = directory / "clone"
    clone_seconds = timed_run(["git", "clone", "--quiet", str(ROOT), str(clone)], directory)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True
    ).stdout.strip()
    out = [Install("(all)", "git clone of HEAD (a local clone)", clone_seconds)]

    seconds = timed_run(["scripts/setup-typescript.sh"], clone)
    if not (clone / "clients" / "typescript" / "dist" / "index.js").exists():
        raise RuntimeError("setup-typescript.sh built no clients/typescript/dist/index.js")
    out.append(Install("typescript", "scripts/setup-typescript.sh (npm ci + tsc)", seconds))

    cold_cache = {**os.environ, "GOCACHE": str(directory / "go-build-cache")}
    seconds = timed_run(["scripts/setup-go.sh"], clone, cold_cache)
    if not (clone / "clients" / "go" / "bin" / "lomas-scenario").exists():
        raise RuntimeError("setup-go.sh built no clients/go/bin/lomas-scenario")
    out.append(Install("go", "scripts/setup-go.sh (empty Go build cache)", seconds))

    python = shutil.which("python3.11") or "python3"
    venv = directory / "client-venv"
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    started = time.perf_counter()
    timed_run([python, "-m", "venv", str(venv)], clone)
    timed_run([*pip, "install", "-c", "constraints.txt", "setuptools", "wheel"], clone)
    timed_run(
        [*pip, "install", "-c", "constraints.txt", "--no-build-isolation", "-e", "clients/python"],
        clone,
    )
    seconds = time.perf_counter() - started
    timed_run([str(venv / "bin" / "python"), "-c", "import lomas.client"], directory)
    out.append(Install("python", "new venv + pip install -e clients/python", seconds))
    return commit, out


# -- report --------------------------------------------------------------------------------------------


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def report(setup: str, timings: list[Timings], commit: str, install: list[Install]) -> None:
    print(f"\n## Latency of `{SQL}` (epsilon {EPSILON}, delta {DELTA}) per client, ms")
    print(setup)
    print(f"{'client':<11} {'query':<24} {'n':>4} {'p50':>8} {'p90':>8} {'max':>8}")
    for timing in timings:
        print("\n".join(timing.rows()))
    print(f"\n{'p50 (ms)':<11} {'replayed':>9} {'fresh':>9}")
    for timing in timings:
        replayed, fresh = statistics.median(timing.replay), statistics.median(timing.fresh)
        print(f"{timing.client:<11} {replayed:9.1f} {fresh:9.1f}")
    for timing in timings:
        if timing.replays != len(timing.replay) or timing.fresh_replays:
            print(
                f"WARNING: {timing.client}: {timing.replays}/{len(timing.replay)} repeats were "
                f"replays, {timing.fresh_replays}/{len(timing.fresh)} fresh ones were"
            )
    if not install:
        return
    print(f"\n## Install on a fresh clone (HEAD {commit}), seconds")
    print(
        "The npm cache, pip's wheel sources and the Debian packages were already on this machine"
        " (no downloads); the Go build started from an empty build cache."
    )
    print(f"{'client':<11} {'what':<48} {'s':>8}")
    for step in install:
        print(f"{step.client:<11} {step.what:<48} {step.seconds:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="repeats of each kind, per client")
    parser.add_argument("--quick", action="store_true", help="10 repeats of each kind")
    parser.add_argument("--no-install", action="store_true", help="skip the install times")
    parser.add_argument("--loop", metavar="LOOP.json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop:
        print(json.dumps(python_loop(json.loads(Path(args.loop).read_text()))))
        return
    if args.quick:
        args.runs = 10
    print(
        f"# client latency: {os.cpu_count()} cores, load average {load_average()}; "
        f"{args.runs} runs of each kind per client",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        setup, timings = latencies(directory, args.runs)
        commit, install = ("", []) if args.no_install else installs(directory)
    report(setup, timings, commit, install)
    print(f"\nload average at the end: {load_average()} (a shared machine: other work ran too)")


if __name__ == "__main__":
    main()

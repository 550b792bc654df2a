"""The chaos suite, longer: tests/e2e/test_chaos.py's rounds (kill -9 each service, restart Redis
and PostgreSQL, SIGTERM each service, under a steady load of queries) repeated for several cycles,
with more clients and more load per round. Prints each round's counts and the totals; exits 1 if a
round broke an invariant (see tests/e2e/chaos_testing.py for what is checked and how).

    .venv/bin/python bench/chaos.py [--cycles 3] [--clients 4] [--load-seconds 5] [--after-seconds 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

# The chaos machinery lives with the end-to-end tests that run its bounded variant.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

from chaos_testing import (
    SERVICES,
    Chaos,
    chaos_mesh,
    check_round,
    describe,
    timed,
)


def disrupt(chaos: Chaos, how: str, name: str) -> str:
    """Apply one disruption; returns a note on how the service ended (SIGTERM: its exit code)."""
    if how == "kill -9":
        chaos.kill(name)
    elif how == "SIGTERM":
        return f", exit {chaos.terminate(name)}"
    elif name == "redis":
        chaos.restart_redis()
    else:
        chaos.restart_postgres()
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=3, help="how many times to run every round")
    parser.add_argument("--clients", type=int, default=4, help="client threads (one user each)")
    parser.add_argument("--load-seconds", type=float, default=5.0, help="load before a disruption")
    parser.add_argument("--after-seconds", type=float, default=5.0, help="load after it")
    args = parser.parse_args()
    rounds = [
        *(("kill -9", name) for name in SERVICES),
        ("restart", "redis"),
        ("restart", "postgresql"),
        *(("SIGTERM", name) for name in SERVICES),
    ]
    started = time.monotonic()
    failed = 0
    exit_codes: Counter[int] = Counter()
    with tempfile.TemporaryDirectory(prefix="lomas-chaos-") as data_dir:
        with chaos_mesh(Path(data_dir), args.clients) as chaos:
            for cycle in range(1, args.cycles + 1):
                for how, name in rounds:
                    chaos.load.start()
                    time.sleep(args.load_seconds)
                    notes: list[str] = []
                    seconds = timed(lambda: notes.append(disrupt(chaos, how, name)))  # noqa: B023
                    time.sleep(args.after_seconds)
                    chaos.load.stop()
                    answers = chaos.load.take_answers()
                    tally = check_round(chaos)
                    if how == "SIGTERM":
                        exit_codes[chaos.exit_codes[name]] += 1
                    print(
                        f"cycle {cycle}, {how} {name} (back in {seconds:.1f} s{notes[0]}): "
                        f"{describe(tally)}; retried answers: {dict(answers)}",
                        flush=True,
                    )
                    for problem in tally.problems:
                        print(f"  PROBLEM {problem}", flush=True)
                    failed += bool(tally.problems)
            print(
                f"\n{tally.queries} queries sent ({tally.attempts} attempts, {tally.retried} "
                f"retried); {chaos.kills} kills, {chaos.terminations} SIGTERMs (exit codes "
                f"{dict(exit_codes)}), {chaos.service_restarts} service restarts, "
                f"{chaos.redis_restarts} Redis and {chaos.postgres.restarts} PostgreSQL restarts; "
                f"outcomes: {tally.releases} releases, {tally.charged_failures} charged failures, "
                f"{tally.refunds} refunds; "
                f"{failed} rounds with problems; {time.monotonic() - started:.0f} s"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

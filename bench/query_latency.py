"""End-to-end query latency through the client, beside the in-process smartnoise-sql floor.

Starts an embedded mesh (private Redis, SQLite stores, one Celery worker), then times a COUNT and a
GROUP BY AVG on the 344-row PENGUIN dataset through `lomas.client`, and the same queries run in-process
with smartnoise-sql, its reader built once and reused (in a clean process, so the library is stock).

    .venv/bin/python bench/query_latency.py [--runs 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from stock_smartnoise import stock_times

from lomas.client.admin import approx_dp
from lomas_embedded import demo
from lomas_embedded.local import local_mesh

QUERIES = {
    "COUNT": "SELECT COUNT(*) AS n FROM df",
    "GROUP BY AVG": "SELECT species, AVG(bill_length_mm) AS avg_bill FROM df GROUP BY species",
}
EPSILON, DELTA = 1.0, 1e-5


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    return f"p50 {statistics.median(ordered):6.1f} ms   p95 {p95:6.1f} ms"


def floor(csv: Path, metadata: Path, runs: int) -> dict[str, list[float]]:
    """Stock smartnoise-sql in a clean process (bench/stock_smartnoise.py)."""
    return stock_times(csv, yaml.safe_load(metadata.read_text()), QUERIES, runs, EPSILON, DELTA)


def through_platform(tmp: Path, runs: int) -> dict[str, list[float]]:
    with local_mesh(tmp) as running:
        with running.admin() as admin:
            admin.add_user("bench")
            admin.grant("bench", demo.DATASET, approx_dp("1000000", "0.9"))
        client = running.client("bench")
        out = {}
        for name, sql in QUERIES.items():
            for fresh, label in ((True, name), (False, f"{name} (free replay)")):
                for _ in range(5):
                    client.smartnoise_sql.query(sql, epsilon=EPSILON, delta=DELTA, fresh=fresh)
                times = []
                for _ in range(runs):
                    start = time.perf_counter()
                    # fresh=True: a new draw every time, charged (asking again would be a replay).
                    client.smartnoise_sql.query(sql, epsilon=EPSILON, delta=DELTA, fresh=fresh)
                    times.append((time.perf_counter() - start) * 1000)
                out[label] = times
        client.close()
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        csv = demo.write_penguin_dataset(tmp / "datasets")
        metadata = tmp / "penguin_metadata.yaml"
        from lomas_executor.demo import penguin_metadata_text

        metadata.write_text(penguin_metadata_text())
        floors = floor(csv, metadata, args.runs)
        platform = through_platform(tmp, args.runs)
    print(f"{'query':<14} {'in-process smartnoise-sql (floor)':<36} through the platform (client)")
    for name in QUERIES:
        print(f"{name:<14} {summary(floors[name]):<36} {summary(platform[name])}")
    for name in QUERIES:
        label = f"{name} (free replay)"
        print(f"{label:<26} {'':<24} {summary(platform[label])}")


if __name__ == "__main__":
    main()

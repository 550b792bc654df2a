"""Stock smartnoise-sql, timed: its reader built once over a table and reused for every query.

This is what a researcher gets running the library on their own machine, and the floor the platform's
latency is compared with. The benches run it as a separate process, so the library is exactly as
shipped (nothing of the platform imported, no noise-scale memo).

    python bench/stock_smartnoise.py DATA METADATA_JSON QUERIES_JSON RUNS EPSILON DELTA

or, from another bench, `stock_times(data, metadata, queries, runs, epsilon, delta)`.

DATA is a CSV or Parquet file; METADATA_JSON is one table's smartnoise-sql metadata (the `columns`
mapping beside `max_ids`, `rows`, ...); QUERIES_JSON maps a name to SQL over table `df`. Prints a JSON
object mapping each name to its times in milliseconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import snsql
from snsql import Privacy

WARM_UP_RUNS = 3


def stock_times(
    data: Path,
    metadata: dict[str, Any],
    queries: dict[str, str],
    runs: int,
    epsilon: float,
    delta: float,
) -> dict[str, list[float]]:
    """Run this script in a clean process; each query's times in milliseconds."""
    result = subprocess.run(
        [
            sys.executable,
            __file__,
            str(data),
            json.dumps(metadata),
            json.dumps(queries),
            str(runs),
            str(epsilon),
            str(delta),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(result.stdout))


def main() -> None:
    data, metadata_json, queries_json, runs, epsilon, delta = sys.argv[1:7]
    metadata = json.loads(metadata_json)
    columns = metadata.pop("columns")
    frame = pd.read_parquet(data) if data.endswith(".parquet") else pd.read_csv(data)
    reader = snsql.from_df(
        frame,
        privacy=Privacy(epsilon=float(epsilon), delta=float(delta)),
        metadata={"": {"": {"df": {**metadata, **columns}}}},
    )
    out: dict[str, list[float]] = {}
    for name, sql in json.loads(queries_json).items():
        for _ in range(WARM_UP_RUNS):
            reader.execute_df(sql)
        times = []
        for _ in range(int(runs)):
            started = time.perf_counter()
            reader.execute_df(sql)
            times.append((time.perf_counter() - started) * 1000)
        out[name] = times
    print(json.dumps(out))


if __name__ == "__main__":
    main()

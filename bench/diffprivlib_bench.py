"""Time and peak memory of a DiffPrivLib logistic regression, through the executor's engine.

For PENGUIN (the 344-row penguin-like demo data) and a generated penguin-like dataset of 1,000,000
rows (by default), each in a fresh child process as a worker child would run it:

* imports: the engines imported (resident memory after imports, the child's floor);
* cost: the cost estimate (no data access);
* cold run: `QueryEngine.run` of Lomas's pipeline (StandardScaler epsilon 0.5 + LogisticRegression
  epsilon 1.0 on two features, target species, and a DP score with score_epsilon 0.5): reading the
  Parquet file, selecting the columns, the split, DiffPrivLib's training and the DP score;
* warm runs: the same with the table cached (training and score only), median of `--runs`;
* library (the floor): stock DiffPrivLib as a researcher runs it locally, on the same rows already
  in memory as a pandas frame (dropna, `train_test_split`, a DiffPrivLib `Pipeline`'s fit and score,
  labels as text), median of `--runs`;
* peak resident memory of the child (ru_maxrss) and its peak address space (VmPeak), which a
  worker's RLIMIT_AS (LOMAS_TASK_MEMORY_LIMIT_MB) must leave room for.

    .venv/bin/python bench/diffprivlib_bench.py [--sizes 344,1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

PIPELINE = {
    "steps": [
        {
            "name": "scaler",
            "type": "StandardScaler",
            "params": {"epsilon": 0.5, "bounds": [[30, 13], [65, 23]]},
        },
        {
            "name": "classifier",
            "type": "LogisticRegression",
            "params": {"epsilon": 1.0, "data_norm": 5},
        },
    ]
}


def _vm_peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmPeak:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(path: Path, runs: int) -> dict[str, Any]:
    """Run in a fresh process: import, cost, cold run, warm runs; report times and memory."""
    from lomas_executor.cache import DatasetCache
    from lomas_executor.demo import penguin_metadata
    from lomas_executor.diffprivlib_model import DiffPrivLibQuery
    from lomas_executor.engine import DatasetRef, QueryEngine
    from lomas_executor.sources import DataFormat, DataSource

    imported_rss = _rss_mb()
    engine = QueryEngine(DatasetCache(max_bytes=4 * 1024**3))
    dataset = DatasetRef("BENCH", 1, DataSource.local(path), DataFormat.PARQUET, penguin_metadata())
    query = DiffPrivLibQuery(
        json.dumps(PIPELINE),
        ("bill_length_mm", "bill_depth_mm"),
        ("species",),
        test_train_split_seed=1,
        score_epsilon=Decimal("0.5"),  # a real run releases a score only when it is paid for
    )
    started = time.perf_counter()
    engine.estimate_cost(query, dataset)
    cost = time.perf_counter() - started
    started = time.perf_counter()
    release = engine.run(query, dataset)
    cold = time.perf_counter() - started
    warm = []
    for _ in range(runs):
        started = time.perf_counter()
        engine.run(query, dataset)
        warm.append(time.perf_counter() - started)
    score = float(release.loc[release["parameter"] == "score", "values"].iloc[0][0])
    result = {
        "imported_rss_mb": imported_rss,
        "cost_s": cost,
        "cold_s": cold,
        "warm_s": statistics.median(warm),
        "peak_rss_mb": _rss_mb(),  # the engine's peaks, before the library runs
        "vm_peak_mb": _vm_peak_mb(),
        "score": score,
    }
    result["library_s"] = statistics.median(stock_times(path, runs))
    return result


def stock_times(path: Path, runs: int) -> list[float]:
    """Stock DiffPrivLib on the same rows, loaded once (what a researcher gets locally)."""
    import warnings

    import pandas as pd
    from diffprivlib import models
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline

    frame = pd.read_parquet(path, columns=["bill_length_mm", "bill_depth_mm", "species"]).dropna()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        x_train, x_test, y_train, y_test = train_test_split(
            frame[["bill_length_mm", "bill_depth_mm"]].to_numpy(),
            frame["species"].to_numpy(),
            test_size=0.2,
            random_state=1,
        )
        pipeline = Pipeline(
            [
                ("scaler", models.StandardScaler(epsilon=0.5, bounds=([30, 13], [65, 23]))),
                ("classifier", models.LogisticRegression(epsilon=1.0, data_norm=5)),
            ]
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipeline.fit(x_train, y_train).score(x_test, y_test)
        times.append(time.perf_counter() - started)
    return times


def measure(rows: int, runs: int, folder: Path) -> dict[str, Any]:
    from lomas_executor.demo import make_penguin_like

    path = folder / f"penguin-{rows}.parquet"
    make_penguin_like(rows=rows, seed=1).to_parquet(path, index=False)
    output = subprocess.run(
        [sys.executable, __file__, "--child", str(path), "--runs", str(runs)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="344,1000000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.runs)))
        return
    print(
        f"{'rows':>10} {'cost':>8} {'cold run':>9} {'warm run':>9} {'library':>8} "
        f"{'RSS after imports':>18} {'peak RSS':>9} {'peak VM':>9} {'score':>6}"
    )
    with tempfile.TemporaryDirectory() as folder:
        for rows in (int(size) for size in args.sizes.split(",")):
            r = measure(rows, args.runs, Path(folder))
            print(
                f"{rows:>10,} {r['cost_s'] * 1000:>6.1f}ms {r['cold_s']:>8.2f}s {r['warm_s']:>8.2f}s "
                f"{r['library_s']:>7.2f}s {r['imported_rss_mb']:>15.0f} MB {r['peak_rss_mb']:>6.0f} MB {r['vm_peak_mb']:>6.0f} MB "
                f"{r['score']:>6.3f}"
            )


if __name__ == "__main__":
    main()

"""Time and peak memory of an mst synthesis (SmartNoise-Synth) through the executor's engine.

Cases (each in a fresh Python process, so that its peak resident memory is its own):
* PENGUIN: the generated 344-row penguin table, every column (2 x 3 categories, 4 bounded floats in
  10 bins, sex), and species + island only (the e2e test's query);
* 1M rows: a generated table of 1,000,000 rows with few columns (two categorical, two bounded
  numeric), written as Parquet and read by the engine as a real query reads it.

Per case: the import of SmartNoise-Synth (JAX, private-pgm), loading the data (Arrow), the fit and
the sampling (`engine.run`, 1,000 samples, nullable=False), and the process's peak resident memory
(VmHWM). The numbers are the engine's; a query through the platform adds its queueing and transport.

    .venv/bin/python bench/synth_bench.py [--rows 1000000] [--epsilon 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

CHILD = r"""
import json, sys, time
from decimal import Decimal
from pathlib import Path

case = json.loads(sys.argv[1])
started = time.perf_counter()
from lomas_executor import smartnoise_synth_run  # noqa: F401  (SmartNoise-Synth, JAX)
imported = time.perf_counter()
from lomas_executor.cache import DatasetCache
from lomas_executor.engine import DatasetRef, QueryEngine
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.smartnoise_synth import SmartnoiseSynthQuery
from lomas_executor.sources import DataFormat, DataSource

metadata = DatasetMetadata.from_dict(case["metadata"])
path = Path(case["path"])
fmt = DataFormat.PARQUET if path.suffix == ".parquet" else DataFormat.CSV
dataset = DatasetRef("BENCH", 1, DataSource.local(path), fmt, metadata)
engine = QueryEngine(DatasetCache(max_bytes=8 * 1024**3))
load_start = time.perf_counter()
engine.load(dataset)
loaded = time.perf_counter()
query = SmartnoiseSynthQuery(
    "mst",
    Decimal(case["epsilon"]),
    select_cols=tuple(case["columns"]),
    nullable=False,
    nb_samples=case["samples"],
)
samples = engine.run(query, dataset)
done = time.perf_counter()
assert list(samples.columns) == case["columns"] and len(samples) == case["samples"]
status = Path("/proc/self/status").read_text().splitlines()
peak_kb = int(next(line for line in status if line.startswith("VmHWM")).split()[1])
print(json.dumps({
    "import_s": imported - started,
    "load_s": loaded - load_start,
    "fit_sample_s": done - loaded,
    "peak_mb": peak_kb / 1024,
}))
"""


def generated_frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    group = rng.choice(["a", "b", "c", "d"], size=rows, p=[0.4, 0.3, 0.2, 0.1])
    region = rng.choice(["north", "south", "east"], size=rows)
    base = np.where(group == "a", 30.0, 60.0)
    age = np.clip(rng.normal(base, 12.0), 0, 100).round()
    income = np.clip(age * 800 + rng.normal(0, 15_000, size=rows), 0, 200_000)
    return pd.DataFrame({"group": group, "region": region, "age": age, "income": income})


GENERATED_METADATA = {
    "max_ids": 1,
    "row_privacy": True,
    "columns": {
        "group": {"type": "string", "cardinality": 4, "categories": ["a", "b", "c", "d"]},
        "region": {"type": "string", "cardinality": 3, "categories": ["north", "south", "east"]},
        "age": {"type": "float", "lower": 0.0, "upper": 100.0},
        "income": {"type": "float", "lower": 0.0, "upper": 200000.0},
    },
}


def run_case(name: str, case: dict[str, object]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(case)],
        capture_output=True,
        text=True,
        timeout=3_600,
    )
    if result.returncode != 0:
        print(f"{name}: failed\n{result.stderr[-2000:]}")
        return
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    print(
        f"{name:<34} import {numbers['import_s']:6.2f} s   load {numbers['load_s']:6.2f} s   "
        f"fit+sample {numbers['fit_sample_s']:7.2f} s   peak RSS {numbers['peak_mb']:7.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--epsilon", default="1")
    parser.add_argument("--samples", type=int, default=1_000)
    args = parser.parse_args()

    from lomas_executor.demo import make_penguin_like, penguin_metadata

    with tempfile.TemporaryDirectory() as tmp:
        penguin = Path(tmp) / "penguin.csv"
        make_penguin_like().to_csv(penguin, index=False)
        md = penguin_metadata().to_dict()
        every = list(md["columns"])
        common = {"epsilon": args.epsilon, "samples": args.samples}
        run_case(
            "PENGUIN (344 rows), species+island",
            {**common, "metadata": md, "path": str(penguin), "columns": ["species", "island"]},
        )
        run_case(
            "PENGUIN (344 rows), 7 columns",
            {**common, "metadata": md, "path": str(penguin), "columns": every},
        )
        big = Path(tmp) / "generated.parquet"
        frame = generated_frame(args.rows)
        frame.to_parquet(big, index=False)
        metadata = {**GENERATED_METADATA, "rows": args.rows}
        run_case(
            f"generated ({args.rows:,} rows), 4 columns",
            {**common, "metadata": metadata, "path": str(big), "columns": list(frame.columns)},
        )


if __name__ == "__main__":
    main()

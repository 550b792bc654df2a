from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from lomas_common.errors import FailedPrecondition, InvalidQuery
from lomas_executor import smartnoise_sql as sn
from lomas_executor.cache import DatasetCache
from lomas_executor.engine import DatasetRef, QueryEngine
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.smartnoise_sql import SmartnoiseSqlQuery
from lomas_executor.sources import DataFormat, DataSource

AVG_BY_SPECIES = "SELECT species, AVG(bill_length_mm) AS avg_bill FROM df GROUP BY species"


def _query(sql: str = AVG_BY_SPECIES) -> SmartnoiseSqlQuery:
    return SmartnoiseSqlQuery(sql, Decimal("1"), Decimal("0.00001"))


def _dataset(path: Path, md: DatasetMetadata, version: int = 1) -> DatasetRef:
    fmt = DataFormat.PARQUET if path.suffix == ".parquet" else DataFormat.CSV
    return DatasetRef("PENGUIN", version, DataSource.local(path), fmt, md)


def test_run_loads_once_and_reuses_the_cache(
    penguin_csv: Path, penguin_md: DatasetMetadata
) -> None:
    cache = DatasetCache(max_bytes=64 * 1024**2)
    engine = QueryEngine(cache)
    dataset = _dataset(penguin_csv, penguin_md)
    first = engine.run(_query(), dataset)
    assert list(first.columns) == ["species", "avg_bill"]
    assert sorted(first["species"]) == ["Adelie", "Chinstrap", "Gentoo"]
    penguin_csv.unlink()  # a cached dataset does not go back to its source
    second = engine.run(_query("SELECT COUNT(*) AS n FROM df"), dataset)
    assert list(second.columns) == ["n"]
    stats = cache.stats()
    assert (stats.entries, stats.misses, stats.hits) == (1, 1, 1)
    assert cache.keys() == [("PENGUIN", 1)]
    # A new version is a new key: it reads its source (gone here).
    with pytest.raises(FailedPrecondition, match="not found"):
        engine.run(_query(), _dataset(penguin_csv, penguin_md, version=2))


def test_run_refuses_invalid_queries_before_loading(
    tmp_path: Path, penguin_md: DatasetMetadata
) -> None:
    cache = DatasetCache(max_bytes=64 * 1024**2)
    engine = QueryEngine(cache)
    missing = _dataset(tmp_path / "absent.csv", penguin_md)
    with pytest.raises(InvalidQuery, match="don't know how to rewrite"):
        engine.run(_query("SELECT MAX(body_mass_g) FROM df"), missing)
    assert cache.stats().misses == 0


def test_parquet_dataset_runs(
    tmp_path: Path, penguin_frame: pd.DataFrame, penguin_md: DatasetMetadata
) -> None:
    path = tmp_path / "penguin.parquet"
    penguin_frame.to_parquet(path, index=False)
    engine = QueryEngine(DatasetCache(max_bytes=64 * 1024**2))
    result = engine.run(
        _query("SELECT sex, COUNT(*) AS n FROM df GROUP BY sex"), _dataset(path, penguin_md)
    )
    assert list(result.columns) == ["sex", "n"]
    assert set(result["sex"].dropna()) == {"MALE", "FEMALE"}


def test_cost_and_dummy_runs_never_read_the_data(
    tmp_path: Path, penguin_md: DatasetMetadata
) -> None:
    cache = DatasetCache(max_bytes=64 * 1024**2)
    engine = QueryEngine(cache)
    dataset = _dataset(tmp_path / "absent.csv", penguin_md)
    cost = engine.estimate_cost(_query(), dataset)
    assert cost == sn.estimate_cost(_query(), penguin_md)
    assert cost.epsilon == Decimal("2")

    frame = engine.dummy_frame(dataset, rows=50, seed=3)
    pd.testing.assert_frame_equal(frame, engine.dummy_frame(dataset, rows=50, seed=3))
    assert list(frame.columns) == list(penguin_md.column_names)

    release = engine.run_dummy(_query(), dataset, rows=200, seed=3)
    assert list(release.columns) == ["species", "avg_bill"]
    assert set(release["species"]) <= {"Adelie", "Chinstrap", "Gentoo"}
    assert cache.stats().misses == 0
    with pytest.raises(InvalidQuery, match="Column cannot be found"):
        engine.run_dummy(_query("SELECT SUM(wings) FROM df"), dataset, rows=10, seed=0)


@dataclass(frozen=True)
class _OtherQuery:
    pipeline: str


def test_unknown_query_kinds_are_refused(tmp_path: Path, penguin_md: DatasetMetadata) -> None:
    engine = QueryEngine(DatasetCache(max_bytes=1024))
    dataset = _dataset(tmp_path / "absent.csv", penguin_md)
    other: Any = _OtherQuery("{}")  # not a Query: the engine must refuse it at run time
    with pytest.raises(InvalidQuery, match="unsupported query kind: _OtherQuery"):
        engine.estimate_cost(other, dataset)
    with pytest.raises(InvalidQuery, match="unsupported query kind"):
        engine.run(other, dataset)
    with pytest.raises(InvalidQuery, match="unsupported query kind"):
        engine.run_dummy(other, dataset, rows=10, seed=0)

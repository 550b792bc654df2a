"""Shared fixtures: the PENGUIN demo metadata and a generated 344-row penguin-like dataset."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lomas_executor import smartnoise_sql
from lomas_executor.demo import make_penguin_like, penguin_metadata
from lomas_executor.metadata import DatasetMetadata


@pytest.fixture(scope="session")
def penguin_md() -> DatasetMetadata:
    return penguin_metadata()


@pytest.fixture(scope="session")
def penguin_frame() -> pd.DataFrame:
    return make_penguin_like(rows=344, seed=0)


@pytest.fixture(scope="session")
def penguin_reader(
    penguin_frame: pd.DataFrame, penguin_md: DatasetMetadata
) -> smartnoise_sql.SqliteTableReader:
    return smartnoise_sql.prepare_reader(penguin_frame, penguin_md)


@pytest.fixture()
def penguin_csv(tmp_path: Path, penguin_frame: pd.DataFrame) -> Path:
    path = tmp_path / "penguin.csv"
    penguin_frame.to_csv(path, index=False)
    return path

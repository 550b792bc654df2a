from __future__ import annotations

import pandas as pd
import pytest

from lomas_common.errors import InvalidArgument
from lomas_executor.demo import make_penguin_like
from lomas_executor.dummy import make_dummy_frame
from lomas_executor.metadata import DatasetMetadata

ALL_TYPES = DatasetMetadata.from_dict(
    {
        "max_ids": 1,
        "rows": 1000,
        "row_privacy": True,
        "columns": {
            "age": {"type": "int", "precision": 32, "lower": 18, "upper": 25},
            "age_n": {"type": "int", "lower": -3, "upper": 3, "nullable": True},
            "educ": {"type": "int", "cardinality": 3, "categories": [9, 1, 11]},
            "income": {"type": "float", "lower": 1000.0, "upper": 2000.0},
            "income_n": {"type": "float", "lower": 0.0, "upper": 1.0, "nullable": True},
            "species": {"type": "string", "cardinality": 2, "categories": ["a", "b"]},
            "name": {"type": "string", "nullable": True},
            "flag": {"type": "boolean"},
            "flag_n": {"type": "boolean", "nullable": True},
            "born": {"type": "datetime", "lower": "1990-01-01", "upper": "1990-12-31"},
            "seen": {"type": "datetime", "nullable": True},
        },
    }
)
NULLABLE = ("age_n", "income_n", "name", "flag_n", "seen")


def test_same_inputs_give_the_same_frame_and_another_seed_another() -> None:
    first = make_dummy_frame(ALL_TYPES, 500, seed=42)
    again = make_dummy_frame(ALL_TYPES, 500, seed=42)
    other = make_dummy_frame(ALL_TYPES, 500, seed=43)
    pd.testing.assert_frame_equal(first, again)
    assert not first["income"].equals(other["income"])
    assert not first["name"].equals(other["name"])


def test_values_follow_the_metadata() -> None:
    frame = make_dummy_frame(ALL_TYPES, 2000, seed=7)
    assert list(frame.columns) == list(ALL_TYPES.column_names)
    assert len(frame) == 2000
    assert frame["age"].dtype == "int64"
    assert frame["age"].between(18, 25).all()
    assert set(frame["age"]) == set(range(18, 26))  # both bounds reachable
    assert frame["age_n"].dtype == "Int64"
    assert frame["age_n"].dropna().between(-3, 3).all()
    assert set(frame["educ"]) == {9, 1, 11}
    assert frame["income"].between(1000.0, 2000.0).all()
    assert frame["income_n"].dropna().between(0.0, 1.0).all()
    assert set(frame["species"]) == {"a", "b"}
    assert frame["name"].dropna().str.fullmatch("[a-z]{8}").all()
    assert frame["flag"].dtype == bool
    assert set(frame["flag"]) == {True, False}
    assert frame["flag_n"].dtype == "boolean"
    assert pd.api.types.is_datetime64_any_dtype(frame["born"])
    assert frame["born"].between(pd.Timestamp("1990-01-01"), pd.Timestamp("1990-12-31")).all()
    for name in ALL_TYPES.column_names:
        nulls = int(frame[name].isna().sum())
        if name in NULLABLE:
            assert nulls == 100, name  # 5% of 2000 rows
        else:
            assert nulls == 0, name


def test_zero_rows_keep_columns_and_bad_arguments_are_refused() -> None:
    empty = make_dummy_frame(ALL_TYPES, 0, seed=0)
    assert list(empty.columns) == list(ALL_TYPES.column_names)
    assert len(empty) == 0
    for rows in (-1, 10_000_001, True):
        with pytest.raises(InvalidArgument, match="dummy rows"):
            make_dummy_frame(ALL_TYPES, rows, seed=0)


def test_penguin_like_data_follows_the_penguin_metadata(penguin_md: DatasetMetadata) -> None:
    frame = make_penguin_like()
    pd.testing.assert_frame_equal(frame, make_penguin_like(rows=344, seed=0))
    assert len(frame) == 344
    assert list(frame.columns) == list(penguin_md.column_names)
    for name in penguin_md.column_names:
        column = penguin_md.column(name)
        values = frame[name].dropna()
        if "categories" in column:
            assert set(values) == set(column["categories"]), name
        else:
            assert values.between(column["lower"], column["upper"]).all(), name
    assert frame["bill_length_mm"].isna().sum() == 2
    assert frame["sex"].isna().sum() == 11
    # Species differ as in the real data: Gentoo are the heaviest, Adelie have the shortest bills.
    means = frame.groupby("species")[["body_mass_g", "bill_length_mm"]].mean()
    assert means["body_mass_g"].idxmax() == "Gentoo"
    assert means["bill_length_mm"].idxmin() == "Adelie"
    assert set(frame.loc[frame["species"] == "Chinstrap", "island"]) == {"Dream"}

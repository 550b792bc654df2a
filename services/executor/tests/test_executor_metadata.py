from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from snsql.metadata import Metadata

from lomas_common.errors import InvalidMetadata
from lomas_executor.demo import penguin_metadata_text
from lomas_executor.metadata import DatasetMetadata

PUMS_YAML = """
max_ids: 1
row_privacy: true
censor_dims: False
columns:
  age: {private_id: true, type: int, precision: 32, lower: 0, upper: 120}
  sex: {type: boolean}
  educ: {type: int, precision: 32, cardinality: 3, categories: [9, 1, 11]}
  income: {type: float, precision: 64, lower: 0.0, upper: 500_000.0}
rows: 1000
"""

BIRTHDAY_YAML = """
max_ids: 1
row_privacy: true
rows: 5
columns:
  birthday: {type: datetime, lower: "1900-01-01", upper: 2050-01-01}
"""


def _base() -> dict[str, Any]:
    return {
        "max_ids": 1,
        "rows": 100,
        "row_privacy": True,
        "columns": {
            "x": {"type": "float", "precision": 64, "lower": 0.0, "upper": 10.0},
            "s": {"type": "string", "cardinality": 2, "categories": ["a", "b"]},
        },
    }


def test_penguin_metadata_round_trips_in_lomas_form() -> None:
    raw = yaml.safe_load(penguin_metadata_text())
    md = DatasetMetadata.from_yaml_text(penguin_metadata_text())
    assert md.to_dict() == raw
    assert md.rows == 344
    assert md.max_ids == 1
    assert md.censor_dims is False
    assert md.column_names == (
        "species",
        "island",
        "bill_length_mm",
        "bill_depth_mm",
        "flipper_length_mm",
        "body_mass_g",
        "sex",
    )


def test_struct_floats_become_ints_and_match_the_yaml_form() -> None:
    from_yaml = DatasetMetadata.from_yaml_text(PUMS_YAML)
    # What a protobuf Struct / JSON gives back: every number a float.
    as_struct = yaml.safe_load(PUMS_YAML)
    as_struct["max_ids"] = 1.0
    as_struct["rows"] = 1000.0
    as_struct["columns"]["age"].update(precision=32.0, lower=0.0, upper=120.0)
    as_struct["columns"]["educ"].update(
        precision=32.0, cardinality=3.0, categories=[9.0, 1.0, 11.0]
    )
    as_struct["columns"]["income"]["precision"] = 64.0
    from_struct = DatasetMetadata.from_dict(as_struct)

    result = from_struct.to_dict()
    assert result["max_ids"] == 1 and type(result["max_ids"]) is int
    assert type(result["rows"]) is int
    age = result["columns"]["age"]
    assert (age["lower"], age["upper"], age["precision"]) == (0, 120, 32)
    assert all(type(v) is int for v in (age["lower"], age["upper"], age["precision"]))
    assert all(type(v) is int for v in result["columns"]["educ"]["categories"])
    assert type(result["columns"]["educ"]["cardinality"]) is int
    assert from_struct == from_yaml
    assert hash(from_struct) == hash(from_yaml)
    assert from_struct.fingerprint() == from_yaml.fingerprint()


def test_float_bounds_given_as_ints_become_floats() -> None:
    raw = _base()
    raw["columns"]["x"].update(lower=0, upper=10)
    md = DatasetMetadata.from_dict(raw)
    assert type(md.column("x")["lower"]) is float
    assert md == DatasetMetadata.from_dict(_base())


def test_yaml_dates_become_iso_text() -> None:
    md = DatasetMetadata.from_yaml_text(BIRTHDAY_YAML)
    assert md.column("birthday")["lower"] == "1900-01-01"
    assert md.column("birthday")["upper"] == "2050-01-01"


def _with(path: tuple[str, ...], value: object) -> dict[str, Any]:
    raw = _base()
    target: dict[str, Any] = raw
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return raw


_DELETE = object()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            _with(("columns", "x", "lower"), 11.0),
            "column 'x': lower bound cannot be larger than upper bound",
        ),
        (
            _with(("columns", "s", "categories"), ["a", "b", "c"]),
            "column 's': number of categories (3) must equal cardinality (2)",
        ),
        (
            _with(("columns", "x", "precision"), 16),
            "column 'x': precision must be 32 or 64, got 16",
        ),
        (_with(("columns", "x", "type"), "decimal"), "column 'x': unknown type 'decimal'"),
        (
            _with(("columns", "x", "upper"), _DELETE),
            "column 'x': give both lower and upper bounds, or neither",
        ),
        (
            _with(("columns", "s", "categories"), _DELETE),
            "column 's': give both cardinality and categories",
        ),
        (
            _with(("columns", "s", "categories"), ["a", "a"]),
            "column 's': categories must be distinct",
        ),
        (_with(("max_ids",), 1.5), "max_ids must be an integer"),
        (_with(("max_ids",), 0), "max_ids must be greater than 0"),
        (_with(("rows",), _DELETE), "metadata is missing required field(s): rows"),
        (_with(("row_privacy",), "yes"), "row_privacy must be true or false"),
        (_with(("censor_dim",), False), "metadata has unknown field(s): censor_dim"),
        (
            _with(("columns", "x", "lowr"), 0.0),
            "column 'x': unknown field(s): lowr",
        ),
        (
            _with(("columns", "rows"), {"type": "int"}),
            "column name 'rows' is reserved for a table-level field",
        ),
        (
            _with(("row_privacy",), False),
            "row_privacy is false, so one column must have private_id: true",
        ),
        (_with(("columns",), {}), "columns must be a non-empty mapping"),
        (
            _with(("columns", "b"), {"type": "boolean", "lower": 0, "upper": 1}),
            "column 'b': bounds only apply to int, float and datetime columns",
        ),
        (
            _with(("columns", "d"), {"type": "datetime", "lower": "2020-01-01", "upper": "x"}),
            "column 'd': upper must be an ISO date or datetime",
        ),
        (
            _with(
                ("columns", "d"),
                {"type": "datetime", "lower": "2021-01-01", "upper": "2020-01-01"},
            ),
            "column 'd': lower bound cannot be larger than upper bound",
        ),
        (
            _with(
                ("columns", "k"),
                {"type": "int", "lower": 0, "upper": 10, "cardinality": 2, "categories": [1, 1000]},
            ),
            "column 'k': categories must lie within the lower and upper bounds",
        ),
        (_with(("use_dpsu",), True), "use_dpsu is not supported"),
        ([1, 2], "metadata must be a mapping"),
    ],
)
def test_invalid_metadata_is_refused_with_a_clear_message(raw: object, message: str) -> None:
    with pytest.raises(InvalidMetadata) as caught:
        DatasetMetadata.from_dict(raw)
    assert caught.value.reason == "METADATA_INVALID"
    assert message in caught.value.message


def test_invalid_yaml_is_invalid_metadata() -> None:
    with pytest.raises(InvalidMetadata, match="not valid YAML at line 2"):
        DatasetMetadata.from_yaml_text("max_ids: 1\n  rows: [\n")


def test_unbounded_numeric_columns_are_allowed_and_listed() -> None:
    raw = _base()
    raw["columns"]["n"] = {"type": "int", "precision": 32}
    raw["columns"]["c"] = {"type": "int", "cardinality": 2, "categories": [1, 2]}
    md = DatasetMetadata.from_dict(raw)
    assert md.unbounded_numeric_columns() == ("n", "c")


def test_to_smartnoise_puts_columns_beside_table_keys() -> None:
    raw = yaml.safe_load(PUMS_YAML)
    raw["columns"]["birthday"] = {"type": "datetime", "lower": "1900-01-01", "upper": "2050-01-01"}
    md = DatasetMetadata.from_dict(raw)
    snsql_dict = md.to_smartnoise()
    table = snsql_dict[""][""]["df"]
    assert "columns" not in table
    assert table["max_ids"] == 1 and table["rows"] == 1000 and table["row_privacy"] is True
    assert table["censor_dims"] is False
    assert table["age"] == {
        "type": "int",
        "nullable": False,
        "private_id": True,
        "lower": 0,
        "upper": 120,
    }
    assert table["educ"]["cardinality"] == 3
    assert "lower" not in table["birthday"]  # smartnoise-sql would parse it as a float
    parsed = Metadata.from_dict(snsql_dict)
    df = parsed["df"]
    assert df is not None
    assert (df["income"].lower, df["income"].upper) == (0.0, 500000.0)
    assert df["age"].is_key is True
    assert df.censor_dims is False
    # The dict handed out is a copy: changing it leaves the metadata intact.
    table["age"]["upper"] = 5
    assert md.to_smartnoise()[""][""]["df"]["age"]["upper"] == 120


def test_to_dict_is_a_copy() -> None:
    md = DatasetMetadata.from_dict(_base())
    changed = md.to_dict()
    changed["columns"]["x"]["upper"] = 99.0
    assert md.column("x")["upper"] == 10.0
    assert md == DatasetMetadata.from_dict(copy.deepcopy(_base()))

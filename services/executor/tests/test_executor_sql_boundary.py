"""The privacy boundary of SmartNoise-SQL queries: public group keys, size ceilings, dry runs and
an exact charge (`lomas_executor.sql_limits` and `lomas_executor.smartnoise_sql`).

Everything here runs the real engine on small real frames built in the tests.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from lomas_common.errors import Code, InvalidQuery
from lomas_common.privacy import PrivacyLoss
from lomas_executor import smartnoise_sql as sn
from lomas_executor.cache import DatasetCache
from lomas_executor.engine import DatasetRef, QueryEngine
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.settings import SqlLimits
from lomas_executor.smartnoise_sql import SmartnoiseSqlQuery
from lomas_executor.sources import DataFormat, DataSource
from lomas_executor.sql_limits import DEFAULT_LIMITS

SPECIES = ["Adelie", "Chinstrap", "Gentoo"]
ISLANDS = ["Torgersen", "Biscoe", "Dream"]
SEXES = ["MALE", "FEMALE"]
RINGS = [1, 2, 3]
COUNT_BY_SPECIES = "SELECT species, COUNT(*) AS n FROM df GROUP BY species"
NOT_ADELIE = "SELECT species, COUNT(*) AS n FROM df WHERE species <> 'Adelie' GROUP BY species"


def _metadata(**changes: Any) -> DatasetMetadata:
    columns: dict[str, Any] = {
        "species": {"type": "string", "cardinality": 3, "categories": SPECIES},
        "island": {"type": "string", "cardinality": 3, "categories": ISLANDS},
        "sex": {"type": "string", "cardinality": 2, "categories": SEXES},
        "ring": {"type": "int", "cardinality": 3, "categories": RINGS},
        "flag": {"type": "boolean"},
        "x": {"type": "float", "lower": 0.0, "upper": 10.0},
        "y": {"type": "float", "lower": 0.0, "upper": 100.0},
    }
    columns.update(changes.pop("columns", {}))
    return DatasetMetadata.from_dict(
        {"max_ids": 1, "rows": 12, "row_privacy": True, "columns": columns, **changes}
    )


def _frame() -> pd.DataFrame:
    """12 rows: no Torgersen, no ring 3, flag always true, one NULL sex (not declared nullable)."""
    return pd.DataFrame(
        {
            "species": ["Adelie"] * 3 + ["Chinstrap"] * 4 + ["Gentoo"] * 5,
            "island": ["Biscoe", "Dream"] * 6,
            "sex": ["MALE", "FEMALE", None] + ["MALE", "FEMALE"] * 4 + ["MALE"],
            "ring": pd.array([1, 2] * 6, dtype="Int64"),
            "flag": [True] * 12,
            "x": [1.25, 2.5, 3.75, 4.0, 5.5, 6.125, 7.0, 8.5, 9.25, 1.5, 2.75, 3.125],
            "y": [float(i * 7) for i in range(12)],
        }
    )


@pytest.fixture(scope="module")
def md() -> DatasetMetadata:
    return _metadata()


@pytest.fixture(scope="module")
def reader(md: DatasetMetadata) -> sn.SqliteTableReader:
    return sn.prepare_reader(_frame(), md)


def _query(
    sql: str, epsilon: str = "1", delta: str = "0.00001", postprocess: bool = True
) -> SmartnoiseSqlQuery:
    return SmartnoiseSqlQuery(sql, Decimal(epsilon), Decimal(delta), {}, postprocess)


def _refused(sql: str, md: DatasetMetadata, limits: SqlLimits | None = None) -> InvalidQuery:
    with pytest.raises(InvalidQuery) as caught:
        sn.estimate_cost(_query(sql), md, limits or DEFAULT_LIMITS)
    assert caught.value.code is Code.INVALID_ARGUMENT
    return caught.value


# -- 1. no raw value out of a GROUP BY -------------------------------------------------------------


def test_group_by_a_float_column_is_refused_before_any_charge(
    md: DatasetMetadata, reader: sn.SqliteTableReader
) -> None:
    sql = "SELECT x, COUNT(*) AS n FROM df GROUP BY x"
    refusal = _refused(sql, md)
    assert refusal.reason == "GROUP_KEYS_NOT_PUBLIC"
    assert refusal.metadata == {"column": "x"}
    assert "'x'" in refusal.message
    assert "declare its categories in the metadata" in refusal.message
    assert "censor_dims" in refusal.message
    # The run path validates first: the same refusal, not an execution failure.
    with pytest.raises(InvalidQuery) as caught:
        sn.execute(_query(sql), reader, md)
    assert caught.value.reason == "GROUP_KEYS_NOT_PUBLIC"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT COUNT(*) AS n FROM df GROUP BY x * 2",
        "SELECT CASE WHEN x > 5 THEN 'a' ELSE 'b' END AS c, COUNT(*) AS n FROM df "
        "GROUP BY CASE WHEN x > 5 THEN 'a' ELSE 'b' END",
        "SELECT species, COUNT(*) AS n FROM df GROUP BY species, y",
        "SELECT COUNT(*) AS n FROM df GROUP BY ring + 1",
    ],
)
def test_group_keys_that_are_not_public_columns_are_refused(sql: str, md: DatasetMetadata) -> None:
    refusal = _refused(sql, md)
    assert refusal.reason == "GROUP_KEYS_NOT_PUBLIC"
    assert "censor_dims" in refusal.message


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT DISTINCT species FROM df",
        "SELECT MIN(x) AS m FROM df",
        "SELECT MAX(x) AS m FROM df",
        "SELECT MEDIAN(x) AS m FROM df",
        "SELECT PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY x) FROM df",
        "SELECT s, COUNT(*) AS n FROM (SELECT species AS s FROM df) AS t GROUP BY s",
        "SELECT species, x, COUNT(*) AS n FROM df GROUP BY species",
        "SELECT COUNT(*) AS n FROM df WHERE x IN (SELECT x FROM df)",
    ],
)
def test_other_routes_for_raw_values_are_refused(sql: str, md: DatasetMetadata) -> None:
    """smartnoise-sql refuses these itself (no rewrite, no subqueries): kept that way here."""
    assert _refused(sql, md).reason == "QUERY_INVALID"


def test_a_category_without_rows_is_released_with_noise(
    md: DatasetMetadata, reader: sn.SqliteTableReader
) -> None:
    result = sn.execute(_query(NOT_ADELIE), reader, md)
    assert list(result.columns) == ["species", "n"]
    assert list(result["species"]) == SPECIES  # Adelie too, in the declared order
    assert result["n"].map(type).eq(int).all()


def test_two_keys_release_the_full_cross_product(
    md: DatasetMetadata, reader: sn.SqliteTableReader
) -> None:
    sql = "SELECT species, island, COUNT(*) AS n, SUM(x) AS sx FROM df GROUP BY species, island"
    result = sn.execute(_query(sql), reader, md)
    assert list(zip(result["species"], result["island"], strict=True)) == list(
        itertools.product(SPECIES, ISLANDS)
    )
    assert result["sx"].map(math.isfinite).all()
    # A key the query groups by but does not show still gets every combination.
    hidden = sn.execute(
        _query("SELECT species, COUNT(*) AS n FROM df GROUP BY species, island"), reader, md
    )
    assert list(hidden["species"]) == [s for s in SPECIES for _ in ISLANDS]


def test_filled_keys_have_the_types_of_present_ones(
    md: DatasetMetadata, reader: sn.SqliteTableReader
) -> None:
    sql = "SELECT ring, flag, COUNT(*) AS n, AVG(x) AS ax FROM df GROUP BY ring, flag"
    result = sn.execute(_query(sql), reader, md)
    # ring 3 and flag false have no rows; their keys look exactly like the others.
    assert list(zip(result["ring"], result["flag"], strict=True)) == list(
        itertools.product(RINGS, [False, True])
    )
    assert result["ring"].map(type).eq(int).all()
    assert result["flag"].map(type).eq(bool).all()
    assert result["n"].map(type).eq(int).all()
    assert result["ax"].map(type).eq(float).all()


def test_nulls_are_a_key_only_where_the_metadata_declares_them(
    md: DatasetMetadata, reader: sn.SqliteTableReader
) -> None:
    sql = "SELECT sex, COUNT(*) AS n FROM df GROUP BY sex"
    # The data holds one NULL sex, but the metadata does not declare one: no such key.
    assert list(sn.execute(_query(sql), reader, md)["sex"]) == SEXES
    nullable = _metadata(
        columns={"sex": {"type": "string", "cardinality": 2, "categories": SEXES, "nullable": True}}
    )
    released = sn.execute(_query(sql), sn.prepare_reader(_frame(), nullable), nullable)
    assert list(released["sex"].iloc[:2]) == SEXES and released["sex"].iloc[2] is None
    assert len(released) == 3


def test_the_key_set_of_a_release_does_not_depend_on_the_data(md: DatasetMetadata) -> None:
    only_gentoo = _frame().assign(species="Gentoo", island="Dream")
    sql = "SELECT species, island, SUM(y) AS sy FROM df GROUP BY species, island"
    keys = [
        list(zip(release["species"], release["island"], strict=True))
        for release in (
            sn.execute(_query(sql), sn.prepare_reader(frame, md), md)
            for frame in (_frame(), only_gentoo)
        )
    ]
    assert keys[0] == keys[1] == list(itertools.product(SPECIES, ISLANDS))


def test_having_order_by_and_limit_apply_after_the_noise(
    md: DatasetMetadata, reader: sn.SqliteTableReader
) -> None:
    ordered = sn.execute(_query(f"{COUNT_BY_SPECIES} ORDER BY species DESC LIMIT 2"), reader, md)
    assert list(ordered["species"]) == ["Gentoo", "Chinstrap"]
    none_left = sn.execute(_query(f"{COUNT_BY_SPECIES} HAVING n > 1000000"), reader, md)
    assert list(none_left.columns) == ["species", "n"] and len(none_left) == 0
    all_left = sn.execute(_query(f"{COUNT_BY_SPECIES} HAVING n > -1000000"), reader, md)
    assert list(all_left["species"]) == SPECIES
    raw = sn.execute(_query(NOT_ADELIE, postprocess=False), reader, md)
    assert list(raw.columns) == ["res_0", "res_1"]
    assert list(raw["res_0"]) == SPECIES


def test_too_many_key_combinations_are_refused_before_any_charge() -> None:
    many = [f"c{i}" for i in range(101)]
    wide = _metadata(
        columns={
            "species": {"type": "string", "cardinality": 101, "categories": many},
            "island": {"type": "string", "cardinality": 101, "categories": many},
        }
    )
    refusal = _refused(
        "SELECT species, island, COUNT(*) AS n FROM df GROUP BY species, island", wide
    )
    assert refusal.reason == "QUERY_LIMIT_EXCEEDED"
    assert refusal.metadata == {"limit": "maxGroupKeyCombinations", "maximum": "10000"}
    assert refusal.message == (
        "the GROUP BY keys have 10201 combinations of declared categories, more than 10000"
    )
    # One key of 101 categories is within the default ceiling, and a lower ceiling applies.
    assert sn.estimate_cost(_query(COUNT_BY_SPECIES), wide).epsilon == 1
    small = _refused(COUNT_BY_SPECIES, wide, SqlLimits(max_group_key_combinations=100))
    assert small.metadata == {"limit": "maxGroupKeyCombinations", "maximum": "100"}


def test_censor_dims_allows_any_key_and_charges_the_threshold_delta() -> None:
    censored = _metadata(censor_dims=True)
    frame = pd.concat([_frame()] * 40, ignore_index=True).assign(x=2.5)  # one key, 480 rows
    sql = "SELECT x, COUNT(*) AS n FROM df GROUP BY x"
    cost = sn.estimate_cost(_query(sql), censored)
    assert cost == PrivacyLoss.approx_dp(Decimal(1), Decimal("0.00001"))
    released = sn.execute(_query(sql), sn.prepare_reader(frame, censored), censored)
    assert list(released["x"]) == [2.5]  # a frequent key passes the threshold
    with pytest.raises(InvalidQuery, match="delta"):  # thresholding needs a delta
        sn.estimate_cost(_query(sql, delta="0"), censored)


def test_the_shared_reader_completes_keys_in_concurrent_queries(
    md: DatasetMetadata, reader: sn.SqliteTableReader
) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(list(sn.execute(_query(NOT_ADELIE), reader, md)["species"]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [SPECIES] * 4


def test_dummy_runs_complete_the_keys_too(md: DatasetMetadata, tmp_path: Path) -> None:
    engine = QueryEngine(DatasetCache(max_bytes=16 * 1024**2))
    dataset = DatasetRef("T", 1, DataSource.local(tmp_path / "absent.csv"), DataFormat.CSV, md)
    dummy = engine.run_dummy(_query(NOT_ADELIE), dataset, rows=4, seed=1)
    assert list(dummy["species"]) == SPECIES


# -- 2. queries that can never run are refused free ------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "limit", "maximum"),
    [
        ("SELECT COUNT(*) AS n FROM df WHERE species = 'a\x00b'", "maxControlCharacters", "0"),
        ("SELECT COUNT(*) AS n FROM df WHERE species = 'a\x1bb'", "maxControlCharacters", "0"),
        ("SELECT COUNT(*) AS n FROM df WHERE x > " + "9" * 400, "maxNumericLiteralLength", "40"),
        (
            "SELECT COUNT(*) AS n FROM df WHERE " + "(" * 200 + "x > 1" + ")" * 200,
            "maxParenthesisDepth",
            "32",
        ),
        (
            "SELECT COUNT(*) AS n FROM df WHERE species = '" + "a" * 1001 + "'",
            "maxStringLiteralLength",
            "1000",
        ),
        (
            "SELECT COUNT(*) AS n FROM df WHERE " + " OR ".join(["x > 1"] * 700),
            "maxTokens",
            "2000",
        ),
        # An unterminated literal hides nothing: the lexer would see these parentheses.
        ("SELECT COUNT(*) AS n FROM df WHERE species = '" + "(" * 40, "maxParenthesisDepth", "32"),
    ],
)
def test_texts_beyond_the_ceilings_are_refused_before_parsing(
    sql: str, limit: str, maximum: str, md: DatasetMetadata
) -> None:
    refusal = _refused(sql, md)
    assert refusal.reason == "QUERY_LIMIT_EXCEEDED"
    assert refusal.metadata == {"limit": limit, "maximum": maximum}
    assert "\x00" not in refusal.message


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (
            "SELECT COUNT(*) AS n FROM df WHERE x > " + "9" * 41,
            "a numeric literal of the SQL query is longer than 40 characters",
        ),
        (
            "SELECT COUNT(*) AS n FROM df WHERE " + "(" * 33 + "x > 1" + ")" * 33,
            "the SQL query nests parentheses deeper than 32",
        ),
        (
            "SELECT COUNT(*) AS n FROM df WHERE species = '" + "a" * 1001 + "'",
            "a string literal of the SQL query is longer than 1000 characters",
        ),
        (
            "SELECT COUNT(*) AS n FROM df WHERE " + " OR ".join(["x > 1"] * 700),
            "the SQL query has more than 2000 tokens",
        ),
    ],
)
def test_each_ceiling_says_which_one_it_is(sql: str, message: str, md: DatasetMetadata) -> None:
    assert _refused(sql, md).message == message


def test_ten_thousand_parentheses_are_refused_at_once(md: DatasetMetadata) -> None:
    sql = "SELECT COUNT(*) AS n FROM df WHERE " + "(" * 10_000 + "x > 1" + ")" * 10_000
    started = time.perf_counter()
    refusal = _refused(sql, md)
    assert time.perf_counter() - started < 1.0  # the parser alone took 26 s
    assert refusal.metadata["limit"] == "maxParenthesisDepth"


def test_literals_and_comments_do_not_count_towards_the_ceilings(md: DatasetMetadata) -> None:
    sql = (
        "SELECT COUNT(*) AS n FROM df -- ((((((((((((((((((((((((((((((((((((((((\n"
        "/* 99999999999999999999999999999999999999999999999999 ((((((((((((((((((((((((((((((((( */"
        " WHERE species <> '(((((((((((((((((((((((((((((((((((((((( 9999999999999999999999999999999"
        "999999999999999999999' AND x > 1.5E3"
    )
    assert sn.estimate_cost(_query(sql), md).epsilon == 1


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT COUNT(*) AS n FROM df WHERE CHAR_LENGTH(species) > 3", "no such function"),
        (f"{COUNT_BY_SPECIES} HAVING SUM(x) > 0", "cannot be executed"),
        (f"{COUNT_BY_SPECIES} ORDER BY x", "sort expression"),
        # Beyond the text ceilings (lifted here), the dry run still refuses what SQLite cannot run
        # (nested conditions: doubled parentheses go from the canonical form that runs).
        (
            "SELECT COUNT(*) AS n FROM df WHERE " + "(x > 0 AND " * 50 + "x > 1" + ")" * 50,
            "stack overflow",
        ),
        ("SELECT COUNT(*) AS n FROM df WHERE x > " + "9" * 400 + ".5", "no such column: inf"),
    ],
)
def test_sql_the_engine_cannot_run_is_refused_by_a_dry_run(
    sql: str, message: str, md: DatasetMetadata, tmp_path: Path
) -> None:
    lifted = SqlLimits(
        max_parenthesis_depth=1_000, max_numeric_literal_length=1_000, max_tokens=10_000
    )
    refusal = _refused(sql, md, lifted)
    assert refusal.reason == "QUERY_INVALID"
    assert message in refusal.message
    # The worker asks `estimate_cost` before it loads anything (with the default ceilings): the
    # query is refused and nothing is read.
    engine = QueryEngine(DatasetCache(max_bytes=16 * 1024**2))
    dataset = DatasetRef("T", 1, DataSource.local(tmp_path / "absent.csv"), DataFormat.CSV, md)
    with pytest.raises(InvalidQuery):
        engine.run(_query(sql), dataset)
    assert engine.cache.stats().misses == 0


# -- 3. the charge is never less than what the library is given ------------------------------------


def test_three_mechanisms_at_epsilon_one_tenth_charge_exactly_three_tenths(
    md: DatasetMetadata,
) -> None:
    sql = "SELECT COUNT(*) AS n, SUM(x) AS sx, SUM(y) AS sy FROM df"
    pure = sn.estimate_cost(_query(sql, epsilon="0.1", delta="0"), md)
    assert pure == PrivacyLoss.approx_dp(Decimal("0.3"), Decimal(0))
    # COUNT(*) is a key count, to which the library gives the query's delta, but with neither
    # censor_dims nor GROUP BY no threshold uses it: pure Laplace noise spends no delta.
    approx = sn.estimate_cost(_query(sql, epsilon="0.1", delta="0.00001"), md)
    assert approx == PrivacyLoss.approx_dp(Decimal("0.3"), Decimal(0))


def test_laplace_only_queries_charge_no_delta(md: DatasetMetadata) -> None:
    sql = "SELECT species, AVG(x) AS ax FROM df GROUP BY species"
    cost = sn.estimate_cost(_query(sql, epsilon="0.5", delta="0.00001"), md)
    assert cost == PrivacyLoss.approx_dp(Decimal("1"), Decimal(0))


@pytest.mark.parametrize("text", ["0.1", "0.2", "0.0001", "0.00001"])
def test_the_library_never_gets_more_than_the_decimal(text: str, md: DatasetMetadata) -> None:
    value = Decimal(text)
    assert Decimal(float(value)) > value  # float() rounds these up
    query = _query("SELECT COUNT(*) AS n, SUM(x) AS sx FROM df", epsilon=text, delta=text)
    privacy = query.privacy()
    assert privacy.epsilon == privacy.delta == math.nextafter(float(value), 0.0)
    assert Decimal(privacy.epsilon) <= value
    # The mechanisms that will run get that float, and the charge is the decimal for each.
    private = sn._private_reader(query, sn._MetadataOnlyReader(), md)
    costs = [cost for cost in private._get_mechanism_costs(query.sql) if cost]
    assert len(costs) == 2
    assert all(Decimal(epsilon) <= value for epsilon, _ in costs)
    assert sn.estimate_cost(query, md).epsilon == 2 * value
    assert sn.float_at_most(Decimal("0.5")) == 0.5  # exact floats stay as they are


def test_a_float_the_library_chose_itself_is_charged_rounded_up_to_twelve_digits() -> None:
    query = _query("SELECT COUNT(*) AS n FROM df", epsilon="0.1", delta="0")
    passed = sn.float_at_most(Decimal("0.1"))
    # 0.2 is 0.2000000000000000111022302462515654...: above 0.2, so 12 significant digits rounded
    # up give 0.200000000001; the user's own 0.1 is charged exactly.
    loss = sn._basic_composition([(passed, 0.0), (0.2, 0.0)], query)
    assert loss == PrivacyLoss.approx_dp(Decimal("0.300000000001"), Decimal(0))

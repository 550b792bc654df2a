"""Canonical queries: spellings of one query are one query; nothing else is."""

from __future__ import annotations

from decimal import Decimal

import pytest

from lomas.common.v1 import query_pb2
from lomas_common.errors import InvalidQuery
from lomas_executor import smartnoise_sql as sn
from lomas_executor.canonical import canonical_decimal, canonical_json
from lomas_executor.convert import canonical_query
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.smartnoise_sql import SmartnoiseSqlQuery

GROUP_COUNT = "SELECT species, COUNT(*) AS n FROM df GROUP BY species"


def canonical(sql: str, metadata: DatasetMetadata) -> str:
    return sn.canonical_text(
        SmartnoiseSqlQuery(sql, Decimal("1"), Decimal("0"), {}, True), metadata
    )


@pytest.mark.parametrize(
    "spelling",
    [
        "select species, count(*) as n from df group by species",
        "SELECT  species ,COUNT( * )  AS n\n\tFROM df\nGROUP BY species;",
        "SELECT species, COUNT(*) AS n FROM df -- a comment\nGROUP BY species",
        "SELECT species, /* inline */ COUNT(*) AS n FROM df GROUP BY species",
    ],
)
def test_case_white_space_comments_and_a_semicolon_are_one_query(
    spelling: str, penguin_md: DatasetMetadata
) -> None:
    assert canonical(spelling, penguin_md) == canonical(GROUP_COUNT, penguin_md)


def test_doubled_and_whole_condition_parentheses_are_one_query(
    penguin_md: DatasetMetadata,
) -> None:
    plain = canonical("SELECT COUNT(*) AS n FROM df WHERE bill_length_mm > 40", penguin_md)
    assert plain == canonical(
        "SELECT COUNT(*) AS n FROM df WHERE ((bill_length_mm > 40))", penguin_md
    )
    assert plain == canonical(
        "SELECT COUNT(*) AS n FROM df WHERE (bill_length_mm > 40)", penguin_md
    )


def test_a_comment_that_hides_sql_is_not_white_space(penguin_md: DatasetMetadata) -> None:
    # The hostile review's budget bypass: a line comment ends at the newline, so what follows it
    # is SQL; collapsing white space would have made this one COUNT.
    count = "SELECT COUNT(*) AS n FROM df"
    assert canonical(count + " -- , AVG(bill_length_mm) AS a\n", penguin_md) == canonical(
        count, penguin_md
    )
    hidden = "SELECT COUNT(*) AS n -- x\n, AVG(bill_length_mm) AS a FROM df"
    assert canonical(hidden, penguin_md) != canonical(count, penguin_md)


def test_string_literals_are_never_altered(penguin_md: DatasetMetadata) -> None:
    one = canonical("SELECT COUNT(*) AS n FROM df WHERE species = 'q y'", penguin_md)
    two = canonical("SELECT COUNT(*) AS n FROM df WHERE species = 'q  y'", penguin_md)
    upper = canonical("SELECT COUNT(*) AS n FROM df WHERE species = 'Q Y'", penguin_md)
    assert len({one, two, upper}) == 3
    assert "'q  y'" in two


def test_identifiers_are_kept_as_written(penguin_md: DatasetMetadata) -> None:
    text = canonical("SELECT species AS Kind, COUNT(*) AS n FROM df GROUP BY species", penguin_md)
    assert "AS Kind" in text


@pytest.mark.parametrize("spelling", ["0.7", "0.70", "7e-1", "7E-1", " 0.700 ", "+0.7"])
def test_decimals_are_compared_exactly(spelling: str) -> None:
    assert canonical_decimal(spelling) == "0.7"


def test_decimals_keep_their_exact_value() -> None:
    assert canonical_decimal("0.1000000000000000000001") == "0.1000000000000000000001"
    assert canonical_decimal("1e+2") == "100"
    assert canonical_decimal("0E-18") == canonical_decimal("0") == "0"
    assert canonical_decimal("not a number") == "not a number"  # the engine refuses it


def test_json_is_compared_with_sorted_keys() -> None:
    assert canonical_json('{"b": 1, "a": [1, 2]}') == canonical_json('{ "a":[1,2],"b":1 }')
    assert canonical_json('{"a": "x y"}') != canonical_json('{"a": "x  y"}')


def test_a_canonical_query_spells_its_parameters_once() -> None:
    def query(epsilon: str, delta: str, postprocess: bool | None) -> query_pb2.Query:
        snql = query_pb2.SmartnoiseSqlQuery(sql="x", epsilon=epsilon, delta=delta)
        if postprocess is not None:
            snql.postprocess = postprocess
        return query_pb2.Query(smartnoise_sql=snql)

    assert canonical_query(query("0.70", "1e-5", None), "s") == canonical_query(
        query("7e-1", "0.00001", True), "s"
    )
    assert canonical_query(query("0.7", "0", False), "s") != canonical_query(
        query("0.7", "0", True), "s"
    )
    opendp = query_pb2.Query(
        opendp=query_pb2.OpenDpQuery(measurement_json='{"b": 1, "a": 2}', fixed_delta="1E-6")
    )
    same = canonical_query(opendp)
    assert same.opendp.measurement_json == '{"a":2,"b":1}'
    assert same.opendp.fixed_delta == "0.000001"


def test_what_does_not_parse_is_refused_before_any_canonical_form(
    penguin_md: DatasetMetadata,
) -> None:
    with pytest.raises(InvalidQuery):
        canonical("SELECT COUNT(*) FROM df WHERE species = 'it''s'", penguin_md)

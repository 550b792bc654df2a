from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
import snsql
from snsql.sql._mechanisms.gaussian import Gaussian as LibraryGaussian
from snsql.sql.parse import QueryParser
from snsql.sql.private_reader import PrivateReader

from lomas_common.errors import ExecutionFailed, InvalidQuery
from lomas_common.privacy import PrivacyDefinition, PrivacyLoss
from lomas_executor import smartnoise_sql as sn
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.smartnoise_mechanisms import CALIBRATIONS, Gaussian, Laplace, Noise
from lomas_executor.smartnoise_sql import SmartnoiseSqlQuery
from lomas_executor.sql_limits import DEFAULT_LIMITS

AVG_BY_SPECIES = "SELECT species, AVG(bill_length_mm) AS avg_bill FROM df GROUP BY species"
QUERIES = [
    "SELECT COUNT(*) AS n FROM df",
    AVG_BY_SPECIES,
    "SELECT island, sex, COUNT(*) AS n, SUM(body_mass_g) AS mass FROM df GROUP BY island, sex",
    "SELECT VARIANCE(flipper_length_mm) AS v FROM df WHERE species = 'Gentoo'",
    "SELECT STDDEV(bill_depth_mm) AS s, AVG(bill_depth_mm) AS a FROM df",
]


def _query(
    sql: str,
    epsilon: str = "1",
    delta: str = "0.00001",
    mechanisms: Mapping[str, str] | None = None,
    postprocess: bool = True,
) -> SmartnoiseSqlQuery:
    return SmartnoiseSqlQuery(sql, Decimal(epsilon), Decimal(delta), mechanisms or {}, postprocess)


def _library_reader(
    query: SmartnoiseSqlQuery, frame: pd.DataFrame, md: DatasetMetadata
) -> snsql.PrivateReader:
    """smartnoise-sql's own reader over the real data, with the floats Lomas passes."""
    privacy = snsql.Privacy(
        epsilon=sn.float_at_most(query.epsilon), delta=sn.float_at_most(query.delta)
    )
    for stat, mechanism in query.mechanisms.items():
        privacy.mechanisms.map[snsql.Stat[stat]] = snsql.Mechanism[mechanism]
    return snsql.from_df(frame, privacy=privacy, metadata=md.to_smartnoise())


def _basic_composition(
    query: SmartnoiseSqlQuery, frame: pd.DataFrame, md: DatasetMetadata
) -> PrivacyLoss:
    """The charge worked out by hand: every mechanism the library would run spends the user's
    epsilon, and the user's delta where it adds Gaussian noise (these datasets have no
    censor_dims, so no threshold spends delta)."""
    reader = _library_reader(query, frame, md)
    subquery, _ = reader._rewrite_ast(reader.parse_query_string(query.sql))
    mechanisms = [m for m in reader._get_mechanisms(subquery) if m is not None]
    return PrivacyLoss.approx_dp(
        sum((query.epsilon for _ in mechanisms), Decimal(0)),
        sum((query.delta for m in mechanisms if isinstance(m, LibraryGaussian)), Decimal(0)),
    )


@pytest.mark.parametrize("sql", QUERIES)
def test_cost_is_basic_composition_of_the_library_mechanisms(
    sql: str, penguin_frame: pd.DataFrame, penguin_md: DatasetMetadata
) -> None:
    query = _query(sql, epsilon="0.7", delta="0.0001")
    cost = sn.estimate_cost(query, penguin_md)
    assert cost.definition is PrivacyDefinition.APPROX_DP
    assert isinstance(cost.epsilon, Decimal) and isinstance(cost.delta, Decimal)
    assert cost == _basic_composition(query, penguin_frame, penguin_md)
    # Never below the epsilon of the library's own odometer.
    library_epsilon, _ = _library_reader(query, penguin_frame, penguin_md).get_privacy_cost(sql)
    assert cost.epsilon >= Decimal(float(library_epsilon))


def test_cost_counts_every_mechanism(penguin_md: DatasetMetadata) -> None:
    count = sn.estimate_cost(_query("SELECT COUNT(*) FROM df", epsilon="0.5"), penguin_md)
    average = sn.estimate_cost(_query(AVG_BY_SPECIES, epsilon="0.5"), penguin_md)
    assert count.epsilon == Decimal("0.5")
    assert average.epsilon == Decimal("1")  # AVG is a noisy SUM and a noisy COUNT


def test_cost_rounds_up_to_the_ledger_quantum(penguin_md: DatasetMetadata) -> None:
    # 22 decimal places: each mechanism runs with the largest float below the decimal and spends
    # at most that float, whose 12-digit rounding (0.333333333334) is above the decimal: each is
    # charged the user's decimal, and the sum rounds up to the quantum.
    query = _query(AVG_BY_SPECIES, epsilon="0.3333333333333333333333", delta="0.00001")
    cost = sn.estimate_cost(query, penguin_md)
    assert cost.epsilon == Decimal("0.666666666666666667")
    assert cost.delta == 0  # SUM and COUNT(column) are pure Laplace mechanisms
    # The library runs 0.1 as 0.09999999999999999167 (the largest float below the decimal below):
    # the loss of what runs, rounded up to 12 digits, is 0.1 per mechanism, below the decimal.
    tenth = _query(AVG_BY_SPECIES, epsilon="0.1000000000000000000001", delta="0.00001")
    assert sn.estimate_cost(tenth, penguin_md).epsilon == Decimal("0.2")


def test_mechanisms_change_the_cost_where_they_apply(
    penguin_frame: pd.DataFrame, penguin_md: DatasetMetadata
) -> None:
    default = _query(AVG_BY_SPECIES)
    gaussian_count = _query(AVG_BY_SPECIES, mechanisms={"count": "gaussian"})
    gaussian_sum = _query(AVG_BY_SPECIES, mechanisms={"sum_float": "gaussian"})
    unrelated = _query(AVG_BY_SPECIES, mechanisms={"sum_int": "gaussian"})
    costs = {
        name: sn.estimate_cost(query, penguin_md)
        for name, query in [
            ("default", default),
            ("gaussian_count", gaussian_count),
            ("gaussian_sum", gaussian_sum),
            ("unrelated", unrelated),
        ]
    }
    assert costs["default"].delta == 0
    assert costs["gaussian_count"].delta == costs["gaussian_sum"].delta == Decimal("0.00001")
    assert costs["unrelated"] == costs["default"]  # no integer sum in this query
    assert costs["gaussian_count"] == _basic_composition(gaussian_count, penguin_frame, penguin_md)
    assert costs["gaussian_sum"] == _basic_composition(gaussian_sum, penguin_frame, penguin_md)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELEC COUNT(*) FROM df", "Bad token SELEC"),
        ("", "the SQL query is empty"),
        ("SELECT MAX(bill_length_mm) FROM df", "don't know how to rewrite aggregate function"),
        ("SELECT AVG(wing_span) FROM df", "Column cannot be found wing_span"),
        ("SELECT COUNT(*) FROM penguins", "No metadata available for penguins"),
        ("SELECT COUNT(*) FROM df; SELECT COUNT(*) FROM df", "Too many queries"),
        ("SELECT species FROM df", "does not include an aggregate"),
    ],
)
def test_invalid_queries_are_query_invalid(
    sql: str, message: str, penguin_md: DatasetMetadata
) -> None:
    with pytest.raises(InvalidQuery) as caught:
        sn.estimate_cost(_query(sql), penguin_md)
    assert caught.value.reason == "QUERY_INVALID"
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("epsilon", "delta", "mechanisms", "message"),
    [
        ("0", "0.00001", {}, "epsilon must be greater than 0"),
        ("-1", "0.00001", {}, "epsilon must be greater than 0"),
        ("1", "1", {}, "delta must be at least 0 and less than 1"),
        ("1", "-0.1", {}, "delta must be at least 0 and less than 1"),
        ("NaN", "0.1", {}, "epsilon must be a finite decimal"),
        ("1", "0.00001", {"median": "laplace"}, "unknown statistic 'median'"),
        ("1", "0.00001", {"count": "exponential"}, "unknown mechanism 'exponential' for count"),
    ],
)
def test_out_of_range_parameters_are_query_invalid(
    epsilon: str, delta: str, mechanisms: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidQuery, match=message):
        _query("SELECT COUNT(*) FROM df", epsilon, delta, mechanisms)


def test_library_refusals_of_parameters_are_query_invalid(penguin_md: DatasetMetadata) -> None:
    with pytest.raises(InvalidQuery, match="Noise scale is too large") as caught:
        sn.estimate_cost(_query(AVG_BY_SPECIES, epsilon="0.000000001"), penguin_md)
    assert "\n" not in caught.value.message
    gaussian_without_delta = _query(AVG_BY_SPECIES, delta="0", mechanisms={"count": "gaussian"})
    with pytest.raises(InvalidQuery, match="delta must be greater than 0"):
        sn.estimate_cost(gaussian_without_delta, penguin_md)


def test_unbounded_columns_can_be_counted_but_not_summed() -> None:
    md = DatasetMetadata.from_dict(
        {
            "max_ids": 1,
            "rows": 10,
            "row_privacy": True,
            "columns": {
                "x": {"type": "float"},
                "k": {"type": "int", "cardinality": 2, "categories": [1, 2]},
            },
        }
    )
    count = sn.estimate_cost(_query("SELECT COUNT(x) AS n FROM df"), md)
    assert count.epsilon == Decimal("1")
    for sql in ("SELECT SUM(x) FROM df", "SELECT AVG(k) FROM df"):
        with pytest.raises(InvalidQuery, match="aggregates a column without bounds") as caught:
            sn.estimate_cost(_query(sql), md)
        assert caught.value.message.endswith("on: x, k)")


def test_execute_returns_the_release_with_the_query_columns(
    penguin_reader: sn.SqliteTableReader, penguin_md: DatasetMetadata
) -> None:
    result = sn.execute(_query(AVG_BY_SPECIES), penguin_reader, penguin_md)
    assert isinstance(result, pd.DataFrame)
    assert list(result.columns) == ["species", "avg_bill"]
    assert sorted(result["species"]) == ["Adelie", "Chinstrap", "Gentoo"]
    assert result["avg_bill"].map(np.isfinite).all()
    ordered = sn.execute(
        _query("SELECT island, COUNT(*) AS n FROM df GROUP BY island ORDER BY island"),
        penguin_reader,
        penguin_md,
    )
    assert list(ordered.columns) == ["island", "n"]
    assert list(ordered["island"]) == ["Biscoe", "Dream", "Torgersen"]
    assert (ordered["n"] >= 0).all()  # counts are clamped in post-processing


def test_execute_without_postprocessing_returns_raw_noisy_aggregates(
    penguin_reader: sn.SqliteTableReader, penguin_md: DatasetMetadata
) -> None:
    result = sn.execute(
        _query("SELECT AVG(bill_length_mm) AS a FROM df", postprocess=False),
        penguin_reader,
        penguin_md,
    )
    assert len(result) == 1
    assert list(result.columns) == ["res_0", "res_1"]  # the noisy COUNT and SUM behind AVG


def test_execute_validates_before_touching_data(
    penguin_reader: sn.SqliteTableReader, penguin_md: DatasetMetadata
) -> None:
    with pytest.raises(InvalidQuery, match="don't know how to rewrite"):
        sn.execute(_query("SELECT MAX(body_mass_g) FROM df"), penguin_reader, penguin_md)


def test_prepared_reader_serves_other_threads_concurrently(
    penguin_reader: sn.SqliteTableReader, penguin_md: DatasetMetadata
) -> None:
    # The stock PandasReader fails here with "no such table: df" (per-thread SQLite memory
    # databases).
    results: list[pd.DataFrame] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(sn.execute(_query(AVG_BY_SPECIES), penguin_reader, penguin_md))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [len(result) for result in results] == [3, 3, 3, 3]


def test_failures_after_reading_data_carry_no_data_values() -> None:
    md = DatasetMetadata.from_dict(
        {
            "max_ids": 1,
            "rows": 400,
            "row_privacy": True,
            "censor_dims": True,  # datetime keys have no public key set: thresholded
            "columns": {"d": {"type": "datetime"}, "x": {"type": "float", "lower": 0, "upper": 1}},
        }
    )
    # A datetime column holding text the library cannot parse: its error quotes the value. Enough
    # rows that the key passes the threshold.
    frame = pd.DataFrame({"d": ["SECRET-VALUE"] * 200 + ["2020-01-01"] * 200, "x": [0.5] * 400})
    reader = sn.prepare_reader(frame, md)
    with pytest.raises(ExecutionFailed) as caught:
        sn.execute(_query("SELECT d, COUNT(*) AS n FROM df GROUP BY d"), reader, md)
    assert caught.value.reason == "QUERY_EXECUTION_FAILED"
    assert "SECRET" not in caught.value.message
    assert caught.value.message == "smartnoise-sql failed while running the query (ValueError)"


@pytest.mark.parametrize(
    ("mechanism_class", "epsilon", "delta", "sensitivity", "max_contrib", "integer"),
    [
        (Laplace, 1.0, 0.0, 1, 1, True),
        (Laplace, 0.3, 0.0, 65.0, 1, False),
        (Laplace, 2.5, 0.0, 7000.0, 3, False),
        (Gaussian, 1.0, 1e-5, 1, 1, True),
        (Gaussian, 0.7, 1e-4, 65.0, 2, False),
    ],
)
def test_memoised_calibration_equals_a_fresh_search(
    mechanism_class: type[Noise],
    epsilon: float,
    delta: float,
    sensitivity: float,
    max_contrib: int,
    integer: bool,
) -> None:
    CALIBRATIONS.clear()

    def build() -> Noise:
        return mechanism_class(
            epsilon, delta=delta, sensitivity=sensitivity, max_contrib=max_contrib, integer=integer
        )

    first = build()
    hits = CALIBRATIONS.hits
    second = build()
    assert CALIBRATIONS.hits == hits + 1  # the second one came from the memo
    fresh = build()._calibrate()  # the search itself, bypassing the memo
    assert second.scale == first.scale == fresh.scale
    assert second.loss == first.loss == (fresh.epsilon, fresh.delta)


def test_memo_keys_keep_every_input_apart() -> None:
    CALIBRATIONS.clear()
    base = Laplace(1.0, delta=0.0, sensitivity=1, max_contrib=1, integer=False)
    wider = Laplace(1.0, delta=0.0, sensitivity=2, max_contrib=1, integer=False)
    more_contrib = Laplace(1.0, delta=0.0, sensitivity=1, max_contrib=2, integer=False)
    integer = Laplace(1.0, delta=0.0, sensitivity=1, max_contrib=1, integer=True)
    gaussian = Gaussian(1.0, delta=1e-5, sensitivity=1, max_contrib=1, integer=False)
    assert CALIBRATIONS.misses == 5
    assert len({base.scale, wider.scale, more_contrib.scale, gaussian.scale}) == 4
    assert integer.scale < base.scale  # no float-sum rounding error to cover
    same_but_int_epsilon = Laplace(1, delta=0.0, sensitivity=1, max_contrib=1, integer=False)
    assert same_but_int_epsilon._memo_key() != base._memo_key()


def test_other_queries_with_the_same_mechanisms_use_the_memo(penguin_md: DatasetMetadata) -> None:
    CALIBRATIONS.clear()
    # Aliases no other test uses, so that the cost memo has seen neither query.
    avg, mean = (AVG_BY_SPECIES.replace("avg_bill", f"{n}_{uuid.uuid4().hex[:8]}") for n in "am")
    first = sn.estimate_cost(_query(avg, epsilon="0.9"), penguin_md)
    misses = CALIBRATIONS.misses
    assert misses == 2  # the SUM and the COUNT
    assert sn.estimate_cost(_query(mean, epsilon="0.9"), penguin_md) == first
    assert CALIBRATIONS.misses == misses
    assert CALIBRATIONS.hits >= 2


def test_costs_are_memoised_by_query_and_metadata(
    penguin_md: DatasetMetadata, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cost is worked out once per (SQL, privacy parameters, metadata); refusals every time."""
    asked: list[str] = []
    library = PrivateReader.parse_query_string

    def counted(self: PrivateReader, sql: str) -> object:
        asked.append(sql)
        return library(self, sql)

    monkeypatch.setattr(PrivateReader, "parse_query_string", counted)
    sql = f"SELECT COUNT(*) AS n_{uuid.uuid4().hex[:8]} FROM df"  # not asked by another test
    first = sn.estimate_cost(_query(sql, epsilon="0.3"), penguin_md)
    per_cost = len(asked)  # the price; the dry run on an empty table runs its rewrite
    assert per_cost == 1
    assert sn.estimate_cost(_query(sql, epsilon="0.3"), penguin_md) == first
    assert len(asked) == per_cost
    sn.estimate_cost(_query(sql, epsilon="0.3", mechanisms={"count": "gaussian"}), penguin_md)
    sn.estimate_cost(_query(sql, epsilon="0.4"), penguin_md)
    other = DatasetMetadata.from_dict({**penguin_md.to_dict(), "max_ids": 2})
    assert sn.estimate_cost(_query(sql, epsilon="0.3"), other).epsilon == first.epsilon
    assert len(asked) == 4 * per_cost
    for _ in range(2):
        with pytest.raises(InvalidQuery):
            sn.estimate_cost(_query("SELECT COUNT(*) FROM nowhere"), penguin_md)
    assert len(asked) == 4 * per_cost + 2


def _counting_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SQL text the library parses from now on (its rewrite parses its own too)."""
    asked: list[str] = []
    library = QueryParser.queries

    def counted(self: object, sql: str, *args: object, **kwargs: object) -> object:
        asked.append(sql)
        return library(self, sql, *args, **kwargs)

    monkeypatch.setattr(QueryParser, "queries", counted)
    return asked


def test_runs_execute_the_priced_rewrite_without_parsing_again(
    penguin_reader: sn.SqliteTableReader,
    penguin_md: DatasetMetadata,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker prices, then runs the query it priced: parsed and rewritten once in all."""
    asked = _counting_parses(monkeypatch)
    query = _query(f"SELECT COUNT(*) AS n_{uuid.uuid4().hex[:8]} FROM df")
    sn.estimate_cost(query, penguin_md, dry_run=False)
    parsed = len(asked)
    assert parsed >= 1
    counts = {int(sn.execute(query, penguin_reader, penguin_md, validated=True).iloc[0, 0])}
    assert len(asked) == parsed  # no parse, no rewrite: the rewritten query of the price runs
    for _ in range(20):
        counts.add(int(sn.execute(query, penguin_reader, penguin_md, validated=True).iloc[0, 0]))
    assert len(asked) == parsed
    assert len(counts) > 1  # each run draws fresh noise (20 equal draws: p < 1e-10)


def test_a_run_that_finds_the_rewrite_taken_parses_its_own(
    penguin_reader: sn.SqliteTableReader,
    penguin_md: DatasetMetadata,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One run at a time uses a shared rewrite; a concurrent one parses and rewrites its own."""
    query = _query(AVG_BY_SPECIES.replace("avg_bill", f"a_{uuid.uuid4().hex[:8]}"))
    sn.estimate_cost(query, penguin_md, dry_run=False)
    analysis = sn._priced(query, penguin_md, DEFAULT_LIMITS, dry_run=False)
    asked = _counting_parses(monkeypatch)
    with analysis.lock:
        result = sn.execute(query, penguin_reader, penguin_md, validated=True)
    assert asked  # parsed again
    assert sorted(result["species"]) == ["Adelie", "Chinstrap", "Gentoo"]
    parsed = len(asked)
    again = sn.execute(query, penguin_reader, penguin_md, validated=True)
    assert len(asked) == parsed and list(again.columns) == list(result.columns)


def test_the_priced_rewrite_is_the_one_the_library_runs(penguin_md: DatasetMetadata) -> None:
    """The stored rewrite is the library's own for the query, and so are its mechanisms."""
    for sql in QUERIES:
        query = _query(sql, epsilon="0.7", delta="0.0001")
        analysis = sn._priced(query, penguin_md, DEFAULT_LIMITS, dry_run=False)
        private = sn.metadata_only_reader(query, penguin_md)
        subquery, rewritten = private._rewrite_ast(private.parse_query_string(sql))
        assert str(analysis.rewritten) == str(rewritten)
        assert str(analysis.subquery) == str(subquery)
        stored = [
            (type(m), m.epsilon, m.delta, m.scale) if m else None
            for m in private._get_mechanisms(analysis.subquery)
        ]
        fresh = [
            (type(m), m.epsilon, m.delta, m.scale) if m else None
            for m in private._get_mechanisms(subquery)
        ]
        assert stored == fresh

"""DiffPrivLib releases nothing of the private rows without noise: the score is DP (paid by
score_epsilon) or absent, a classifier's classes never tell which classes the data holds, no
released parameter carries the exact row count, and one person's rows are one row."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from lomas.client.diffprivlib_client import DiffPrivLibRelease
from lomas.common.v1 import query_pb2
from lomas_common.errors import InvalidQuery
from lomas_common.privacy import PrivacyLoss
from lomas_executor import convert
from lomas_executor.diffprivlib_model import (
    DiffPrivLibQuery,
    canonical_score_epsilon,
    parse_pipeline,
    score_epsilon_from_text,
)
from lomas_executor.diffprivlib_queries import _GaussianNB, execute
from lomas_executor.diffprivlib_score import count_noise, dp_ratio
from lomas_executor.metadata import DatasetMetadata

FEATURES = ("bill_length_mm", "bill_depth_mm")
BOUNDS = [[30, 13], [65, 23]]
SCALER = {"name": "scaler", "type": "StandardScaler", "params": {"epsilon": 0.5, "bounds": BOUNDS}}
LOGISTIC = {"name": "lr", "type": "LogisticRegression", "params": {"epsilon": 1.0, "data_norm": 5}}
BAYES = {"name": "nb", "type": "GaussianNB", "params": {"bounds": BOUNDS}}
FOREST = {
    "name": "forest",
    "type": "RandomForestClassifier",
    "params": {"bounds": BOUNDS, "n_estimators": 3, "max_depth": 2},
}
SPECIES = ["Adelie", "Chinstrap", "Gentoo"]


def _query(
    steps: list[dict[str, Any]], targets: tuple[str, ...] = ("species",), **options: Any
) -> DiffPrivLibQuery:
    return DiffPrivLibQuery(json.dumps({"steps": steps}), FEATURES, targets, **options)


def _rows(release: pa.Table | Any) -> dict[tuple[str, str], Any]:
    return {(r.step, r.parameter): r for r in release.itertuples(index=False)}


def _two_species(rows: int = 200) -> pa.Table:
    """Rows of Adelie and Gentoo only: the metadata also declares Chinstrap."""
    rng = np.random.default_rng(3)
    return pa.table(
        {
            "bill_length_mm": rng.uniform(32, 60, rows),
            "bill_depth_mm": rng.uniform(14, 22, rows),
            "species": ["Adelie", "Gentoo"] * (rows // 2),
        }
    )


# -- the score -------------------------------------------------------------------------------------


def test_score_epsilon_is_charged_on_top_of_the_steps_exactly(penguin_md: DatasetMetadata) -> None:
    lomas = [SCALER, {**LOGISTIC, "params": {"epsilon": 1.0, "data_norm": 83.69}}]
    assert parse_pipeline(_query(lomas), penguin_md).cost == PrivacyLoss.pure_dp(Decimal("1.5"))
    paid = parse_pipeline(_query(lomas, score_epsilon=Decimal("0.2")), penguin_md)
    assert paid.cost == PrivacyLoss.pure_dp(Decimal("1.7"))
    tiny = _query(
        [{**LOGISTIC, "params": {"epsilon": 0.1, "data_norm": 5}}], score_epsilon=Decimal("0.2")
    )
    # 0.1 + 0.2 as decimals: 0.3, not 0.30000000000000004.
    assert parse_pipeline(tiny, penguin_md).cost.epsilon == Decimal("0.3")
    for bad in ("-0.5", "NaN", "Infinity"):  # a query built in process, past the wire's checks
        with pytest.raises(InvalidQuery) as refused:
            parse_pipeline(_query(lomas, score_epsilon=Decimal(bad)), penguin_md)
        assert refused.value.metadata == {"field": "scoreEpsilon"}, bad


def test_a_score_without_bounded_sensitivity_is_refused_before_any_charge(
    penguin_md: DatasetMetadata,
) -> None:
    regression = {
        "name": "r",
        "type": "LinearRegression",
        "params": {"bounds_X": BOUNDS, "bounds_y": [2000, 7000]},
    }
    kmeans = {"name": "k", "type": "KMeans", "params": {"bounds": BOUNDS, "n_clusters": 3}}
    pca = {
        "name": "p",
        "type": "PCA",
        "params": {"data_norm": 5, "bounds": BOUNDS, "n_components": 1},
    }
    for steps, targets in (([regression], ("body_mass_g",)), ([kmeans], ()), ([pca], ())):
        assert parse_pipeline(_query(steps, targets), penguin_md).cost  # no score: accepted
        with pytest.raises(InvalidQuery) as refused:
            parse_pipeline(_query(steps, targets, score_epsilon=Decimal("0.1")), penguin_md)
        assert (refused.value.reason, refused.value.metadata) == (
            "QUERY_INVALID",
            {"field": "scoreEpsilon"},
        )
        assert "bounded sensitivity" in refused.value.message


def test_the_wire_form_of_score_epsilon(penguin_md: DatasetMetadata) -> None:
    assert score_epsilon_from_text("") == 0
    assert score_epsilon_from_text(" 0.25 ") == Decimal("0.25")
    for bad in ("-1", "nan", "Infinity", "a quarter", "1e999999"):
        with pytest.raises(InvalidQuery) as error:
            score_epsilon_from_text(bad)
        assert error.value.metadata == {"field": "scoreEpsilon"}, bad
    assert [canonical_score_epsilon(t) for t in ("", "0", "0.000", "0.50", "5e-1", "x")] == [
        "",
        "",
        "",
        "0.5",
        "0.5",
        "x",
    ]
    wire = query_pb2.Query(
        diffprivlib=query_pb2.DiffPrivLibQuery(
            pipeline_json=json.dumps({"steps": [LOGISTIC]}),
            feature_columns=list(FEATURES),
            target_columns=["species"],
            score_epsilon="0.50",
        )
    )
    domain = convert.query_from_proto(wire)
    assert isinstance(domain, DiffPrivLibQuery)
    assert domain.score_epsilon == Decimal("0.5")
    assert convert.canonical_query(wire).diffprivlib.score_epsilon == "0.5"


def test_the_counts_noise_is_opendp_integer_laplace_within_its_epsilon() -> None:
    for text in ("0.05", "0.1", "0.3", "1", "2.675", "1e-9", "1000"):
        epsilon = Decimal(text)
        measurement = count_noise(epsilon)
        assert Decimal(measurement.map(1)) <= epsilon, text
        assert isinstance(measurement(10), int)
    # Each count gets half of score_epsilon, and the ratio stays in [0, 1].
    draws = [dp_ratio(60, 80, Decimal("0.2")) for _ in range(40)]
    assert all(0 <= draw <= 1 for draw in draws)
    assert len(set(draws)) > 5  # noisy: 40 draws at scale 10 are not all alike
    assert {dp_ratio(60, 80, Decimal(10**6)) for _ in range(5)} == {0.75}


def test_a_real_run_releases_no_score_unless_paid_and_a_dummy_run_the_exact_one(
    penguin_md: DatasetMetadata,
) -> None:
    table = _two_species()
    parsed = parse_pipeline(_query([LOGISTIC]), penguin_md)
    unpaid = _rows(execute(parsed, table))[("", "score")]
    assert (list(unpaid.values), list(unpaid.labels)) == ([], ["accuracy", "not_released"])
    paid = parse_pipeline(_query([LOGISTIC], score_epsilon=Decimal("0.5")), penguin_md)
    noisy = _rows(execute(paid, table))[("", "score")]
    assert list(noisy.labels) == ["accuracy", "discrete_laplace"]
    assert 0 <= noisy.values[0] <= 1 and not noisy.floating_point_noise
    exact = _rows(execute(paid, table, dummy=True))[("", "score")]
    assert list(exact.labels) == ["accuracy", "exact_on_dummy_data"]
    release = DiffPrivLibRelease(execute(parsed, table))
    assert (release.score, release.score_method) == (None, "not_released")
    assert "not released" in repr(release)


# -- classes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [[SCALER, LOGISTIC], [BAYES], [FOREST]], ids=str)
def test_every_declared_class_is_in_the_release_when_the_training_rows_miss_one(
    steps: list[dict[str, Any]], penguin_md: DatasetMetadata
) -> None:
    release = _rows(execute(parse_pipeline(_query(steps), penguin_md), _two_species()))
    final = steps[-1]["name"]
    assert list(release[(final, "classes_")].labels) == SPECIES
    if final == "lr":
        assert list(release[("lr", "coef_")].shape) == [3, 2]  # one row per declared class
    if final == "nb":
        # Without the public row per class, Chinstrap's parameters would be exact zeros.
        theta = np.asarray(release[("nb", "theta_")].values).reshape(3, 2)
        assert np.all(theta[1] != 0)
        assert np.all(np.asarray(release[("nb", "class_prior_")].values) > 0)


def test_the_public_rows_sit_at_the_middle_of_the_metadata_bounds(
    penguin_md: DatasetMetadata,
) -> None:
    assert parse_pipeline(_query([SCALER, LOGISTIC]), penguin_md).anchor == (47.5, 18.0)
    assert parse_pipeline(_query([BAYES]), penguin_md).anchor == (47.5, 18.0)
    assert parse_pipeline(_query([FOREST]), penguin_md).anchor is None  # given its classes


def test_gaussian_nb_class_counts_are_not_tied_to_the_exact_row_count() -> None:
    # DiffPrivLib forces the noisy counts to sum to the exact number of rows (class_prior_ would
    # then be fractions of it); here they are noisy counts, each at least 1.
    y = np.asarray([0] * 30 + [1] * 50 + [2] * 20)
    model = _GaussianNB(epsilon=0.3, bounds=([0.0], [1.0]))
    sums = {int(model._noisy_class_counts(y, np.random.mtrand._rand).sum()) for _ in range(20)}
    assert sums != {len(y)} and len(sums) > 3
    assert min(model._noisy_class_counts(np.asarray([0, 1]), np.random.mtrand._rand)) >= 1


# -- other releases --------------------------------------------------------------------------------


def test_pca_releases_no_variance_divided_by_the_exact_row_count(
    penguin_md: DatasetMetadata,
) -> None:
    def pca(**extra: Any) -> list[dict[str, Any]]:
        params = {"data_norm": 100, "bounds": BOUNDS, "n_components": 1, **extra}
        return [{"name": "p", "type": "PCA", "params": params}]

    frame = execute(parse_pipeline(_query(pca(), ()), penguin_md), _two_species(), dummy=True)
    released = set(frame["parameter"])
    assert {"components_", "explained_variance_ratio_", "mean_"} <= released
    assert not released & {"explained_variance_", "noise_variance_", "singular_values_"}
    # Whitening would scale by those variances: accepted only at its default.
    assert parse_pipeline(_query(pca(whiten=False), ()), penguin_md).role == "decomposition"
    with pytest.raises(InvalidQuery) as whiten:
        parse_pipeline(_query(pca(whiten=True), ()), penguin_md)
    assert whiten.value.metadata == {"step": "p", "parameter": "whiten"}


def test_a_dataset_where_a_person_owns_several_rows_is_refused(
    penguin_md: DatasetMetadata,
) -> None:
    several = DatasetMetadata.from_dict({**penguin_md.to_dict(), "max_ids": 2})
    with pytest.raises(InvalidQuery) as refused:
        parse_pipeline(_query([LOGISTIC]), several)
    assert (refused.value.reason, refused.value.metadata) == ("QUERY_INVALID", {"field": "max_ids"})

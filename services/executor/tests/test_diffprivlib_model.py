"""DiffPrivLib queries before any data: the allow-list, the privacy-leak refusals, sizes and cost."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from lomas.common.v1 import query_pb2
from lomas_common.errors import InvalidQuery
from lomas_common.privacy import PrivacyLoss
from lomas_executor import convert
from lomas_executor.diffprivlib_model import (
    DiffPrivLibQuery,
    canonical_pipeline_json,
    float_at_most,
    parse_pipeline,
)
from lomas_executor.metadata import DatasetMetadata

FEATURES = ("bill_length_mm", "bill_depth_mm")
BOUNDS = [[30, 13], [65, 23]]


def scaler(**params: Any) -> dict[str, Any]:
    return {"name": "scaler", "type": "StandardScaler", "params": params}


def classifier(**params: Any) -> dict[str, Any]:
    return {"name": "classifier", "type": "LogisticRegression", "params": params}


def lomas_pipeline() -> list[dict[str, Any]]:
    """Lomas's case: StandardScaler epsilon 0.5 + LogisticRegression epsilon 1.0."""
    return [scaler(epsilon=0.5, bounds=BOUNDS), classifier(epsilon=1.0, data_norm=83.69)]


def query(
    steps: list[dict[str, Any]],
    features: tuple[str, ...] = FEATURES,
    targets: tuple[str, ...] = ("species",),
    **options: Any,
) -> DiffPrivLibQuery:
    return DiffPrivLibQuery(json.dumps({"steps": steps}), features, targets, **options)


def refused(penguin_md: DatasetMetadata, q: DiffPrivLibQuery) -> InvalidQuery:
    with pytest.raises(InvalidQuery) as error:
        parse_pipeline(q, penguin_md)
    return error.value


def test_lomas_case_costs_exactly_the_sum_of_the_steps_epsilon(penguin_md: DatasetMetadata) -> None:
    parsed = parse_pipeline(query(lomas_pipeline()), penguin_md)
    assert parsed.cost == PrivacyLoss.pure_dp(Decimal("1.5"))
    # Decimals as written: 0.1 + 0.2 is 0.3, not the float sum.
    steps = [scaler(epsilon=0.1, bounds=BOUNDS), classifier(epsilon=0.2, data_norm=5)]
    assert parse_pipeline(query(steps), penguin_md).cost.epsilon == Decimal("0.3")
    # A step without epsilon costs DiffPrivLib's default, 1.0.
    steps = [scaler(bounds=BOUNDS), classifier(data_norm=5)]
    assert parse_pipeline(query(steps), penguin_md).cost.epsilon == Decimal(2)
    assert [s.kwargs.get("epsilon") for s in parsed.steps] == [0.5, 1.0]
    assert parsed.classes == ("Adelie", "Chinstrap", "Gentoo")


def test_noise_is_never_calibrated_to_more_epsilon_than_charged() -> None:
    for text in ("0.1", "0.3", "1.5", "2.675", "1e-7"):
        assert Decimal(float_at_most(Decimal(text))) <= Decimal(text)
    assert float_at_most(Decimal("0.5")) == 0.5


def test_parameters_at_diffprivlib_defaults_are_accepted_others_are_refused_by_name(
    penguin_md: DatasetMetadata,
) -> None:
    # What a client sends for DiffPrivLib objects: every get_params() value.
    steps = [
        scaler(epsilon=0.5, bounds=BOUNDS, copy=True, random_state=None, with_mean=True),
        classifier(
            epsilon=1.0, data_norm=83.69, C=1.0, max_iter=100, n_jobs=None, verbose=0, tol=0.0001
        ),
    ]
    assert parse_pipeline(query(steps), penguin_md).cost.epsilon == Decimal("1.5")
    error = refused(penguin_md, query([scaler(bounds=BOUNDS), classifier(data_norm=5, verbose=1)]))
    assert error.reason == "DIFFPRIVLIB_PIPELINE_REFUSED"
    assert error.metadata == {"step": "classifier", "parameter": "verbose"}
    seeded = refused(
        penguin_md, query([scaler(bounds=BOUNDS, random_state=7), classifier(data_norm=5)])
    )
    assert seeded.reason == "DIFFPRIVLIB_PIPELINE_REFUSED"
    assert "reproducible" in seeded.message
    for bad in (
        {"name": "x", "type": "MLPClassifier", "params": {}},
        {"name": "x", "type": "sklearn.linear_model.LogisticRegression", "params": {}},
        {"name": "x", "type": "LogisticRegression", "params": {"data_norm": "5"}},
        {"name": "x", "type": "LogisticRegression", "params": {"data_norm": -1}},
        {"name": "x", "type": "LogisticRegression", "params": {"data_norm": 5, "epsilon": 0}},
        {"name": "x", "type": "LogisticRegression", "params": {"data_norm": 5, "max_iter": 2.5}},
        {"name": "a__b", "type": "LogisticRegression", "params": {"data_norm": 5}},
    ):
        assert refused(penguin_md, query([bad])).reason == "DIFFPRIVLIB_PIPELINE_REFUSED", bad


def test_a_pipeline_that_would_infer_bounds_or_norms_from_the_data_is_a_privacy_leak(
    penguin_md: DatasetMetadata,
) -> None:
    error = refused(penguin_md, query([scaler(epsilon=0.5), classifier(epsilon=1.0, data_norm=5)]))
    assert (error.reason, error.metadata) == (
        "DIFFPRIVLIB_PRIVACY_LEAK",
        {"step": "scaler", "parameter": "bounds"},
    )
    assert "privacy leak" in error.message
    explicit_null = refused(penguin_md, query([scaler(bounds=None), classifier(data_norm=5)]))
    assert explicit_null.reason == "DIFFPRIVLIB_PRIVACY_LEAK"
    no_norm = refused(penguin_md, query([scaler(bounds=BOUNDS), classifier()]))
    assert no_norm.metadata == {"step": "classifier", "parameter": "data_norm"}
    regression = {"name": "r", "type": "LinearRegression", "params": {"bounds_X": BOUNDS}}
    assert refused(penguin_md, query([regression], targets=("body_mass_g",))).metadata == {
        "step": "r",
        "parameter": "bounds_y",
    }
    pca = {"name": "p", "type": "PCA", "params": {"data_norm": 5, "n_components": 2}}
    assert refused(penguin_md, query([pca], targets=())).metadata["parameter"] == "bounds"
    centred = {
        "name": "p",
        "type": "PCA",
        "params": {"data_norm": 5, "n_components": 2, "centered": True},
    }
    assert parse_pipeline(query([centred], targets=()), penguin_md).role == "decomposition"
    # A classifier's classes come from the metadata: a target without categories is refused.
    forest = {"name": "f", "type": "RandomForestClassifier", "params": {"bounds": BOUNDS}}
    leak = refused(penguin_md, query([forest], targets=("body_mass_g",)))
    assert (leak.reason, leak.metadata) == ("DIFFPRIVLIB_PRIVACY_LEAK", {"column": "body_mass_g"})
    parsed = parse_pipeline(query([forest]), penguin_md)
    assert parsed.steps[0].kwargs["classes"] == ["Adelie", "Chinstrap", "Gentoo"]
    wrong = {**forest, "params": {"bounds": BOUNDS, "classes": ["Adelie", "Gentoo"]}}
    assert refused(penguin_md, query([wrong])).metadata["parameter"] == "classes"
    # The number of PCA components may not come from the data.
    for n_components in ("mle", 0.9, None):
        pca = {
            "name": "p",
            "type": "PCA",
            "params": {"data_norm": 5, "bounds": BOUNDS, "n_components": n_components},
        }
        assert refused(penguin_md, query([pca], targets=())).reason.startswith("DIFFPRIVLIB_")


def test_structure_columns_split_and_imputer_are_checked(penguin_md: DatasetMetadata) -> None:
    imputer = refused(penguin_md, query(lomas_pipeline(), imputer_strategy="i_do_not_exist"))
    assert imputer.reason == "QUERY_INVALID"
    assert "imputer_strategy must be one of drop, mean, median, most_frequent" in imputer.message
    for size in ("0", "1", "1.5", "-0.1"):
        assert refused(penguin_md, query(lomas_pipeline(), test_size=Decimal(size))).metadata == {
            "field": "testSize"
        }
    cases: list[tuple[DiffPrivLibQuery, str]] = [
        (query(lomas_pipeline(), features=("species",)), "numeric or boolean"),
        (query(lomas_pipeline(), features=("nope",)), "unknown column"),
        (query(lomas_pipeline(), features=()), "at least one feature"),
        (query(lomas_pipeline(), features=FEATURES * 2), "distinct"),
        (query(lomas_pipeline(), targets=()), "exactly one target"),
        (query(lomas_pipeline(), targets=("species", "sex")), "exactly one target"),
        (query([classifier(data_norm=5), scaler(bounds=BOUNDS)]), "only be the last step"),
        (query([scaler(bounds=BOUNDS)]), "last step must be a model"),
        (query([classifier(data_norm=5), classifier(data_norm=5)]), "only be the last step"),
        (query([scaler(bounds=[[30, 13, 1], [65, 23, 2]]), classifier(data_norm=5)]), "one bound"),
        (query([scaler(bounds=[[40, 13], [30, 23]]), classifier(data_norm=5)]), "at most its"),
        (
            query([scaler(bounds=BOUNDS), {**classifier(data_norm=5), "name": "scaler"}]),
            "two steps",
        ),
        (
            query([{"name": "k", "type": "KMeans", "params": {"bounds": BOUNDS}}]),
            "unsupervised",
        ),
    ]
    for q, message in cases:
        assert message in refused(penguin_md, q).message, message
    for text in ("", "[]", '{"steps": []}', '{"steps": [1]}', "{", '{"steps": [], "x": 1}', "NaN"):
        error = refused(penguin_md, DiffPrivLibQuery(text, FEATURES, ("species",)))
        assert error.reason == "DIFFPRIVLIB_PIPELINE_REFUSED", text


def test_sizes_a_pipeline_chooses_are_bounded_before_any_work(penguin_md: DatasetMetadata) -> None:
    forest = {
        "name": "f",
        "type": "RandomForestClassifier",
        "params": {"bounds": BOUNDS, "n_estimators": 1000, "max_depth": 20},
    }
    error = refused(penguin_md, query([forest]))
    assert (error.reason, error.metadata["limit"]) == ("QUERY_LIMIT_EXCEEDED", "maxTreeNodes")
    many = [{**scaler(bounds=BOUNDS), "name": f"s{i}"} for i in range(11)] + [
        classifier(data_norm=5)
    ]
    assert refused(penguin_md, query(many)).metadata["limit"] == "maxSteps"
    assert refused(penguin_md, DiffPrivLibQuery(" " * 100_001, FEATURES)).metadata["limit"] == (
        "maxPipelineChars"
    )
    clusters = {"name": "k", "type": "KMeans", "params": {"bounds": BOUNDS, "n_clusters": 10**6}}
    assert refused(penguin_md, query([clusters], targets=())).reason == "QUERY_LIMIT_EXCEEDED"


def test_fill_values_come_from_the_metadata(penguin_md: DatasetMetadata) -> None:
    assert parse_pipeline(query(lomas_pipeline()), penguin_md).fill_values == {}
    mean = parse_pipeline(query(lomas_pipeline(), imputer_strategy="mean"), penguin_md)
    assert mean.fill_values == {"bill_length_mm": 47.5, "bill_depth_mm": 18.0}
    unbounded = DatasetMetadata.from_dict(
        {
            "max_ids": 1,
            "rows": 10,
            "row_privacy": True,
            "columns": {
                "x": {"type": "float"},
                "y": {"type": "string", "cardinality": 2, "categories": ["a", "b"]},
            },
        }
    )
    steps = [classifier(data_norm=5)]
    q = query(steps, features=("x",), targets=("y",), imputer_strategy="median")
    assert "needs bounds in the metadata" in refused(unbounded, q).message
    assert parse_pipeline(query(steps, features=("x",), targets=("y",)), unbounded).cost


def test_wire_form_and_canonical_form(penguin_md: DatasetMetadata) -> None:
    wire = query_pb2.Query(
        diffprivlib=query_pb2.DiffPrivLibQuery(
            pipeline_json=json.dumps({"steps": lomas_pipeline()}),
            feature_columns=list(FEATURES),
            target_columns=["species"],
            test_train_split_seed=4,
        )
    )
    domain = convert.query_from_proto(wire)
    assert isinstance(domain, DiffPrivLibQuery)
    assert (domain.test_size, domain.imputer_strategy) == (Decimal("0.2"), "drop")
    bad = query_pb2.Query()
    bad.CopyFrom(wire)
    bad.diffprivlib.test_size = "a fifth"
    with pytest.raises(InvalidQuery, match="test_size"):
        convert.query_from_proto(bad)
    canonical = convert.canonical_query(wire)
    assert canonical.diffprivlib.test_size == "0.2"
    assert canonical.diffprivlib.imputer_strategy == "drop"
    # One spelling per pipeline: key order, white space and number spellings go.
    spelled = (
        '{"steps": [{"params": {"bounds": [[30.0, 13], [65, 2.3e1]], "epsilon": 0.50},'
        ' "type": "StandardScaler", "name": "scaler"}, {"name": "classifier",'
        ' "type": "LogisticRegression", "params": {"data_norm": 83.690, "epsilon": 1}}]}'
    )
    assert canonical_pipeline_json(spelled) == canonical_pipeline_json(
        json.dumps({"steps": lomas_pipeline()})
    )
    assert canonical_pipeline_json("not json") == "not json"
    same = parse_pipeline(DiffPrivLibQuery(spelled, FEATURES, ("species",)), penguin_md)
    assert same.cost == parse_pipeline(query(lomas_pipeline()), penguin_md).cost

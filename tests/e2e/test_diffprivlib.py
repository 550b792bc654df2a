"""DiffPrivLib queries end to end, through the public API and the heavy worker, in both modes:
Lomas's cases (refusals, the exact charge), the score (absent, or DP and charged with
score_epsilon), the rebuilt model against the server's exact score on the dummy split, and costs
that never read the data."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from diffprivlib import models
from mesh_testing import RunningMesh, dataset_without_its_file, new_researcher
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from lomas.client import Client, InvalidQuery, LomasError
from lomas_embedded import demo

FEATURES = ["bill_length_mm", "bill_depth_mm"]
TARGET = ["species"]
BOUNDS = [[30, 13], [65, 23]]


def lomas_pipeline() -> Pipeline:
    """Lomas's pipeline: StandardScaler epsilon 0.5 + LogisticRegression epsilon 1.0."""
    return Pipeline(
        [
            ("scaler", models.StandardScaler(epsilon=0.5, bounds=([30, 13], [65, 23]))),
            ("classifier", models.LogisticRegression(epsilon=1.0, data_norm=83.69)),
        ]
    )


def unbounded_pipeline() -> dict[str, Any]:
    return {
        "steps": [
            {"name": "scaler", "type": "StandardScaler", "params": {"epsilon": 0.5}},
            {
                "name": "classifier",
                "type": "LogisticRegression",
                "params": {"epsilon": 1.0, "data_norm": 83.69},
            },
        ]
    }


def researcher(platform: RunningMesh, dataset: str = demo.DATASET) -> Client:
    return new_researcher(platform, "researcher", dataset)


def budget(client: Client) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    return client.get_total_spent_budget(), client.get_remaining_budget()


def test_lomas_refusals_carry_their_reason_and_cost_nothing(platform: RunningMesh) -> None:
    client = researcher(platform)
    before = budget(client)
    with pytest.raises(InvalidQuery) as imputer:
        client.diffprivlib.query(
            lomas_pipeline(), FEATURES, TARGET, imputer_strategy="i_do_not_exist"
        )
    assert (imputer.value.code, imputer.value.reason) == ("INVALID_ARGUMENT", "QUERY_INVALID")
    assert "imputer_strategy must be one of" in imputer.value.message
    # A StandardScaler without bounds would have DiffPrivLib read them off the data.
    for call in (client.diffprivlib.cost, client.diffprivlib.query):
        with pytest.raises(InvalidQuery) as leak:
            call(unbounded_pipeline(), FEATURES, TARGET)
        assert (leak.value.code, leak.value.reason) == (
            "INVALID_ARGUMENT",
            "DIFFPRIVLIB_PRIVACY_LEAK",
        )
        assert leak.value.metadata == {"step": "scaler", "parameter": "bounds"}
        assert "privacy leak" in leak.value.message
    with pytest.raises(InvalidQuery) as seeded:
        client.diffprivlib.cost(
            Pipeline([("c", models.LogisticRegression(data_norm=5, random_state=3))]),
            FEATURES,
            TARGET,
        )
    assert seeded.value.reason == "DIFFPRIVLIB_PIPELINE_REFUSED"
    assert budget(client) == before
    assert client.get_previous_queries() == []


def test_the_lomas_pipeline_costs_and_charges_exactly_epsilon_1_5(platform: RunningMesh) -> None:
    client = researcher(platform)
    before_spent, before_remaining = budget(client)
    cost = client.diffprivlib.cost(lomas_pipeline(), FEATURES, TARGET)
    assert cost == {"epsilon": Decimal("1.5"), "delta": Decimal(0)}
    release = client.diffprivlib.query(lomas_pipeline(), FEATURES, TARGET, test_train_split_seed=2)
    assert release.attrs["cost"] == cost
    spent, remaining = budget(client)
    assert spent == {"total_spent_epsilon": Decimal("1.5"), "total_spent_delta": Decimal(0)}
    assert remaining == {
        "remaining_epsilon": before_remaining["remaining_epsilon"] - Decimal("1.5"),
        "remaining_delta": before_remaining["remaining_delta"],
    }
    assert before_spent["total_spent_epsilon"] == Decimal(0)
    # The score of the private test rows is not released without score_epsilon.
    assert (release.score, release.score_method) == (None, "not_released")
    assert release.floating_point_noise == ["scaler", "classifier"]
    assert list(release.model.classes_) == ["Adelie", "Chinstrap", "Gentoo"]
    assert release.array("classifier", "coef_").shape == (3, 2)
    archived = client.get_previous_queries()
    assert [entry["query_kind"] for entry in archived] == ["diffprivlib"]
    assert archived[0]["cost"] == cost


def test_a_dp_score_is_charged_score_epsilon_on_top_and_refused_where_unbounded(
    platform: RunningMesh,
) -> None:
    client = researcher(platform)
    cost = client.diffprivlib.cost(lomas_pipeline(), FEATURES, TARGET, score_epsilon="0.25")
    assert cost == {"epsilon": Decimal("1.75"), "delta": Decimal(0)}
    release = client.diffprivlib.query(lomas_pipeline(), FEATURES, TARGET, score_epsilon="0.25")
    assert release.attrs["cost"] == cost
    assert budget(client)[0]["total_spent_epsilon"] == Decimal("1.75")
    assert release.score is not None and 0 <= release.score <= 1
    assert (release.score_kind, release.score_method) == ("accuracy", "discrete_laplace")
    regression = {
        "steps": [
            {
                "name": "r",
                "type": "LinearRegression",
                "params": {"bounds_X": BOUNDS, "bounds_y": [2000, 7000]},
            }
        ]
    }
    before = budget(client)
    with pytest.raises(InvalidQuery) as unbounded:
        client.diffprivlib.query(regression, FEATURES, ["body_mass_g"], score_epsilon=0.5)
    assert (unbounded.value.code, unbounded.value.reason) == ("INVALID_ARGUMENT", "QUERY_INVALID")
    assert unbounded.value.metadata == {"field": "scoreEpsilon"}
    assert budget(client) == before


def test_a_dummy_model_rebuilt_in_the_client_scores_as_the_server_did(
    platform: RunningMesh,
) -> None:
    client = researcher(platform)
    before = budget(client)
    pipeline = {
        "steps": [
            {
                "name": "scaler",
                "type": "StandardScaler",
                "params": {"epsilon": 2, "bounds": BOUNDS},
            },
            {"name": "classifier", "type": "LogisticRegression", "params": {"data_norm": 3}},
        ]
    }
    release = client.diffprivlib.query(
        pipeline, FEATURES, TARGET, test_train_split_seed=3, dummy=True, nb_rows=400, seed=5
    )
    assert budget(client) == before
    # The held-out split, redone here from the same dummy rows with the same seed.
    dummy = client.get_dummy_dataset(nb_rows=400, seed=5)
    _, x_test, _, y_test = train_test_split(
        dummy[FEATURES], dummy["species"], test_size=0.2, random_state=3
    )
    assert release.score_method == "exact_on_dummy_data"  # the dummy data is public
    predictions = release.model.predict(x_test)
    assert (predictions == y_test.to_numpy()).mean() == release.score
    assert release.model.score(x_test, y_test) == release.score


def test_costs_and_dummy_runs_never_read_the_data(platform: RunningMesh) -> None:
    client = researcher(platform, dataset_without_its_file(platform, "PENGUIN_GONE"))
    cost = client.diffprivlib.cost(lomas_pipeline(), FEATURES, TARGET)
    assert cost == {"epsilon": Decimal("1.5"), "delta": Decimal(0)}
    dummy = client.diffprivlib.query(lomas_pipeline(), FEATURES, TARGET, dummy=True, nb_rows=50)
    assert dummy.steps == ["scaler", "classifier"]
    before = budget(client)
    with pytest.raises(LomasError) as missing:
        client.diffprivlib.query(lomas_pipeline(), FEATURES, TARGET)
    assert (missing.value.code, missing.value.reason) == (
        "FAILED_PRECONDITION",
        "DATASET_SOURCE_UNAVAILABLE",
    )
    assert budget(client) == before  # refunded: the worker found the file gone before reading it

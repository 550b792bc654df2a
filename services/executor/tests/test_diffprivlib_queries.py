"""DiffPrivLib training through the engine: the split, the guards at run time, the release table
and the scikit-learn models the client rebuilds from it."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.model_selection import train_test_split

from lomas.client.client import frame_from_ipc
from lomas.client.diffprivlib_client import DiffPrivLibRelease, pipeline_json
from lomas_common.errors import ExecutionFailed, InvalidQuery
from lomas_executor.arrow_ipc import frame_to_ipc
from lomas_executor.cache import DatasetCache
from lomas_executor.diffprivlib_model import DiffPrivLibQuery, parse_pipeline
from lomas_executor.diffprivlib_queries import RELEASE_SCHEMA, execute
from lomas_executor.engine import DatasetRef, QueryEngine
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.settings import HEAVY_TASK_MEMORY_LIMIT_MB, WorkerSettings
from lomas_executor.sources import DataFormat, DataSource

FEATURES = ("bill_length_mm", "bill_depth_mm", "flipper_length_mm")
BOUNDS = [[30, 13, 150], [65, 23, 250]]
LOMAS = [
    {"name": "scaler", "type": "StandardScaler", "params": {"epsilon": 0.5, "bounds": BOUNDS}},
    {
        "name": "classifier",
        "type": "LogisticRegression",
        "params": {"epsilon": 1.0, "data_norm": 5},
    },
]
# One pipeline per allow-listed model, with the target it needs.
PIPELINES: dict[str, tuple[list[dict[str, Any]], tuple[str, ...]]] = {
    "logistic": (LOMAS, ("species",)),
    "linear": (
        [
            {
                "name": "regression",
                "type": "LinearRegression",
                "params": {"bounds_X": BOUNDS, "bounds_y": [2000, 7000]},
            }
        ],
        ("body_mass_g",),
    ),
    "bayes": ([{"name": "nb", "type": "GaussianNB", "params": {"bounds": BOUNDS}}], ("species",)),
    "kmeans": (
        [{"name": "km", "type": "KMeans", "params": {"bounds": BOUNDS, "n_clusters": 3}}],
        (),
    ),
    "forest": (
        [
            {
                "name": "forest",
                "type": "RandomForestClassifier",
                "params": {"bounds": BOUNDS, "n_estimators": 4, "max_depth": 3},
            }
        ],
        ("sex",),
    ),
    "pca": (
        [
            {
                "name": "pca",
                "type": "PCA",
                "params": {"data_norm": 300, "bounds": BOUNDS, "n_components": 2},
            },
            {"name": "lr", "type": "LogisticRegression", "params": {"data_norm": 300}},
        ],
        ("species",),
    ),
}


def _query(
    steps: list[dict[str, Any]], targets: tuple[str, ...], **options: Any
) -> DiffPrivLibQuery:
    return DiffPrivLibQuery(json.dumps({"steps": steps}), FEATURES, targets, **options)


def _dataset(md: DatasetMetadata, path: Path | None = None) -> DatasetRef:
    source = DataSource.local(path or Path("/nonexistent/penguin.csv"))
    return DatasetRef("PENGUIN", 1, source, DataFormat.CSV, md)


@pytest.mark.parametrize("kind", sorted(PIPELINES))
def test_each_model_trains_and_the_client_rebuilds_a_model_with_the_same_score(
    kind: str, penguin_md: DatasetMetadata
) -> None:
    steps, targets = PIPELINES[kind]
    engine = QueryEngine(DatasetCache(max_bytes=0))
    dataset = _dataset(penguin_md)  # no data file: a dummy run reads none
    query = _query(steps, targets, test_train_split_seed=3)
    frame = engine.run_dummy(query, dataset, 300, 7)
    release = DiffPrivLibRelease(frame_from_ipc(frame_to_ipc(frame)))
    assert pa.Table.from_pandas(frame, preserve_index=False).schema.equals(RELEASE_SCHEMA)
    # Counts of rows, iterations and per-row labels stay on the server.
    released = set(frame["parameter"])
    assert not released & {"n_samples_seen_", "n_samples_", "class_count_", "n_iter_", "labels_"}
    assert release.floating_point_noise == release.steps == [s["name"] for s in steps]
    dummy = engine.dummy_frame(dataset, 300, 7)
    x = dummy[list(FEATURES)]
    if targets:
        _, x_test, _, y_test = train_test_split(x, dummy[targets[0]], test_size=0.2, random_state=3)
        # Scores agree to the last bits (the sums run in another order on a DataFrame).
        assert release.model.score(x_test, y_test) == pytest.approx(release.score, rel=1e-12)
        predictions = release.model.predict(x_test)
        if release.score_kind == "accuracy":
            assert (predictions == y_test.to_numpy()).mean() == release.score
        assert len(predictions) == len(x_test)
    else:
        _, x_test = train_test_split(x, test_size=0.2, random_state=3)
        assert release.model.score(x_test) == pytest.approx(release.score, rel=1e-12)


def test_the_release_table_layout(penguin_md: DatasetMetadata) -> None:
    engine = QueryEngine(DatasetCache(max_bytes=0))
    frame = engine.run_dummy(_query(LOMAS, ("species",)), _dataset(penguin_md), 200, 1)
    rows = {(r.step, r.parameter): r for r in frame.itertuples(index=False)}
    assert list(rows[("", "steps")].labels) == ["scaler", "classifier"]
    assert list(rows[("", "target")].labels) == ["species", "string"]
    assert list(rows[("", "score")].labels) == ["accuracy", "exact_on_dummy_data"]
    assert 0 <= rows[("", "score")].values[0] <= 1
    coef = rows[("classifier", "coef_")]
    assert (list(coef.shape), len(coef.values), coef.floating_point_noise) == ([3, 3], 9, True)
    assert list(rows[("classifier", "classes_")].labels) == ["Adelie", "Chinstrap", "Gentoo"]
    assert list(rows[("classifier", "noise_mechanisms")].labels) == ["Vector"]
    assert json.loads(rows[("scaler", "params")].labels[0])["epsilon"] == 0.5
    assert {r.type for r in frame.itertuples() if r.step == "scaler"} == {"StandardScaler"}


def test_the_real_run_trains_on_the_loaded_table_with_the_seeded_split(
    penguin_md: DatasetMetadata, penguin_csv: Path, penguin_frame: pd.DataFrame
) -> None:
    engine = QueryEngine(DatasetCache(max_bytes=64 * 1024**2))
    query = _query(LOMAS, ("species",), test_train_split_seed=11)
    release = DiffPrivLibRelease(engine.run(query, _dataset(penguin_md, penguin_csv)))
    # On the real data no score is released unless score_epsilon pays for it.
    assert (release.score, release.score_method) == (None, "not_released")
    # With a huge score_epsilon the noise of the two counts is 0 (but for ~e^-500): the accuracy
    # is the one of the rebuilt model on the test rows redone here with the same seed.
    paid = dataclasses.replace(query, score_epsilon=Decimal(1000))
    scored = DiffPrivLibRelease(engine.run(paid, _dataset(penguin_md, penguin_csv)))
    rows = penguin_frame.dropna(subset=[*FEATURES, "species"])
    _, x_test, _, y_test = train_test_split(
        rows[list(FEATURES)], rows["species"], test_size=0.2, random_state=11
    )
    assert (scored.score_kind, scored.score_method) == ("accuracy", "discrete_laplace")
    assert scored.model.score(x_test, y_test) == scored.score
    # Noise is fresh on every run: NumPy's global generator is reseeded from the system.
    assert not np.array_equal(
        scored.array("classifier", "coef_"), release.array("classifier", "coef_")
    )


def test_missing_values_are_dropped_or_filled_from_the_metadata(
    penguin_md: DatasetMetadata,
) -> None:
    table = pa.table(
        {
            "bill_length_mm": [None, 40.0, 50.0, 60.0, 35.0, 45.0, 55.0, 62.0, 33.0, 48.0],
            "bill_depth_mm": [15.0] * 10,
            "flipper_length_mm": [210.0] * 9 + [None],
            "species": ["Adelie", "Gentoo", None]
            + ["Adelie", "Gentoo", "Chinstrap"] * 2
            + ["Gentoo"],
        }
    )
    for strategy, rows in (("drop", 7), ("mean", 9)):
        parsed = parse_pipeline(_query(LOMAS, ("species",), imputer_strategy=strategy), penguin_md)
        captured: dict[str, np.ndarray] = {}

        def keep(*arrays: np.ndarray, captured: dict[str, np.ndarray] = captured, **_: Any) -> Any:
            captured["x"] = arrays[0]
            raise ValueError("stop here")

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("lomas_executor.diffprivlib_queries.train_test_split", keep)
            with pytest.raises(ExecutionFailed):
                execute(parsed, table)
        assert captured["x"].shape == (rows, 3), strategy
        if strategy == "mean":
            assert captured["x"][0, 0] == 47.5  # the midpoint of bill_length_mm's bounds
            assert captured["x"][-1, 2] == 200.0


def test_diffprivlib_warning_of_a_leak_at_run_time_stops_the_run(
    penguin_md: DatasetMetadata,
) -> None:
    parsed = parse_pipeline(_query(LOMAS, ("species",)), penguin_md)
    # A pipeline that slipped past the checks (bounds gone) is stopped by the second guard.
    scaler = dataclasses.replace(parsed.steps[0], kwargs={"epsilon": 0.5})
    unguarded = dataclasses.replace(parsed, steps=(scaler, parsed.steps[1]))
    table = pa.Table.from_pandas(
        QueryEngine(DatasetCache(0)).dummy_frame(_dataset(penguin_md), 100, 1), preserve_index=False
    )
    with pytest.raises(InvalidQuery) as leak:
        execute(unguarded, table)
    assert (leak.value.reason, leak.value.metadata) == (
        "DIFFPRIVLIB_PRIVACY_LEAK",
        {"step": "scaler"},
    )
    # On the real data the rows were touched: the charge stands, and the message says so (as the
    # SQL path's failures after data access do); a dummy run charges nothing and says that.
    assert leak.value.message.endswith("after it touched the data; its cost is charged")
    with pytest.raises(InvalidQuery) as dummy_leak:
        execute(unguarded, table, dummy=True)
    assert dummy_leak.value.reason == "DIFFPRIVLIB_PRIVACY_LEAK"
    assert "a dummy run: nothing is charged" in dummy_leak.value.message
    assert "its cost is charged" not in dummy_leak.value.message


def test_library_failures_after_data_access_name_no_data(penguin_md: DatasetMetadata) -> None:
    kmeans = [{"name": "km", "type": "KMeans", "params": {"bounds": BOUNDS, "n_clusters": 40}}]
    parsed = parse_pipeline(_query(kmeans, ()), penguin_md)
    rows = pa.table(
        {
            "bill_length_mm": [40.125 + i for i in range(20)],
            "bill_depth_mm": [15.0] * 20,
            "flipper_length_mm": [200.0] * 20,
        }
    )
    with pytest.raises(ExecutionFailed) as failed:  # 16 training rows for 40 clusters
        execute(parsed, rows)
    assert "40.125" not in failed.value.message and "'km'" in failed.value.message
    with pytest.raises(ExecutionFailed, match="too few rows"):
        execute(parsed, rows.slice(0, 1))


def test_accuracy_is_refused_and_costs_never_load_data(penguin_md: DatasetMetadata) -> None:
    engine = QueryEngine(DatasetCache(max_bytes=0))
    dataset = _dataset(penguin_md)
    assert str(engine.estimate_cost(_query(LOMAS, ("species",)), dataset)) == "pure_dp(epsilon=1.5)"
    with pytest.raises(InvalidQuery, match="no accuracy estimate"):
        engine.estimate_accuracy(_query(LOMAS, ("species",)), dataset, 0.05)


def test_a_client_pipeline_object_travels_as_json_without_a_pickle(
    penguin_md: DatasetMetadata,
) -> None:
    from diffprivlib import models
    from sklearn.pipeline import Pipeline

    pipeline = Pipeline(
        [
            ("scaler", models.StandardScaler(epsilon=0.5, bounds=(np.array([30, 13]), [65, 23]))),
            ("classifier", models.LogisticRegression(epsilon=1.0, data_norm=83.69)),
        ]
    )
    text = pipeline_json(pipeline)
    assert "accountant" not in text
    query = DiffPrivLibQuery(text, ("bill_length_mm", "bill_depth_mm"), ("species",))
    assert str(parse_pipeline(query, penguin_md).cost) == "pure_dp(epsilon=1.5)"
    with pytest.raises(TypeError, match="no pickles"):
        pipeline_json(
            Pipeline([("c", models.LogisticRegression(random_state=np.random.RandomState(1)))])
        )


def test_heavy_workers_have_a_memory_limit_by_default() -> None:
    env = {"LOMAS_REDIS_URL": "redis://127.0.0.1:6379/0", "LOMAS_ADMIN_TARGET": "a:1"}
    env |= {"LOMAS_BUDGET_TARGET": "b:1"}
    light = WorkerSettings.from_env(env)
    heavy = WorkerSettings.from_env({**env, "LOMAS_WORKER_QUEUES": "heavy"})
    chosen = WorkerSettings.from_env(
        {**env, "LOMAS_WORKER_QUEUES": "light,heavy", "LOMAS_TASK_MEMORY_LIMIT_MB": "0"}
    )
    assert (light.task_memory_limit_mb, heavy.task_memory_limit_mb) == (
        0,
        HEAVY_TASK_MEMORY_LIMIT_MB,
    )
    assert chosen.task_memory_limit_mb == 0  # an operator's value wins
    # The time limit is the queue's, for heavy tasks too.
    assert heavy.queue.task_time_limit_seconds == light.queue.task_time_limit_seconds == 300


def test_a_class_the_metadata_does_not_declare_never_reaches_the_release(
    penguin_md: DatasetMetadata,
) -> None:
    frame = QueryEngine(DatasetCache(0)).dummy_frame(_dataset(penguin_md), 300, 2)
    frame.loc[frame.index[:40], "species"] = "Emperor"  # in the data, not in the metadata
    parsed = parse_pipeline(_query(LOMAS, ("species",)), penguin_md)
    release = execute(parsed, pa.Table.from_pandas(frame, preserve_index=False))
    rows = {(r.step, r.parameter): r for r in release.itertuples(index=False)}
    assert list(rows[("classifier", "classes_")].labels) == ["Adelie", "Chinstrap", "Gentoo"]
    assert "Emperor" not in str(release.to_dict())


def test_the_client_sends_score_epsilon_only_when_asked_and_refuses_unknown_keywords() -> None:
    from lomas.client.diffprivlib_client import DiffPrivLibClient

    class Runner:
        def __init__(self) -> None:
            self.sent: list[tuple[Any, dict[str, Any]]] = []

        def _estimate(self, query: Any) -> dict[str, Decimal]:
            self.sent.append((query.diffprivlib, {}))
            return {}

        def _execute(self, query: Any, run: Any) -> pd.DataFrame:
            raise AssertionError("not called")

        def submit(self, query: Any, **options: Any) -> Any:
            self.sent.append((query.diffprivlib, options))
            return None

    runner = Runner()
    client = DiffPrivLibClient(runner)
    client.cost({"steps": LOMAS}, ["bill_length_mm"], ["species"])
    client.cost({"steps": LOMAS}, ["bill_length_mm"], ["species"], score_epsilon=0.25)
    client.submit({"steps": LOMAS}, ["bill_length_mm"], ["species"], test_size="0.3", fresh=True)
    (plain, _), (paid, _), (submitted, options) = runner.sent
    assert (plain.score_epsilon, plain.test_size, plain.test_train_split_seed) == ("", "0.2", 1)
    assert (paid.score_epsilon, submitted.test_size, options) == ("0.25", "0.3", {"fresh": True})
    typo: dict[str, Any] = {"score_epsilom": 0.25}  # a keyword the signature does not know
    with pytest.raises(TypeError, match="score_epsilom"):
        client.cost({"steps": LOMAS}, ["bill_length_mm"], ["species"], **typo)

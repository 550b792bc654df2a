"""DP machine learning with DiffPrivLib: `client.diffprivlib.cost/query/submit`, with Lomas's names.

pipeline = Pipeline([
    ("scaler", models.StandardScaler(epsilon=0.5, bounds=([30, 13], [65, 23]))),
    ("classifier", models.LogisticRegression(epsilon=1.0, data_norm=83.69)),
])  # diffprivlib.models, or the same JSON: {"steps": [{"name", "type", "params"}, ...]}
release = client.diffprivlib.query(pipeline, ["bill_length_mm", "bill_depth_mm"], ["species"])
release.model.predict(frame)     # a scikit-learn Pipeline rebuilt from the released parameters
release.score                    # None: no score is released unless score_epsilon pays for one
client.diffprivlib.query(pipeline, features, ["species"], score_epsilon=0.5).score
                                 # a DP accuracy on the held-out rows, charged 0.5 more (classifiers)

A dummy run (`dummy=True`) releases the exact score of the public dummy data. Lomas releases the
score of the private held-out rows without noise; here it is DP or absent.

Nothing is pickled either way: a pipeline object travels as JSON (each step's class name and its
`get_params()`; the `accountant` stays here, the platform keeps the ledger), and the release is an
Arrow table of the fitted parameters (see `lomas_executor.diffprivlib_queries` for its columns).
`release.model` needs scikit-learn (`pip install lomas-client[diffprivlib]`), not DiffPrivLib; it
predicts as the trained pipeline does (`predict_proba` of a multi-class logistic regression follows
scikit-learn's own rule, not DiffPrivLib's one-vs-rest one).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, TypedDict, Unpack

import numpy as np
import pandas as pd

from lomas.client.family import QueryRunner, refuse_unknown, submit_options
from lomas.client.jobs import QueryJob
from lomas.client.options import RunOptions, SubmitOptions, decimal_text
from lomas.common.v1 import query_pb2

PIPELINE_ROW = "Pipeline"


def pipeline_json(pipeline: Any) -> str:
    """The declarative JSON of a pipeline: a DiffPrivLib (scikit-learn) `Pipeline`, one DiffPrivLib
    estimator, a `{"steps": [...]}` mapping or its JSON text."""
    if isinstance(pipeline, str):
        return pipeline
    if isinstance(pipeline, Mapping):
        return json.dumps(pipeline)
    steps = getattr(pipeline, "steps", None)
    if steps is None:
        if not hasattr(pipeline, "get_params"):
            raise TypeError(
                "the pipeline must be a DiffPrivLib Pipeline or estimator, a {'steps': [...]} "
                f"mapping or its JSON text, not {type(pipeline).__name__}"
            )
        steps = [(type(pipeline).__name__.lower(), pipeline)]
    return json.dumps(
        {
            "steps": [
                {"name": str(name), "type": type(step).__name__, "params": _params(step)}
                for name, step in steps
            ]
        }
    )


def _params(estimator: Any) -> dict[str, Any]:
    params = estimator.get_params(deep=False)
    params.pop("accountant", None)  # the client's own budget tracker: the platform keeps the ledger
    return {name: _plain(value, name) for name, value in params.items()}


def _plain(value: Any, name: str) -> Any:
    """A parameter value as JSON can carry it (arrays and tuples become lists)."""
    if isinstance(value, np.ndarray | tuple | list):
        return [_plain(item, name) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"parameter {name!r}: a {type(value).__name__} cannot be sent (no pickles)")


class DiffPrivLibRelease:
    """A trained pipeline's release: its parameters (`parameters`, the release table), its `score`
    on the held-out rows (None when none was released) and `model`, the scikit-learn pipeline they
    rebuild. `score_kind` says what the score measures ("accuracy", "r2", ...), `score_method` how
    it was released: "discrete_laplace" (a DP accuracy paid by `score_epsilon`),
    "exact_on_dummy_data" (a dummy run) or "not_released"."""

    def __init__(self, parameters: pd.DataFrame) -> None:
        self.parameters = parameters
        self.attrs: dict[str, Any] = dict(parameters.attrs)  # query_id, cost, replay
        self._rows = {
            (str(row.step), str(row.parameter)): row for row in parameters.itertuples(index=False)
        }
        score = self._rows[("", "score")]
        self.score: float | None = float(score.values[0]) if len(score.values) else None
        self.score_kind = str(score.labels[0])
        self.score_method = str(score.labels[1]) if len(score.labels) > 1 else ""
        self.steps = [str(name) for name in self._rows[("", "steps")].labels]
        # Every DiffPrivLib mechanism samples its noise with floating-point arithmetic (a known
        # weakness, Mironov 2012): the release names the steps concerned.
        self.floating_point_noise = [
            str(name) for name in self._rows[("", "floating_point_noise")].labels
        ]
        self._model: Any = None

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> DiffPrivLibRelease:
        """The release of a job's result (`DiffPrivLibRelease.from_frame(job.result())`)."""
        return cls(frame)

    def __repr__(self) -> str:
        score = "not released" if self.score is None else f"{self.score:.4g}"
        return f"DiffPrivLibRelease(steps={self.steps}, {self.score_kind}={score})"

    def array(self, step: str, parameter: str) -> np.ndarray:
        """One released parameter as a NumPy array of its shape."""
        row = self._rows[(step, parameter)]
        return np.asarray(row.values, dtype=np.float64).reshape(tuple(int(n) for n in row.shape))

    def has(self, step: str, parameter: str) -> bool:
        return (step, parameter) in self._rows

    def params(self, step: str) -> dict[str, Any]:
        """The parameters `step` was built with, as it ran."""
        return dict(json.loads(self._rows[(step, "params")].labels[0]))

    def step_type(self, step: str) -> str:
        return str(self._rows[(step, "params")].type)

    def classes(self, step: str) -> np.ndarray:
        """A classifier's classes, typed as the target column is (text, integers, booleans)."""
        row = self._rows[(step, "classes_")]
        kind = str(self._rows[("", "target")].labels[1])
        if kind == "boolean":
            return np.asarray([label == "True" for label in row.labels], dtype=bool)
        if kind == "int":
            return np.asarray([int(v) for v in row.values], dtype=np.int64)
        if kind == "float":
            return np.asarray(row.values, dtype=np.float64)
        return np.asarray([str(label) for label in row.labels], dtype=object)

    @property
    def feature_names(self) -> list[str]:
        return [str(name) for name in self._rows[("", "feature_names_in_")].labels]

    @property
    def model(self) -> Any:
        """The trained pipeline as a scikit-learn `Pipeline` (built once, on first use)."""
        if self._model is None:
            from lomas.client.diffprivlib_rebuild import rebuild_pipeline

            self._model = rebuild_pipeline(self)
        return self._model


class TrainingOptions(TypedDict, total=False):
    """How a pipeline is trained and scored (keyword arguments, with Lomas's names):

    - `test_size` (default 0.2): the fraction of the rows held out for the score, split by
      scikit-learn's `train_test_split` with `random_state=test_train_split_seed` (default 1);
    - `imputer_strategy` (default "drop"; or "mean", "median", "most_frequent"): what happens to
      missing feature values; the values filled in come from the metadata, never from the data;
    - `score_epsilon` (default none): the epsilon of a DP score on the held-out rows, charged on
      top of the steps' epsilon (classifiers only: a noisy accuracy). Without it a real run
      releases no score (`release.score` is None); a dummy run always has the exact score.
    """

    test_size: float | str | Decimal
    test_train_split_seed: int
    imputer_strategy: str
    score_epsilon: float | str | Decimal | None


class TrainingQueryOptions(TrainingOptions, RunOptions, total=False):
    """The keyword arguments of `DiffPrivLibClient.query`: the training's, then the run's."""


class TrainingSubmitOptions(TrainingOptions, SubmitOptions, total=False):
    """The keyword arguments of `DiffPrivLibClient.submit`: the training's, then the submit's."""


class DiffPrivLibClient:
    """DiffPrivLib training queries, with Lomas's parameter names. The cost is the sum of the
    steps' epsilon (pure DP) plus `score_epsilon`, computed without data; bounds and norms must be
    in the pipeline."""

    def __init__(self, client: QueryRunner) -> None:
        self._client = client

    @staticmethod
    def _query(
        pipeline: Any,
        feature_columns: Sequence[str],
        target_columns: Sequence[str] | None,
        options: TrainingOptions,
        accepted: frozenset[str],
    ) -> query_pb2.Query:
        if isinstance(feature_columns, str) or isinstance(target_columns, str):
            raise TypeError("feature_columns and target_columns are lists of column names")
        refuse_unknown(options, accepted)
        score_epsilon = options.get("score_epsilon")
        return query_pb2.Query(
            diffprivlib=query_pb2.DiffPrivLibQuery(
                pipeline_json=pipeline_json(pipeline),
                feature_columns=list(feature_columns),
                target_columns=list(target_columns or []),
                test_size=decimal_text(options.get("test_size", 0.2), "test_size"),
                test_train_split_seed=options.get("test_train_split_seed", 1),
                imputer_strategy=options.get("imputer_strategy", "drop"),
                score_epsilon=""
                if score_epsilon is None
                else decimal_text(score_epsilon, "score_epsilon"),
            )
        )

    def cost(
        self,
        pipeline: Any,
        feature_columns: Sequence[str],
        target_columns: Sequence[str] | None = None,
        **options: Unpack[TrainingOptions],
    ) -> dict[str, Decimal]:
        """The exact cost the training would be charged (free; nothing reads the data)."""
        accepted = TrainingOptions.__optional_keys__
        query = self._query(pipeline, feature_columns, target_columns, options, accepted)
        return self._client._estimate(query)

    def query(
        self,
        pipeline: Any,
        feature_columns: Sequence[str],
        target_columns: Sequence[str] | None = None,
        **options: Unpack[TrainingQueryOptions],
    ) -> DiffPrivLibRelease:
        """Train the pipeline and return its release (`release.model`, `release.score`).

        The training's options are `TrainingOptions`'. `dummy=True` trains on seeded dummy data
        (`nb_rows`, `seed`) for free; `request_id` and `fresh` work as for SmartNoise-SQL.
        """
        accepted = TrainingQueryOptions.__optional_keys__
        query = self._query(pipeline, feature_columns, target_columns, options, accepted)
        return DiffPrivLibRelease(self._client._execute(query, options))

    def submit(
        self,
        pipeline: Any,
        feature_columns: Sequence[str],
        target_columns: Sequence[str] | None = None,
        **options: Unpack[TrainingSubmitOptions],
    ) -> QueryJob:
        """Start the training and return its job at once; `DiffPrivLibRelease.from_frame(
        job.result())` is the release."""
        accepted = TrainingSubmitOptions.__optional_keys__
        query = self._query(pipeline, feature_columns, target_columns, options, accepted)
        return self._client.submit(query, **submit_options(options))

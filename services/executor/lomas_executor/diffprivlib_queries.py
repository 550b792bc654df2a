"""DiffPrivLib queries: validation and cost (in `diffprivlib_model`), training, and the release.

The engine calls `parse_pipeline` (no data), then `execute` on the dataset's Arrow table (the real
data, or seeded dummy data for a dummy run: the same code either way, but for the score). `execute`:

1. selects the feature and target columns, drops the rows without a target, and fills or drops the
   rows with a missing feature (`imputer_strategy`, fill values from the metadata);
2. splits train and test rows with scikit-learn's `train_test_split(X, y, test_size=...,
   random_state=test_train_split_seed)`, in the order of the dataset's rows (a client that has the
   same rows, dummy data say, can redo the split);
3. fits each step in order on the training rows with DiffPrivLib (a classifier's classes from the
   metadata where DiffPrivLib takes them, and for LogisticRegression and GaussianNB one public row
   per declared class added to the training rows: see `ParsedPipeline.anchor`), with
   PrivacyLeakWarning turned into an error (DIFFPRIVLIB_PRIVACY_LEAK: a second guard behind the
   checks of `diffprivlib_model`; on the real data the run has touched the rows by then, so its
   charge stands and the message says so), its own budget accountant per run (the process-wide
   default one would grow forever), and NumPy's global generator reseeded from the operating system
   first: DiffPrivLib draws part of its randomness from it, and every worker child forked from one
   parent would otherwise share its state;
4. releases the score on the held-out rows as `diffprivlib_score` says: none on the real data
   unless `score_epsilon` pays for a DP accuracy (classifiers), the exact score on dummy data (the
   final model's `score`: accuracy for a classifier, R² for a regressor, minus the inertia for
   KMeans, the average log-likelihood for PCA).

The release (never a pickle) is one table, one row per released value, read by any Arrow reader:

| column | type | what |
|---|---|---|
| `step` | string | the step's name; "" for a row about the whole pipeline |
| `type` | string | the step's DiffPrivLib class ("LogisticRegression"); "Pipeline" for pipeline rows |
| `parameter` | string | the fitted attribute as scikit-learn names it (`coef_`, `mean_`, ...) |
| `shape` | list<int64> | the attribute's shape ([] for a number) |
| `values` | list<float64> | its values, flattened in C order (empty for text) |
| `labels` | list<string> | text values: the classes (`classes_`, as text), names, kinds |
| `floating_point_noise` | bool | whether the value carries noise drawn with floating-point arithmetic |

Rows per step: `params` (labels: the JSON object of the parameters it was built with, as run),
`n_features_in_` (the columns it sees), the fitted attributes scikit-learn's own
estimator needs to predict (`FITTED` below; never counts of rows, iterations or per-row labels,
which DiffPrivLib leaves without noise) and `noise_mechanisms` (labels: the DiffPrivLib mechanisms
it draws from). Pipeline rows: `steps` (labels: the step names in order), `feature_names_in_`
(labels: the feature columns), `target` (labels: the target column and its metadata type, which
tells how to read `classes_`: text in `labels`, numbers and booleans in `values` too), `score`
(values: [score], or [] when none is released; labels: [its kind, how it was released:
"not_released", "discrete_laplace" or "exact_on_dummy_data"]) and `floating_point_noise` (labels:
the steps whose noise is floating point; the score's noise is integer, exact). Every DiffPrivLib
mechanism samples with floating-point arithmetic, which is known to leak through the low bits of
its outputs (Mironov, 2012); the release says so for every step rather than hide it. A random
forest's trees are rows `estimators_.<i>.<array>` for the arrays of scikit-learn's `Tree`
(`children_left`, `children_right`, `feature`, `threshold`, `value`); their structure is drawn from
the bounds alone and their leaves carry DiffPrivLib's noisy votes.

Two DiffPrivLib outputs would carry the exact number of training rows, which is not public here
(the SQL path never releases it either): PCA's `explained_variance_` and `noise_variance_` (noisy
eigenvalues divided by the exact row count minus one) are not released, and `whiten`, which would
scale the data by them, is accepted only at its default (false); GaussianNB's noisy class counts,
which DiffPrivLib truncates to [1, rows] and then forces to sum to the exact row count (its
`class_prior_` would be fractions of it), are drawn here with the same geometric noise, only kept
at least 1 (`_GaussianNB`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import diffprivlib.models as dpl_models
import numpy as np
import pandas as pd
import pyarrow as pa
from diffprivlib.accountant import BudgetAccountant
from diffprivlib.mechanisms import Geometric
from diffprivlib.utils import DiffprivlibCompatibilityWarning, PrivacyLeakWarning
from sklearn.model_selection import train_test_split

from lomas_common.errors import ExecutionFailed, InvalidQuery
from lomas_executor.diffprivlib_allow_list import MODELS, PRIVACY_LEAK
from lomas_executor.diffprivlib_model import ParsedPipeline, Step
from lomas_executor.diffprivlib_score import Score, release_score

# The fitted attributes released per DiffPrivLib class: what scikit-learn's estimator of the same
# name needs to predict. Left out: row counts (`n_samples_seen_`, `n_samples_`, `class_count_`,
# whose sum is the exact number of rows), `n_iter_`, `labels_`, `inertia_`, and PCA's
# `singular_values_`, `explained_variance_` and `noise_variance_` (divided by the exact number of
# rows: see the module's docstring).
FITTED: dict[str, tuple[str, ...]] = {
    "StandardScaler": ("mean_", "var_", "scale_"),
    "PCA": ("components_", "explained_variance_ratio_", "mean_"),
    "LogisticRegression": ("coef_", "intercept_", "classes_"),
    "LinearRegression": ("coef_", "intercept_"),
    "GaussianNB": ("theta_", "var_", "class_prior_", "classes_", "epsilon_"),
    "KMeans": ("cluster_centers_",),
    "RandomForestClassifier": ("classes_",),
}
TREE_ARRAYS = ("children_left", "children_right", "feature", "threshold", "value")
RELEASE_SCHEMA = pa.schema(
    [
        ("step", pa.string()),
        ("type", pa.string()),
        ("parameter", pa.string()),
        ("shape", pa.list_(pa.int64())),
        ("values", pa.list_(pa.float64())),
        ("labels", pa.list_(pa.string())),
        ("floating_point_noise", pa.bool_()),
    ]
)
PIPELINE = "Pipeline"

Row = tuple[str, str, str, list[int], list[float], list[str], bool]


def execute(parsed: ParsedPipeline, table: pa.Table, *, dummy: bool = False) -> pd.DataFrame:
    """Train `parsed` on `table` and return its release. `dummy`: the rows are public dummy data
    (the exact score is released); otherwise they are the real data."""
    features, targets = _columns(parsed, table)
    try:
        split = train_test_split(
            *([features, targets] if targets is not None else [features]),
            test_size=float(parsed.query.test_size),
            random_state=parsed.query.test_train_split_seed,
        )
    except ValueError:
        raise ExecutionFailed(
            "too few rows with values to split into training and test rows"
        ) from None
    if targets is not None:
        x_train, x_test, y_train, y_test = split
    else:
        (x_train, x_test), y_train, y_test = split, None, None
    if parsed.anchor is not None and parsed.classes is not None and y_train is not None:
        # One public row per declared class (see `ParsedPipeline.anchor`), class numbers in order.
        x_train = np.vstack([x_train, np.tile(parsed.anchor, (len(parsed.classes), 1))])
        y_train = np.concatenate([y_train, np.arange(len(parsed.classes), dtype=y_train.dtype)])
    fitted = _fit(parsed, x_train, y_train, dummy=dummy)
    score = release_score(parsed, fitted, x_test, y_test, dummy=dummy)
    if parsed.classes is not None:
        # Class numbers back to the metadata's labels (after the score, which compares numbers).
        final = fitted[-1][1]
        final.classes_ = np.asarray(parsed.classes, dtype=object)[np.asarray(final.classes_)]
    return release_frame(parsed, fitted, score)


def _columns(parsed: ParsedPipeline, table: pa.Table) -> tuple[np.ndarray, np.ndarray | None]:
    """Feature matrix and target vector, in row order, after the missing-value strategy."""
    query = parsed.query
    frame = table.select([*query.feature_columns, *query.target_columns]).to_pandas()
    features = frame[list(query.feature_columns)].astype("float64")
    keep = pd.Series(True, index=frame.index)
    codes = None
    if query.target_columns and parsed.classes is not None:
        # A classifier learns class numbers (DiffPrivLib's np.unique on text is slow): the index of
        # each row's class among the metadata's categories. A row whose class is missing, or not a
        # declared category, is left out: classes come from the metadata only.
        column = frame[query.target_columns[0]]
        codes = pd.Categorical(column, categories=list(parsed.classes)).codes.astype(np.int64)
        keep &= codes >= 0
    elif query.target_columns:
        keep &= frame[query.target_columns[0]].notna()
    if parsed.fill_values:
        features = features.fillna(value=dict(parsed.fill_values))
    else:
        keep &= features.notna().all(axis=1)
    x = features[keep].to_numpy(dtype=np.float64)
    if not query.target_columns:
        return x, None
    if codes is not None:
        return x, codes[keep.to_numpy()]
    return x, frame[query.target_columns[0]][keep].astype("float64").to_numpy()


def _fit(
    parsed: ParsedPipeline, x: np.ndarray, y: np.ndarray | None, *, dummy: bool
) -> list[tuple[Step, Any]]:
    np.random.seed()  # fresh entropy: DiffPrivLib draws from NumPy's global generator too
    accountant = BudgetAccountant()
    fitted: list[tuple[Step, Any]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrivacyLeakWarning)
        warnings.simplefilter("error", DiffprivlibCompatibilityWarning)
        try:
            for index, step in enumerate(parsed.steps):
                kwargs = dict(step.kwargs)
                if "classes" in kwargs and parsed.classes is not None:
                    kwargs["classes"] = list(range(len(parsed.classes)))  # class numbers
                model = _GaussianNB if step.type == "GaussianNB" else getattr(dpl_models, step.type)
                estimator = model(**kwargs, accountant=accountant)
                last = index == len(parsed.steps) - 1
                if not last:
                    x = estimator.fit_transform(x)
                elif step.type == "GaussianNB" and parsed.classes is not None:
                    estimator.partial_fit(x, y, classes=np.arange(len(parsed.classes)))
                elif MODELS[step.type].role in ("classifier", "regressor"):
                    estimator.fit(x, y)
                else:
                    estimator.fit(x)
                fitted.append((step, estimator))
        except PrivacyLeakWarning:
            name = parsed.steps[len(fitted)].name
            stopped = (
                "the run was stopped (a dummy run: nothing is charged)"
                if dummy
                else "the run was stopped after it touched the data; its cost is charged"
            )
            raise InvalidQuery(
                f"step {name!r}: DiffPrivLib would have computed a parameter from the data (a "
                f"privacy leak); {stopped}",
                reason=PRIVACY_LEAK,
                metadata={"step": name},
            ) from None
        except (ValueError, ArithmeticError, TypeError, IndexError):
            # Library messages may quote the data: only the step is named.
            name = parsed.steps[len(fitted)].name if len(fitted) < len(parsed.steps) else ""
            raise ExecutionFailed(
                f"DiffPrivLib could not fit step {name!r} on the training rows (a KMeans with "
                "fewer training rows than clusters, say)"
            ) from None
    return fitted


def release_frame(
    parsed: ParsedPipeline, fitted: Sequence[tuple[Step, Any]], score: Score
) -> pd.DataFrame:
    """The release table (see the module's docstring) as a frame of Arrow-typed columns."""
    rows: list[Row] = [
        ("", PIPELINE, "steps", [len(fitted)], [], [step.name for step, _ in fitted], False),
        (
            "",
            PIPELINE,
            "feature_names_in_",
            [len(parsed.query.feature_columns)],
            [],
            list(parsed.query.feature_columns),
            False,
        ),
    ]
    if parsed.query.target_columns:
        target = parsed.query.target_columns[0]
        rows.append(("", PIPELINE, "target", [1], [], [target, parsed.target_type], False))
    for step, estimator in fitted:
        rows.extend(_step_rows(step, estimator))
    values = [] if score.value is None else [score.value]
    rows.append(("", PIPELINE, "score", [], values, [score.kind, score.method], False))
    noisy = [step.name for step, _ in fitted]  # every DiffPrivLib mechanism is floating point
    rows.append(("", PIPELINE, "floating_point_noise", [len(noisy)], [], noisy, True))
    columns = list(zip(*rows, strict=True))
    return pd.DataFrame(
        {
            field.name: pd.Series(
                pd.arrays.ArrowExtensionArray(pa.array(list(values), type=field.type))
            )
            for field, values in zip(RELEASE_SCHEMA, columns, strict=True)
        }
    )


def _step_rows(step: Step, estimator: Any) -> Iterator[Row]:
    params = json.dumps(dict(step.kwargs), sort_keys=True)
    yield (step.name, step.type, "params", [], [], [params], False)
    yield (step.name, step.type, "n_features_in_", [], [float(step.n_features_in)], [], False)
    for name in FITTED[step.type]:
        value = getattr(estimator, name, None)
        if value is None:
            continue  # StandardScaler(with_mean=False) has no mean_
        if name == "classes_":
            classes = np.asarray(value).ravel().tolist()
            labels = [str(label) for label in classes]
            numbers = (
                [] if any(isinstance(c, str) for c in classes) else [float(c) for c in classes]
            )
            yield (step.name, step.type, name, [len(labels)], numbers, labels, False)
            continue
        yield _array_row(step, name, value)
    if step.type == "RandomForestClassifier":
        for index, tree in enumerate(estimator.estimators_):
            for array in TREE_ARRAYS:
                yield _array_row(step, f"estimators_.{index}.{array}", getattr(tree.tree_, array))
    yield (
        step.name,
        step.type,
        "noise_mechanisms",
        [],
        [],
        list(MODELS[step.type].mechanisms),
        True,
    )


def _array_row(step: Step, name: str, value: Any) -> Row:
    array = np.asarray(value, dtype=np.float64)
    return (
        step.name,
        step.type,
        name,
        [int(size) for size in array.shape],
        [float(item) for item in array.ravel()],
        [],
        True,
    )


class _GaussianNB(dpl_models.GaussianNB):
    """DiffPrivLib's GaussianNB, its noisy class counts not tied to the exact number of rows."""

    def _noisy_class_counts(self, y: np.ndarray, random_state: Any) -> np.ndarray:
        # DiffPrivLib's own: GeometricTruncated on [1, rows], then nudged until the counts sum to
        # the exact number of rows. Here: the same geometric noise (a third of epsilon, one per
        # class present; the anchor rows make every declared class present), kept at least 1.
        mechanism = Geometric(epsilon=self.epsilon / 3, sensitivity=1, random_state=random_state)
        counts = [int(np.count_nonzero(y == label)) for label in np.unique(y)]
        return np.asarray([max(1, mechanism.randomise(count)) for count in counts], dtype=np.int64)

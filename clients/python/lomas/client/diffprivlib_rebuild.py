"""scikit-learn estimators rebuilt from a DiffPrivLib release's parameters (no pickle, no DiffPrivLib).

Each DiffPrivLib step becomes scikit-learn's estimator of the same name, with the released fitted
attributes set on it, so `predict`, `transform` and `score` run locally as the trained pipeline did.
Imported on first use of `DiffPrivLibRelease.model`: scikit-learn is an optional dependency of the
client (`pip install lomas-client[diffprivlib]`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

try:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier
    from sklearn.tree._tree import Tree
except ImportError:  # pragma: no cover - the client's diffprivlib extra is not installed
    raise ImportError(
        "release.model rebuilds a scikit-learn estimator: pip install 'lomas-client[diffprivlib]' "
        "(or scikit-learn)"
    ) from None


class DiffPrivLibRelease(Protocol):
    """What the rebuild reads of a release (`lomas.client.diffprivlib_client.DiffPrivLibRelease`)."""

    steps: list[str]

    @property
    def feature_names(self) -> list[str]: ...

    def array(self, step: str, parameter: str) -> np.ndarray: ...

    def has(self, step: str, parameter: str) -> bool: ...

    def params(self, step: str) -> dict[str, Any]: ...

    def step_type(self, step: str) -> str: ...

    def classes(self, step: str) -> np.ndarray: ...


def rebuild_pipeline(release: DiffPrivLibRelease) -> Pipeline:
    """The release's pipeline as a fitted scikit-learn `Pipeline`."""
    steps = []
    for position, name in enumerate(release.steps):
        kind = release.step_type(name)
        builder = _BUILDERS.get(kind)
        if builder is None:
            raise ValueError(f"this client cannot rebuild a {kind} (step {name!r})")
        estimator = builder(release, name)
        estimator.n_features_in_ = int(release.array(name, "n_features_in_"))
        if position == 0:
            estimator.feature_names_in_ = np.asarray(release.feature_names, dtype=object)
        steps.append((name, estimator))
    return Pipeline(steps)


def _standard_scaler(release: DiffPrivLibRelease, step: str) -> StandardScaler:
    params = release.params(step)
    scaler = StandardScaler(
        with_mean=params.get("with_mean", True), with_std=params.get("with_std", True)
    )
    for name in ("mean_", "var_", "scale_"):
        setattr(scaler, name, release.array(step, name) if release.has(step, name) else None)
    return scaler


def _pca(release: DiffPrivLibRelease, step: str) -> PCA:
    """A PCA that transforms as the trained one (never whitened). Its variances are not released:
    DiffPrivLib divides them by the exact number of rows, so `score` and `get_covariance` are not
    available."""
    pca = PCA(n_components=release.params(step)["n_components"])
    for name in ("components_", "explained_variance_ratio_", "mean_"):
        setattr(pca, name, release.array(step, name))
    pca.explained_variance_ = pca.noise_variance_ = None
    pca.n_components_ = int(pca.components_.shape[0])
    pca.n_samples_ = 0  # not released (it would be the exact number of rows)
    return pca


def _logistic_regression(release: DiffPrivLibRelease, step: str) -> LogisticRegression:
    model = LogisticRegression(fit_intercept=release.params(step).get("fit_intercept", True))
    model.coef_ = release.array(step, "coef_")
    model.intercept_ = release.array(step, "intercept_")
    model.classes_ = release.classes(step)
    return model


def _linear_regression(release: DiffPrivLibRelease, step: str) -> LinearRegression:
    model = LinearRegression(fit_intercept=release.params(step).get("fit_intercept", True))
    model.coef_ = release.array(step, "coef_")
    intercept = release.array(step, "intercept_")
    model.intercept_ = float(intercept) if intercept.ndim == 0 else intercept
    return model


def _gaussian_nb(release: DiffPrivLibRelease, step: str) -> GaussianNB:
    model = GaussianNB()
    for name in ("theta_", "var_", "class_prior_"):
        setattr(model, name, release.array(step, name))
    model.epsilon_ = float(release.array(step, "epsilon_"))
    model.classes_ = release.classes(step)
    return model


def _kmeans(release: DiffPrivLibRelease, step: str) -> KMeans:
    centers = release.array(step, "cluster_centers_")
    model = KMeans(n_clusters=centers.shape[0], n_init=1)
    model.cluster_centers_ = centers
    model._n_threads = 1  # what fit would have set (scikit-learn's predict reads it)
    return model


def _random_forest(release: DiffPrivLibRelease, step: str) -> RandomForestClassifier:
    classes = release.classes(step)
    n_features = int(release.array(step, "n_features_in_"))
    trees = []
    index = 0
    while release.has(step, f"estimators_.{index}.children_left"):
        trees.append(_tree(release, step, index, classes, n_features))
        index += 1
    forest = RandomForestClassifier(n_estimators=len(trees))
    forest.estimators_ = trees
    forest.estimator_ = DecisionTreeClassifier()
    forest.classes_ = classes
    forest.n_classes_ = len(classes)
    forest.n_outputs_ = 1
    return forest


def _tree(
    release: DiffPrivLibRelease, step: str, index: int, classes: np.ndarray, n_features: int
) -> DecisionTreeClassifier:
    def part(name: str) -> np.ndarray:
        return release.array(step, f"estimators_.{index}.{name}")

    left, right = part("children_left"), part("children_right")
    empty = Tree(n_features, np.asarray([len(classes)], dtype=np.intp), 1)
    nodes = np.zeros(left.shape[0], dtype=empty.__getstate__()["nodes"].dtype)
    nodes["left_child"], nodes["right_child"] = left, right
    nodes["feature"], nodes["threshold"] = part("feature"), part("threshold")
    depth = _depth(left.astype(np.int64), right.astype(np.int64))
    tree = Tree(n_features, np.asarray([len(classes)], dtype=np.intp), 1)
    tree.__setstate__(
        {
            "max_depth": depth,
            "node_count": left.shape[0],
            "nodes": nodes,
            "values": np.ascontiguousarray(part("value")),
        }
    )
    model = DecisionTreeClassifier()
    model.tree_ = tree
    model.classes_ = classes
    model.n_classes_ = len(classes)
    model.n_outputs_ = 1
    model.n_features_in_ = n_features
    return model


def _depth(left: np.ndarray, right: np.ndarray) -> int:
    depth, frontier = 0, [0]
    while True:
        children = [int(c) for node in frontier for c in (left[node], right[node]) if c >= 0]
        if not children:
            return depth
        depth, frontier = depth + 1, children


_BUILDERS: dict[str, Callable[[DiffPrivLibRelease, str], Any]] = {
    "StandardScaler": _standard_scaler,
    "PCA": _pca,
    "LogisticRegression": _logistic_regression,
    "LinearRegression": _linear_regression,
    "GaussianNB": _gaussian_nb,
    "KMeans": _kmeans,
    "RandomForestClassifier": _random_forest,
}

"""The model: fit a K-Means, save it atomically, load it, and assign records to clusters.

This module knows neither HTTP nor /opt/ml: it takes arrays and folders. The folder holds
`model.joblib` (the scikit-learn estimator, loadable with plain joblib.load) and
`model.json` (k, feature count, hyperparameters, library versions, metrics).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from sklearn.base import BaseEstimator
from sklearn.cluster import KMeans, kmeans_plusplus
from sklearn.exceptions import InconsistentVersionWarning
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from kmeans.hyperparameters import Hyperparameters

MODEL_FILE = "model.joblib"
METADATA_FILE = "model.json"
SEED_SAMPLE_ROWS = 100_000  # k-means++ seeds from at most this many rows


class ModelError(RuntimeError):
    """A model folder that cannot be served."""


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "joblib": joblib.__version__,
    }


def build(hp: Hyperparameters) -> BaseEstimator:
    """The estimator the hyperparameters describe (unfitted)."""
    kmeans = KMeans(
        n_clusters=hp.k,
        init=hp.init,
        n_init=hp.n_init,
        max_iter=hp.max_iter,
        tol=hp.tol,
        random_state=hp.seed,
        algorithm=hp.algorithm,
        copy_x=False,  # the training matrix is ours: no second copy of it
    )
    if hp.standardize:
        return Pipeline([("scale", StandardScaler(copy=False)), ("kmeans", kmeans)])
    return kmeans


def fit(hp: Hyperparameters, features: np.ndarray) -> BaseEstimator:
    """Fit on float32 rows; keep float64 centres so that plain `predict` works on the
    float64 arrays people load (scikit-learn's predict wants one dtype for both).

    With one k-means++ seeding (n_init 1 or 'auto') on more than SEED_SAMPLE_ROWS rows,
    the seeding runs on a random sample of that many rows, as MiniBatchKMeans seeds: on
    every row it took 2.7 s of a 4.2 s fit of 4 M rows. Lloyd's iterations still use
    every row."""
    estimator = build(hp)
    kmeans = kmeans_step(estimator)
    sampled = (
        hp.init == "k-means++"
        and hp.n_init in ("auto", 1)
        and not hp.standardize
        and len(features) > SEED_SAMPLE_ROWS
    )
    if sampled:
        rng = np.random.default_rng(hp.seed)
        rows = np.sort(rng.choice(len(features), SEED_SAMPLE_ROWS, replace=False))
        centres, _ = kmeans_plusplus(features[rows], hp.k, random_state=hp.seed)
        kmeans.set_params(init=centres, n_init=1)
    estimator.fit(features)
    if sampled:
        kmeans.set_params(init=hp.init, n_init=hp.n_init)  # the saved model says what was asked
    kmeans.cluster_centers_ = kmeans.cluster_centers_.astype(np.float64)
    return without_in_place_copies(estimator)


def fitted_scaler(
    mean: np.ndarray, variance: np.ndarray, scale: np.ndarray, rows: int
) -> StandardScaler:
    """A StandardScaler holding statistics computed elsewhere (over several hosts)."""
    scaler = StandardScaler()
    scaler.mean_, scaler.var_, scaler.scale_ = mean, variance, scale
    scaler.n_samples_seen_, scaler.n_features_in_ = rows, len(mean)
    return scaler


def assemble(
    hp: Hyperparameters,
    centres: np.ndarray,
    scaler: StandardScaler | None,
    inertia: float,
    iterations: int,
) -> BaseEstimator:
    """The estimator `fit` would return, from centres found elsewhere (over several hosts).

    Fitting a KMeans on its own k centres, starting from them, returns exactly those
    centres; that makes a fitted scikit-learn KMeans without touching its private state."""
    kmeans = KMeans(n_clusters=hp.k, init=centres, n_init=1, max_iter=1, random_state=hp.seed)
    kmeans.fit(centres)
    kmeans.cluster_centers_ = np.array(centres, np.float64)  # bit for bit, whatever fit did
    kmeans.set_params(init=hp.init, n_init=hp.n_init, max_iter=hp.max_iter, tol=hp.tol)
    kmeans.set_params(algorithm=hp.algorithm)
    kmeans.inertia_, kmeans.n_iter_ = float(inertia), int(iterations)
    del kmeans.labels_  # the labels of the centres themselves would mislead
    if scaler is not None:
        return Pipeline([("scale", scaler), ("kmeans", kmeans)])
    return kmeans


def without_in_place_copies(estimator: BaseEstimator) -> BaseEstimator:
    """Training worked in place to save memory; the saved model must not touch the
    arrays people pass to it."""
    for step in [s for _, s in estimator.steps] if isinstance(estimator, Pipeline) else [estimator]:
        if isinstance(step, StandardScaler):
            step.set_params(copy=True)
        elif isinstance(step, KMeans):
            step.set_params(copy_x=True)
    return estimator


def kmeans_step(estimator: BaseEstimator) -> KMeans:
    return estimator[-1] if isinstance(estimator, Pipeline) else estimator


class Assigner:
    """Closest cluster and Euclidean distance to its centre, one pair per row.

    For the estimators `train` writes (a KMeans, or StandardScalers then a KMeans) the
    arithmetic is done here with numpy: scikit-learn's transform spends about 0.2 ms a
    call checking its input, more than all the rest of a one-record request. Any other
    estimator goes through its own transform.
    """

    def __init__(self, estimator: BaseEstimator) -> None:
        steps = [s for _, s in estimator.steps] if isinstance(estimator, Pipeline) else [estimator]
        *self.scalers, last = steps
        self.estimator = estimator
        self.direct = (
            isinstance(last, KMeans)
            and hasattr(last, "cluster_centers_")
            and all(type(step) is StandardScaler for step in self.scalers)
        )
        if self.direct:
            self.centres = np.asarray(last.cluster_centers_, np.float64)
            self.centre_norms = np.einsum("ij,ij->i", self.centres, self.centres)

    def _scaled(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.float64)
        for scaler in self.scalers:
            if scaler.with_mean:
                rows = rows - scaler.mean_
            if scaler.with_std:
                rows = rows / scaler.scale_
        return rows

    def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.direct:
            distances = self.estimator.transform(rows)
            labels = distances.argmin(axis=1)
            return labels, distances[np.arange(len(labels)), labels]
        rows = self._scaled(rows)
        if len(rows) * self.centres.size <= 1 << 16:  # small: exact differences
            differences = rows[:, None, :] - self.centres[None, :, :]
            squared = np.einsum("ijk,ijk->ij", differences, differences)
        else:  # large: |x|² - 2x·c + |c|², as scikit-learn computes it
            squared = rows @ (-2.0 * self.centres.T)
            squared += np.einsum("ij,ij->i", rows, rows)[:, None]
            squared += self.centre_norms
            np.maximum(squared, 0, out=squared)
        labels = squared.argmin(axis=1)
        return labels, np.sqrt(squared[np.arange(len(labels)), labels])


def assign(estimator: BaseEstimator, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest cluster and Euclidean distance to its centre, one pair per row."""
    return Assigner(estimator)(features)


def squared_distance_sum(estimator: BaseEstimator, features: np.ndarray) -> float:
    """Sum of squared distances to the closest centre, in bounded memory."""
    total = 0.0
    step = 1 << 16
    assigner = Assigner(estimator)
    for start in range(0, len(features), step):
        _, distances = assigner(features[start : start + step])
        total += float(np.dot(distances.astype(np.float64), distances))
    return total


def write_temporary(folder: Path, name: str, write: Callable[[Path], None]) -> Path:
    """A file fully written under a hidden temporary name beside `name`, for the caller
    to rename into place (an atomic rename: never a half-written file)."""
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o644)  # mkstemp makes it private; serve may run as another user
        return Path(temporary)
    except BaseException:
        os.unlink(temporary)
        raise


def save(folder: Path, estimator: BaseEstimator, metadata: dict[str, Any]) -> None:
    """Write both files under temporary names, then rename: never a half model."""
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {**metadata, "versions": versions()}
    temporary = [
        (
            write_temporary(
                folder, MODEL_FILE, lambda path: joblib.dump(estimator, path, protocol=5)
            ),
            MODEL_FILE,
        ),
        (
            write_temporary(
                folder,
                METADATA_FILE,
                lambda path: path.write_text(json.dumps(metadata, indent=2) + "\n"),
            ),
            METADATA_FILE,
        ),
    ]
    for path, name in temporary:
        os.replace(path, folder / name)


@dataclass(frozen=True)
class LoadedModel:
    estimator: BaseEstimator
    metadata: dict[str, Any]
    feature_dim: int
    warnings: tuple[str, ...]
    assign: Assigner


def load(folder: Path) -> LoadedModel:
    """Load and check a model folder; every failure is one line naming the file."""
    path = folder / MODEL_FILE
    if not path.is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())) if folder.is_dir() else ""
        raise ModelError(
            f"model file {path} not found"
            + (f" (the folder holds: {found})" if found else " (the folder is empty or missing)")
        )
    notes = []
    metadata: dict[str, Any] = {}
    meta_path = folder / METADATA_FILE
    if meta_path.is_file():
        try:
            metadata = json.loads(meta_path.read_text())
        except ValueError as error:
            notes.append(f"{meta_path} is not valid JSON ({error}); ignored")
    trained_with = metadata.get("versions", {}).get("scikit-learn")
    if trained_with and trained_with != sklearn.__version__:
        notes.append(
            f"model saved with scikit-learn {trained_with}, loaded with {sklearn.__version__}: "
            "retrain or pin the same version if predictions look wrong"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InconsistentVersionWarning)
        try:
            estimator = joblib.load(path)
        except Exception as error:  # unpickling raises anything at all
            raise ModelError(f"model file {path} cannot be loaded: {error!r}") from None
    for warning in caught:
        if isinstance(warning.message, InconsistentVersionWarning) and not trained_with:
            message = warning.message
            notes.append(
                f"model saved with scikit-learn {message.original_sklearn_version}, "
                f"loaded with {message.current_sklearn_version}"
            )
    try:
        feature_dim = int(kmeans_step(estimator).cluster_centers_.shape[1])
    except (AttributeError, IndexError, TypeError):
        raise ModelError(
            f"model file {path} holds a {type(estimator).__name__}, not a fitted KMeans"
        ) from None
    return LoadedModel(estimator, metadata, feature_dim, tuple(notes), Assigner(estimator))

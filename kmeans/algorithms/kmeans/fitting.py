"""Fitting K-Means on one host: the estimator the hyperparameters describe, fitted on
float32 rows in bounded memory, and the arithmetic over blocks of rows that it and the
several-host reduction share. scikit-learn is imported only inside these functions, so
serving model.npz never imports it (nor scipy): most of what `serve` took to start."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from kmeans.algorithms.kmeans.hyperparameters import Hyperparameters

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

SEED_SAMPLE_ROWS = 100_000  # k-means++ seeds from at most this many rows
BLOCK_ROWS = 1 << 15  # rows per block of arithmetic over the training rows, on every core


def build(hp: Hyperparameters) -> BaseEstimator:
    """The estimator the hyperparameters describe (unfitted)."""
    from sklearn.cluster import KMeans
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

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
    from sklearn.cluster import kmeans_plusplus

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
    with _tolerance_in_blocks():
        estimator.fit(features)
    if sampled:
        kmeans.set_params(init=hp.init, n_init=hp.n_init)  # the saved model says what was asked
    kmeans.cluster_centers_ = kmeans.cluster_centers_.astype(np.float64)
    return without_in_place_copies(estimator)


def blockwise(function: Callable[[int, int], Any], count: int) -> list[Any]:
    """function(start, stop) over blocks of BLOCK_ROWS rows, on every core."""
    starts = range(0, count, BLOCK_ROWS)
    with ThreadPoolExecutor(max(1, min(len(starts), os.cpu_count() or 1))) as pool:
        return list(pool.map(lambda start: function(start, min(start + BLOCK_ROWS, count)), starts))


Moments = tuple[int, np.ndarray, np.ndarray]  # row count, column means, squared deviations


def moments(data: np.ndarray) -> Moments:
    """Row count, column means and sums of squared deviations, summed in float64, block by
    block: no temporary as large as the data."""

    def block(start: int, stop: int) -> Moments:
        rows = data[start:stop]
        mean = rows.mean(axis=0, dtype=np.float64)
        deviations = rows - mean.astype(rows.dtype)  # from a centre within rounding of the mean
        shift = deviations.sum(axis=0, dtype=np.float64)
        np.square(deviations, out=deviations)
        squares = deviations.sum(axis=0, dtype=np.float64) - shift**2 / len(rows)
        return len(rows), mean, squares

    parts = blockwise(block, len(data))
    if not parts:
        return 0, np.zeros(data.shape[1]), np.zeros(data.shape[1])
    return combine_moments(parts)


def combine_moments(parts: list[Moments]) -> Moments:
    """Chan's pairwise rule: the moments of the union from the moments of its parts."""
    count, mean, squares = 0, None, None
    for n, part_mean, part_squares in parts:
        if n == 0:
            continue
        if mean is None:
            count, mean, squares = n, part_mean, part_squares
            continue
        total = count + n
        delta = part_mean - mean
        mean = mean + delta * n / total
        squares = squares + part_squares + delta**2 * count * n / total
        count = total
    return count, mean, squares


@contextlib.contextmanager
def _tolerance_in_blocks() -> Iterator[None]:
    """KMeans.fit turns `tol` into an absolute tolerance (tol x the mean column variance)
    with np.var(X, axis=0), whose temporary is as large as X: at the peak, a second copy
    of the training data (and 0.4 s on 2 M rows). Inside this block it gets the same
    number from `moments`. A scikit-learn without that function keeps its own way."""
    from sklearn.cluster import _kmeans as sklearn_kmeans

    original = getattr(sklearn_kmeans, "_tolerance", None)
    if original is None:
        yield
        return

    def tolerance(features: Any, tol: float) -> float:
        if tol == 0 or not isinstance(features, np.ndarray) or features.dtype.kind != "f":
            return original(features, tol)
        count, _, squares = moments(features)
        return float(np.mean(squares / count)) * tol

    sklearn_kmeans._tolerance = tolerance
    try:
        yield
    finally:
        sklearn_kmeans._tolerance = original


def fitted_scaler(
    mean: np.ndarray, variance: np.ndarray, scale: np.ndarray, rows: int
) -> StandardScaler:
    """A StandardScaler holding statistics computed elsewhere (over several hosts)."""
    from sklearn.preprocessing import StandardScaler

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
    from sklearn.cluster import KMeans
    from sklearn.pipeline import Pipeline

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


def steps(estimator: Any) -> list[Any]:
    from sklearn.pipeline import Pipeline

    return [step for _, step in estimator.steps] if isinstance(estimator, Pipeline) else [estimator]


def without_in_place_copies(estimator: BaseEstimator) -> BaseEstimator:
    """Training worked in place to save memory; the saved model must not touch the
    arrays people pass to it."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    for step in steps(estimator):
        if isinstance(step, StandardScaler):
            step.set_params(copy=True)
        elif isinstance(step, KMeans):
            step.set_params(copy_x=True)
    return estimator


def kmeans_step(estimator: BaseEstimator) -> KMeans:
    return steps(estimator)[-1]

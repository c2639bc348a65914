"""The model module in-process: the numpy assignment used when serving equals the
estimator's own transform, for every estimator `train` writes, small and large batches;
fitting holds no second copy of the training rows."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.cluster import _kmeans as sklearn_kmeans
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline

from kmeans.algorithms.kmeans import centres, fitting
from kmeans.algorithms.kmeans.hyperparameters import parse

RNG = np.random.default_rng(11)
DATA = (RNG.normal(size=(3000, 6)) * [1, 10, 100, 1, 1, 1000]).astype(np.float32)


@pytest.mark.parametrize("standardize", ["false", "true"])
@pytest.mark.parametrize("rows", [1, 7, 20000], ids=["one", "few", "many"])
def test_assigner_equals_the_estimators_transform(standardize: str, rows: int) -> None:
    estimator = fitting.fit(parse({"k": "5", "standardize": standardize}), DATA.copy())
    batch = RNG.normal(size=(rows, 6)) * [1, 10, 100, 1, 1, 1000]
    distances = estimator.transform(batch)
    labels, nearest = centres.Assigner(estimator)(batch)
    assert centres.Assigner(estimator).direct
    np.testing.assert_array_equal(labels, distances.argmin(axis=1))
    np.testing.assert_allclose(nearest, distances.min(axis=1), rtol=1e-9)
    np.testing.assert_array_equal(labels, estimator.predict(batch))


@pytest.mark.parametrize("standardize", ["false", "true"])
def test_one_record_in_python_equals_the_numpy_assignment(standardize: str) -> None:
    """one(), serving's single-record path, picks the same cluster as the numpy path
    for every record, and the same distance once rounded to float32 as answers carry it."""
    estimator = fitting.fit(parse({"k": "8", "standardize": standardize}), DATA.copy())
    batch = RNG.normal(size=(3000, 6)) * [1, 10, 100, 1, 1, 1000]
    batch[:8] = centres.Centres.of(estimator).centres  # distance 0 (unstandardized)
    for assigner in (centres.Assigner(estimator), centres.Centres.of(estimator)):
        labels, distances = assigner(batch)
        ones = [assigner.one(row) for row in batch.tolist()]
        assert [label for label, _ in ones] == labels.tolist()
        assert all(isinstance(label, int) for label, _ in ones)
        float32 = np.array([distance for _, distance in ones]).astype(np.float32)
        np.testing.assert_array_equal(float32, distances.astype(np.float32))


def test_other_estimators_use_their_own_transform() -> None:
    estimator = Pipeline([("pca", PCA(3)), ("kmeans", KMeans(4, n_init=1))]).fit(DATA)
    assigner = centres.Assigner(estimator)
    assert not assigner.direct
    labels, _ = assigner(DATA[:50])
    np.testing.assert_array_equal(labels, estimator.predict(DATA[:50]))
    rows = DATA[:50].astype(np.float64)  # as requests are decoded
    labels, distances = assigner(rows)
    ones = [assigner.one(row) for row in rows.tolist()]
    assert [label for label, _ in ones] == labels.tolist()
    float32 = np.array([distance for _, distance in ones]).astype(np.float32)
    np.testing.assert_array_equal(float32, distances.astype(np.float32))  # as answers carry it


def test_the_saved_model_never_changes_the_callers_array() -> None:
    estimator = fitting.fit(parse({"k": "3", "standardize": "true"}), DATA.copy())
    batch = DATA[:100].astype(np.float64)
    before = batch.copy()
    estimator.transform(batch)
    estimator.predict(batch)
    np.testing.assert_array_equal(batch, before)


def test_seeding_from_a_sample_finds_the_same_clusters(monkeypatch) -> None:
    """Above SEED_SAMPLE_ROWS rows k-means++ seeds from a sample; Lloyd uses every row."""
    centres = RNG.normal(0, 20, (8, 6))
    data = (centres[RNG.integers(0, 8, 30000)] + RNG.normal(size=(30000, 6))).astype(np.float32)
    hp = parse({"k": "8"})
    full = fitting.fit(hp, data.copy())
    monkeypatch.setattr(fitting, "SEED_SAMPLE_ROWS", 2000)
    sampled = fitting.fit(hp, data.copy())
    assert sampled.get_params()["init"] == "k-means++"
    rows = data.astype(np.float64)
    assert -sampled.score(rows) == pytest.approx(-full.score(rows), rel=0.01)


def test_moments_in_blocks_equal_numpys_in_float64(monkeypatch) -> None:
    monkeypatch.setattr(fitting, "BLOCK_ROWS", 1000)  # many blocks, the last one short
    data = (RNG.normal(size=(25_500, 3)) + np.array([1e6, 0, -5e4])).astype(np.float32)
    count, mean, squares = fitting.moments(data)
    exact = data.astype(np.float64)
    assert count == len(data)
    np.testing.assert_allclose(mean, exact.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(squares / count, exact.var(axis=0), rtol=1e-9)


def test_fit_holds_no_second_copy_of_the_data() -> None:
    """scikit-learn's KMeans computes its tolerance with np.var(X, axis=0), a temporary as
    large as X; `fit` gives it the same tolerance from `moments`, in blocks."""
    centres = RNG.normal(0, 20, (8, 16))
    data = (centres[RNG.integers(0, 8, 400_000)] + RNG.normal(size=(400_000, 16))).astype(
        np.float32
    )
    expected_tol = 1e-4 * data.astype(np.float64).var(axis=0).mean()
    sklearns = sklearn_kmeans._tolerance
    tracemalloc.start()
    try:
        estimator = fitting.fit(parse({"k": "8", "tol": "0.0001"}), data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.75 * data.nbytes  # np.var's temporary alone is 1.0 x data.nbytes
    assert estimator._tol == pytest.approx(expected_tol, rel=1e-9)
    assert sklearn_kmeans._tolerance is sklearns  # put back after the fit

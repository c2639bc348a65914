"""The model module in-process: the numpy assignment used when serving equals the
estimator's own transform, for every estimator `train` writes, small and large batches."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline

from kmeans import model
from kmeans.hyperparameters import parse

RNG = np.random.default_rng(11)
DATA = (RNG.normal(size=(3000, 6)) * [1, 10, 100, 1, 1, 1000]).astype(np.float32)


@pytest.mark.parametrize("standardize", ["false", "true"])
@pytest.mark.parametrize("rows", [1, 7, 20000], ids=["one", "few", "many"])
def test_assigner_equals_the_estimators_transform(standardize: str, rows: int) -> None:
    estimator = model.fit(parse({"k": "5", "standardize": standardize}), DATA.copy())
    batch = RNG.normal(size=(rows, 6)) * [1, 10, 100, 1, 1, 1000]
    distances = estimator.transform(batch)
    labels, nearest = model.Assigner(estimator)(batch)
    assert model.Assigner(estimator).direct
    np.testing.assert_array_equal(labels, distances.argmin(axis=1))
    np.testing.assert_allclose(nearest, distances.min(axis=1), rtol=1e-9)
    np.testing.assert_array_equal(labels, estimator.predict(batch))


def test_other_estimators_use_their_own_transform() -> None:
    estimator = Pipeline([("pca", PCA(3)), ("kmeans", KMeans(4, n_init=1))]).fit(DATA)
    assigner = model.Assigner(estimator)
    assert not assigner.direct
    labels, _ = assigner(DATA[:50])
    np.testing.assert_array_equal(labels, estimator.predict(DATA[:50]))


def test_the_saved_model_never_changes_the_callers_array() -> None:
    estimator = model.fit(parse({"k": "3", "standardize": "true"}), DATA.copy())
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
    full = model.fit(hp, data.copy())
    monkeypatch.setattr(model, "SEED_SAMPLE_ROWS", 2000)
    sampled = model.fit(hp, data.copy())
    assert sampled.get_params()["init"] == "k-means++"
    rows = data.astype(np.float64)
    assert -sampled.score(rows) == pytest.approx(-full.score(rows), rel=0.01)

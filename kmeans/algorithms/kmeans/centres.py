"""Serving K-Means: each record's closest cluster and the distance to its centre.

With numpy alone for the estimators `train` writes (Centres, what model.npz holds), and
through the estimator's own transform for any other (Assigner): the two predictors the
K-Means algorithm hands the container.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from kmeans.algorithm import Column

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator

COLUMNS = (Column("closest_cluster", "int"), Column("distance_to_cluster", "float32"))


def steps(estimator: Any) -> list[Any]:
    """The estimators of a Pipeline, or the estimator alone."""
    from sklearn.pipeline import Pipeline

    return [step for _, step in estimator.steps] if isinstance(estimator, Pipeline) else [estimator]


@dataclass(frozen=True, eq=False)
class Centres:
    """A fitted model as plain arrays, what model.npz holds: rows are shifted by `mean`
    and divided by `scale` (standardize), then assigned to the closest centre.

    The arithmetic is numpy's: scikit-learn's transform spends about 0.2 ms a call
    checking its input, more than all the rest of a one-record request."""

    columns: ClassVar[tuple[Column, ...]] = COLUMNS
    centres: np.ndarray  # (k, features), float64
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    norms: np.ndarray = field(init=False, repr=False)  # |c|² of each centre
    minus_2_centres_t: np.ndarray = field(init=False, repr=False)  # -2cᵀ, contiguous
    lists: tuple[list[list[float]], list[float], list[float]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "norms", np.einsum("ij,ij->i", self.centres, self.centres))
        object.__setattr__(self, "minus_2_centres_t", np.ascontiguousarray(-2.0 * self.centres.T))
        features = self.centres.shape[1]
        mean = [0.0] * features if self.mean is None else self.mean.tolist()
        scale = [1.0] * features if self.scale is None else self.scale.tolist()
        object.__setattr__(self, "lists", (self.centres.tolist(), mean, scale))

    @property
    def feature_dim(self) -> int:
        return self.centres.shape[1]

    def one(self, row: list[float]) -> tuple[int, float]:
        """One record's closest cluster and its distance, in plain Python: for a single
        record, numpy's per-call overhead and cold caches cost more than the arithmetic.
        Standardized as __call__ does it ((x - mean) / scale, each step rounded alike);
        math.dist is at least as accurate as the differences squared and summed."""
        centres, mean, scale = self.lists
        if self.mean is not None or self.scale is not None:
            row = [(x - m) / s for x, m, s in zip(row, mean, scale, strict=True)]
        distances = list(map(math.dist, itertools.repeat(row), centres))
        closest = min(distances)
        return distances.index(closest), closest  # the first closest, as argmin picks

    @classmethod
    def of(cls, estimator: Any) -> Centres | None:
        """The arrays of a KMeans (or MiniBatchKMeans), alone or after one StandardScaler;
        None for any other estimator."""
        from sklearn.cluster import KMeans, MiniBatchKMeans
        from sklearn.preprocessing import StandardScaler

        *scalers, last = steps(estimator)
        if type(last) not in (KMeans, MiniBatchKMeans) or not hasattr(last, "cluster_centers_"):
            return None  # exact types: a subclass may have its own transform
        if len(scalers) > 1 or any(type(step) is not StandardScaler for step in scalers):
            return None
        mean = scale = None
        if scalers:
            scaler = scalers[0]
            mean = np.asarray(scaler.mean_, np.float64) if scaler.with_mean else None
            scale = np.asarray(scaler.scale_, np.float64) if scaler.with_std else None
        return cls(np.asarray(last.cluster_centers_, np.float64), mean, scale)

    def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, np.float64)
        if self.mean is not None:
            rows = rows - self.mean
        if self.scale is not None:
            rows = rows / self.scale
        if len(rows) * self.centres.size <= 1 << 16:  # small: exact differences
            differences = rows[:, None, :] - self.centres[None, :, :]
            squared = np.einsum("ijk,ijk->ij", differences, differences)
            labels = squared.argmin(axis=1)
            return labels, np.sqrt(squared[np.arange(len(labels)), labels])
        # Large: the closest centre by -2x·c + |c|² (|x|² is the same for every centre),
        # in blocks that stay in the CPU cache; then the exact distance to that centre.
        labels = np.empty(len(rows), np.intp)
        block = max(1, (1 << 16) // len(self.centres))
        for start in range(0, len(rows), block):
            scores = rows[start : start + block] @ self.minus_2_centres_t
            scores += self.norms
            labels[start : start + block] = scores.argmin(axis=1)
        differences = self.centres.take(labels, axis=0)
        np.subtract(rows, differences, out=differences)
        return labels, np.sqrt(np.einsum("ij,ij->i", differences, differences))


class Assigner:
    """Closest cluster and Euclidean distance to its centre, one pair per row: with
    numpy for the estimators `train` writes (see Centres), through the estimator's own
    transform for any other."""

    columns = COLUMNS

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator
        self.centres = Centres.of(estimator)
        self.direct = self.centres is not None
        self.feature_dim = int(steps(estimator)[-1].cluster_centers_.shape[1])

    def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.centres is not None:
            return self.centres(rows)
        distances = self.estimator.transform(rows)
        labels = distances.argmin(axis=1)
        return labels, distances[np.arange(len(labels)), labels]

    def one(self, row: list[float]) -> tuple[int, float]:
        if self.centres is not None:
            return self.centres.one(row)
        labels, distances = self(np.array([row], np.float64))
        return int(labels[0]), float(distances[0])


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

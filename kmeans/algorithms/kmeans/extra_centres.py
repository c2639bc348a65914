"""The built-in K-Means's streaming settings, shared by one host (streaming.py) and the
leader of several (reduction.py): mini-batch passes over K = k x extra_center_factor
centres, whose weights (the rows each has absorbed) decay with half_life_time_size; then
a local Lloyd step that reduces the K weighted centres to k.

The decay: a row's weight is 1 when it is observed and halves every half_life_time_size
rows observed after it, w = 0.5 ** (rows since / half_life_time_size). A centre is the
weighted mean of its rows and its count their weight sum, so before a batch of b rows
every count is multiplied by 0.5 ** (b / half_life_time_size); the mini-batch update,
centre += (batch sum - batch count x centre) / (count + batch count), then moves each
centre by the batch's share of the decayed weight. (Rows within one batch are weighed
alike: the decay works at the granularity of mini_batch_size.)

The reduction is scikit-learn's KMeans on the K centres with their counts as sample
weights: local_lloyd_init_method, local_lloyd_num_trials (n_init) runs, each up to
local_lloyd_max_iter (max_iter) iterations with local_lloyd_tol (tol); the run of lowest
weighted inertia is kept. With K = k (extra_center_factor 1, the default) nothing is
reduced and training is what it was before these settings took effect.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from kmeans.algorithms.kmeans.hyperparameters import Hyperparameters

AUTO_FACTOR = 2  # extra_center_factor 'auto' (see `factor`)
AUTO_TRIALS = 10  # local_lloyd_num_trials 'auto' in the reduction: K points are cheap


def factor(hp: Hyperparameters) -> int:
    """extra_center_factor as a number. AWS's pages name 'auto' without saying what the
    built-in picks; here it is AUTO_FACTOR, the factor that did best in the bench (on
    unequal clusters factor 2 cut the inertia most, 4 less; on even blobs neither changed
    it: bench/RESULTS.md, "Built-in streaming settings")."""
    if hp.extra_center_factor == "auto":
        return AUTO_FACTOR
    return int(hp.extra_center_factor)


def centre_count(hp: Hyperparameters) -> int:
    """K, the centres the mini-batch passes move."""
    return hp.k * factor(hp)


def decay(rows: int, half_life: int) -> float:
    """What the weights seen so far are multiplied by before a batch of `rows` rows."""
    return 0.5 ** (rows / half_life) if half_life else 1.0


def trials(hp: Hyperparameters) -> int:
    return AUTO_TRIALS if hp.n_init == "auto" else int(hp.n_init)


@dataclass
class Reduced:
    """The k centres the local Lloyd step made of the K, and which of them each K joined."""

    centres: np.ndarray  # k x features, float64
    labels: np.ndarray  # K: the reduced centre of each of the K centres
    inertia: float  # weighted, over the K centres
    iterations: int
    seconds: float

    def described(self, before: int) -> str:
        return (
            f"reduced {before} centres to {len(self.centres)} (local Lloyd: "
            f"{self.iterations} iterations, weighted inertia {self.inertia:.6g}, "
            f"{self.seconds:.3f} s)"
        )

    def summary(self, before: int) -> dict:
        """summary.json's entry for it: centres before and after, and its seconds."""
        reduced = {"from": before, "to": len(self.centres), "seconds": self.seconds}
        return {"reduced_centres": reduced}


def reduce(hp: Hyperparameters, centres: np.ndarray, weights: np.ndarray) -> Reduced:
    """The local Lloyd step: the K centres, weighted by their counts, clustered into k."""
    from sklearn.cluster import KMeans

    started = time.perf_counter()
    centres, weights = np.asarray(centres, np.float64), np.asarray(weights, np.float64)
    if np.count_nonzero(weights > 0) < hp.k:  # too few reached by any row to seed k
        floor = weights[weights > 0].min() * 1e-6 if np.any(weights > 0) else 1.0
        weights = np.where(weights > 0, weights, floor)
    kmeans = KMeans(
        n_clusters=hp.k,
        init=hp.local_lloyd_init_method,
        n_init=trials(hp),
        max_iter=hp.max_iter,
        tol=hp.tol,
        random_state=hp.seed,
    ).fit(centres, sample_weight=weights)
    return Reduced(
        np.asarray(kmeans.cluster_centers_, np.float64),
        kmeans.labels_,
        float(kmeans.inertia_),
        int(kmeans.n_iter_),
        round(time.perf_counter() - started, 4),
    )


@dataclass
class Tally:
    """The last pass's rows by the K centre each was scored against: count, sum and sum
    of squares, in float64. The train metrics describe the k reduced centres: each row
    counted at the reduced centre its K centre joined, its squared distance
    |x|² - 2x·c + |c|² summed per K centre (no second pass over the data)."""

    counts: np.ndarray
    sums: np.ndarray
    squares: np.ndarray

    @classmethod
    def empty(cls, centres: int, features: int) -> Tally:
        return cls(np.zeros(centres), np.zeros((centres, features)), np.zeros(centres))

    def add(self, counts: np.ndarray, sums: np.ndarray, squares: np.ndarray) -> None:
        self.counts += counts
        self.sums += sums
        self.squares += squares

    def add_rows(self, labels: np.ndarray, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.float64)
        count = len(self.counts)
        sums = np.zeros_like(self.sums)
        np.add.at(sums, labels, rows)
        norms = np.einsum("ij,ij->i", rows, rows)
        self.add(
            np.bincount(labels, minlength=count),
            sums,
            np.bincount(labels, weights=norms, minlength=count),
        )

    def scored(self, reduced: Reduced) -> tuple[float, list[int]]:
        """Sum of squared distances and cluster sizes of the tallied rows, k clusters."""
        joined = reduced.centres[reduced.labels]
        ssd = self.squares - 2 * np.einsum("ij,ij->i", self.sums, joined)
        ssd += self.counts * np.einsum("ij,ij->i", joined, joined)
        sizes = np.bincount(reduced.labels, weights=self.counts, minlength=len(reduced.centres))
        return float(max(ssd.sum(), 0.0)), sizes.round().astype(int).tolist()

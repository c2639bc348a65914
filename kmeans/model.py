"""The model: fit a K-Means, save it atomically, load it, and assign records to clusters.

This module knows neither HTTP nor /opt/ml: it takes arrays and folders. `save` writes
- `model.npz`: the centres and the standardisation as plain numpy arrays, no code. This
  is what `serve` loads, with numpy alone, without unpickling anything;
- `model.joblib`: the scikit-learn estimator, for people who load it with joblib.load.
  A model someone brings may be this file alone (any estimator with `transform`), and
  so are models written before model.npz existed: `load` unpickles it only then;
- `model.json`: k, feature count, hyperparameters, library versions, metrics.
scikit-learn is imported only by the functions that fit, save or unpickle, so that
serving model.npz never imports it (nor scipy): most of what `serve` took to start.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import platform
import tempfile
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kmeans.hyperparameters import Hyperparameters

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

ARRAYS_FILE = "model.npz"
MODEL_FILE = "model.joblib"
METADATA_FILE = "model.json"
ARRAYS_FORMAT = 1  # model.npz's `format` entry; a reader refuses any other
SEED_SAMPLE_ROWS = 100_000  # k-means++ seeds from at most this many rows
BLOCK_ROWS = 1 << 15  # rows per block of arithmetic over the training rows, on every core


class ModelError(RuntimeError):
    """A model folder that cannot be served."""


def versions() -> dict[str, str]:
    import joblib
    import sklearn

    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "joblib": joblib.__version__,
    }


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


def _steps(estimator: Any) -> list[Any]:
    from sklearn.pipeline import Pipeline

    return [step for _, step in estimator.steps] if isinstance(estimator, Pipeline) else [estimator]


def without_in_place_copies(estimator: BaseEstimator) -> BaseEstimator:
    """Training worked in place to save memory; the saved model must not touch the
    arrays people pass to it."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    for step in _steps(estimator):
        if isinstance(step, StandardScaler):
            step.set_params(copy=True)
        elif isinstance(step, KMeans):
            step.set_params(copy_x=True)
    return estimator


def kmeans_step(estimator: BaseEstimator) -> KMeans:
    return _steps(estimator)[-1]


@dataclass(frozen=True, eq=False)
class Centres:
    """A fitted model as plain arrays, what model.npz holds: rows are shifted by `mean`
    and divided by `scale` (standardize), then assigned to the closest centre.

    The arithmetic is numpy's: scikit-learn's transform spends about 0.2 ms a call
    checking its input, more than all the rest of a one-record request."""

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

    def nearest(self, row: list[float]) -> tuple[int, float]:
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

        *scalers, last = _steps(estimator)
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

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator
        self.centres = Centres.of(estimator)
        self.direct = self.centres is not None

    def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.centres is not None:
            return self.centres(rows)
        distances = self.estimator.transform(rows)
        labels = distances.argmin(axis=1)
        return labels, distances[np.arange(len(labels)), labels]

    def nearest(self, row: list[float]) -> tuple[int, float]:
        if self.centres is not None:
            return self.centres.nearest(row)
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


def write_temporary(folder: Path, name: str, write: Callable[[Path], None]) -> Path:
    """A file fully written under a hidden temporary name beside `name`, for the caller
    to rename into place (an atomic rename: never a half-written file). A failed write
    (a full disk) leaves nothing behind and names the file it was writing."""
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o644)  # mkstemp makes it private; serve may run as another user
        return Path(temporary)
    except BaseException as error:
        os.unlink(temporary)
        if isinstance(error, OSError) and error.filename in (None, temporary):
            raise OSError(error.errno, error.strerror, str(folder / name)) from error
        raise


def _write_centres(centres: Centres, path: Path) -> None:
    arrays = {"format": np.array(ARRAYS_FORMAT), "centres": centres.centres}
    for name in ("mean", "scale"):
        if getattr(centres, name) is not None:
            arrays[name] = getattr(centres, name)
    with path.open("wb") as file:
        np.savez(file, **arrays)


def save(folder: Path, estimator: BaseEstimator, metadata: dict[str, Any]) -> None:
    """Write every file under a temporary name, then rename them: never a half model."""
    import joblib

    folder.mkdir(parents=True, exist_ok=True)
    metadata = {**metadata, "versions": versions()}
    writers: dict[str, Callable[[Path], None]] = {
        MODEL_FILE: lambda path: joblib.dump(estimator, path, protocol=5),
        METADATA_FILE: lambda path: path.write_text(json.dumps(metadata, indent=2) + "\n"),
    }
    centres = Centres.of(estimator)
    if centres is not None:
        writers[ARRAYS_FILE] = lambda path: _write_centres(centres, path)
    else:  # an estimator only joblib can hold: no stale model.npz may shadow it
        (folder / ARRAYS_FILE).unlink(missing_ok=True)
    written: dict[str, Path] = {}
    try:
        for name, write in writers.items():
            written[name] = write_temporary(folder, name, write)
    except BaseException:
        for path in written.values():
            path.unlink(missing_ok=True)
        raise
    for name, path in written.items():
        os.replace(path, folder / name)


@dataclass(frozen=True)
class LoadedModel:
    source: Path  # the file the model came from
    kind: str  # what it is, for the log
    metadata: dict[str, Any]
    feature_dim: int
    warnings: tuple[str, ...]
    assign: Centres | Assigner  # rows -> (labels, distances); .nearest(row) for one record


def load(folder: Path, allow_pickle: bool = True) -> LoadedModel:
    """Load and check a model folder: model.npz when it is there, else model.joblib
    (unless `allow_pickle` is false). Every failure is one line naming the file."""
    metadata, notes = _metadata(folder / METADATA_FILE)
    arrays, pickled = folder / ARRAYS_FILE, folder / MODEL_FILE
    if arrays.is_file():
        centres = _read_centres(arrays, metadata)
        features = centres.centres.shape[1]
        return LoadedModel(arrays, "KMeans", metadata, features, tuple(notes), centres)
    if not pickled.is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())) if folder.is_dir() else ""
        raise ModelError(
            f"model file {arrays} (or {MODEL_FILE}) not found"
            + (f" (the folder holds: {found})" if found else " (the folder is empty or missing)")
        )
    if not allow_pickle:
        raise ModelError(
            f"model file {arrays} not found, and {pickled} is a pickle, which "
            f"SAGE_KMEANS_ALLOW_PICKLE=false forbids loading: train again to write {ARRAYS_FILE}"
        )
    return _load_pickled(pickled, metadata, notes)


def _metadata(path: Path) -> tuple[dict[str, Any], list[str]]:
    if not path.is_file():
        return {}, []
    try:
        metadata = json.loads(path.read_text())
    except (ValueError, OSError) as error:
        return {}, [f"{path} cannot be read as JSON ({error}); ignored"]
    if not isinstance(metadata, dict):
        return {}, [f"{path} holds a {type(metadata).__name__}, not an object; ignored"]
    return metadata, []


def _read_centres(path: Path, metadata: dict[str, Any]) -> Centres:
    """model.npz, read without unpickling and checked: format, shapes, finite values,
    and agreement with model.json."""
    try:
        with path.open("rb") as file:
            zipped = file.read(4) == b"PK\x03\x04"  # else np.load takes it for a pickle
        if not zipped:
            raise ModelError(f"model file {path} cannot be read: it is not an .npz archive")
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ModelError:
        raise
    except Exception as error:  # a damaged zip file raises many kinds of error
        raise ModelError(f"model file {path} cannot be read: {error!r}") from None

    def refuse(why: str) -> ModelError:
        return ModelError(f"model file {path} cannot be served: {why}")

    version = arrays.pop("format", None)
    if version is None or version.shape != () or version.dtype.kind not in "iu":
        raise refuse("no format number; it was not written by sage-kmeans")
    if int(version) != ARRAYS_FORMAT:
        raise refuse(
            f"format {int(version)}, and this version of sage-kmeans reads format "
            f"{ARRAYS_FORMAT}: serve it with the image that trained it"
        )
    centres, mean, scale = (arrays.pop(name, None) for name in ("centres", "mean", "scale"))
    if arrays:
        raise refuse(f"unknown arrays {sorted(arrays)}")
    if centres is None or centres.ndim != 2 or centres.dtype.kind != "f" or 0 in centres.shape:
        raise refuse("'centres' must be a non-empty 2-D array of floats")
    k, features = centres.shape
    for name, value in (("mean", mean), ("scale", scale)):
        if value is not None and (value.shape != (features,) or value.dtype.kind != "f"):
            raise refuse(f"{name!r} must hold {features} floats, one per feature")
    if not all(np.isfinite(a).all() for a in (centres, mean, scale) if a is not None):
        raise refuse("it holds NaN or infinite values")
    if scale is not None and not scale.all():
        raise refuse("'scale' holds zeros")
    expected = {"k": k, "feature_dim": features}
    differ = {
        key: metadata[key] for key in expected if key in metadata and metadata[key] != expected[key]
    }
    if differ:
        raise refuse(
            f"it holds {k} centres of {features} features, but {METADATA_FILE} says "
            + ", ".join(f"{key}={value}" for key, value in differ.items())
            + ": the two files come from different trainings"
        )
    return Centres(*(a if a is None else a.astype(np.float64) for a in (centres, mean, scale)))


def _load_pickled(path: Path, metadata: dict[str, Any], notes: list[str]) -> LoadedModel:
    """model.joblib: whatever estimator it holds, so long as it ends in fitted centres."""
    import joblib
    import sklearn
    from sklearn.exceptions import InconsistentVersionWarning

    recorded = metadata.get("versions")
    trained_with = recorded.get("scikit-learn") if isinstance(recorded, dict) else None
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
    kind = type(estimator).__name__
    return LoadedModel(path, kind, metadata, feature_dim, tuple(notes), Assigner(estimator))

"""K-Means's model files, written and read:
- `model.npz`: the centres and the standardisation as plain numpy arrays, no code. This
  is what `serve` loads, with numpy alone, without unpickling anything;
- `model_algo-1`: the centres as SageMaker's built-in K-Means writes them (builtin_model.py),
  so its image can host our model and we can serve its models. Written only when the
  centres alone are the model: with `standardize` the format cannot hold the scaling;
- `model.joblib`: the scikit-learn estimator, for people who load it with joblib.load.
  A model someone brings may be this file alone (any estimator with `transform`), and
  so are models written before model.npz existed: `load` unpickles it only then.
`load` reads the first of model.npz, model_algo-1, model.joblib that the folder holds.
model.json (k, feature count, hyperparameters, versions, metrics) is the container's.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kmeans.algorithm import Loaded, ModelError, Writer
from kmeans.algorithms.kmeans import builtin_model
from kmeans.algorithms.kmeans.centres import Assigner, Centres, steps
from kmeans.model_files import METADATA_FILE, unpickle

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator

ARRAYS_FILE = "model.npz"
MODEL_FILE = "model.joblib"
BUILTIN_FILE = builtin_model.FILE
ARRAYS_FORMAT = 1  # model.npz's `format` entry; a reader refuses any other


def versions() -> dict[str, str]:
    import joblib
    import sklearn

    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "joblib": joblib.__version__,
    }


def _write_centres(centres: Centres, path: Path) -> None:
    arrays = {"format": np.array(ARRAYS_FORMAT), "centres": centres.centres}
    for name in ("mean", "scale"):
        if getattr(centres, name) is not None:
            arrays[name] = getattr(centres, name)
    with path.open("wb") as file:
        np.savez(file, **arrays)


def builtin_refusal(centres: Centres | None) -> str | None:
    """Why model_algo-1 cannot hold this model (None when it can)."""
    if centres is None:
        return "the estimator is not a KMeans whose centres alone are the model"
    if centres.mean is not None or centres.scale is not None:
        return (
            "standardize is on, and the built-in K-Means's format holds centres only, not "
            "the scaling: the built-in image would measure distances in unscaled space"
        )
    return None


def writers(estimator: BaseEstimator) -> dict[str, Writer]:
    """model.joblib; model.npz when the estimator is one Centres can hold, and
    model_algo-1 when the centres alone are the model."""
    import joblib

    files: dict[str, Writer] = {
        MODEL_FILE: lambda path: joblib.dump(estimator, path, protocol=5),
    }
    centres = Centres.of(estimator)
    if centres is not None:
        files[ARRAYS_FILE] = lambda path: _write_centres(centres, path)
    if builtin_refusal(centres) is None:
        files[BUILTIN_FILE] = lambda path: builtin_model.write(centres.centres, path)
    return files


def _summary(kind: str, metadata: dict[str, Any]) -> str:
    return f"{kind}, k={metadata.get('k', '?')}"


def load(folder: Path, metadata: dict[str, Any], notes: list[str], allow_pickle: bool) -> Loaded:
    """Load and check a model folder: model.npz when it is there, else model_algo-1,
    else model.joblib (unless `allow_pickle` is false). Every failure is one line
    naming the file."""
    arrays, builtin, pickled = folder / ARRAYS_FILE, folder / BUILTIN_FILE, folder / MODEL_FILE
    if arrays.is_file():
        centres = _read_centres(arrays, metadata)
        return Loaded(
            arrays, "KMeans", _summary("KMeans", metadata), metadata, centres, tuple(notes)
        )
    if builtin.is_file():
        return _load_builtin(builtin, metadata, notes)
    if not pickled.is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())) if folder.is_dir() else ""
        raise ModelError(
            f"model file {arrays} (or {BUILTIN_FILE}, {MODEL_FILE}) not found"
            + (f" (the folder holds: {found})" if found else " (the folder is empty or missing)")
        )
    if not allow_pickle:
        raise ModelError(
            f"model file {arrays} not found, and {pickled} is a pickle, which "
            f"SAGE_KMEANS_ALLOW_PICKLE=false forbids loading: train again to write {ARRAYS_FILE}"
        )
    return _load_pickled(pickled, metadata, notes)


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
    features = centres.shape[1]
    for name, value in (("mean", mean), ("scale", scale)):
        if value is not None and (value.shape != (features,) or value.dtype.kind != "f"):
            raise refuse(f"{name!r} must hold {features} floats, one per feature")
    if not all(np.isfinite(a).all() for a in (centres, mean, scale) if a is not None):
        raise refuse("it holds NaN or infinite values")
    if scale is not None and not scale.all():
        raise refuse("'scale' holds zeros")
    _check_agreement(refuse, centres.shape, metadata)
    return Centres(*(a if a is None else a.astype(np.float64) for a in (centres, mean, scale)))


def _check_agreement(refuse, shape: tuple[int, int], metadata: dict[str, Any]) -> None:
    """The centres' shape is what model.json (when there is one) says."""
    k, features = shape
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


def _load_builtin(path: Path, metadata: dict[str, Any], notes: list[str]) -> Loaded:
    """model_algo-1, the built-in K-Means's centres, served as model.npz's would be;
    its training state (state_<uuid>) is not needed and is said to be ignored."""
    centres, names = builtin_model.read(path)
    _check_agreement(
        lambda why: ModelError(f"model file {path} cannot be served: {why}"),
        centres.shape,
        metadata,
    )
    for state in sorted(path.parent.glob("state_*")):
        notes.append(f"{state} ignored: the built-in K-Means's training state, not needed to serve")
    if names:
        notes.append(f"{path}: the array's name {names[0]!r} is ignored")
    k, features = centres.shape
    metadata = {"k": k, "feature_dim": features, **metadata}
    summary = f"KMeans (the built-in K-Means's {BUILTIN_FILE}), k={k}"
    return Loaded(
        path, "KMeans", summary, metadata, Centres(centres.astype(np.float64)), tuple(notes)
    )


def _load_pickled(path: Path, metadata: dict[str, Any], notes: list[str]) -> Loaded:
    """model.joblib: whatever estimator it holds, so long as it ends in fitted centres."""
    estimator = unpickle(path, metadata, notes)
    try:
        int(steps(estimator)[-1].cluster_centers_.shape[1])
    except (AttributeError, IndexError, TypeError):
        raise ModelError(
            f"model file {path} holds a {type(estimator).__name__}, not a fitted KMeans"
        ) from None
    kind = type(estimator).__name__
    return Loaded(path, kind, _summary(kind, metadata), metadata, Assigner(estimator), tuple(notes))

"""The model folder, the one thing `train` hands to `serve`: written all or nothing, read
back by the algorithm that wrote it.

`save` writes the algorithm's files and then model.json, each under a hidden temporary
name, and renames them into place only once every one is written: a full disk leaves
the folder as it was, never half a model. model.json says which algorithm wrote the
folder; `load` hands the folder to that algorithm (a folder whose model.json does not
say, as earlier versions wrote them, goes to the default, K-Means unless
SAGE_KMEANS_ALGORITHM says otherwise). This module knows no algorithm.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kmeans import algorithms
from kmeans.algorithm import Algorithm, Loaded, ModelError, Writer

Metadata = tuple[dict[str, Any], list[str]]  # model.json's object, and notes for the log

METADATA_FILE = "model.json"


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


def save(
    folder: Path, files: dict[str, Writer], metadata: dict[str, Any], stale: tuple[str, ...] = ()
) -> None:
    """Write `files` and model.json (holding `metadata`) under temporary names, then
    rename them in that order; remove `stale` files an earlier model left."""
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(metadata, indent=2) + "\n"
    writers = {**files, METADATA_FILE: lambda path: path.write_text(text)}
    for name in stale:  # no stale file may shadow the new model
        (folder / name).unlink(missing_ok=True)
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


def read_metadata(folder: Path) -> Metadata:
    """model.json's object, and notes for the log when it is there but unreadable."""
    path = folder / METADATA_FILE
    if not path.is_file():
        return {}, []
    try:
        metadata = json.loads(path.read_text())
    except (ValueError, OSError) as error:
        return {}, [f"{path} cannot be read as JSON ({error}); ignored"]
    if not isinstance(metadata, dict):
        return {}, [f"{path} holds a {type(metadata).__name__}, not an object; ignored"]
    return metadata, []


def unpickle(path: Path, metadata: dict[str, Any], notes: list[str]) -> Any:
    """A scikit-learn estimator saved with joblib, as any algorithm may keep one: a
    version mismatch with what model.json records (or what the pickle says) is added to
    `notes` for the log; a file that cannot be unpickled is one line naming it."""
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
    return estimator


def algorithm_of(folder: Path, default: str = algorithms.DEFAULT) -> tuple[Algorithm, Metadata]:
    """The algorithm that wrote the folder (model.json's "algorithm", else `default`),
    and model.json's content with notes on it for the log."""
    metadata, notes = read_metadata(folder)
    try:
        return algorithms.named(metadata.get("algorithm", default)), (metadata, notes)
    except LookupError as error:
        raise ModelError(f"{folder / METADATA_FILE}: {error}") from None


def load(folder: Path, allow_pickle: bool = True, default: str = algorithms.DEFAULT) -> Loaded:
    """The folder's model, loaded and checked by the algorithm that wrote it. Every
    failure is one line naming the file."""
    algorithm, (metadata, notes) = algorithm_of(folder, default)
    return algorithm.load(folder, metadata, notes, allow_pickle)

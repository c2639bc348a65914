"""What any algorithm uses to write and read the files of its model folder: a file
written atomically (checkpoints too), and a scikit-learn estimator unpickled with joblib.
Below the algorithms; kmeans/model_folder.py, above them, writes and loads whole folders.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kmeans.algorithm import ModelError

METADATA_FILE = "model.json"  # the container's file in every model folder


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

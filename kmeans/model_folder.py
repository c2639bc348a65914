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
from pathlib import Path
from typing import Any

from kmeans import algorithms
from kmeans.algorithm import Algorithm, Loaded, ModelError, Writer
from kmeans.model_files import METADATA_FILE, write_temporary

Metadata = tuple[dict[str, Any], list[str]]  # model.json's object, and notes for the log


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

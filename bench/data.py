"""Benchmark inputs: CSV files of Gaussian blobs around known centres, and request bodies.

Files are written once per size under the data folder (bench/data/, git-ignored) and
reused; the name carries rows, features, k and seed, and a file appears only complete.
Values have four decimals, about 250 bytes a row of 32 features: 4 M rows make ~1 GB.
Request bodies hold a file's first records as CSV, JSON and JSON Lines.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

CHUNK_ROWS = 250_000


def centres(k: int, features: int, seed: int) -> np.ndarray:
    """The true centres: uniform in [-10, 10], each blob with standard deviation 1."""
    return np.random.default_rng(seed).uniform(-10, 10, (k, features))


def blobs(folder: Path, rows: int, features: int, k: int, seed: int = 7) -> Path:
    """A headerless CSV of `rows` blob points; written once, then reused."""
    path = folder / f"blobs-{rows}x{features}-k{k}-s{seed}.csv"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    truth = centres(k, features, seed)
    rng = np.random.default_rng(seed + 1)
    partial = path.with_suffix(".partial")
    names = [f"f{i}" for i in range(features)]
    with pa.OSFile(str(partial), "wb") as sink:
        for start in range(0, rows, CHUNK_ROWS):
            count = min(CHUNK_ROWS, rows - start)
            points = truth[rng.integers(0, k, count)] + rng.standard_normal((count, features))
            table = pa.Table.from_arrays(list(np.round(points, 4).T), names=names)
            pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False))
    os.replace(partial, path)
    np.save(path.with_suffix(".centres.npy"), truth)
    return path


def first_lines(path: Path, count: int) -> list[bytes]:
    lines = []
    with path.open("rb") as stream:
        for line in stream:
            lines.append(line.rstrip(b"\r\n"))
            if len(lines) == count:
                break
    return lines


def csv_body(lines: list[bytes]) -> bytes:
    return b"\n".join(lines) + b"\n"


def json_body(lines: list[bytes]) -> bytes:
    """The same records as SageMaker K-Means JSON: {"instances": [{"features": [...]}]}."""
    records = b",".join(b'{"features":[' + line + b"]}" for line in lines)
    return b'{"instances":[' + records + b"]}"


def jsonlines_body(lines: list[bytes]) -> bytes:
    """The same records as JSON Lines, one {"features": [...]} a line."""
    return b"".join(b'{"features":[' + line + b"]}\n" for line in lines)


def leading_records(path: Path, limit: int, body: Callable[[list[bytes]], bytes]) -> list[bytes]:
    """As many of the file's first lines as `body` holds within `limit` bytes."""
    lines = first_lines(path, limit // 16)  # no blob row is shorter than 16 bytes
    low, high = 1, len(lines)
    while low < high:  # the largest count whose body fits
        middle = (low + high + 1) // 2
        low, high = (middle, high) if len(body(lines[:middle])) <= limit else (low, middle - 1)
    return lines[:low]


def inertia(path: Path, centre_sets: list[np.ndarray]) -> list[float]:
    """Sum of squared distances to the closest centre, for each set of centres, computed
    the same way (float64, streamed in blocks) so that two trainers are judged alike."""
    totals = [0.0] * len(centre_sets)
    reader = pacsv.open_csv(
        path, read_options=pacsv.ReadOptions(autogenerate_column_names=True, block_size=32 << 20)
    )
    for batch in reader:
        block = np.column_stack([column.to_numpy() for column in batch.columns])
        squares = np.einsum("ij,ij->i", block, block)[:, None]
        for index, found in enumerate(centre_sets):
            found = np.asarray(found, np.float64)
            distances = squares - 2 * block @ found.T + np.einsum("ij,ij->i", found, found)
            totals[index] += float(np.maximum(distances.min(axis=1), 0).sum())
    return totals

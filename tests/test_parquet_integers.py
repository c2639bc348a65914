"""Parquet integer columns follow the rule the same numbers follow in CSV: each becomes the
nearest float32 (ties to even), so integers beyond 2^24 that float32 cannot hold are
rounded, never refused. Checked at the reader (against numpy's own conversion) and
through `kmeans/train` (identical centres from the same data as CSV and as Parquet)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_job, run_train

from kmeans import channels

# Beyond 2^24 = 16,777,216 float32 holds only even integers (then multiples of 4, ...):
# 16,777,217 and 33,554,435 are ties between two float32s, 2^40 + 1 is not representable.
BIG = [17_000_000, 16_777_217, 33_554_435, 2**31 - 1, 123_456_789, 16_777_219]
WIDE = 2**40 + 1  # for 64-bit columns only
TYPES = {"int64": pa.int64(), "int32": pa.int32(), "uint32": pa.uint32(), "uint64": pa.uint64()}


def integer_rows(count: int, seed: int = 0, wide: bool = True) -> np.ndarray:
    """Two clusters of large positive integers (int64 values), with the awkward values
    above in the first rows; `wide`: one beyond 32 bits too."""
    rng = np.random.default_rng(seed)
    centres = np.array([[20_000_000, 40_000_000, 2_000_000], [90_000_000, 5_000_000, 3_000_000]])
    rows = centres[rng.integers(0, 2, count)] + rng.integers(-999_999, 1_000_000, (count, 3))
    rows[: len(BIG), 0] = BIG
    rows[: len(BIG), 1] = [value // 3 for value in BIG]
    if wide:
        rows[len(BIG), 2] = WIDE
    return rows.astype(np.int64)


def parquet_bytes(rows: np.ndarray, arrow_type: pa.DataType) -> bytes:
    table = pa.table({f"f{i}": pa.array(rows[:, i], arrow_type) for i in range(rows.shape[1])})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=100)
    return sink.getvalue().to_pybytes()


def csv_bytes(rows: np.ndarray) -> bytes:
    return "".join(",".join(str(int(v)) for v in row) + "\n" for row in rows).encode()


def load(tmp_path: Path, name: str, content: bytes) -> np.ndarray:
    folder = tmp_path / name
    folder.mkdir()
    (folder / name).write_bytes(content)
    return channels.load(channels.Channel("train", folder))


def fit_centres(base: Path) -> np.ndarray:
    return np.load(base / "model" / "model.npz", allow_pickle=False)["centres"]


@pytest.mark.parametrize("type_name", TYPES)
def test_the_reader_gives_csv_and_parquet_integers_the_same_float32(
    tmp_path: Path, type_name: str
) -> None:
    rows = integer_rows(500, wide=type_name.endswith("64"))
    from_csv = load(tmp_path, "a.csv", csv_bytes(rows))
    from_parquet = load(tmp_path, "a.parquet", parquet_bytes(rows, TYPES[type_name]))
    nearest = rows.astype(np.float32)  # numpy's conversion: round to nearest, ties to even
    assert from_parquet.dtype == from_csv.dtype == np.float32
    np.testing.assert_array_equal(from_parquet, nearest)
    np.testing.assert_array_equal(from_csv, nearest)
    assert float(from_parquet[1, 0]) == 16_777_216.0  # a tie, to the even neighbour


def test_negative_int64_values_round_like_their_csv_text(tmp_path: Path) -> None:
    rows = -integer_rows(200, seed=1)
    from_csv = load(tmp_path, "a.csv", csv_bytes(rows))
    from_parquet = load(tmp_path, "a.parquet", parquet_bytes(rows, pa.int64()))
    np.testing.assert_array_equal(from_parquet, from_csv)
    assert float(from_parquet[2, 0]) == -33_554_436.0


@pytest.mark.parametrize("type_name", ["int64", "uint64"])
def test_train_fits_identical_centres_from_csv_and_parquet(tmp_path: Path, type_name: str) -> None:
    rows = integer_rows(3000, seed=2)
    hyperparameters = {"k": "2", "seed": "4"}
    jobs = {
        "csv": {"train/data.csv": csv_bytes(rows)},
        "parquet": {"train/data.parquet": parquet_bytes(rows, TYPES[type_name])},
    }
    centres = {}
    for fmt, files in jobs.items():
        base = make_job(tmp_path / fmt, hyperparameters, files)
        result = run_train(base)
        assert result.returncode == 0, result.stdout + (base / "output" / "failure").read_text()
        assert "loaded 3000 rows x 3 features" in result.stdout
        centres[fmt] = fit_centres(base)
    np.testing.assert_array_equal(centres["parquet"], centres["csv"])
    # and they are scikit-learn's fit of the nearest float32s
    from sklearn.cluster import KMeans

    reference = KMeans(2, random_state=4).fit(rows.astype(np.float32)).cluster_centers_
    np.testing.assert_allclose(centres["csv"], reference, rtol=1e-6)


def test_a_missing_integer_cell_is_refused_as_in_csv(tmp_path: Path) -> None:
    """A null in an integer column is a missing value, as an empty CSV cell is."""
    table = pa.table({"a": pa.array([1, 2, None, 4] * 10, pa.int64()), "b": list(range(40))})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    base = make_job(tmp_path, {"k": "2"}, {"train/a.parquet": buffer.getvalue()})
    result = run_train(base)
    assert result.returncode == 1
    assert (base / "output" / "failure").read_text() == (
        "10 rows hold missing, NaN or infinite values; first at a.parquet line 3, "
        "feature column 1 (missing or NaN)\n"
    )

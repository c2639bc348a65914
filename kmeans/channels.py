"""Training input: the channels SageMaker mounts, read into one float32 matrix.

inputdataconfig.json names each channel, its input mode and (if the user set one) its
ContentType. File and FastFile channels are folders that keep the S3 key tree; CSV
(optionally gzip-compressed) and Parquet are read with pyarrow, block by block, into a
single contiguous float32 array that grows in place, so a 1 GB CSV needs about the
memory of its numbers and no float64 copy. A header row is skipped when the content
type says `header=present`, or when the first line of a file is not numeric and the
second is (logged). `label_size=N` drops the first N columns.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from kmeans.content_types import MediaType

log = logging.getLogger(__name__)

TRAINING_CHANNELS = ("train", "training")
CSV, PARQUET = "text/csv", "application/x-parquet"
_FORMATS = {
    "text/csv": CSV,
    "application/x-parquet": PARQUET,
    "application/parquet": PARQUET,
    "application/vnd.apache.parquet": PARQUET,
}
_BLOCK_BYTES = 16 << 20


class DataError(ValueError):
    """Training data that cannot be used, with what and where."""


@dataclass(frozen=True)
class Channel:
    name: str
    folder: Path
    mode: str = "File"
    content_type: MediaType | None = None

    @property
    def label_size(self) -> int:
        raw = self.content_type.params.get("label_size", "0") if self.content_type else "0"
        if not raw.isdigit():
            raise DataError(
                f"channel {self.name!r}: label_size must be an integer ≥ 0, got {raw!r}"
            )
        return int(raw)

    @property
    def header(self) -> str | None:
        """'present', 'absent' or None (detect)."""
        return self.content_type.params.get("header") if self.content_type else None


def read_channels(config_file: Path, data_dir: Path) -> dict[str, Channel]:
    """Channels from inputdataconfig.json, or the data folders when it is absent."""
    if not config_file.exists():
        folders = sorted(p for p in data_dir.iterdir() if p.is_dir()) if data_dir.is_dir() else []
        return {p.name: Channel(p.name, p) for p in folders}
    try:
        config = json.loads(config_file.read_text())
    except ValueError as error:
        raise DataError(f"{config_file.name} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise DataError(f"{config_file.name} must hold a JSON object of channels")
    channels = {}
    for name, spec in config.items():
        spec = spec if isinstance(spec, dict) else {}
        content_type = spec.get("ContentType")
        channels[name] = Channel(
            name=name,
            folder=data_dir / name,
            mode=spec.get("TrainingInputMode", "File"),
            content_type=MediaType.parse(content_type) if content_type else None,
        )
    return channels


def training_channel(channels: dict[str, Channel]) -> Channel:
    present = [channels[name] for name in TRAINING_CHANNELS if name in channels]
    if not present:
        found = ", ".join(repr(name) for name in channels) or "none"
        raise DataError(f"no training channel: expected 'train' or 'training', found {found}")
    if len(present) > 1:
        raise DataError("both 'train' and 'training' channels given: use one of them")
    return present[0]


def data_files(channel: Channel) -> list[Path]:
    """Every data file in the channel's folder tree, skipping hidden and empty files."""
    if channel.mode not in ("File", "FastFile"):
        raise DataError(
            f"channel {channel.name!r} uses TrainingInputMode {channel.mode!r}; "
            "this container reads File and FastFile channels"
        )
    if not channel.folder.is_dir():
        raise DataError(f"channel {channel.name!r}: folder {channel.folder} does not exist")
    files = [
        path
        for path in sorted(channel.folder.rglob("*"))
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(channel.folder).parts)
        and path.stat().st_size > 0
    ]
    if not files:
        raise DataError(f"channel {channel.name!r} is empty: no data files under {channel.folder}")
    return files


@dataclass
class Matrix:
    """Rows of float32 features, filled block by block, growing in place."""

    columns: int | None = None
    rows: int = 0
    data: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.float32))
    origins: list[tuple[int, Path, int]] = field(default_factory=list)

    def append(self, block: np.ndarray) -> None:
        needed = self.rows + len(block)
        if needed > len(self.data):
            capacity = max(needed, int(len(self.data) * 1.5), 1024)
            if self.data.size == 0:
                self.data = np.empty((capacity, block.shape[1]), np.float32)
            else:
                self.data.resize((capacity, block.shape[1]), refcheck=False)
        self.data[self.rows : needed] = block
        self.rows = needed

    def finish(self) -> np.ndarray:
        self.data.resize((self.rows, self.columns or 0), refcheck=False)
        return self.data

    def where(self, row: int) -> str:
        """File and line of a row of the matrix."""
        for start, path, first_line in reversed(self.origins):
            if row >= start:
                return f"{path.name} line {first_line + row - start}"
        return f"row {row + 1}"


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as probe:
        return probe.read(2) == b"\x1f\x8b"


def _open(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if _is_gzip(path) else path.open("rb")


def _is_numeric(cells: list[str]) -> bool:
    try:
        [float(cell) for cell in cells if cell.strip()]
    except ValueError:
        return False
    return True


def _csv_layout(path: Path, channel: Channel) -> tuple[int, bool]:
    """Column count and whether the first line is a header."""
    with _open(path) as stream:
        lines = [stream.readline().decode("utf-8", "replace") for _ in range(2)]
    rows = list(csv.reader(line for line in lines if line.strip()))
    if not rows:
        raise DataError(f"{path.name}: no records")
    header = channel.header == "present" or (
        channel.header is None
        and not _is_numeric(rows[0])
        and (len(rows) == 1 or _is_numeric(rows[1]))
    )
    if header and channel.header is None:
        log.info("%s: first line is not numeric, read as a header: %s", path.name, lines[0].strip())
    return len(rows[0]), header


def _diagnose(path: Path, header: bool, columns: int) -> str:
    """Locate the first cell pyarrow could not read, for a precise message."""
    with _open(path) as raw, io.TextIOWrapper(raw, encoding="utf-8", errors="replace") as text:
        for line_number, row in enumerate(csv.reader(text), start=1):
            if (line_number == 1 and header) or not row:
                continue
            if len(row) != columns:
                return (
                    f"{path.name} line {line_number}: {len(row)} columns, expected {columns} "
                    "(rows must all have the same number of columns)"
                )
            for column, cell in enumerate(row, start=1):
                try:
                    float(cell) if cell.strip() else None
                except ValueError:
                    return (
                        f"{path.name} line {line_number}, column {column}: {cell!r} is not a number"
                    )
    return f"{path.name}: could not be read as CSV"


def _csv_blocks(path: Path, channel: Channel) -> Iterator[tuple[int, np.ndarray]]:
    columns, header = _csv_layout(path, channel)
    names = [f"c{i}" for i in range(columns)]
    kept = names[channel.label_size :]
    if not kept:
        raise DataError(f"{path.name}: label_size={channel.label_size} leaves no feature columns")
    compression = "gzip" if _is_gzip(path) else None
    try:
        reader = pacsv.open_csv(
            pa.input_stream(str(path), compression=compression),
            read_options=pacsv.ReadOptions(
                column_names=names, skip_rows=int(header), block_size=_BLOCK_BYTES
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.float32() for name in names},
                include_columns=kept,
            ),
        )
        first_line = 1 + int(header)
        for batch in reader:
            yield first_line, _to_rows(batch)
            first_line += batch.num_rows
    except (pa.ArrowInvalid, UnicodeDecodeError):
        raise DataError(_diagnose(path, header, columns)) from None


def _parquet_blocks(path: Path, channel: Channel) -> Iterator[tuple[int, np.ndarray]]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path.name}: not a readable Parquet file ({error})") from None
    kept = parquet.schema_arrow.names[channel.label_size :]
    for field_ in parquet.schema_arrow:
        if (
            field_.name in kept
            and not pa.types.is_floating(field_.type)
            and not (pa.types.is_integer(field_.type))
        ):
            raise DataError(
                f"{path.name}: column {field_.name!r} has type {field_.type}, expected numbers"
            )
    first_line = 1
    for batch in parquet.iter_batches(batch_size=65536, columns=kept):
        yield first_line, _to_rows(batch)
        first_line += batch.num_rows


def _to_rows(batch: pa.RecordBatch) -> np.ndarray:
    block = np.empty((batch.num_rows, batch.num_columns), np.float32)
    for index, column in enumerate(batch.columns):
        block[:, index] = column.to_numpy(zero_copy_only=False)
    return block


def _format(path: Path, channel: Channel) -> str:
    if channel.content_type is not None:
        fmt = _FORMATS.get(channel.content_type.essence)
        if fmt is None:
            accepted = ", ".join(sorted(_FORMATS))
            raise DataError(
                f"channel {channel.name!r}: ContentType {channel.content_type.essence!r} is not "
                f"supported; use one of {accepted}"
            )
        return fmt
    with path.open("rb") as probe:
        return PARQUET if probe.read(4) == b"PAR1" else CSV


def load(channel: Channel) -> np.ndarray:
    """All records of a channel as one C-contiguous float32 array."""
    matrix = Matrix()
    for path in data_files(channel):
        try:
            blocks = _parquet_blocks if _format(path, channel) == PARQUET else _csv_blocks
            for first_line, block in blocks(path, channel):
                if matrix.columns is None:
                    matrix.columns = block.shape[1]
                if block.shape[1] != matrix.columns:
                    raise DataError(
                        f"{path.name}: {block.shape[1]} feature columns, but earlier files "
                        f"have {matrix.columns}"
                    )
                matrix.origins.append((matrix.rows, path, first_line))
                matrix.append(block)
        except (OSError, EOFError, zlib.error, pa.ArrowException) as error:
            detail = getattr(error, "strerror", None) or str(error)
            raise DataError(f"{path.name}: cannot be read ({detail})") from None
    data = matrix.finish()
    if data.shape[0] == 0:
        raise DataError(f"channel {channel.name!r} has files but no records")
    _check_finite(data, matrix)
    return data


def _check_finite(data: np.ndarray, matrix: Matrix) -> None:
    """Fail on NaN, inf or missing cells, saying how many and where the first one is."""
    bad_rows = 0
    first = None
    step = max(1, (8 << 20) // max(1, data.shape[1]))
    for start in range(0, len(data), step):
        finite = np.isfinite(data[start : start + step]).all(axis=1)
        if not finite.all():
            rows = np.flatnonzero(~finite)
            bad_rows += len(rows)
            if first is None:
                row = start + int(rows[0])
                column = int(np.flatnonzero(~np.isfinite(data[row]))[0])
                first = (row, column, data[row, column])
    if first is not None:
        row, column, value = first
        kind = "missing or NaN" if math.isnan(value) else str(value)
        raise DataError(
            f"{bad_rows} rows hold missing, NaN or infinite values; first at "
            f"{matrix.where(row)}, feature column {column + 1} ({kind})"
        )

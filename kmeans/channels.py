"""Training input: the channels SageMaker mounts, read as float32 blocks of rows.

inputdataconfig.json names each channel, its input mode and (if the user set one) its
ContentType. File and FastFile channels are folders that keep the S3 key tree; a
Pipe-mode channel is a FIFO per pass (`train_0`, `train_1`, ...). CSV (optionally
gzip-compressed), Parquet and RecordIO-protobuf are read block by block, with pyarrow
for CSV and Parquet. `load` gathers a File channel into one contiguous float32 array
that grows in place, so a 1 GB CSV needs about the memory of its numbers and no float64
copy; `blocks` streams one pass for mini-batch training. A CSV header row is skipped
when the content type says `header=present`, or when the first line of a file is not
numeric and the second is (logged). `label_size=N` drops the first N columns.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import logging
import math
import os
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from kmeans import recordio
from kmeans.content_types import MediaType

log = logging.getLogger(__name__)

TRAINING_CHANNELS = ("train", "training")
CSV, PARQUET, RECORDIO = "text/csv", "application/x-parquet", "application/x-recordio-protobuf"
_FORMATS = {
    "text/csv": CSV,
    RECORDIO: RECORDIO,
    "application/x-parquet": PARQUET,
    "application/parquet": PARQUET,
    "application/vnd.apache.parquet": PARQUET,
}
# pyarrow reads ahead several blocks: big blocks parse fastest, small ones bound memory.
LOAD_BLOCK_BYTES = 16 << 20
STREAM_BLOCK_BYTES = 1 << 20
# Plain CSV files this large are parsed in PARALLEL_PARTS byte ranges at once.
PARALLEL_MIN_BYTES = 64 << 20
PARALLEL_PARTS = max(1, min(8, os.cpu_count() or 1))
PARALLEL_BLOCK_BYTES = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"


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
            f"channel {channel.name!r}: TrainingInputMode {channel.mode!r} is not one of "
            "'File', 'FastFile', 'Pipe'"
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


@dataclass(frozen=True)
class Block:
    """Rows read from one source, and the line of the source the first one came from."""

    source: str
    first_line: int
    rows: np.ndarray


@dataclass
class Matrix:
    """Rows of float32 features, filled block by block, growing in place."""

    columns: int | None = None
    rows: int = 0
    data: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.float32))
    origins: list[tuple[int, str, int]] = field(default_factory=list)

    def reserve(self, rows: int, columns: int) -> None:
        """Room for `rows` in all: allocated once when the size is known up front."""
        if rows > len(self.data):
            if self.data.size == 0:
                self.data = np.empty((rows, columns), np.float32)
            else:
                self.data.resize((rows, columns), refcheck=False)

    def append(self, block: np.ndarray) -> None:
        needed = self.rows + len(block)
        if needed > len(self.data):
            self.reserve(max(needed, int(len(self.data) * 1.5), 1024), block.shape[1])
        self.data[self.rows : needed] = block
        self.rows = needed

    def finish(self) -> np.ndarray:
        self.data.resize((self.rows, self.columns or 0), refcheck=False)
        return self.data

    def where(self, row: int) -> str:
        """File and line of a row of the matrix."""
        for start, source, first_line in reversed(self.origins):
            if row >= start:
                return f"{source} line {first_line + row - start}"
        return f"row {row + 1}"


def _same_width(expected: int | None, width: int, source: str) -> int:
    """Every record of a channel has the same feature count: the first source sets it."""
    if expected is not None and width != expected:
        raise DataError(f"{source}: {width} feature columns, but earlier records have {expected}")
    return width


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as probe:
        return probe.read(2) == GZIP_MAGIC


def _open(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if _is_gzip(path) else path.open("rb")


def _is_numeric(cells: list[str]) -> bool:
    try:
        [float(cell) for cell in cells if cell.strip()]
    except ValueError:
        return False
    return True


def _layout(lines: list[bytes], channel: Channel, source: str) -> tuple[int, bool]:
    """Column count and whether the first line is a header, from a source's first lines."""
    rows = list(csv.reader(line.decode("utf-8", "replace") for line in lines if line.strip()))
    if not rows:
        raise DataError(f"{source}: no records")
    header = channel.header == "present" or (
        channel.header is None
        and not _is_numeric(rows[0])
        and (len(rows) == 1 or _is_numeric(rows[1]))
    )
    if header and channel.header is None:
        log.info("%s: first line is not numeric, read as a header: %s", source, lines[0].strip())
    if len(rows[0]) <= channel.label_size:
        raise DataError(f"{source}: label_size={channel.label_size} leaves no feature columns")
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


def _numbered(batches: Iterator[pa.RecordBatch], source: str, first_line: int) -> Iterator[Block]:
    """Arrow batches as blocks of rows, each with the source line of its first row."""
    for batch in batches:
        yield Block(source, first_line, _to_rows(batch))
        first_line += batch.num_rows


def _csv_reader(source: object, columns: int, header: bool, channel: Channel, block_bytes: int):
    names = [f"c{i}" for i in range(columns)]
    return pacsv.open_csv(
        source,
        read_options=pacsv.ReadOptions(
            column_names=names, skip_rows=int(header), block_size=block_bytes
        ),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.float32()),
            include_columns=names[channel.label_size :],
        ),
    )


def _csv_blocks(path: Path, channel: Channel, block_bytes: int) -> Iterator[Block]:
    with _open(path) as stream:
        columns, header = _layout([stream.readline(), stream.readline()], channel, path.name)
    compression = "gzip" if _is_gzip(path) else None
    try:
        source = pa.input_stream(str(path), compression=compression)
        reader = _csv_reader(source, columns, header, channel, block_bytes)
        yield from _numbered(reader, path.name, 1 + int(header))
    except (pa.ArrowInvalid, UnicodeDecodeError):
        raise DataError(_diagnose(path, header, columns)) from None


class _Range(io.RawIOBase):
    """Bytes `start` to `end` of a file, read with pread (no mapping, no shared offset)."""

    def __init__(self, descriptor: int, start: int, end: int) -> None:
        self.descriptor, self.offset, self.end = descriptor, start, end

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer)[: max(0, self.end - self.offset)]
        size = os.preadv(self.descriptor, [view], self.offset) if len(view) else 0
        self.offset += size
        return size


def _newline_after(descriptor: int, offset: int, size: int) -> int:
    """The offset just past the first newline at or after `offset` (or the end)."""
    while offset < size:
        found = os.pread(descriptor, 65536, offset).find(b"\n")
        if found >= 0:
            return offset + found + 1
        offset += 65536
    return size


def _count_lines(descriptor: int, start: int, end: int) -> int:
    lines, offset = 0, start
    while offset < end:
        chunk = os.pread(descriptor, min(16 << 20, end - offset), offset)
        lines += chunk.count(b"\n")
        offset += len(chunk)
    return lines


def _load_csv_parallel(path: Path, channel: Channel, matrix: Matrix) -> None:
    """A large plain CSV file, split at line ends into one byte range per core: each range
    is parsed by its own pyarrow reader in a thread (one reader parses on one core) and
    written straight into its rows of the matrix, counted beforehand, so no copy of the
    data is ever held beside the matrix."""
    with _open(path) as stream:
        columns, header = _layout([stream.readline(), stream.readline()], channel, path.name)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(descriptor).st_size
        cuts = [0] + [
            _newline_after(descriptor, size * part // PARALLEL_PARTS, size)
            for part in range(1, PARALLEL_PARTS)
        ]
        ranges = [(a, b) for a, b in zip(cuts, [*cuts[1:], size], strict=True) if b > a]
        with ThreadPoolExecutor(len(ranges)) as pool:
            lines = list(pool.map(lambda r: _count_lines(descriptor, *r), ranges))
        if os.pread(descriptor, 1, size - 1) != b"\n":
            lines[-1] += 1  # a last line without a newline
        expected = [count - (header and index == 0) for index, count in enumerate(lines)]
        width = matrix.columns = _same_width(
            matrix.columns, columns - channel.label_size, path.name
        )
        starts = np.cumsum([matrix.rows, *expected]).tolist()
        matrix.reserve(starts[-1], width)

        def parse(index: int) -> int:
            part = _Range(descriptor, *ranges[index])
            reader = _csv_reader(
                part, columns, header and index == 0, channel, PARALLEL_BLOCK_BYTES
            )
            row, limit = starts[index], starts[index + 1]
            for batch in reader:
                if row + batch.num_rows > limit:
                    raise DataError(f"{path.name}: more records than lines")
                matrix.data[row : row + batch.num_rows] = _to_rows(batch)
                row += batch.num_rows
            return row - starts[index]

        with ThreadPoolExecutor(len(ranges)) as pool:
            found = list(pool.map(parse, range(len(ranges))))
    except (pa.ArrowInvalid, UnicodeDecodeError):
        raise DataError(_diagnose(path, header, columns)) from None
    finally:
        os.close(descriptor)
    first_line = 1 + int(header)
    for index, rows in enumerate(found):  # blank lines make a range short: close the gap
        if rows != expected[index]:
            matrix.data[matrix.rows : matrix.rows + rows] = matrix.data[
                starts[index] : starts[index] + rows
            ].copy()
        matrix.origins.append((matrix.rows, path.name, first_line))
        matrix.rows += rows
        first_line += lines[index] - (header and index == 0)


class _Prefixed(io.RawIOBase):
    """A stream with bytes already read from it put back in front."""

    def __init__(self, prefix: bytes, stream: io.BufferedIOBase) -> None:
        self.prefix, self.stream = prefix, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.prefix:
            size = min(len(buffer), len(self.prefix))
            buffer[:size], self.prefix = self.prefix[:size], self.prefix[size:]
            return size
        return self.stream.readinto(buffer)


def _pipe_blocks(
    channel: Channel, epoch: int, wait_seconds: float, block_bytes: int
) -> Iterator[Block]:
    """One pass of a Pipe-mode channel: the FIFO <channel>_<epoch>, read to its end."""
    fifo = channel.folder.parent / f"{channel.name}_{epoch}"
    deadline = time.monotonic() + wait_seconds
    while not fifo.exists():
        if time.monotonic() > deadline:
            raise DataError(
                f"Pipe mode: {fifo.name} did not appear within {wait_seconds:g} s; "
                f"the job asked for more passes (epochs) than the channel delivered"
            )
        time.sleep(0.05)
    if channel.content_type is not None and _format(fifo, channel) == PARQUET:
        raise DataError(f"channel {channel.name!r}: Parquet cannot stream in Pipe mode; use CSV")
    with fifo.open("rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if raw.peek(2)[:2] == GZIP_MAGIC else raw
        declared = channel.content_type.essence if channel.content_type else None
        if declared == RECORDIO or (declared is None and raw.peek(4)[:4] == recordio.MAGIC_BYTES):
            yield from _recordio_stream(stream, fifo.name, block_bytes)
            return
        first = [stream.readline(), stream.readline()]
        columns, header = _layout(first, channel, fifo.name)
        source = _Prefixed(b"".join(first), stream)
        reader = _csv_reader(source, columns, header, channel, block_bytes)
        first_line = 1 + int(header)
        try:
            for block in _numbered(reader, fifo.name, first_line):
                first_line = block.first_line + len(block.rows)
                yield block
        except pa.ArrowInvalid as error:
            raise DataError(f"{fifo.name} near line {first_line}: {error}") from None


def _parquet_blocks(path: Path, channel: Channel, block_bytes: int) -> Iterator[Block]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path.name}: not a readable Parquet file ({error})") from None
    kept = parquet.schema_arrow.names[channel.label_size :]
    for column in parquet.schema_arrow:
        numeric = pa.types.is_floating(column.type) or pa.types.is_integer(column.type)
        if column.name in kept and not numeric:
            raise DataError(
                f"{path.name}: column {column.name!r} has type {column.type}, expected numbers"
            )
    batch_rows = max(1024, block_bytes // (4 * max(1, len(kept))))
    yield from _numbered(parquet.iter_batches(batch_size=batch_rows, columns=kept), path.name, 1)


def _to_rows(batch: pa.RecordBatch) -> np.ndarray:
    """Columns -> row-major float32 rows, missing cells as NaN (in Arrow's C++, fast)."""
    if any(column.type != pa.float32() for column in batch.schema):
        columns = [column.cast(pa.float32()) for column in batch.columns]
        batch = pa.RecordBatch.from_arrays(columns, names=batch.schema.names)
    return np.asarray(batch.to_tensor(null_to_nan=True, row_major=True))


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
        magic = probe.read(4)
    return {b"PAR1": PARQUET, recordio.MAGIC_BYTES: RECORDIO}.get(magic, CSV)


def _recordio_stream(stream: io.BufferedIOBase, source: str, block_bytes: int) -> Iterator[Block]:
    """RecordIO-protobuf records, read a block at a time; a record may span two reads."""
    pending, first = b"", 1
    while True:
        chunk = stream.read(block_bytes)
        pending += chunk
        try:
            payloads, used = recordio.frames(pending, complete=not chunk, first=first)
            rows = recordio.rows(payloads, first=first)
        except recordio.RecordIOError as error:
            raise DataError(f"{source}: {error}") from None
        if payloads:
            yield Block(source, first, rows.astype(np.float32))
            first += len(payloads)
        pending = pending[used:]
        if not chunk:
            return


def _recordio_blocks(path: Path, channel: Channel, block_bytes: int) -> Iterator[Block]:
    with path.open("rb") as stream:
        yield from _recordio_stream(stream, path.name, block_bytes)


_READERS = {CSV: _csv_blocks, PARQUET: _parquet_blocks, RECORDIO: _recordio_blocks}


def _file_blocks(path: Path, channel: Channel, block_bytes: int) -> Iterator[Block]:
    return _READERS[_format(path, channel)](path, channel, block_bytes)


@contextlib.contextmanager
def _reading(name: str) -> Iterator[None]:
    """Read errors of any library as one DataError naming the source."""
    try:
        yield
    except (OSError, EOFError, zlib.error, pa.ArrowException) as error:
        detail = getattr(error, "strerror", None) or str(error)
        raise DataError(f"{name}: cannot be read ({detail})") from None


def blocks(
    channel: Channel,
    epoch: int = 0,
    pipe_wait_seconds: float = 60.0,
    block_bytes: int = STREAM_BLOCK_BYTES,
) -> Iterator[Block]:
    """One pass over a channel, as float32 blocks of rows with where they came from."""
    if channel.mode == "Pipe":
        name = f"{channel.name}_{epoch}"
        sources = [(name, lambda: _pipe_blocks(channel, epoch, pipe_wait_seconds, block_bytes))]
    else:
        sources = [
            (path.name, lambda path=path: _file_blocks(path, channel, block_bytes))
            for path in data_files(channel)
        ]
    columns = None
    for name, source in sources:
        with _reading(name):
            for block in source():
                columns = _same_width(columns, block.rows.shape[1], block.source)
                yield block


def load(channel: Channel) -> np.ndarray:
    """All records of a channel as one C-contiguous float32 array."""
    matrix = Matrix()
    for path in data_files(channel):
        with _reading(path.name):
            fmt = _format(path, channel)
            if fmt == CSV and path.stat().st_size >= PARALLEL_MIN_BYTES and not _is_gzip(path):
                _load_csv_parallel(path, channel, matrix)
                continue
            for block in _READERS[fmt](path, channel, LOAD_BLOCK_BYTES):
                matrix.columns = _same_width(matrix.columns, block.rows.shape[1], block.source)
                matrix.origins.append((matrix.rows, block.source, block.first_line))
                matrix.append(block.rows)
    data = matrix.finish()
    if data.shape[0] == 0:
        raise DataError(f"channel {channel.name!r} has files but no records")
    step = max(1, (8 << 20) // max(1, data.shape[1]))
    bad_rows, first = 0, None
    for start in range(0, len(data), step):
        found = non_finite(data[start : start + step])
        if found:
            bad_rows += found[0]
            first = first or (start + found[1], found[2], found[3])
    if first:
        row, column, value = first
        raise DataError(_non_finite_message(bad_rows, matrix.where(row), column, value))
    return data


def non_finite(rows: np.ndarray) -> tuple[int, int, int, float] | None:
    """(rows holding NaN or inf, first such row, its first such column, the value)."""
    finite = np.isfinite(rows).all(axis=1)
    if finite.all():
        return None
    bad = np.flatnonzero(~finite)
    column = int(np.flatnonzero(~np.isfinite(rows[bad[0]]))[0])
    return len(bad), int(bad[0]), column, float(rows[bad[0], column])


def _non_finite_message(count: int, where: str, column: int, value: float) -> str:
    kind = "missing or NaN" if math.isnan(value) else str(value)
    return (
        f"{count} rows hold missing, NaN or infinite values; first at {where}, "
        f"feature column {column + 1} ({kind})"
    )


def check_block(block: Block) -> None:
    """The streaming reader's check: a block of rows must be finite."""
    found = non_finite(block.rows)
    if found:
        count, row, column, value = found
        where = f"{block.source} line {block.first_line + row}"
        raise DataError(_non_finite_message(count, where, column, value))

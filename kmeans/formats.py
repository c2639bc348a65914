"""Data files -> float32 blocks of rows: CSV (plain or gzip), Parquet, RecordIO-protobuf,
and the Pipe-mode stream, read with pyarrow (CSV, Parquet) or kmeans.recordio.

Every reader yields Blocks that know where their first row came from, for messages. A
file can be read in part (a Part): a byte range of a plain CSV file cut at line ends, or
every n-th row of any file; that is how several training hosts share one file. Large
plain CSV files are parsed in parallel byte ranges straight into a Matrix sized
beforehand, so no copy of the data is ever held beside it.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from kmeans import recordio
from kmeans.content_types import MediaType

log = logging.getLogger("kmeans.channels")

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
RECENT_BLOCKS = 4  # Pipe mode keeps this many blocks of recent text, to locate a bad row
# Plain CSV files (or parts of one) this large are parsed in PARALLEL_PARTS ranges at once.
PARALLEL_MIN_BYTES = 64 << 20
PARALLEL_PARTS = max(1, min(8, os.cpu_count() or 1))
PARALLEL_BLOCK_BYTES = 256 << 10
GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"


class DataError(ValueError):
    """Training data that cannot be used, with what and where."""


@dataclass(frozen=True)
class Reading:
    """How a channel's files are read: the channel's name and its declared ContentType."""

    channel: str
    content_type: MediaType | None = None
    keep_labels: bool = False  # the algorithm trains on labels: read them, not drop them

    @property
    def label_size(self) -> int:
        raw = self.content_type.params.get("label_size", "0") if self.content_type else "0"
        if not raw.isdigit():
            raise DataError(
                f"channel {self.channel!r}: label_size must be an integer ≥ 0, got {raw!r}"
            )
        return int(raw)

    @property
    def header(self) -> str | None:
        """'present', 'absent' or None (detect)."""
        return self.content_type.params.get("header") if self.content_type else None


@dataclass(frozen=True)
class Part:
    """A data file, or the part of it one host reads: bytes [start, end) of a plain CSV
    file (each line belongs to the range its first byte is in), or, for any file, the
    rows whose number modulo `every` is `offset`."""

    path: Path
    start: int = 0
    end: int | None = None
    every: int = 1
    offset: int = 0

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.end is None and self.every == 1


@functools.lru_cache(maxsize=64)
def _lines_before(path: Path, offset: int) -> int:
    with path.open("rb") as stream:
        return _count_lines(stream.fileno(), 0, offset)


@dataclass(frozen=True)
class Origin:
    """Where a run of rows came from: a source and the line of its first row. For a byte
    range that starts inside a file the line is counted from the range's start, and the
    lines before it are counted only when a message needs them."""

    source: str
    first_line: int
    path: Path | None = None
    byte_start: int = 0

    def line(self, row: int = 0) -> int:
        before = _lines_before(self.path, self.byte_start) if self.byte_start else 0
        return before + self.first_line + row

    def where(self, row: int = 0) -> str:
        return f"{self.source} line {self.line(row)}"


@dataclass(frozen=True)
class Block:
    """Rows read from one source, and where the first one came from; their labels too,
    (rows, label count), when the Reading keeps them: numbers, or str objects from CSV."""

    origin: Origin
    rows: np.ndarray
    labels: np.ndarray | None = None

    @property
    def source(self) -> str:
        return self.origin.source


@dataclass
class Matrix:
    """Rows of float32 features, filled block by block, growing in place."""

    columns: int | None = None
    rows: int = 0
    data: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.float32))
    origins: list[tuple[int, Origin]] = field(default_factory=list)
    label_blocks: list[np.ndarray] = field(default_factory=list)

    def reserve(self, rows: int, columns: int) -> None:
        """Room for `rows` in all: allocated once when the size is known up front."""
        if rows > len(self.data):
            if self.data.size == 0:
                self.data = np.empty((rows, columns), np.float32)
            else:
                self.data.resize((rows, columns), refcheck=False)

    def append(self, block: Block) -> None:
        self.columns = same_width(self.columns, block.rows.shape[1], block.source)
        self.origins.append((self.rows, block.origin))
        needed = self.rows + len(block.rows)
        if needed > len(self.data):
            self.reserve(max(needed, int(len(self.data) * 1.5), 1024), block.rows.shape[1])
        self.data[self.rows : needed] = block.rows
        self.rows = needed
        if block.labels is not None:
            self.label_blocks.append(block.labels)

    def labels(self, channel: str) -> np.ndarray:
        """Every row's labels: float64 when every one is a number, else str objects. A
        missing label (a blank cell, a null) is an error naming its row."""
        blocks = self.label_blocks
        if not blocks:
            return np.empty((self.rows, 0))
        numeric = [block.dtype.kind in "iuf" for block in blocks]
        missing = np.concatenate(
            [
                np.isnan(block.astype(np.float64))
                if number
                else np.char.strip(block.astype(str)) == ""
                for block, number in zip(blocks, numeric, strict=True)
            ]
        )
        if missing.any():
            row, column = divmod(int(np.flatnonzero(missing)[0]), missing.shape[1])
            raise DataError(
                f"channel {channel!r}: {int(missing.any(axis=1).sum())} rows have no label; "
                f"first at {self.where(row)}, label column {column + 1}"
            )
        if all(numeric):
            return np.concatenate(blocks).astype(np.float64)
        joined = np.concatenate([block.astype(object) for block in blocks])
        try:
            return joined.astype(np.float64)  # names that are all numbers
        except ValueError:
            return np.char.strip(joined.astype(str)).astype(object)

    def finish(self) -> np.ndarray:
        self.data.resize((self.rows, self.columns or 0), refcheck=False)
        return self.data

    def where(self, row: int) -> str:
        """File and line of a row of the matrix."""
        for start, origin in reversed(self.origins):
            if row >= start:
                return origin.where(row - start)
        return f"row {row + 1}"


@dataclass(frozen=True)
class Labelled:
    """A channel's rows (float32, C-contiguous) and their labels (rows, label count)."""

    rows: np.ndarray
    labels: np.ndarray


def same_width(expected: int | None, width: int, source: str) -> int:
    """Every record of a channel has the same feature count: the first source sets it."""
    if expected is not None and width != expected:
        raise DataError(f"{source}: {width} feature columns, but earlier records have {expected}")
    return width


def format_of(path: Path, reading: Reading) -> str:
    """The declared ContentType's format, else the one the file's first bytes say."""
    if reading.content_type is not None:
        fmt = _FORMATS.get(reading.content_type.essence)
        if fmt is None:
            accepted = ", ".join(sorted(_FORMATS))
            raise DataError(
                f"channel {reading.channel!r}: ContentType {reading.content_type.essence!r} "
                f"is not supported; use one of {accepted}"
            )
        return fmt
    with path.open("rb") as probe:
        magic = probe.read(4)
    return {PARQUET_MAGIC: PARQUET, recordio.MAGIC_BYTES: RECORDIO}.get(magic, CSV)


def is_gzip(path: Path) -> bool:
    with path.open("rb") as probe:
        return probe.read(2) == GZIP_MAGIC


def is_plain_csv(path: Path, reading: Reading) -> bool:
    """Plain (uncompressed) CSV can be cut into byte ranges; nothing else can."""
    return format_of(path, reading) == CSV and not is_gzip(path)


def _open(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if is_gzip(path) else path.open("rb")


# --- CSV -------------------------------------------------------------------------------


def _is_numeric(cells: list[str]) -> bool:
    try:
        [float(cell) for cell in cells if cell.strip()]
    except ValueError:
        return False
    return True


def _layout(lines: list[bytes], reading: Reading, source: str) -> tuple[int, bool]:
    """Column count and whether the first line is a header, from a source's first lines."""
    rows = list(csv.reader(line.decode("utf-8", "replace") for line in lines if line.strip()))
    if not rows:
        raise DataError(f"{source}: no records")
    header = reading.header == "present" or (
        reading.header is None
        and not _is_numeric(rows[0][reading.label_size :])
        and (len(rows) == 1 or _is_numeric(rows[1][reading.label_size :]))
    )
    if header and reading.header is None:
        log.info("%s: first line is not numeric, read as a header: %s", source, lines[0].strip())
    if len(rows[0]) <= reading.label_size:
        raise DataError(f"{source}: label_size={reading.label_size} leaves no feature columns")
    return len(rows[0]), header


def _file_layout(path: Path, reading: Reading) -> tuple[int, bool]:
    with _open(path) as stream:
        return _layout([stream.readline(), stream.readline()], reading, path.name)


def _first_bad_row(
    text: Iterable[str], source: str, first_line: int, skip_first: bool, columns: int, labels: int
) -> str | None:
    """What is wrong with the first row of `text` that cannot be read, if one cannot (its
    first `labels` columns, labels, may hold anything)."""
    for line_number, row in enumerate(csv.reader(text), start=first_line):
        if (line_number == first_line and skip_first) or not row:
            continue
        if len(row) != columns:
            return (
                f"{source} line {line_number}: {len(row)} columns, expected {columns} "
                "(rows must all have the same number of columns)"
            )
        for column, cell in enumerate(row[labels:], start=labels + 1):
            try:
                float(cell) if cell.strip() else None
            except ValueError:
                return f"{source} line {line_number}, column {column}: {cell!r} is not a number"
    return None


def _diagnose(path: Path, header: bool, columns: int, labels: int) -> str:
    """Locate the first cell pyarrow could not read, for a precise message."""
    with _open(path) as raw, io.TextIOWrapper(raw, encoding="utf-8", errors="replace") as text:
        found = _first_bad_row(text, path.name, 1, header, columns, labels)
    return found or f"{path.name}: could not be read as CSV"


def _numbered(
    batches: Iterator[pa.RecordBatch], origin: Origin, label_size: int = 0
) -> Iterator[Block]:
    """Arrow batches as blocks of rows, each with the source line of its first row; the
    first `label_size` columns, when given, are the rows' labels."""
    line = origin.first_line
    for batch in batches:
        where = Origin(origin.source, line, origin.path, origin.byte_start)
        if label_size:
            names = batch.schema.names
            labels = np.column_stack([_label_values(batch.column(i)) for i in range(label_size)])
            yield Block(where, _to_rows(batch.select(names[label_size:])), labels)
        else:
            yield Block(where, _to_rows(batch))
        line += batch.num_rows


def _label_values(column: pa.Array) -> np.ndarray:
    """A label column: numbers as float64 (NaN for none), anything else as str objects."""
    if pa.types.is_integer(column.type) and column.null_count == 0:
        return column.cast(pa.int64()).to_numpy()
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    return np.array(["" if v is None else str(v) for v in column.to_pylist()], dtype=object)


def _kept_labels(reading: Reading, source: str) -> int:
    """How many leading columns are labels to read: label_size, when labels are kept."""
    if not reading.keep_labels:
        return 0
    if reading.label_size == 0:
        raise DataError(
            f"channel {reading.channel!r} ({source}): this algorithm trains on labels; give "
            "the channel's ContentType a label_size (text/csv;label_size=1: the first column)"
        )
    return reading.label_size


def _csv_reader(source: object, columns: int, header: bool, reading: Reading, block_bytes: int):
    names = [f"c{i}" for i in range(columns)]
    types = dict.fromkeys(names, pa.float32())
    kept = names[reading.label_size :]
    if reading.keep_labels:  # labels as written: names or numbers, decided over the channel
        types.update(dict.fromkeys(names[: reading.label_size], pa.string()))
        kept = names
    return pacsv.open_csv(
        source,
        read_options=pacsv.ReadOptions(
            column_names=names, skip_rows=int(header), block_size=block_bytes
        ),
        convert_options=pacsv.ConvertOptions(column_types=types, include_columns=kept),
    )


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


def _line_start(descriptor: int, offset: int, size: int) -> int:
    """Where the first line that starts at or after `offset` starts."""
    return 0 if offset <= 0 else _newline_after(descriptor, offset - 1, size)


def _count_lines(descriptor: int, start: int, end: int) -> int:
    lines, offset = 0, start
    while offset < end:
        chunk = os.pread(descriptor, min(16 << 20, end - offset), offset)
        if not chunk:
            break
        lines += chunk.count(b"\n")
        offset += len(chunk)
    return lines


def _byte_range(descriptor: int, part: Part) -> tuple[int, int]:
    """The part's bytes, moved to whole lines."""
    size = os.fstat(descriptor).st_size
    end = size if part.end is None else min(part.end, size)
    return _line_start(descriptor, part.start, size), _line_start(descriptor, end, size)


def csv_blocks(part: Part, reading: Reading, block_bytes: int) -> Iterator[Block]:
    path = part.path
    columns, header = _file_layout(path, reading)
    labels = _kept_labels(reading, path.name)
    try:
        if part.start == 0 and part.end is None:
            compression = "gzip" if is_gzip(path) else None
            source = pa.input_stream(str(path), compression=compression)
            reader = _csv_reader(source, columns, header, reading, block_bytes)
            yield from _numbered(reader, Origin(path.name, 1 + int(header)), labels)
            return
        with path.open("rb") as stream:
            start, end = _byte_range(stream.fileno(), part)
            if end <= start:
                return
            first = header and start == 0
            reader = _csv_reader(
                _Range(stream.fileno(), start, end), columns, first, reading, block_bytes
            )
            yield from _numbered(reader, Origin(path.name, 1 + int(first), path, start), labels)
    except (pa.ArrowInvalid, UnicodeDecodeError):
        raise DataError(_diagnose(path, header, columns, reading.label_size)) from None


def load_csv_parallel(part: Part, reading: Reading, matrix: Matrix) -> None:
    """A large plain CSV file (or byte range of one), split at line ends into one range per
    core: each range is parsed by its own pyarrow reader in a thread (one reader parses on
    one core) and written straight into its rows of the matrix, counted beforehand."""
    path = part.path
    columns, header = _file_layout(path, reading)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        first, last = _byte_range(descriptor, part)
        size = last - first
        cuts = [first] + [
            _newline_after(descriptor, first + size * piece // PARALLEL_PARTS, last)
            for piece in range(1, PARALLEL_PARTS)
        ]
        ranges = [(a, b) for a, b in zip(cuts, [*cuts[1:], last], strict=True) if b > a]
        if not ranges:
            return
        with ThreadPoolExecutor(len(ranges)) as pool:
            lines = list(pool.map(lambda r: _count_lines(descriptor, *r), ranges))
        if os.pread(descriptor, 1, last - 1) != b"\n":
            lines[-1] += 1  # a last line without a newline
        skip_header = header and first == 0
        expected = [count - (skip_header and index == 0) for index, count in enumerate(lines)]
        width = matrix.columns = same_width(matrix.columns, columns - reading.label_size, path.name)
        starts = np.cumsum([matrix.rows, *expected]).tolist()
        matrix.reserve(starts[-1], width)

        def parse(index: int) -> int:
            piece = _Range(descriptor, *ranges[index])
            reader = _csv_reader(
                piece, columns, skip_header and index == 0, reading, PARALLEL_BLOCK_BYTES
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
        raise DataError(_diagnose(path, header, columns, reading.label_size)) from None
    finally:
        os.close(descriptor)
    first_line = 1 + int(skip_header)
    for index, rows in enumerate(found):  # blank lines make a range short: close the gap
        if rows != expected[index]:
            matrix.data[matrix.rows : matrix.rows + rows] = matrix.data[
                starts[index] : starts[index] + rows
            ].copy()
        matrix.origins.append((matrix.rows, Origin(path.name, first_line, path, first)))
        matrix.rows += rows
        first_line += lines[index] - (skip_header and index == 0)


# --- Pipe mode ----------------------------------------------------------------------------


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


class _Recent(io.RawIOBase):
    """A stream that keeps the whole lines among the last `keep` or more bytes read from
    it, and the line number of the first one kept: a stream cannot be read twice, and
    pyarrow reads ahead of the rows it has returned, so this is where the row it could
    not read is found."""

    def __init__(self, stream: io.RawIOBase, keep: int) -> None:
        self.stream, self.keep = stream, keep
        self.kept = bytearray()
        self.first_line = 1
        self.ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        size = self.stream.readinto(buffer)
        self.ended = not size
        self.kept += memoryview(buffer)[:size]
        if len(self.kept) > 2 * self.keep:
            cut = self.kept.find(b"\n", len(self.kept) - self.keep) + 1
            if cut:
                self.first_line += self.kept.count(b"\n", 0, cut)
                del self.kept[:cut]
        return size

    def lines(self) -> list[str]:
        """The kept lines; the last one only if it is whole or the stream has ended."""
        end = len(self.kept) if self.ended else self.kept.rfind(b"\n") + 1
        return self.kept[:end].decode("utf-8", "replace").splitlines(keepends=True)


def pipe_blocks(fifo: Path, reading: Reading, wait_seconds: float, block_bytes: int):
    """One pass of a Pipe-mode channel: the FIFO <channel>_<epoch>, read to its end."""
    deadline = time.monotonic() + wait_seconds
    while not fifo.exists():
        if time.monotonic() > deadline:
            raise DataError(
                f"Pipe mode: {fifo.name} did not appear within {wait_seconds:g} s; "
                f"the job asked for more passes (epochs) than the channel delivered"
            )
        time.sleep(0.05)
    parquet = f"channel {reading.channel!r}: Parquet cannot stream in Pipe mode; use CSV"
    if reading.content_type is not None and format_of(fifo, reading) == PARQUET:
        raise DataError(parquet)
    with fifo.open("rb") as raw:
        if raw.peek(4)[:4] == PARQUET_MAGIC:  # undeclared: its first bytes say so
            raise DataError(parquet)
        stream = gzip.GzipFile(fileobj=raw) if raw.peek(2)[:2] == GZIP_MAGIC else raw
        declared = reading.content_type.essence if reading.content_type else None
        if declared == RECORDIO or (declared is None and raw.peek(4)[:4] == recordio.MAGIC_BYTES):
            yield from _recordio_stream(stream, fifo.name, block_bytes, reading.keep_labels)
            return
        first = [stream.readline(), stream.readline()]
        columns, header = _layout(first, reading, fifo.name)
        source = _Recent(_Prefixed(b"".join(first), stream), keep=RECENT_BLOCKS * block_bytes)
        reader = _csv_reader(source, columns, header, reading, block_bytes)
        first_line = 1 + int(header)
        try:
            labels = _kept_labels(reading, fifo.name)
            for block in _numbered(reader, Origin(fifo.name, first_line), labels):
                first_line = block.origin.first_line + len(block.rows)
                yield block
        except pa.ArrowInvalid as error:
            kept_from = source.first_line
            found = _first_bad_row(
                source.lines(),
                fifo.name,
                kept_from,
                header and kept_from == 1,
                columns,
                reading.label_size,
            )
            raise DataError(found or f"{fifo.name} after line {first_line - 1}: {error}") from None


# --- Parquet and RecordIO -----------------------------------------------------------------


def parquet_blocks(part: Part, reading: Reading, block_bytes: int) -> Iterator[Block]:
    path = part.path
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path.name}: not a readable Parquet file ({error})") from None
    labels = _kept_labels(reading, path.name)
    names = parquet.schema_arrow.names
    kept = names[reading.label_size :]
    for column in parquet.schema_arrow:
        numeric = pa.types.is_floating(column.type) or pa.types.is_integer(column.type)
        if column.name in kept and not numeric:
            raise DataError(
                f"{path.name}: column {column.name!r} has type {column.type}, expected numbers"
            )
    if labels:  # the first label_size columns, of any type
        kept = names
    batch_rows = max(1024, block_bytes // (4 * max(1, len(kept))))
    batches = parquet.iter_batches(batch_size=batch_rows, columns=kept)
    yield from _numbered(batches, Origin(path.name, 1), labels)


def _to_rows(batch: pa.RecordBatch) -> np.ndarray:
    """Columns -> row-major float32 rows, missing cells as NaN (in Arrow's C++, fast).
    Each number becomes the nearest float32, as the same number written in CSV does: an
    integer beyond 2^24 that float32 cannot hold is rounded (Arrow's safe cast refuses it)."""
    if any(column.type != pa.float32() for column in batch.schema):
        columns = [column.cast(pa.float32(), safe=False) for column in batch.columns]
        batch = pa.RecordBatch.from_arrays(columns, names=batch.schema.names)
    return np.asarray(batch.to_tensor(null_to_nan=True, row_major=True))


def _recordio_stream(
    stream: io.BufferedIOBase, source: str, block_bytes: int, keep_labels: bool = False
) -> Iterator[Block]:
    """RecordIO-protobuf records, read a block at a time; a record may span two reads.
    Labels, when kept, come from each Record's `label` map."""
    pending, first = b"", 1
    while True:
        chunk = stream.read(block_bytes)
        pending += chunk
        try:
            payloads, used = recordio.frames(pending, complete=not chunk, first=first)
            rows = recordio.rows(payloads, first=first)
            labels = recordio.labels(payloads, first=first) if keep_labels else None
        except recordio.RecordIOError as error:
            raise DataError(f"{source}: {error}") from None
        if payloads:
            yield Block(Origin(source, first), rows.astype(np.float32), labels)
            first += len(payloads)
        pending = pending[used:]
        if not chunk:
            return


def recordio_blocks(part: Part, reading: Reading, block_bytes: int) -> Iterator[Block]:
    with part.path.open("rb") as stream:
        yield from _recordio_stream(stream, part.path.name, block_bytes, reading.keep_labels)


_READERS = {CSV: csv_blocks, PARQUET: parquet_blocks, RECORDIO: recordio_blocks}


def part_blocks(part: Part, reading: Reading, block_bytes: int) -> Iterator[Block]:
    """The part's rows, block by block, in any format."""
    blocks = _READERS[format_of(part.path, reading)](part, reading, block_bytes)
    return blocks if part.every == 1 else every_nth(blocks, part.every, part.offset)


def every_nth(blocks: Iterator[Block], every: int, offset: int) -> Iterator[Block]:
    """Rows numbered offset, offset + every, ... of a stream of blocks. Each block is checked
    for NaN and infinity before rows are dropped, so every host reports the same first bad
    row, under its real line number (the kept rows' origin names only their source)."""
    seen = 0
    for block in blocks:
        check_block(block)
        chosen = slice((offset - seen) % every, None, every)
        kept = block.rows[chosen]
        seen += len(block.rows)
        if len(kept):
            labels = None if block.labels is None else block.labels[chosen]
            yield Block(block.origin, np.ascontiguousarray(kept), labels)


# --- checks -------------------------------------------------------------------------------


def non_finite(rows: np.ndarray) -> tuple[int, int, int, float] | None:
    """(rows holding NaN or inf, first such row, its first such column, the value)."""
    finite = np.isfinite(rows).all(axis=1)
    if finite.all():
        return None
    bad = np.flatnonzero(~finite)
    column = int(np.flatnonzero(~np.isfinite(rows[bad[0]]))[0])
    return len(bad), int(bad[0]), column, float(rows[bad[0], column])


def non_finite_message(count: int, where: str, column: int, value: float) -> str:
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
        raise DataError(non_finite_message(count, block.origin.where(row), column, value))

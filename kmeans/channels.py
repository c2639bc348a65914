"""Training input: the channels SageMaker mounts, which of their files are this host's, and
their rows as float32 (the formats themselves are read by kmeans/formats.py).

inputdataconfig.json names each channel, its input mode, its S3DistributionType and (if
the user set one) its ContentType. File and FastFile channels are folders that keep the
S3 key tree; a Pipe-mode channel is a FIFO per pass (`train_0`, `train_1`, ...).
`load` gathers a channel into one contiguous float32 array that grows in place, so a
1 GB CSV needs about the memory of its numbers and no float64 copy; `blocks` streams one
pass for mini-batch training.

With several training hosts each reads only its share (`share`): under ShardedByS3Key
the files SageMaker gave it; under FullyReplicated, where every host holds every file,
a slice of the sorted file list by bytes, with plain CSV files cut into byte ranges at
line ends, so that every row is trained on once.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from kmeans import formats
from kmeans.content_types import MediaType
from kmeans.formats import Block, DataError, Part, check_block

__all__ = ["Block", "Channel", "DataError", "Part", "check_block"]

TRAINING_CHANNELS = ("train", "training")
FULLY_REPLICATED, SHARDED = "FullyReplicated", "ShardedByS3Key"


@dataclass(frozen=True)
class Channel:
    name: str
    folder: Path
    mode: str = "File"
    content_type: MediaType | None = None
    distribution: str = FULLY_REPLICATED

    @property
    def reading(self) -> formats.Reading:
        return formats.Reading(self.name, self.content_type)


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
        distribution = spec.get("S3DistributionType") or FULLY_REPLICATED
        if distribution not in (FULLY_REPLICATED, SHARDED):
            raise DataError(
                f"channel {name!r}: S3DistributionType {distribution!r} is not one of "
                f"{FULLY_REPLICATED!r}, {SHARDED!r}"
            )
        channels[name] = Channel(
            name=name,
            folder=data_dir / name,
            mode=spec.get("TrainingInputMode", "File"),
            content_type=MediaType.parse(content_type) if content_type else None,
            distribution=distribution,
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


def data_files(channel: Channel, may_be_empty: bool = False) -> list[Path]:
    """Every data file in the channel's folder tree, skipping hidden and empty files.
    `may_be_empty`: a host's shard of a ShardedByS3Key channel can hold nothing."""
    if channel.mode not in ("File", "FastFile"):
        raise DataError(
            f"channel {channel.name!r}: TrainingInputMode {channel.mode!r} is not one of "
            "'File', 'FastFile', 'Pipe'"
        )
    if not channel.folder.is_dir():
        if may_be_empty:
            return []
        raise DataError(f"channel {channel.name!r}: folder {channel.folder} does not exist")
    files = [
        path
        for path in sorted(channel.folder.rglob("*"))
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(channel.folder).parts)
        and path.stat().st_size > 0
    ]
    if not files and not may_be_empty:
        raise DataError(f"channel {channel.name!r} is empty: no data files under {channel.folder}")
    return files


def listing(channel: Channel) -> list[tuple[str, int]]:
    """The channel's files (path under the channel, size): under FullyReplicated every host
    must hold the same ones."""
    if channel.mode == "Pipe":
        return []
    return [
        (str(path.relative_to(channel.folder)), path.stat().st_size)
        for path in data_files(channel, may_be_empty=channel.distribution == SHARDED)
    ]


def share(channel: Channel, host: int = 0, hosts: int = 1) -> list[Part]:
    """The parts of a File-mode channel that host number `host` of `hosts` reads.

    ShardedByS3Key: its own files. FullyReplicated: lay the sorted files end to end and
    give each host an equal window of bytes; a plain CSV file is cut at the window's edges
    (formats.py moves each cut to a line end, the same way on every host), any other file
    goes whole to the host whose window holds its middle. With fewer files than hosts,
    files that cannot be cut are read by every host, each keeping every `hosts`-th row."""
    if hosts == 1:
        return [Part(path) for path in data_files(channel)]
    if channel.distribution == SHARDED:
        return [Part(path) for path in data_files(channel, may_be_empty=True)]
    files = data_files(channel)
    reading = channel.reading
    cuttable = {path: formats.is_plain_csv(path, reading) for path in files}
    interleaved = [path for path in files if not cuttable[path]] if len(files) < hosts else []
    laid_out = [(path, path.stat().st_size) for path in files if path not in interleaved]
    total = sum(size for _, size in laid_out)
    low, high = total * host // hosts, total * (host + 1) // hosts
    parts = [Part(path, every=hosts, offset=host) for path in interleaved]
    offset = 0
    for path, size in laid_out:
        start, end = offset, offset + size
        offset = end
        if cuttable[path]:
            first, last = max(start, low), min(end, high)
            if first < last:
                parts.append(Part(path, first - start, None if last == end else last - start))
        elif low <= (start + end) // 2 < high:
            parts.append(Part(path))
    return parts


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
    block_bytes: int = formats.STREAM_BLOCK_BYTES,
    parts: list[Part] | None = None,
    host: int = 0,
    hosts: int = 1,
) -> Iterator[Block]:
    """One pass over a channel (File mode: over `parts`, by default all of it), as float32
    blocks of rows with where they came from. A FullyReplicated Pipe stream reaches every
    host whole: host `host` of `hosts` keeps every `hosts`-th row of it."""
    reading = channel.reading
    if channel.mode == "Pipe":
        fifo = channel.folder.parent / f"{channel.name}_{epoch}"

        def stream() -> Iterator[Block]:
            found = formats.pipe_blocks(fifo, reading, pipe_wait_seconds, block_bytes)
            if hosts > 1 and channel.distribution == FULLY_REPLICATED:
                return formats.every_nth(found, hosts, host)
            return found

        sources = [(fifo.name, stream)]
    else:
        parts = share(channel) if parts is None else parts
        sources = [
            (part.path.name, lambda part=part: formats.part_blocks(part, reading, block_bytes))
            for part in parts
        ]
    columns = None
    for name, source in sources:
        with _reading(name):
            for block in source():
                columns = formats.same_width(columns, block.rows.shape[1], block.source)
                yield block


def _part_bytes(part: Part) -> int:
    size = part.path.stat().st_size
    return (size if part.end is None else part.end) - part.start


def load(channel: Channel, parts: list[Part] | None = None) -> np.ndarray:
    """The records of a channel (by default all of it; else `parts` of it, which may hold
    none) as one C-contiguous float32 array."""
    return _load(channel, parts, channel.reading).finish()


def load_labelled(channel: Channel) -> formats.Labelled:
    """The records of a channel with their labels: CSV's and Parquet's first `label_size`
    columns (the ContentType's parameter), RecordIO-protobuf's `label` map. Read by the
    serial readers (the parallel CSV loader drops labels)."""
    reading = formats.Reading(channel.name, channel.content_type, keep_labels=True)
    matrix = _load(channel, None, reading)
    labels = matrix.labels(channel.name)
    return formats.Labelled(matrix.finish(), labels)


def _load(channel: Channel, parts: list[Part] | None, reading: formats.Reading) -> formats.Matrix:
    shared = parts is not None
    parts = share(channel) if parts is None else parts
    matrix = formats.Matrix()
    for part in parts:
        with _reading(part.path.name):
            plain = part.every == 1 and formats.is_plain_csv(part.path, reading)
            big = plain and _part_bytes(part) >= formats.PARALLEL_MIN_BYTES
            if big and not reading.keep_labels:
                formats.load_csv_parallel(part, reading, matrix)
                continue
            for block in formats.part_blocks(part, reading, formats.LOAD_BLOCK_BYTES):
                matrix.append(block)
    data = matrix.data[: matrix.rows]
    if matrix.rows == 0 and not shared:
        raise DataError(f"channel {channel.name!r} has files but no records")
    step = max(1, (8 << 20) // max(1, data.shape[1]))
    bad_rows, first = 0, None
    for start in range(0, len(data), step):
        found = formats.non_finite(data[start : start + step])
        if found:
            bad_rows += found[0]
            first = first or (start + found[1], found[2], found[3])
    if first:
        row, column, value = first
        raise DataError(formats.non_finite_message(bad_rows, matrix.where(row), column, value))
    return matrix

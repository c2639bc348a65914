"""Predictions -> response bodies, for any algorithm's named columns. One function per
media type, one table, and the choice of media type from the Accept header.

A prediction is one array per output column (kmeans/algorithm.py's Column: a name and
a kind), one value per input record. Every format gives one output record per input
record, in order: CSV the values in column order; JSON `{"predictions": [{name: value,
...}, ...]}`; JSON Lines one such object per line; RecordIO-protobuf one Record per row
whose `label` map holds each column by name. CSV and JSON Lines bodies have no trailing
newline: batch transform's AssembleWith=Line adds one after each response, so N input
lines come back as N output lines.

float32 columns (K-Means's distances) go out as the built-in algorithm answers: the
value rounded to the nearest float32, written in text as the shortest number that
reads back as that float32 (`0.14135058`, not `0.14135058347833668`), and `null` beyond
float32's range (3.4e38). Integer columns are written as integers (in RecordIO as
float32 tensors, as the built-in algorithm does), strings as strings (RecordIO: bytes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc  # loaded before the workers fork: shared, and no first-use wait

from kmeans import recordio
from kmeans.algorithm import Column
from kmeans.content_types import CSV, JSON, JSONLINES, RECORDIO, MediaType

_VECTOR_ROWS = 1000  # from about here Arrow's kernels beat a Python loop
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_FLOAT32_INFINITY = 3.4028235677973366e38  # from here up, a float64 rounds to float32's inf

Columns = tuple[Column, ...]
Values = Sequence[np.ndarray]  # one array per column


class NotAcceptable(ValueError):
    """An Accept header no encoder can satisfy: HTTP 406."""


def _csv_string(value: object) -> bytes:
    """A CSV cell, quoted when it holds a comma, a quote or a line break (RFC 4180)."""
    text = str(value)
    if any(mark in text for mark in ',"\r\n'):
        return b'"' + text.replace('"', '""').encode() + b'"'
    return text.encode()


def _json_string(value: object) -> bytes:
    return orjson.dumps(str(value))


@dataclass(frozen=True)
class _Layout:
    """A text format for given columns: the body's head and tail, the bytes before each
    column's value, and a row's end, whose last byte separates rows (the last row's end
    loses it); and the same as %-formats: a row's (%d for an integer, %b for any other
    value's text) and a one-record body's."""

    head: bytes
    tail: bytes
    starts: tuple[bytes, ...]
    end: bytes
    string: Callable[[object], bytes]
    row_format: bytes = b""
    one_format: bytes = b""


def _escaped(text: bytes) -> bytes:
    return text.replace(b"%", b"%%")


@functools.lru_cache(maxsize=64)
def _layout(media: str, columns: Columns) -> _Layout:
    if media == CSV:
        head, tail, end, string = b"", b"", b"\n", _csv_string
        starts: tuple[bytes, ...] = (b"",) + (b",",) * (len(columns) - 1)
    else:
        keys = [orjson.dumps(column.name) + b":" for column in columns]
        starts = (b"{" + keys[0], *(b"," + key for key in keys[1:]))
        head, tail, end = (
            (b'{"predictions":[', b"]}", b"},") if media == JSON else (b"", b"", b"}\n")
        )
        string = _json_string
    cells = b"".join(
        _escaped(start) + (b"%d" if column.kind == "int" else b"%b")
        for start, column in zip(starts, columns, strict=True)
    )
    row_format = cells + _escaped(end)
    one_format = _escaped(head) + cells + _escaped(end[:-1]) + _escaped(tail)
    return _Layout(head, tail, starts, end, string, row_format, one_format)


def _float32_text(values: np.ndarray) -> bytes:
    """`[v0,v1,...]`, each the shortest text of its float32, null beyond its range."""
    with np.errstate(over="ignore"):  # beyond float32: inf, written as null
        return orjson.dumps(np.asarray(values).astype(np.float32), option=_NUMPY)


def _cells(column: Column, values: np.ndarray, string: Callable[[object], bytes]) -> list:
    """Each value as the row format takes it (an int, or its text), for a few rows."""
    if column.kind == "float32":
        return _float32_text(values)[1:-1].split(b",") if len(values) else []
    if column.kind == "int":
        return values.tolist()
    return [string(str(value)) for value in values.tolist()]


def _text_rows(media: str, columns: Columns, values: Values) -> bytes:
    """The body: `head`, each row as its columns' starts and values and `end`, `tail`."""
    layout = _layout(media, columns)
    count = len(values[0])
    if count >= _VECTOR_ROWS:
        return _text_rows_arrow(layout, columns, values, count)
    cells = [_cells(c, v, layout.string) for c, v in zip(columns, values, strict=True)]
    row = layout.row_format
    rows = b"".join(row % values for values in zip(*cells, strict=True))
    return b"".join((layout.head, rows[:-1], layout.tail))


_DICTIONARY_RANGE = 1 << 16  # integer columns spanning fewer values are written by look-up


def _float32_cells(values: np.ndarray, follows: bytes) -> pa.Array:
    """Each value's text as an Arrow binary array, with no Python object per row: orjson
    writes every value at once as `[v0,v1,...]`; each value's text runs to the separator
    after it (`,` or the closing `]`), which becomes the first byte of what `follows`."""
    text = _float32_text(values)
    offsets = np.empty(len(values) + 1, np.int64)
    offsets[0], offsets[-1] = 1, len(text)
    offsets[1:-1] = np.flatnonzero(np.frombuffer(text, np.uint8) == ord(",")) + 1
    text = text.translate(bytes.maketrans(b",]", follows[:1] * 2))
    return pa.Array.from_buffers(
        pa.large_binary(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(text)]
    )


def _dictionary(
    column: Column, values: np.ndarray, string: Callable[[object], bytes]
) -> tuple[list[bytes], np.ndarray] | None:
    """The texts of a column's distinct values and each row's index among them, for a
    column of few distinct values (names, cluster numbers); None for any other."""
    if column.kind == "str":
        uniques, inverse = np.unique(np.asarray(values).astype(str), return_inverse=True)
        return [string(str(value)) for value in uniques.tolist()], inverse.ravel()
    if column.kind == "int":
        values = np.asarray(values, np.int64)
        low, high = int(values.min()), int(values.max())
        if high - low < _DICTIONARY_RANGE:
            return [b"%d" % value for value in range(low, high + 1)], values - low
    return None


def _text_rows_arrow(layout: _Layout, columns: Columns, values: Values, count: int) -> bytes:
    """Large bodies, put together by Arrow's kernels: each column's texts (a look-up of
    its distinct values' texts, which take in the constant bytes around them; orjson's
    texts of floats; Arrow's own integers) joined row by row."""
    pieces: list[bytes | pa.Array] = []
    follows = [*layout.starts[1:], layout.end]
    trimmed = False  # the previous float's text already holds this piece's first byte
    for column, column_values, start, after in zip(
        columns, values, layout.starts, follows, strict=True
    ):
        pieces.append(start[1:] if trimmed else start)
        trimmed = False
        found = _dictionary(column, column_values, layout.string)
        if found is not None:
            pieces.append(found)
        elif column.kind == "float32":
            pieces.append(_float32_cells(column_values, after))
            trimmed = True
        else:
            cells = pc.cast(pa.array(np.asarray(column_values, np.int64)), pa.large_string())
            pieces.append(cells.cast(pa.large_binary()))
    pieces.append(layout.end[1:] if trimmed else layout.end)
    joined: list[bytes | pa.Array] = []
    for index, piece in enumerate(pieces):
        if not isinstance(piece, tuple):
            joined.append(piece)
            continue
        texts, indices = piece
        before = joined.pop() if joined and isinstance(joined[-1], bytes) else b""
        after = pieces[index + 1] if isinstance(pieces[index + 1], bytes) else b""
        if after:
            pieces[index + 1] = b""  # taken in here
        looked_up = pa.array([before + text + after for text in texts], pa.large_binary())
        joined.append(pc.take(looked_up, pa.array(indices)))
    arguments = [
        pa.scalar(piece, pa.large_binary()) if isinstance(piece, bytes) else piece
        for piece in joined
        if not (isinstance(piece, bytes) and not piece)
    ]
    rows = pc.binary_join_element_wise(*arguments, pa.scalar(b"", pa.large_binary()))
    _, row_offsets, data = rows.buffers()
    first, last = np.frombuffer(row_offsets, np.int64)[[rows.offset, rows.offset + count]]
    return b"".join((layout.head, memoryview(data)[first : last - 1], layout.tail))


def encode_csv(columns: Columns, values: Values) -> bytes:
    return _text_rows(CSV, columns, values)


def encode_json(columns: Columns, values: Values) -> bytes:
    return _text_rows(JSON, columns, values)


def encode_jsonlines(columns: Columns, values: Values) -> bytes:
    return _text_rows(JSONLINES, columns, values)


def encode_recordio(columns: Columns, values: Values) -> bytes:
    return recordio.encode_labels(
        {column.name: value for column, value in zip(columns, values, strict=True)}
    )


ENCODERS: dict[str, Callable[[Columns, Values], bytes]] = {
    JSON: encode_json,
    JSONLINES: encode_jsonlines,
    CSV: encode_csv,
    RECORDIO: encode_recordio,
}
_ECHOED = (JSON, JSONLINES, CSV)  # request types answered in kind when Accept says nothing
_TEXT = (CSV, JSON, JSONLINES)


def joins(accept: str, columns: Columns) -> tuple[bytes, bytes, bytes]:
    """How the answers to consecutive blocks of one body make the answer to the whole:
    its head, the bytes between two blocks' rows, its tail. A block's rows are its
    ENCODERS[accept] answer without the head and tail."""
    if accept not in _TEXT:  # RecordIO: records one after another
        return b"", b"", b""
    layout = _layout(accept, columns)
    return layout.head, layout.end[-1:], layout.tail


def _one_float(value: object) -> bytes:
    if value >= _FLOAT32_INFINITY:  # type: ignore[operator]
        return b"null"
    return orjson.dumps(np.float32(value), option=_NUMPY)


def _same(value: object) -> object:
    return value


@functools.lru_cache(maxsize=64)
def _one_writer(accept: str, columns: Columns) -> Callable[[Sequence[object]], bytes]:
    """A function writing one record's answer in a text format: the layout's one-record
    %-format filled with each value's text, each column's writer chosen once."""
    layout = _layout(accept, columns)
    string = layout.string
    writers = tuple(
        _same if c.kind == "int" else _one_float if c.kind == "float32" else string for c in columns
    )
    form = layout.one_format
    if len(writers) == 2:  # most algorithms' answers: a label and a score
        first, second = writers
        return lambda row: form % (first(row[0]), second(row[1]))
    return lambda row: form % tuple([write(v) for write, v in zip(writers, row, strict=True)])


def encode_one(accept: str, columns: Columns, row: Sequence[object]) -> bytes:
    """One record's answer, byte for byte what ENCODERS[accept] writes for it, without
    building arrays for it."""
    if accept not in _TEXT:
        return ENCODERS[accept](columns, [np.array([value]) for value in row])
    return _one_writer(accept, columns)(row)


def _weight(ranges: list[MediaType], kind: str) -> tuple[float, int] | None:
    """The q-value of the most specific range in Accept naming `kind` (RFC 9110: the
    type itself, then `family/*`, then `*/*`), and that range's place in the header;
    None when no range names it."""
    family = kind.partition("/")[0]
    for pattern in (kind, family + "/*", "*/*"):
        for place, media in enumerate(ranges):
            if media.essence == pattern:
                return media.quality, place
    return None


@functools.lru_cache(maxsize=256)  # the same few header values arrive again and again
def choose(accept: str, request_type: str, default_accept: str = "") -> str:
    """The response media type: of the types Accept wants most (q above 0, weighed by the
    most specific range naming each), the one named earliest in the header; for none or
    a wildcard, the configured default, else the request's own type when we can write it,
    else JSON."""
    fallback = next(
        (
            kind
            for kind in (default_accept, request_type if request_type in _ECHOED else "")
            if kind in ENCODERS
        ),
        JSON,
    )
    if not accept.strip():
        return fallback
    ranges = [MediaType.parse(part) for part in accept.split(",") if part.strip()]
    best, best_rank = None, None
    for kind in ENCODERS:
        weight = _weight(ranges, kind)
        if weight is None or weight[0] <= 0:
            continue
        quality, place = weight
        rank = (quality, -place, kind == fallback)
        if best_rank is None or rank > best_rank:
            best, best_rank = kind, rank
    if best is None:
        raise NotAcceptable(
            f"cannot answer with Accept {accept!r}; this endpoint answers {', '.join(ENCODERS)}"
        )
    return best

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
import itertools
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


def _csv_string(text: str) -> bytes:
    """A CSV cell, quoted when it holds a comma, a quote or a line break (RFC 4180)."""
    if any(mark in text for mark in ',"\r\n'):
        return b'"' + text.replace('"', '""').encode() + b'"'
    return text.encode()


def _json_string(text: str) -> bytes:
    return orjson.dumps(text)


@dataclass(frozen=True)
class _Layout:
    """A text format for given columns: the body's head and tail, the bytes before each
    column's value, and a row's end, whose last byte separates rows (the last row's end
    loses it)."""

    head: bytes
    tail: bytes
    starts: tuple[bytes, ...]
    end: bytes
    string: Callable[[str], bytes]


@functools.lru_cache(maxsize=64)
def _layout(media: str, columns: Columns) -> _Layout:
    if media == CSV:
        starts = (b"",) + (b",",) * (len(columns) - 1)
        return _Layout(b"", b"", starts, b"\n", _csv_string)
    keys = [orjson.dumps(column.name) + b":" for column in columns]
    starts = (b"{" + keys[0], *(b"," + key for key in keys[1:]))
    if media == JSON:
        return _Layout(b'{"predictions":[', b"]}", starts, b"},", _json_string)
    return _Layout(b"", b"", starts, b"}\n", _json_string)


def _float32_text(values: np.ndarray) -> bytes:
    """`[v0,v1,...]`, each the shortest text of its float32, null beyond its range."""
    with np.errstate(over="ignore"):  # beyond float32: inf, written as null
        return orjson.dumps(np.asarray(values).astype(np.float32), option=_NUMPY)


def _cells(column: Column, values: np.ndarray, string: Callable[[str], bytes]) -> list[bytes]:
    """Each value's text, for a few rows."""
    if column.kind == "float32":
        return _float32_text(values)[1:-1].split(b",") if len(values) else []
    if column.kind == "int":
        return [b"%d" % value for value in values.tolist()]
    return [string(str(value)) for value in values.tolist()]


def _text_rows(media: str, columns: Columns, values: Values) -> bytes:
    """The body: `head`, each row as its columns' starts and values and `end`, `tail`."""
    layout = _layout(media, columns)
    count = len(values[0])
    if count >= _VECTOR_ROWS:
        return _text_rows_arrow(layout, columns, values, count)
    cells = [_cells(c, v, layout.string) for c, v in zip(columns, values, strict=True)]
    starts, end = layout.starts, layout.end
    if len(columns) == 1:
        rows = b"".join(starts[0] + cell + end for cell in cells[0])
    else:
        rows = b"".join(
            b"".join(itertools.chain.from_iterable(zip(starts, row, strict=True))) + end
            for row in zip(*cells, strict=True)
        )
    return b"".join((layout.head, rows[:-1], layout.tail))


def _arrow_cells(
    column: Column, values: np.ndarray, string: Callable[[str], bytes], follows: bytes
) -> pa.Array:
    """Each value's text as an Arrow binary array, with no Python object per row. A
    float32 value's text ends with the first byte of what `follows` it (see below)."""
    if column.kind == "float32":
        # orjson writes every value at once as `[v0,v1,...]`; each value's text runs to
        # the separator after it (`,` or the closing `]`), which becomes `follows`' byte.
        text = _float32_text(values)
        offsets = np.empty(len(values) + 1, np.int64)
        offsets[0], offsets[-1] = 1, len(text)
        offsets[1:-1] = np.flatnonzero(np.frombuffer(text, np.uint8) == ord(",")) + 1
        text = text.translate(bytes.maketrans(b",]", follows[:1] * 2))
        return pa.Array.from_buffers(
            pa.large_binary(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(text)]
        )
    if column.kind == "int":
        return pc.cast(pa.array(np.asarray(values, np.int64)), pa.large_string()).cast(
            pa.large_binary()
        )
    uniques, inverse = np.unique(np.asarray(values).astype(str), return_inverse=True)
    texts = pa.array([string(str(value)) for value in uniques.tolist()], pa.large_binary())
    return pc.take(texts, pa.array(inverse.ravel()))


def _text_rows_arrow(layout: _Layout, columns: Columns, values: Values, count: int) -> bytes:
    """Large bodies, put together by Arrow's kernels."""
    pieces: list[pa.Array | pa.Scalar] = []
    follows = [*layout.starts[1:], layout.end]
    trimmed = False  # the previous value's text already holds this piece's first byte
    for column, column_values, start, after in zip(
        columns, values, layout.starts, follows, strict=True
    ):
        pieces.append(pa.scalar(start[1:] if trimmed else start, pa.large_binary()))
        pieces.append(_arrow_cells(column, column_values, layout.string, after))
        trimmed = column.kind == "float32"
    pieces.append(pa.scalar(layout.end[1:] if trimmed else layout.end, pa.large_binary()))
    rows = pc.binary_join_element_wise(*pieces, pa.scalar(b"", pa.large_binary()))
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


def _one_cell(column: Column, value: object, string: Callable[[str], bytes]) -> bytes:
    if column.kind == "float32":
        if value >= _FLOAT32_INFINITY:  # type: ignore[operator]
            return b"null"
        return orjson.dumps(np.float32(value), option=_NUMPY)
    if column.kind == "int":
        return b"%d" % value
    return string(str(value))


def encode_one(accept: str, columns: Columns, row: Sequence[object]) -> bytes:
    """One record's answer, byte for byte what ENCODERS[accept] writes for it, without
    building arrays for it."""
    if accept not in _TEXT:
        return ENCODERS[accept](columns, [np.array([value]) for value in row])
    layout = _layout(accept, columns)
    parts = [layout.head]
    for column, start, value in zip(columns, layout.starts, row, strict=True):
        parts += (start, _one_cell(column, value, layout.string))
    parts += (layout.end[:-1], layout.tail)
    return b"".join(parts)


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

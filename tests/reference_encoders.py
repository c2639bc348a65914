"""The encoders as they were before answers became named columns (git 2b33153): their
encoding part, kept verbatim as the reference the K-Means answers must still equal byte
for byte (tests/test_answer_columns.py); content negotiation (choose), which did not
change, is left out. Not used by kmeans/.

Predictions -> response bodies. One function per media type, one table, and the
choice of media type from the Accept header.

Every format gives one output record per input record, in order. CSV and JSON Lines
bodies have no trailing newline: batch transform's AssembleWith=Line adds one after
each response, so N input lines come back as N output lines.

Distances go out as float32, as the built-in algorithm answers: the float64 distance
rounded to the nearest float32, written in text as the shortest number that reads back
as that float32 (`0.14135058`, not `0.14135058347833668`). A distance beyond float32's
range (3.4e38) is written as `null` in text formats.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc  # loaded before the workers fork: shared, and no first-use wait

from kmeans import recordio
from kmeans.content_types import CSV, JSON, JSONLINES, RECORDIO

_VECTOR_ROWS = 1000  # from about here Arrow's kernels beat a Python loop
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


@functools.lru_cache(maxsize=64)
def _prefixes(template: bytes, clusters: int) -> list[bytes]:
    return [template % cluster for cluster in range(clusters)]


def _text_rows(
    labels: np.ndarray,
    distances: np.ndarray,
    template: bytes,
    end: bytes,
    head: bytes = b"",
    tail: bytes = b"",
) -> bytes:
    """`head`, each row as `template % label`, the distance and `end`, then `tail`; the
    last row's `end` loses its final byte, the separator between rows.

    orjson writes every distance at once, shortest float32 form, as `[d0,d1,...]`; large
    bodies are then put together by Arrow's kernels, with no Python object per row."""
    with np.errstate(over="ignore"):  # beyond float32: inf, written as null
        text = orjson.dumps(distances.astype(np.float32), option=_NUMPY)
    if len(labels) < _VECTOR_ROWS:
        distance_texts = text[1:-1].split(b",")
        rows = b"".join(
            template % label + distance + end
            for label, distance in zip(labels.tolist(), distance_texts, strict=True)
        )
        return b"".join((head, rows[:-1], tail))
    # Each distance's text runs to the separator after it (`,` or the closing `]`),
    # which becomes end's first byte; the rest of `end` is joined on after it.
    offsets = np.empty(len(labels) + 1, np.int64)
    offsets[0], offsets[-1] = 1, len(text)
    offsets[1:-1] = np.flatnonzero(np.frombuffer(text, np.uint8) == ord(",")) + 1
    text = text.translate(bytes.maketrans(b",]", end[:1] * 2))
    closed = pa.Array.from_buffers(
        pa.large_binary(), len(labels), [None, pa.py_buffer(offsets), pa.py_buffer(text)]
    )
    prefixes = pa.array(_prefixes(template, int(labels.max()) + 1), pa.large_binary())
    starts = pc.take(prefixes, pa.array(labels))
    rest, nothing = pa.scalar(end[1:], pa.large_binary()), pa.scalar(b"", pa.large_binary())
    rows = pc.binary_join_element_wise(starts, closed, rest, nothing)
    _, row_offsets, data = rows.buffers()
    first, last = np.frombuffer(row_offsets, np.int64)[[rows.offset, rows.offset + len(rows)]]
    return b"".join((head, memoryview(data)[first : last - 1], tail))


_OBJECT = b'{"closest_cluster":%d,"distance_to_cluster":'
# Each text format as _text_rows takes it: a row's template, its end, the body's head and tail.
_TEXT = {
    CSV: (b"%d,", b"\n", b"", b""),
    JSON: (_OBJECT, b"},", b'{"predictions":[', b"]}"),
    JSONLINES: (_OBJECT, b"}\n", b"", b""),
}
_FLOAT32_INFINITY = 3.4028235677973366e38  # from here up, a float64 rounds to float32's inf


def encode_csv(labels: np.ndarray, distances: np.ndarray) -> bytes:
    return _text_rows(labels, distances, *_TEXT[CSV])


def encode_json(labels: np.ndarray, distances: np.ndarray) -> bytes:
    return _text_rows(labels, distances, *_TEXT[JSON])


def encode_jsonlines(labels: np.ndarray, distances: np.ndarray) -> bytes:
    return _text_rows(labels, distances, *_TEXT[JSONLINES])


def encode_recordio(labels: np.ndarray, distances: np.ndarray) -> bytes:
    return recordio.encode_labels({"closest_cluster": labels, "distance_to_cluster": distances})


ENCODERS: dict[str, Callable[[np.ndarray, np.ndarray], bytes]] = {
    JSON: encode_json,
    JSONLINES: encode_jsonlines,
    CSV: encode_csv,
    RECORDIO: encode_recordio,
}


def encode_one(accept: str, label: int, distance: float) -> bytes:
    """One record's answer, byte for byte what ENCODERS[accept] writes for it, without
    building arrays for it."""
    if accept not in _TEXT:
        return ENCODERS[accept](np.array([label]), np.array([distance]))
    template, end, head, tail = _TEXT[accept]
    if distance >= _FLOAT32_INFINITY:
        text = b"null"
    else:
        text = orjson.dumps(np.float32(distance), option=_NUMPY)
    return b"".join((head, template % label, text, end[:-1], tail))

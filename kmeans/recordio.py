"""SageMaker's `application/x-recordio-protobuf`, the built-in algorithms' binary format.

A body or file is a run of RecordIO frames (magic 0xCED7230A, a 32-bit length whose top
three bits flag multi-part records, the payload, padding to 4 bytes); each payload is a
protobuf `Record` whose `features` map holds, under "values", a Float32Tensor,
Float64Tensor or Int32Tensor (values = 1, keys = 2 for sparse, shape = 3). The schema is
small and fixed, so it is read here from the protobuf wire format directly rather than
through generated code; the tests check it against Google's protobuf library.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

MAGIC = 0xCED7230A
_HEADER = struct.Struct("<II")
_VALUE_FORMATS = {2: "<f", 3: "<d", 7: None}  # Value: float32, float64, int32 tensor
MAGIC_BYTES = struct.pack("<I", MAGIC)


class RecordIOError(ValueError):
    """Bytes that are not RecordIO-protobuf, with the record number."""


def frames(
    data: bytes | memoryview, complete: bool = True, first: int = 1
) -> tuple[list[bytes], int]:
    """The record payloads in `data`, and how many bytes they used. With complete=False a
    cut-off last record is left for the next read instead of being an error. `first` is
    the number of the first record, for messages."""
    view = memoryview(data)
    payloads, parts = [], []
    offset = record_start = 0
    while offset + 8 <= len(view):
        magic, header = _HEADER.unpack_from(view, offset)
        if magic != MAGIC:
            raise RecordIOError(f"record {first + len(payloads)}: no RecordIO magic")
        flag, length = header >> 29, header & ((1 << 29) - 1)
        end = offset + 8 + length
        if end > len(view):
            break
        parts.append(bytes(view[offset + 8 : end]))
        offset = end + (-length % 4)
        if flag in (0, 3):  # a whole record, or the last part of one
            payloads.append(b"".join(parts))
            parts, record_start = [], offset
    if complete and record_start != len(view):
        left = len(view) - record_start
        raise RecordIOError(f"record {first + len(payloads)}: cut off ({left} bytes left)")
    return payloads, record_start


def whole_records(data: bytes | memoryview) -> tuple[int, int]:
    """How many bytes of `data` are whole records, and how many records they are: where a
    body may be cut without reading the records. From a wrong magic on, all of `data` is
    given, for frames() to name the record."""
    view = memoryview(data)
    offset = record_end = records = 0
    while offset + 8 <= len(view):
        magic, header = _HEADER.unpack_from(view, offset)
        length = header & ((1 << 29) - 1)
        if magic != MAGIC:
            return len(view), records
        if offset + 8 + length > len(view):
            break
        offset += 8 + length + (-length % 4)
        if header >> 29 in (0, 3):
            record_end, records = offset, records + 1
    return record_end, records


def _varint(buffer: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if offset >= len(buffer):
            raise RecordIOError("protobuf varint runs past the end")
        byte = buffer[offset]
        value |= (byte & 0x7F) << shift
        offset += 1
        if byte < 0x80:
            return value, offset
        shift += 7


def _fields(buffer: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) for each field of a protobuf message."""
    offset = 0
    while offset < len(buffer):
        key, offset = _varint(buffer, offset)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, offset = _varint(buffer, offset)
        elif wire == 1:
            value, offset = buffer[offset : offset + 8], offset + 8
        elif wire == 2:
            size, offset = _varint(buffer, offset)
            value, offset = buffer[offset : offset + size], offset + size
        elif wire == 5:
            value, offset = buffer[offset : offset + 4], offset + 4
        else:
            raise RecordIOError(f"unsupported protobuf wire type {wire}")
        if offset > len(buffer):
            raise RecordIOError("protobuf field runs past the end")
        yield number, wire, value


def _varints(packed: bytes) -> list[int]:
    values, offset = [], 0
    while offset < len(packed):
        value, offset = _varint(packed, offset)
        values.append(value)
    return values


def _tensor(value_message: bytes) -> tuple[np.ndarray, list[int], list[int]]:
    """values, keys, shape of the tensor inside a `Value` message."""
    for number, _, tensor in _fields(value_message):
        if number not in _VALUE_FORMATS:
            continue
        fmt = _VALUE_FORMATS[number]
        chunks, keys, shape = [], [], []
        for field, wire, item in _fields(tensor):
            if field == 1 and fmt is None:  # int32 values: varints, negatives as 64-bit
                unsigned = np.array(_varints(item) if wire == 2 else [item], np.uint64)
                chunks.append(unsigned.astype(np.int64))
            elif field == 1:
                chunks.append(np.frombuffer(item, fmt))
            elif field in (2, 3):
                (keys if field == 2 else shape).extend(_varints(item) if wire == 2 else [item])
        values = np.concatenate(chunks) if chunks else np.empty(0)
        return values.astype(np.float64), keys, shape
    raise RecordIOError("the features hold no float32, float64 or int32 tensor")


def _map(payload: bytes, number: int) -> dict[str, bytes]:
    """A Record's map<string, Value> field `number`: each name and its Value message."""
    entries = {}
    for found, _, entry in _fields(payload):
        if found == number:
            name, value = "", b""
            for field, _, item in _fields(entry):
                name, value = (item.decode(), value) if field == 1 else (name, item)
            entries[name] = value
    return entries


def features(payload: bytes, width: int | None = None) -> np.ndarray:
    """The feature vector of one `Record` (dense; sparse ones are expanded)."""
    entries = _map(payload, 1)  # map<string, Value> features
    if not entries:
        raise RecordIOError("the record has no features")
    values, keys, shape = _tensor(entries.get("values", next(iter(entries.values()))))
    if not keys:
        return values
    size = width or (shape[0] if shape else max(keys) + 1)
    if len(keys) != len(values) or max(keys) >= size:
        raise RecordIOError(f"sparse keys do not fit a vector of {size} features")
    dense = np.zeros(size)
    dense[keys] = values
    return dense


def label(payload: bytes) -> float:
    """The label of one `Record`: the first value of its `label` map's "values" entry (what
    SageMaker's write_numpy_to_dense_tensor writes), or of its only entry."""
    entries = _map(payload, 2)  # map<string, Value> label
    if "values" not in entries and len(entries) != 1:
        found = f"its label map has {sorted(entries)}" if entries else "it has no label"
        raise RecordIOError(f"{found}; a label goes in the label map's 'values' entry")
    values, _, _ = _tensor(entries.get("values", next(iter(entries.values()), b"")))
    if len(values) != 1:
        raise RecordIOError(f"its label holds {len(values)} values, expected 1")
    return float(values[0])


def _of_record(number: int, read: Callable[..., Any], *args: Any) -> Any:
    """read(*args) on record `number`, its errors one line naming the record."""
    try:
        return read(*args)
    except RecordIOError as error:
        raise RecordIOError(f"record {number}: {error}") from None
    except (TypeError, ValueError, IndexError, OverflowError, AttributeError) as error:
        # a field of another type than the schema's (a number where a message belongs,
        # a tensor of odd length...): the bytes are damaged, not a format we skip
        raise RecordIOError(f"record {number}: malformed protobuf ({error})") from None


def labels(payloads: list[bytes], first: int = 1) -> np.ndarray:
    """Each record's label, as a (records, 1) float64 array; errors name the record."""
    found = [_of_record(number, label, payload) for number, payload in enumerate(payloads, first)]
    return np.array(found, np.float64).reshape(len(found), 1)


def rows(payloads: list[bytes], width: int | None = None, first: int = 1) -> np.ndarray:
    """Records -> a (records, features) array; errors name the record number."""
    vectors = []
    for number, payload in enumerate(payloads, first):
        vector = _of_record(number, features, payload, width)
        width = width or len(vector)
        if len(vector) != width:
            raise RecordIOError(f"record {number}: expected {width} features, got {len(vector)}")
        vectors.append(vector)
    return np.array(vectors, dtype=np.float64).reshape(len(vectors), width or 0)


def _message(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _label_value(value: object) -> bytes:
    """A Value message: a string as Bytes (field 9), any number as a Float32Tensor."""
    if isinstance(value, str):
        return _message(9, _message(1, value.encode()))
    return _message(2, _message(1, struct.pack("<f", float(value))))


def encode_labels(labels: dict[str, np.ndarray]) -> bytes:
    """One Record per row whose `label` map holds each named value: numbers as a
    Float32Tensor, the layout the built-in K-Means answers with (a value beyond
    float32's range is written as float32's infinity), strings as Bytes."""
    with np.errstate(over="ignore"):
        labels = {
            name: values.tolist() if values.dtype.kind in "OUS" else values.astype(np.float32)
            for name, values in ((name, np.asarray(values)) for name, values in labels.items())
        }
    count = len(next(iter(labels.values())))
    out = bytearray()
    for row in range(count):
        record = b"".join(
            _message(2, _message(1, name.encode()) + _message(2, _label_value(values[row])))
            for name, values in labels.items()
        )
        out += _HEADER.pack(MAGIC, len(record)) + record + b"\0" * (-len(record) % 4)
    return bytes(out)

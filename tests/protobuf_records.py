"""SageMaker's Record messages built with Google's protobuf library, from a descriptor
written out here field by field: an independent writer and reader to check
kmeans/recordio.py against."""

from __future__ import annotations

import struct

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="sage_kmeans_test_record.proto", package="aialgs.data", syntax="proto2"
    )
    for name, kind in (
        ("Float32Tensor", F.TYPE_FLOAT),
        ("Float64Tensor", F.TYPE_DOUBLE),
        ("Int32Tensor", F.TYPE_INT32),
    ):
        tensor = proto.message_type.add(name=name)
        for field, number, field_kind in (
            ("values", 1, kind),
            ("keys", 2, F.TYPE_UINT64),
            ("shape", 3, F.TYPE_UINT64),
        ):
            added = tensor.field.add(
                name=field, number=number, type=field_kind, label=F.LABEL_REPEATED
            )
            added.options.packed = True
    raw = proto.message_type.add(name="Bytes")
    raw.field.add(name="value", number=1, type=F.TYPE_BYTES, label=F.LABEL_REPEATED)
    raw.field.add(name="content_type", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value = proto.message_type.add(name="Value")
    value.oneof_decl.add(name="value")
    for field, number, kind in (
        ("float32_tensor", 2, "Float32Tensor"),
        ("float64_tensor", 3, "Float64Tensor"),
        ("int32_tensor", 7, "Int32Tensor"),
        ("bytes", 9, "Bytes"),
    ):
        value.field.add(
            name=field,
            number=number,
            type=F.TYPE_MESSAGE,
            label=F.LABEL_OPTIONAL,
            type_name=f".aialgs.data.{kind}",
            oneof_index=0,
        )
    record = proto.message_type.add(name="Record")
    for field, number, entry in (("features", 1, "FeaturesEntry"), ("label", 2, "LabelEntry")):
        nested = record.nested_type.add(name=entry)
        nested.options.map_entry = True
        nested.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
        nested.field.add(
            name="value",
            number=2,
            type=F.TYPE_MESSAGE,
            label=F.LABEL_OPTIONAL,
            type_name=".aialgs.data.Value",
        )
        record.field.add(
            name=field,
            number=number,
            type=F.TYPE_MESSAGE,
            label=F.LABEL_REPEATED,
            type_name=f".aialgs.data.Record.{entry}",
        )
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())
Record = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("aialgs.data.Record"))


def frame(payload: bytes, flag: int = 0) -> bytes:
    return (
        struct.pack("<II", 0xCED7230A, flag << 29 | len(payload))
        + payload
        + b"\0" * (-len(payload) % 4)
    )


def record(row, kind: str = "float32_tensor", sparse: bool = False) -> bytes:
    message = Record()
    tensor = getattr(message.features["values"], kind)
    row = np.asarray(row).astype(int if kind == "int32_tensor" else float)
    if sparse:
        keys = np.flatnonzero(row)
        tensor.keys.extend(keys.tolist())
        tensor.values.extend(row[keys].tolist())
        tensor.shape.append(len(row))
    else:
        tensor.values.extend(row.tolist())
    return message.SerializeToString()


def body(rows: np.ndarray, kind: str = "float32_tensor", sparse: bool = False) -> bytes:
    return b"".join(frame(record(row, kind, sparse)) for row in rows)


def label_values(data: bytes) -> list[dict[str, float | str]]:
    """The label maps of the records in a RecordIO body, each value a number (its
    Float32Tensor's) or a string (its Bytes')."""
    out, offset = [], 0
    while offset < len(data):
        magic, header = struct.unpack_from("<II", data, offset)
        assert magic == 0xCED7230A
        length = header & ((1 << 29) - 1)
        message = Record.FromString(data[offset + 8 : offset + 8 + length])
        out.append(
            {
                name: value.bytes.value[0].decode()
                if value.WhichOneof("value") == "bytes"
                else value.float32_tensor.values[0]
                for name, value in message.label.items()
            }
        )
        offset += 8 + length + (-length % 4)
    return out


def labels(data: bytes) -> list[dict[str, float | str]]:
    """The label maps of the records in a RecordIO body (numbers, as K-Means answers)."""
    return label_values(data)

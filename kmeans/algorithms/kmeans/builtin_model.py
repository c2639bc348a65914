"""`model_algo-1`, the model file of SageMaker's built-in K-Means, read and written with
numpy alone (no MXNet): MXNet's NDArray list file holding one float32 array of shape
(k, feature_dim), the centres. A built-in training job's model.tar.gz holds it (and a
`state_<uuid>` file, its training state, which serving does not need); `train` writes it
beside model.npz so the built-in image can host our models too.

The layout, little-endian, as MXNet's NDArray::Save writes it (src/ndarray/ndarray.cc;
the vector and string framing is dmlc-core's include/dmlc/serializer.h):

    uint64 0x112, uint64 0, uint64 array count
    per array: uint32 magic (V1 0xF993FAC8; V2 0xF993FAC9; V3 0xF993FACA, "np shape")
               int32 storage type (V2 and V3 only; 0 dense)
               int32 ndim, ndim x int64 dims (V3: -1 means unknown)
               int32 device type, int32 device id, int32 type flag (0 float32)
               the data, row-major
    uint64 name count (0, or one per array), per name: uint64 length, the bytes

Only what the built-in writes is read: one dense 2-D float32 array of finite values.
Anything else is one line naming the file and what is wrong; every size is checked
against the bytes there before anything is sliced, so a claimed shape allocates nothing.
Files older than MXNet's V1 (no magic; ndim and uint32 dims first) are refused.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from kmeans.algorithm import ModelError

FILE = "model_algo-1"
LIST_MAGIC = 0x112
V1, V2, V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
MAGICS = {V1: "V1", V2: "V2", V3: "V3"}
DENSE, FLOAT32, CPU = 0, 0, 1
STORAGE = {1: "row_sparse", 2: "csr", -1: "undefined"}
DEVICES = {1: "cpu", 2: "gpu", 3: "cpu_pinned", 5: "cpu_shared"}
# mshadow's TypeFlag (3rdparty/mshadow/mshadow/base.h)
TYPES = {
    1: "float64",
    2: "float16",
    3: "uint8",
    4: "int32",
    5: "int8",
    6: "int64",
    7: "bool",
    8: "int16",
    9: "uint16",
    10: "uint32",
    11: "uint64",
    12: "bfloat16",
}


def encode(centres: np.ndarray) -> bytes:
    """The file for `centres` (k, features) as float32: V2, dense, cpu 0, no names."""
    array = np.ascontiguousarray(centres, dtype="<f4")
    k, features = array.shape
    return b"".join(
        (
            struct.pack("<QQQ", LIST_MAGIC, 0, 1),
            struct.pack("<Iii", V2, DENSE, 2),
            struct.pack("<qq", k, features),
            struct.pack("<iii", CPU, 0, FLOAT32),
            array.tobytes(),
            struct.pack("<Q", 0),
        )
    )


def write(centres: np.ndarray, path: Path) -> None:
    path.write_bytes(encode(centres))


class _Reader:
    """The file's bytes, taken in order; running short names what was being read."""

    def __init__(self, data: bytes, refuse) -> None:
        self.data, self.at, self.refuse = data, 0, refuse

    def take(self, size: int, what: str) -> memoryview:
        if size > len(self.data) - self.at:
            raise self.refuse(
                f"it is truncated at {what}: {size} bytes needed from offset {self.at}, "
                f"{len(self.data) - self.at} left"
            )
        self.at += size
        return memoryview(self.data)[self.at - size : self.at]

    def unpack(self, layout: str, what: str) -> tuple[int, ...]:
        return struct.unpack(layout, self.take(struct.calcsize(layout), what))


def decode(data: bytes, path: Path) -> tuple[np.ndarray, list[str]]:
    """The float32 centres (k, features) and the array's name, if the file names it."""

    def refuse(why: str) -> ModelError:
        return ModelError(f"model file {path} cannot be served: {why}")

    reader = _Reader(data, refuse)
    header, reserved, count = reader.unpack("<QQQ", "the header")
    if header != LIST_MAGIC or reserved != 0:
        raise refuse(
            f"its header is 0x{header:x}, {reserved}; an MXNet NDArray file starts 0x112, 0"
        )
    if count != 1:
        raise refuse(f"it holds {count} arrays; the built-in's holds one, the centres")
    (magic,) = reader.unpack("<I", "the array's magic")
    if magic not in MAGICS:
        raise refuse(
            f"the array's magic is 0x{magic:08X}, not V1 0xF993FAC8, V2 0xF993FAC9 or "
            "V3 0xF993FACA (files of MXNet before V1 are not read)"
        )
    if magic != V1:
        (storage,) = reader.unpack("<i", "the storage type")
        if storage != DENSE:
            kind = STORAGE.get(storage, "unknown")
            raise refuse(f"its storage type is {storage} ({kind}); only 0, dense, is read")
    (ndim,) = reader.unpack("<i", "the number of dimensions")
    if ndim != 2:
        shape = "of unknown shape" if ndim == -1 else f"{ndim}-D"
        raise refuse(f"its array is {shape}; the centres are 2-D (k, feature_dim)")
    k, features = reader.unpack("<qq", "the shape")
    if k <= 0 or features <= 0:
        raise refuse(f"its shape is ({k}, {features}); both must be at least 1")
    device, _, type_flag = reader.unpack("<iii", "the device and type")
    if device not in DEVICES:
        raise refuse(f"its device type is {device}, not MXNet's (1 cpu, 2 gpu, 3, 5)")
    if type_flag != FLOAT32:
        kind = TYPES.get(type_flag, "unknown")
        raise refuse(f"its type flag is {type_flag} ({kind}); only 0, float32, is read")
    values = reader.take(k * features * 4, f"the ({k}, {features}) float32 values")
    centres = np.frombuffer(values, dtype="<f4").reshape(k, features)
    (names,) = reader.unpack("<Q", "the name count")
    if names not in (0, 1):
        raise refuse(f"it has {names} names for 1 array; MXNet writes 0 or one per array")
    named = []
    for _ in range(names):
        (length,) = reader.unpack("<Q", "the name's length")
        named.append(bytes(reader.take(length, "the name")).decode(errors="replace"))
    if reader.at != len(data):
        raise refuse(f"it has {len(data) - reader.at} bytes after its end, at offset {reader.at}")
    if not np.isfinite(centres).all():
        raise refuse("it holds NaN or infinite values")
    return centres, named


def read(path: Path) -> tuple[np.ndarray, list[str]]:
    """decode() of the file at `path`; a file that cannot be read is one line too."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelError(f"model file {path} cannot be read: {error.strerror}") from None
    return decode(data, path)

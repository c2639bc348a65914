"""Request bodies -> float64 feature rows. One function per media type, one table.

Each decoder takes the raw body, its parsed media type and the feature count the model
expects, and returns a (rows, features) array or raises DecodeError with a one-line
message saying what was wrong and where ("row 3, column 2: 'abc' is not a number").

Large bodies take a fast path (pyarrow's CSV reader, and a structural check that lets
JSON numbers reach the same reader); when the fast path refuses a body, the exact,
slower path runs and produces the message. Both give the same numbers. A body of one
plain CSV record, a real-time endpoint's usual request, is read by one_csv_record as a
list of floats, with no array at all; anything it is unsure of goes to decode().
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv

from kmeans import recordio
from kmeans.content_types import CSV, JSON, JSONLINES, NPY, RECORDIO, MediaType

_SMALL_BODY = 4096  # below this, Python's own parsing beats pyarrow's set-up cost
_PLAIN_CHARSETS = ("utf-8", "utf8", "us-ascii", "ascii")  # bytes read as they are
_RECORD_BYTES = b"0123456789.eE+-, \t"  # all a one-line record of numbers is made of


class DecodeError(ValueError):
    """A request body that cannot be read: HTTP 400."""


class UnsupportedMediaType(ValueError):
    """A Content-Type with no decoder: HTTP 415."""


def _width_error(expected: int, got: int, where: str) -> DecodeError:
    return DecodeError(f"expected {expected} features, got {got} in {where}")


def _number(cell: Any, where: str) -> float:
    if isinstance(cell, bool) or not isinstance(cell, int | float | str | bytes):
        raise DecodeError(f"{where}: {cell!r} is not a number")
    if isinstance(cell, int | float):
        return float(cell)
    text = cell.decode() if isinstance(cell, bytes) else cell
    if not text.strip():
        raise DecodeError(f"{where}: empty cell, expected a number")
    try:
        return float(text)
    except ValueError:
        raise DecodeError(f"{where}: {text!r} is not a number") from None


# --- text/csv ------------------------------------------------------------------------


def _csv_lines(body: bytes, media: MediaType, first: int) -> tuple[bytes, int]:
    """The body as UTF-8 without BOM or declared header, and its first data line number
    (the body's own first line is line `first`)."""
    charset = media.params.get("charset", "utf-8")
    if charset not in _PLAIN_CHARSETS:
        try:
            body = body.decode(charset).encode()
        except (LookupError, UnicodeDecodeError) as error:
            raise DecodeError(f"body cannot be decoded as {charset}: {error}") from None
    body = body.removeprefix(b"\xef\xbb\xbf")
    if media.params.get("header") == "present":
        _, _, body = body.partition(b"\n")
        return body, first + 1
    return body, first


def _label_size(media: MediaType) -> int:
    raw = media.params.get("label_size", "0")
    if not raw.isdigit():
        raise DecodeError(f"label_size must be an integer ≥ 0, got {raw!r}")
    return int(raw)


def _csv_exact(body: bytes, first_line: int, labels: int, features: int) -> np.ndarray:
    rows = []
    text = io.StringIO(body.decode("utf-8", "replace"), newline="")  # csv reads \r itself
    line = first_line
    try:
        for line, cells in enumerate(csv.reader(text), start=first_line):
            if not cells or cells == [""]:
                continue
            cells = cells[labels:]
            if len(cells) != features:
                raise _width_error(features, len(cells), f"row {line}")
            rows.append(
                [_number(c, f"row {line}, column {i + labels}") for i, c in enumerate(cells, 1)]
            )
    except csv.Error as error:  # a field over 128 KB, say
        raise DecodeError(f"row {line}: not valid CSV: {error}") from None
    return np.array(rows, dtype=np.float64).reshape(len(rows), features)


def _csv_floats(text: bytes, features: int, skip: int = 0, blank: int = 0) -> np.ndarray | None:
    """The float64 columns of unquoted CSV text, after `skip` columns of anything and then
    `blank` columns that must be empty; None if the CSV reader refuses any of it."""
    names = [f"c{i}" for i in range(skip + blank + features)]
    kinds = dict.fromkeys(names[skip : skip + blank], pa.null())
    kinds |= dict.fromkeys(names[skip + blank :], pa.float64())
    try:
        table = pacsv.read_csv(
            io.BytesIO(text),
            read_options=pacsv.ReadOptions(column_names=names, use_threads=False),
            parse_options=pacsv.ParseOptions(quote_char=False),
            convert_options=pacsv.ConvertOptions(
                column_types=kinds,
                include_columns=names[skip:],
                strings_can_be_null=False,
                null_values=[""] if blank else [],
            ),
        )
    except pa.ArrowInvalid:
        return None
    numbers = table.columns[blank:]
    if any(column.null_count for column in numbers):  # an empty cell
        return None
    rows = np.empty((table.num_rows, features), np.float64)
    for index, column in enumerate(numbers):
        rows[:, index] = column.to_numpy()
    return rows


def _csv_fast(body: bytes, labels: int, features: int) -> np.ndarray | None:
    first = body.lstrip(b"\r\n").split(b"\n", 1)[0]
    if first.count(b",") + 1 - labels != features:
        return None
    return _csv_floats(body, features, skip=labels)


def _csv_small(body: bytes, labels: int, features: int) -> np.ndarray | None:
    """Unquoted small bodies, split in Python and converted by numpy; None if unsure."""
    if b'"' in body:
        return None
    try:
        rows = np.array(
            [line.split(b",") for line in body.splitlines() if line.strip()], dtype=np.float64
        )
    except ValueError:
        return None
    if rows.ndim != 2 or rows.shape[1] != labels + features:
        return None
    return rows[:, labels:]


def one_csv_record(body: bytes, media: MediaType, features: int) -> list[float] | None:
    """A body of one plain CSV record (no header, labels or quotes) as `features` finite
    floats; None for anything else, which decode() then reads, or refuses with its
    message. One record is most requests at a real-time endpoint, and for it numpy's
    set-up costs more than the parsing. The cells are read as a JSON array: orjson's
    parser is the fastest here, rounds as float() does and refuses infinities; a cell
    JSON refuses and float() accepts (`+1`, `.5`, `nan`) sends the body to decode()."""
    if len(body) >= _SMALL_BODY or (media.params and not _plain(media.params)):
        return None
    record = body.strip()
    if record.translate(None, _RECORD_BYTES):  # another line, a quote, a word, a bracket
        return None
    try:
        row = list(map(float, orjson.loads(b"[" + record + b"]")))
    except orjson.JSONDecodeError:
        return None
    return row if len(row) == features else None


def _plain(params: dict[str, str]) -> bool:
    return params.keys() == {"charset"} and params["charset"] in _PLAIN_CHARSETS


def decode_csv(body: bytes, media: MediaType, features: int, first: int = 1) -> np.ndarray:
    body, first_line = _csv_lines(body, media, first)
    labels = _label_size(media)
    fast = _csv_fast if len(body) >= _SMALL_BODY else _csv_small
    rows = fast(body, labels, features)
    if rows is not None:
        return rows
    return _csv_exact(body, first_line, labels, features)


# --- application/json and application/jsonlines --------------------------------------
#
# Large dense bodies take a fast path. Their skeleton, the body without numbers and white
# space, must be rows that all look alike, `[,,,]` or `{"features":[,,,]}` with the
# model's feature count, inside `{"instances":[...]}` or `[...]`, or one such row alone;
# in JSON Lines, one row a line. Such a body is rewritten byte for byte as CSV for the
# CSV reader: numbers and commas stay, the byte that closes a row becomes a newline, the
# brackets and white space become spaces (which the reader trims from around a number
# but refuses inside one), and the keys, quotes and braces go.

_NUMBER_BYTES = b"0123456789.-+"
_SPACE = b" \t\r\n"
_INSTANCES, _FEATURES = b'"instances":', b'"features":'


@dataclass(frozen=True)
class _Dense:
    rows: int
    instances: bool  # the rows are in {"instances": [...]}
    keyed: bool  # each row is {"features": [...]}


def _dense(skeleton: bytes, features: int, lines: bool, keys: bytes = b"e") -> _Dense | None:
    """The shape of a dense body from its skeleton, in which the keys' letters in `keys`
    were deleted with the numbers (an e can be a number's)."""
    instances, features_key = (key.translate(None, keys) for key in (_INSTANCES, _FEATURES))
    slots = b"[" + b"," * (features - 1) + b"]"
    joiner = b"" if lines else b","
    wrappers = (
        [(b"", b"")] if lines else [(b"{" + instances + b"[", b"]}"), (b"[", b"]"), (b"", b"")]
    )
    for keyed in (False, True):
        row = b"{" + features_key + slots + b"}" if keyed else slots
        for head, tail in wrappers:
            count, rest = divmod(len(skeleton) - len(head + tail + row), len(joiner + row))
            if rest or count < 0 or (count and not (head or lines)):
                continue
            if skeleton == head + row + (joiner + row) * count + tail:
                return _Dense(count + 1, head.startswith(b"{"), keyed)
    return None


@functools.lru_cache(maxsize=8)
def _as_csv(row_end: bytes, exponents: bool, lines: bool) -> tuple[bytes, bytes]:
    """bytes.translate's table and bytes to delete that rewrite a dense body as CSV."""
    kept = _NUMBER_BYTES + b"," + (b"eE" if exponents else b"")
    spaced = b"[]" + (b" \t\r" if lines else _SPACE)
    table = bytearray(range(256))
    for byte in spaced:
        table[byte] = ord(" ")
    table[ord(row_end)] = ord("\n")
    deleted = bytes(byte for byte in range(256) if byte not in kept + spaced + row_end)
    return bytes(table), deleted


def _json_fast(body: bytes, features: int, lines: bool = False) -> np.ndarray | None:
    """The rows of a dense body, through the CSV reader; None if unsure."""
    skeleton = body.translate(None, _NUMBER_BYTES + _SPACE)
    dense = _dense(skeleton, features, lines, keys=b"")  # no e but the keys'
    exponents = dense is None
    if exponents:  # or e's elsewhere: numbers', or junk the CSV reader will refuse
        dense = _dense(skeleton.translate(None, b"eE"), features, lines)
        if dense is None:
            return None
        keys = body.count(_INSTANCES), body.count(_FEATURES)
        if keys != (dense.instances, dense.keyed * dense.rows):  # the keys, e's and all
            return None
        body = body.replace(_INSTANCES, b"").replace(_FEATURES, b"")
    row_end = b"\n" if lines else b"}" if dense.keyed else b"]"
    text = body.translate(*_as_csv(row_end, exponents, lines)).rstrip()
    # In JSON a comma separates two rows, so each CSV line but the first would start with
    # one: give the first one too, and the reader checks that the first column is empty.
    rows = _csv_floats(text, features) if lines else _csv_floats(b"," + text, features, blank=1)
    return rows if rows is not None and len(rows) == dense.rows else None


def _row(record: Any, features: int, where: str) -> list[float]:
    if isinstance(record, dict):
        if "features" in record:
            record = record["features"]
        elif isinstance(record.get("data"), dict) and isinstance(
            record["data"].get("features"), dict
        ):
            record = _sparse(record["data"]["features"], features, where)
        else:
            raise DecodeError(
                f"{where}: expected a list of numbers or an object with 'features', "
                f"got keys {sorted(record)}"
            )
    if not isinstance(record, list):
        raise DecodeError(f"{where}: expected a list of numbers, got {type(record).__name__}")
    if len(record) != features:
        raise _width_error(features, len(record), where)
    for i, value in enumerate(record, 1):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DecodeError(f"{where}, feature {i}: {value!r} is not a number")
    return record


def _sparse(tensor: dict, features: int, where: str) -> list[float]:
    """The built-in algorithm's {"values": [...], "keys": [...], "shape": [n]} form."""
    if "values" not in tensor:
        raise DecodeError(f"{where}: data.features has no 'values' (a list of numbers)")
    shape = tensor.get("shape")
    if shape is not None and shape != [features]:
        raise DecodeError(
            f"{where}: 'shape' must be [{features}] (the model's feature count), got {shape!r}"
        )
    values = tensor["values"]
    keys = tensor.get("keys")
    if keys is None:
        return values
    if not isinstance(values, list) or not isinstance(keys, list) or len(keys) != len(values):
        raise DecodeError(f"{where}: sparse features need 'keys' and 'values' of equal length")
    dense = [0.0] * features
    for key, value in zip(keys, values, strict=True):
        if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < features:
            raise DecodeError(f"{where}: sparse key {key!r} is outside 0..{features - 1}")
        dense[key] = value
    return dense


def _records(document: Any) -> tuple[list[Any], str]:
    if isinstance(document, dict) and "instances" in document:
        if not isinstance(document["instances"], list):
            raise DecodeError("'instances' must be a list of records")
        return document["instances"], "instance"
    if isinstance(document, dict):
        return [document], "instance"
    if isinstance(document, list) and document and not isinstance(document[0], list | dict):
        return [document], "instance"  # one bare record
    if isinstance(document, list):
        return document, "instance"
    raise DecodeError(
        'expected {"instances": [...]}, {"features": [...]} or a list of records, '
        f"got {type(document).__name__}"
    )


def decode_json(body: bytes, media: MediaType, features: int, first: int = 1) -> np.ndarray:
    if len(body) >= _SMALL_BODY:
        rows = _json_fast(body, features)
        if rows is not None:
            return rows
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise DecodeError(f"body is not valid JSON: {error}") from None
    records, noun = _records(document)
    rows = [_row(record, features, f"{noun} {i}") for i, record in enumerate(records, 1)]
    return np.array(rows, dtype=np.float64).reshape(len(rows), features)


def decode_jsonlines(body: bytes, media: MediaType, features: int, first: int = 1) -> np.ndarray:
    if len(body) >= _SMALL_BODY:
        rows = _json_fast(body, features, lines=True)
        if rows is not None:
            return rows
    rows = []
    for number, line in enumerate(body.split(b"\n"), first):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise DecodeError(f"line {number} is not valid JSON: {error}") from None
        rows.append(_row(record, features, f"line {number}"))
    return np.array(rows, dtype=np.float64).reshape(len(rows), features)


# --- application/x-npy ---------------------------------------------------------------


def decode_npy(body: bytes, media: MediaType, features: int, first: int = 1) -> np.ndarray:
    if body.startswith(b"PK"):  # np.load would open a zip as an .npz archive
        raise DecodeError("body is an .npz archive, expected one .npy array")
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DecodeError(f"body is not a .npy array: {error}") from None
    if array.dtype.kind not in "iuf":
        raise DecodeError(f"the .npy array holds {array.dtype}, expected numbers")
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise DecodeError(f"the .npy array has {array.ndim} dimensions, expected 1 or 2")
    if array.shape[1] != features:
        raise _width_error(features, array.shape[1], "every row")
    return array.astype(np.float64, copy=False)


# --- application/x-recordio-protobuf -------------------------------------------------


def decode_recordio(body: bytes, media: MediaType, features: int, first: int = 1) -> np.ndarray:
    try:
        payloads, _ = recordio.frames(body, first=first)
        return recordio.rows(payloads, features, first)
    except recordio.RecordIOError as error:
        raise DecodeError(f"body is not RecordIO-protobuf: {error}") from None


# Each takes the body, its media type, the model's feature count and the number its messages
# give the body's first line (CSV, JSON Lines) or record (RecordIO): 1 but for a block of a
# streamed body (kmeans/large_bodies.py).
DECODERS: dict[str, Callable[[bytes, MediaType, int, int], np.ndarray]] = {
    CSV: decode_csv,
    JSON: decode_json,
    JSONLINES: decode_jsonlines,
    NPY: decode_npy,
    RECORDIO: decode_recordio,
}


def decode(body: bytes, content_type: str | MediaType, features: int) -> np.ndarray:
    """Rows of features from a request body; raises DecodeError or UnsupportedMediaType."""
    media = content_type if isinstance(content_type, MediaType) else MediaType.parse(content_type)
    if not body.strip():
        _decoder(media)
        refuse_empty(blank=True)
    rows = decode_block(body, media, features)
    if len(rows) == 0:
        refuse_empty(blank=False)
    return rows


def _decoder(media: MediaType) -> Callable[[bytes, MediaType, int, int], np.ndarray]:
    decoder = DECODERS.get(media.essence)
    if decoder is None:
        raise UnsupportedMediaType(
            f"Content-Type {media.text!r} is not supported; use one of {', '.join(DECODERS)}"
        )
    return decoder


def refuse_empty(blank: bool) -> NoReturn:
    """The error for a body with no records: nothing but white space, or no record."""
    if blank:
        raise DecodeError("empty request body: send one or more records")
    raise DecodeError("the body holds no records")


def decode_block(
    body: bytes, media: MediaType, features: int, line: int = 1, row: int = 1
) -> np.ndarray:
    """decode() for a block of a body whose first line (or record) is number `line` and
    first record number `row`, for messages; a block may hold no records."""
    rows = _decoder(media)(body, media, features, line)
    finite = np.isfinite(rows)
    if not finite.all():
        bad, column = np.argwhere(~finite)[0]
        count = int((~finite).any(axis=1).sum())
        raise DecodeError(
            f"{count} rows hold NaN or infinite values; first at row {bad + row}, "
            f"column {column + 1}: {rows[bad, column]}"
        )
    return rows

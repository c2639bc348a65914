"""Request decoders in-process: the fast paths for large bodies give the same numbers as
the exact parsers, and hand every body they are unsure of to them for the message."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kmeans import decoders
from kmeans.content_types import MediaType

RNG = np.random.default_rng(7)
ROWS = RNG.normal(0, 1e3, (2000, 4)) * RNG.choice([1e-6, 1, 1e6], (2000, 4))  # exponents
PLAIN = np.round(RNG.normal(0, 1e3, (2000, 4)), 4)  # written without exponents


def _bodies(rows: np.ndarray) -> dict[str, tuple[str, bytes]]:
    listed = rows.tolist()
    return {
        "csv": ("text/csv", "\n".join(",".join(repr(v) for v in r) for r in listed).encode()),
        "csv-crlf": (
            "text/csv",
            "\r\n".join(",".join(repr(v) for v in r) for r in listed).encode(),
        ),
        "json": (
            "application/json",
            json.dumps({"instances": [{"features": r} for r in listed]}).encode(),
        ),
        "json-spaced": ("application/json", json.dumps({"instances": listed}, indent=2).encode()),
        "json-lists": ("application/json", json.dumps(listed).encode()),
        "json-keyed-list": (
            "application/json",
            json.dumps([{"features": r} for r in listed], indent="\t").encode(),
        ),
        "jsonlines": ("application/jsonlines", "\n".join(json.dumps(r) for r in listed).encode()),
        "jsonlines-crlf": (
            "application/jsonlines",
            "".join(json.dumps({"features": r}) + "\r\n" for r in listed).encode(),
        ),
    }


@pytest.mark.parametrize("rows", [ROWS, PLAIN], ids=["exponents", "plain"])
@pytest.mark.parametrize("name", list(_bodies(ROWS[:1])))
def test_fast_paths_equal_exact_parsing(name: str, rows: np.ndarray) -> None:
    content_type, body = _bodies(rows)[name]
    assert len(body) > 4096
    np.testing.assert_array_equal(decoders.decode(body, content_type, 4), rows)


@pytest.mark.parametrize("rows", [ROWS, PLAIN], ids=["exponents", "plain"])
def test_the_fast_paths_are_taken_for_large_bodies(rows: np.ndarray) -> None:
    bodies = _bodies(rows)
    for name in ("csv", "csv-crlf"):
        assert decoders._csv_fast(bodies[name][1], 0, 4) is not None, name
    for name in ("json", "json-spaced", "json-lists", "json-keyed-list"):
        assert decoders._json_fast(bodies[name][1], 4) is not None, name
    for name in ("jsonlines", "jsonlines-crlf"):
        assert decoders._json_fast(bodies[name][1], 4, lines=True) is not None, name


def large_json(last_row: str) -> bytes:
    return ("[" + ",".join(["[1,2,3,4]"] * 1000) + "," + last_row + "]").encode()


def large_keyed(last_row: str) -> bytes:
    rows = ",".join(['{"features":[1,2,3,4]}'] * 1000)
    return ('{"instances":[' + rows + "," + last_row + "]}").encode()


def large_lines(last_line: str) -> bytes:
    return ("[1,2,3,4]\n" * 1000 + last_line).encode()


@pytest.mark.parametrize(
    "content_type,body,message",
    [
        ("application/json", large_json("[1,2,3]"), "expected 4 features, got 3 in instance 1001"),
        ("application/json", large_json("[1,2,3,NaN]"), "body is not valid JSON"),
        ("application/json", large_json("[1,2,3,1e999]"), "1 rows hold NaN or infinite values"),
        ("application/json", large_json("[1,2,3,true]"), "instance 1001, feature 4: True is not"),
        ("application/json", large_json("[1,2,3,-]"), "body is not valid JSON"),
        ("application/json", large_json('[1,2,3,"4"]'), "instance 1001, feature 4: '4' is not"),
        ("application/json", large_json("[1 2,3,4]"), "body is not valid JSON"),
        ("application/json", large_json("[1,,3,4]"), "body is not valid JSON"),
        ("application/json", large_json("[1,2,3,4]5"), "body is not valid JSON"),
        ("application/json", large_json("[1,2,3,4e]"), "body is not valid JSON"),
        ("application/json", large_json("[1,2,3,e4]"), "body is not valid JSON"),
        ("application/json", large_keyed('{5"features":[1,2,3,4]}'), "body is not valid JSON"),
        ("application/json", large_keyed('{"features":[1,2,3,4]}}'), "body is not valid JSON"),
        (
            "application/json",
            large_keyed('{"features":[1e5,2,3,4]}').replace(b"instances", b"instancs"),
            "instance 1: expected a list of numbers or an object with 'features', "
            "got keys ['instancs']",
        ),
        (
            "application/json",
            large_keyed('{"faturs":[1,2,3,4]}'),
            "instance 1001: expected a list of numbers or an object with 'features', "
            "got keys ['faturs']",
        ),
        ("application/jsonlines", large_lines("[1,2,3]"), "expected 4 features, got 3 in line"),
        ("application/jsonlines", large_lines("[1,2,3,4]5"), "line 1001 is not valid JSON"),
        ("application/jsonlines", large_lines("[1,2,3,4],[5,6,7,8]"), "line 1001 is not valid"),
        ("text/csv", b"1,2,3,4\n" * 1000 + b"1,2,3\n", "expected 4 features, got 3 in row 1001"),
        ("text/csv", b"1,2,3,4\n" * 1000 + b"1,2,x,4\n", "row 1001, column 3: 'x' is not a number"),
        ("text/csv", b"1,2,3,4\n" * 1000 + b"1,2,,4\n", "row 1001, column 3: empty cell"),
    ],
)
def test_large_bad_bodies_get_the_exact_message(content_type, body, message) -> None:
    assert len(body) > 4096
    with pytest.raises(decoders.DecodeError) as raised:
        decoders.decode(body, content_type, 4)
    assert str(raised.value).startswith(message), raised.value


def test_quoted_csv_cells_are_read() -> None:
    body = b'"1.5","2",3,4\n' * 1000
    np.testing.assert_array_equal(decoders.decode(body, "text/csv", 4), [[1.5, 2, 3, 4]] * 1000)


@pytest.mark.parametrize("row", [ROWS[0], PLAIN[0], [0.0, -0.0, 1e-300, 1e300]])
@pytest.mark.parametrize("end", [b"", b"\n", b"\r\n", b" \n\n"])
@pytest.mark.parametrize("content_type", ["text/csv", "text/csv; charset=UTF-8"])
def test_one_csv_record_equals_decode(row, end: bytes, content_type: str) -> None:
    """The single-record path reads what decode() reads, to the last bit."""
    body = ",".join(repr(float(v)) for v in row).encode() + end
    one = decoders.one_csv_record(body, MediaType.parse(content_type), 4)
    assert one is not None
    np.testing.assert_array_equal([one], decoders.decode(body, content_type, 4))


def test_one_csv_record_reads_every_spelling_of_a_number_as_decode_does() -> None:
    rows = np.concatenate([ROWS, PLAIN, RNG.integers(-(10**17), 10**17, (500, 4))])
    for row in rows.tolist():
        for spelling in (repr, "{:.20g}".format, "{:g}".format, "{:.25E}".format):
            body = ",".join(spelling(v) for v in row).encode()
            one = decoders.one_csv_record(body, MediaType.parse("text/csv"), 4)
            np.testing.assert_array_equal([one], decoders.decode(body, "text/csv", 4), str(body))


@pytest.mark.parametrize(
    "content_type,body",
    [
        ("text/csv", b"1,2,3,4\n5,6,7,8"),  # two records
        ("text/csv", b"1,2,3"),  # too few
        ("text/csv", b"1,2,3,4,5"),  # too many
        ("text/csv", b"1,2,,4"),
        ("text/csv", b'1,"2",3,4'),
        ("text/csv", b"1,2,3,nan"),
        ("text/csv", b"1,2,3,1e999"),
        ("text/csv", b"1,2,3,x"),
        ("text/csv", b"1,2\n,3,4"),  # valid as a JSON array, but two CSV lines
        ("text/csv", b"1,2\r,3,4"),
        ("text/csv", b"1,2,3,true"),
        ("text/csv", b"1,2,3,null"),
        ("text/csv", b"1,2,[3],4"),
        ("text/csv", b"1,2,3,4,"),
        ("text/csv", b"+1,2,3,.5"),  # float() reads these, JSON does not: decode() does
        ("text/csv", b""),
        ("text/csv", b"\xef\xbb\xbf1,2,3,4"),  # a byte-order mark
        ("text/csv; header=present", b"a,b,c,d\n1,2,3,4"),
        ("text/csv; label_size=1", b"9,1,2,3,4"),
        ("text/csv; charset=utf-16", "1,2,3,4".encode("utf-16")),
        ("text/csv", b"1," * 2047 + b"1"),  # 4 KB and more: the bulk path's
    ],
)
def test_one_csv_record_leaves_every_other_body_to_decode(content_type: str, body: bytes) -> None:
    """Anything but one plain, finite record of the model's width goes to decode(), which
    reads it or refuses it with its own message."""
    assert decoders.one_csv_record(body, MediaType.parse(content_type), 4) is None

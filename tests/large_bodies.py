"""Large request bodies for tests/test_large_bodies.py: made piece by piece from a seeded
generator, sent as they are made, and their answers checked piece by piece as they are
read, so neither the body nor its answer is ever held whole in the test's memory; and the
peak memory of a gunicorn worker, read from /proc.

The oracle for a streamed answer is the answers to the same rows sent as small requests
(each piece of the body on its own, answered whole), put together the way an answer to
one body is laid out: the head of the first, the rows of each with a row separator
between pieces, the tail of the last.
"""

from __future__ import annotations

import http.client
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import protobuf_records
import requests

PIECE_ROWS = 100_000  # a piece is a small request: 2 MB of CSV, 3.5 MB of JSON Lines
FEATURES = 4
# Each format's row as a template: '#' marks the 4 bytes "d.dd" of each feature value.
TEMPLATES = {
    "text/csv": b"#,#,#,#\n",
    "application/jsonlines": b'{"features":[#,#,#,#]}\n',
}
# The bytes an answer starts and ends with, and the one between two rows (encoders.py's
# layouts as the README documents them).
HEADS = {
    "text/csv": (b"", b"\n", b""),
    "application/jsonlines": (b"", b"\n", b""),
    "application/json": (b'{"predictions":[', b",", b"]}"),
    "application/x-recordio-protobuf": (b"", b"", b""),
}


def piece_rows(seed: int, index: int, rows: int = PIECE_ROWS) -> np.ndarray:
    """Piece `index`'s values, as hundredths: 0.00 to 9.99."""
    return np.random.default_rng([seed, index]).integers(0, 1000, (rows, FEATURES))


def piece_bytes(content_type: str, hundredths: np.ndarray) -> bytes:
    if content_type == "application/x-recordio-protobuf":
        return protobuf_records.body(hundredths / 100)
    template = np.frombuffer(TEMPLATES[content_type].replace(b"#", b"#.##"), np.uint8)
    out = np.tile(template, (len(hundredths), 1))
    slots = np.flatnonzero(template == ord("#"))  # each value's three digits, in order
    digits = np.stack([hundredths // 100, hundredths // 10 % 10, hundredths % 10], axis=2)
    out[:, slots] = (digits + ord("0")).reshape(len(hundredths), -1)
    return out.tobytes()


@dataclass(frozen=True)
class Body:
    """A body of `pieces` pieces of `content_type` rows, made from `seed`."""

    content_type: str
    pieces: int
    seed: int = 7

    def piece(self, index: int) -> bytes:
        return piece_bytes(self.content_type, piece_rows(self.seed, index))

    def size(self) -> int:
        return len(self.piece(0)) * self.pieces  # every piece is as long (fixed-width text)

    def chunks(self, coding: str | None = None) -> Iterator[bytes]:
        compressor = None
        if coding == "gzip":
            compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        for index in range(self.pieces):
            piece = self.piece(index)
            yield compressor.compress(piece) if compressor else piece
        if compressor:
            yield compressor.flush()


def small_answer(url: str, content_type: str, accept: str, piece: bytes) -> bytes:
    response = requests.post(
        url + "/invocations",
        data=piece,
        headers={"Content-Type": content_type, "Accept": accept},
        timeout=900,  # while every worker streams a large body, this one waits its turn
    )
    assert response.status_code == 200, response.text[:300]
    assert "Content-Length" in response.headers  # answered whole: the small path
    return response.content


def expected_answer(url: str, body: Body, accept: str) -> Iterator[bytes]:
    """The answer to `body` as small requests of its pieces answer them, piece by piece."""
    head, between, tail = HEADS[accept]
    for index in range(body.pieces):
        answer = small_answer(url, body.content_type, accept, body.piece(index))
        assert answer.startswith(head) and answer.endswith(tail)
        rows = answer[len(head) : len(answer) - len(tail)]
        yield (head if index == 0 else between) + rows
    yield tail


def post_streamed(
    port: int, body: Body, accept: str, coding: str | None = None, timeout: float = 900
) -> http.client.HTTPResponse:
    """POST the body as it is made: with a Content-Length when uncompressed, chunked when
    gzip'd. Returns the response, its body unread."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Content-Type": body.content_type, "Accept": accept}
    if coding:
        headers["Content-Encoding"] = coding
    else:
        headers["Content-Length"] = str(body.size())
    connection.request(
        "POST",
        "/invocations",
        body=body.chunks(coding),
        headers=headers,
        encode_chunked=bool(coding),
    )
    return connection.getresponse()


def check_answer(response: http.client.HTTPResponse, expected: Iterator[bytes]) -> int:
    """Read the answer a piece at a time, comparing it with the expected pieces as they
    come; the number of bytes compared. Fails at the first byte that differs."""
    assert response.status == 200, response.read(500)
    compared = 0
    for part in expected:
        got = response.read(len(part))
        assert got == part, f"answer differs from byte {compared} on: {got[:80]!r} {part[:80]!r}"
        compared += len(part)
    assert response.read(1) == b"", "the answer runs past the small requests' answers"
    assert response.getheader("Content-Length") == str(compared)
    return compared


def reset_peak(pid: int) -> None:
    """Start the process's peak resident size (VmHWM) afresh (Linux, a process we own)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_mb(pid: int) -> float:
    """The process's peak resident size since its start or its last reset_peak, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def invocation_lines(log: str) -> list[dict]:
    """The invocation log lines' counts: records, bytes in, bytes out."""
    found = []
    for line in log.splitlines():
        if " INFO invocation: " in line:
            words = line.split("invocation: ", 1)[1].split()
            found.append({"records": int(words[0]), "bytes": int(words[2]), "out": int(words[6])})
    return found

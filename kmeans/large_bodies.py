"""Large request bodies in bounded memory: read, inflated, decoded, predicted and encoded a
block at a time as the body arrives, the answer spooled to a temporary file and sent from it.

A body of a format that can be cut at record boundaries (CSV, JSON Lines, RecordIO-protobuf)
is streamed when it is larger than STREAM_ABOVE, has no Content-Length (chunked) or is
compressed: wsgi.input is read BLOCK bytes at a time, gzip and deflate are inflated as the
bytes come (zlib.decompressobj, never past the payload limit), and the bytes are cut after
the last whole record of each block. Each block goes through the same decoder, predictor
and encoder as a whole body would; the encoders' joins() put the blocks' answers together
into the very bytes one answer to the whole body would be. JSON (one document), NPY and CSV
in a charset other than UTF-8 or ASCII are read whole, as before, bounded by the limit.

The answer goes out only once the whole body is read: nginx stops passing a request body on
as soon as its upstream starts answering (measured, with request buffering on and off), so
an answer sent while the body still arrives would leave the worker waiting for the rest of
it. Spooled, the answer keeps the worker's memory bounded, gets a Content-Length, and a bad
record anywhere in the body is answered with its 4xx, as in a small body.

A compressed or chunked body that turns out to be no larger than STREAM_ABOVE is handed back
whole, and answered as any small body is. No Flask here: kmeans/predictor.py wires this in.
"""

from __future__ import annotations

import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

from kmeans import decoders, encoders, recordio
from kmeans.algorithm import Predictor
from kmeans.content_types import CSV, JSONLINES, RECORDIO, MediaType

STREAM_ABOVE = 16 << 20  # larger bodies stream; real-time (6 MB) and the bench's stay whole
BLOCK = 4 << 20  # bytes read, and inflated, at a time; a block holds about this many
_PLAIN_CHARSETS = ("utf-8", "utf8", "us-ascii", "ascii")  # newline bytes are newlines

WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class RequestError(ValueError):
    """A request refused before its records are read, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def too_large(limit: int) -> RequestError:
    return RequestError(413, f"request body too large: the limit is {limit >> 20} MB")


def inflated(chunks: Iterable[bytes], coding: str, limit: int) -> Iterator[bytes]:
    """One Content-Encoding undone as the bytes come, at most BLOCK bytes out at a time,
    stopping as soon as the output passes `limit`. gzip may be several members one after
    another; "deflate" may come zlib-wrapped or, as some clients send it, raw."""
    wbits, size, peeked = WBITS[coding], 0, coding != "deflate"
    inflater, started = zlib.decompressobj(wbits), False  # started: this member has input
    for chunk in chunks:
        data = chunk
        if not peeked and data:
            wbits, peeked = (wbits if _zlib_header(data) else -zlib.MAX_WBITS), True
            inflater = zlib.decompressobj(wbits)
        while data:
            started = True
            try:
                part = inflater.decompress(data, BLOCK)
            except zlib.error as error:
                raise RequestError(400, f"body is not valid {coding} data: {error}") from None
            size += len(part)
            if size > limit:
                raise RequestError(
                    413,
                    f"request body too large: it inflates ({coding}) to more than the limit "
                    f"of {limit >> 20} MB (SAGEMAKER_MAX_PAYLOAD_IN_MB)",
                )
            if part:
                yield part
            if inflater.eof:  # the next member, if any bytes follow
                data, inflater, started = inflater.unused_data, zlib.decompressobj(wbits), False
            else:
                data = inflater.unconsumed_tail
    if started:
        raise RequestError(400, f"body is not valid {coding} data: it ends too soon")


def codings(header: str) -> list[str]:
    """The Content-Encodings to undo, in the order to undo them; 415 for one we cannot."""
    found = []
    for coding in reversed([c.strip().lower() for c in header.split(",")]):
        if coding in WBITS:
            found.append(coding)
        elif coding not in ("identity", ""):
            raise RequestError(
                415, f"Content-Encoding {coding!r} is not supported; use gzip, deflate or identity"
            )
    return found


def _zlib_header(data: bytes) -> bool:
    """True when `data` opens with a zlib header (RFC 1950): deflate, and a check sum."""
    return len(data) < 2 or (data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0)


def raw_chunks(stream, length: int | None, limit: int) -> Iterator[bytes]:
    """wsgi.input read BLOCK bytes at a time: Content-Length bytes, or to the end of a
    chunked body, refused once past `limit`."""
    read = 0
    while length is None or read < length:
        chunk = stream.read(BLOCK if length is None else min(BLOCK, length - read))
        if not chunk:
            return
        read += len(chunk)
        if read > limit:
            raise too_large(limit)
        yield chunk


def streams(media: MediaType) -> bool:
    """Whether bodies of this type can be cut at record boundaries."""
    if media.essence == CSV:
        return media.params.get("charset", "utf-8") in _PLAIN_CHARSETS
    return media.essence in (JSONLINES, RECORDIO)


@dataclass
class Body:
    """A request body opened for streaming: `whole` when it ended within STREAM_ABOVE
    bytes, else the bytes read so far (`ahead`) and an iterator over the rest. `size`
    counts the (inflated) bytes read, for the log line."""

    whole: bytes | None
    ahead: list[bytes] = field(default_factory=list)
    rest: Iterator[bytes] = field(default_factory=lambda: iter(()))
    size: int = 0

    def chunks(self) -> Iterator[bytes]:
        yield from self.ahead
        self.ahead = []
        for chunk in self.rest:
            self.size += len(chunk)
            yield chunk


def open_body(environ: dict, media: MediaType, limit: int) -> Body | None:
    """The body opened for streaming; None when it goes whole by today's path (a type
    that does not stream, or an uncompressed body with a Content-Length of at most
    STREAM_ABOVE)."""
    coding_header = environ.get("HTTP_CONTENT_ENCODING")
    try:
        length: int | None = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        length = -1
    length = None if length < 0 else length
    if not streams(media) or (
        coding_header is None and length is not None and length <= STREAM_ABOVE
    ):
        return None
    if length is not None and length > limit:
        raise too_large(limit)
    chunks = raw_chunks(environ["wsgi.input"], length, limit)
    for coding in codings(coding_header or ""):
        chunks = inflated(chunks, coding, limit)
    ahead, size = [], 0
    for chunk in chunks:
        ahead.append(chunk)
        size += len(chunk)
        if size > STREAM_ABOVE:
            return Body(None, ahead, chunks, size)
    return Body(b"".join(ahead), size=size)


# --- cutting at record boundaries -----------------------------------------------------
#
# A cutter takes the bytes read so far and says how many of them are whole records, and
# how many lines (records, for RecordIO) those bytes hold: decoders number their messages
# by line, so each block's first line number is passed on.

Cutter = Callable[[bytes], tuple[int, int]]


def _cut_lines(buffer: bytes) -> tuple[int, int]:
    end = buffer.rfind(b"\n") + 1
    return end, buffer.count(b"\n", 0, end)


def _cut_csv(buffer: bytes) -> tuple[int, int]:
    """After the last newline outside double quotes: a quoted cell may hold a newline
    (RFC 4180, as the CSV decoder reads it). The lines counted are CSV records. A buffer
    of over 2 blocks with no such newline is cut at its last newline: no valid quoted
    cell is that long (the CSV reader refuses cells over 128 KB)."""
    end, lines = _cut_lines(buffer)
    if b'"' not in buffer[:end] or len(buffer) > 2 * BLOCK:
        return end, lines
    cut = records = offset = 0
    quoted = False
    for line in buffer[:end].split(b"\n")[:-1]:
        offset += len(line) + 1
        quoted ^= line.count(b'"') % 2 == 1
        if not quoted:
            cut, records = offset, records + 1
    return cut, records


def _cut_recordio(buffer: bytes) -> tuple[int, int]:
    return recordio.whole_records(buffer)


_CUTTERS: dict[str, Cutter] = {CSV: _cut_csv, JSONLINES: _cut_lines, RECORDIO: _cut_recordio}


def blocks(chunks: Iterable[bytes], media: MediaType) -> Iterator[tuple[bytes, int]]:
    """Each block of whole records, about BLOCK bytes, with the number of its first line."""
    cut, buffer, line = _CUTTERS[media.essence], b"", 1
    for chunk in chunks:
        buffer = buffer + chunk if buffer else chunk
        if len(buffer) < BLOCK:
            continue
        end, lines = cut(buffer)
        if end:
            yield buffer[:end], line
            buffer, line = buffer[end:], line + lines
        elif len(buffer) > 2 * BLOCK and media.essence != RECORDIO:
            raise decoders.DecodeError(
                f"line {line} runs past {2 * BLOCK >> 20} MB without a line end: a record "
                "of a streamed body must be shorter"
            )
    if buffer:
        yield buffer, line


@dataclass
class Counts:
    """What a streamed invocation has done so far, for its log line."""

    records: int = 0
    answer_bytes: int = 0


def spooled_answer(
    body: Body, media: MediaType, predictor: Predictor, accept: str, counts: Counts
) -> tempfile.SpooledTemporaryFile:
    """The whole answer to a streamed body, in a temporary file (in memory up to BLOCK
    bytes), read from its start; the caller closes it."""
    spool = tempfile.SpooledTemporaryFile(max_size=BLOCK)  # noqa: SIM115 (the response closes it)
    try:
        for part in answers(body, media, predictor, accept, counts):
            spool.write(part)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


def answers(
    body: Body, media: MediaType, predictor: Predictor, accept: str, counts: Counts
) -> Iterator[bytes]:
    """The answer to a streamed body, a block's answer at a time, the joins between them
    as encoders.joins() says. Raises what decoders.decode raises, naming the line."""
    head, between, tail = encoders.joins(accept, predictor.columns)
    encode, columns = encoders.ENCODERS[accept], predictor.columns
    later = replace(media, params={k: v for k, v in media.params.items() if k != "header"})
    blank = True
    for block, line in blocks(body.chunks(), media):
        if not block.strip():
            continue
        blank = False
        rows = decoders.decode_block(
            block, media if line == 1 else later, predictor.feature_dim, line, counts.records + 1
        )
        if not len(rows):
            continue
        answer = encode(columns, predictor(rows))
        answer = (between if counts.records else head) + answer[len(head) : len(answer) - len(tail)]
        counts.records += len(rows)
        counts.answer_bytes += len(answer)
        yield answer
    if not counts.records:
        decoders.refuse_empty(blank)
    counts.answer_bytes += len(tail)
    yield tail

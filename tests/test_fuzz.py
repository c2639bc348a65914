"""Fuzzing: property-based (hypothesis) on every decoder, on Content-Type and Accept
parsing, on the Content-Encoding inflater and on the whole Flask app; then HTTP-level
(schemathesis) on the running server, against openapi.yaml. Whatever comes in, the
answer is a result or a 4xx with one line of JSON: never a traceback, never a 5xx.

The decoder, Accept and inflater properties also check each answer against an oracle
(tests/oracles.py: reference readers of each format, RFC 9110's Accept rules, zlib's own
inflating), and a mutation test beside each shows the check failing on a broken version.

`make test` runs a fixed, small sample of each (derandomized: the same every run);
`make reliability` runs SAGE_KMEANS_FUZZ_EXAMPLES random examples each and reports them.
"""

from __future__ import annotations

import collections
import gzip
import io
import json
import logging
import os
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path
from unittest import mock
from urllib.parse import quote

import numpy as np
import oracles
import protobuf_records
import pytest
import requests
import schemathesis
from conftest import ROOT, Server, make_job, run_train
from figures import record
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from kmeans import decoders, encoders, large_bodies, model_folder, predictor
from kmeans.content_types import ALIASES, RECORDIO, MediaType, parse_accept
from kmeans.environment import Environment

EXAMPLES = int(os.environ.get("SAGE_KMEANS_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 150,
    derandomize=not EXAMPLES,
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
OUTCOMES: collections.Counter = collections.Counter()  # (target, outcome) -> examples


@pytest.fixture(scope="module", autouse=True)
def report_outcomes():
    yield
    for (target, outcome), count in sorted(OUTCOMES.items()):
        record("fuzz", target=target, outcome=outcome, examples=count)


# --- strategies ------------------------------------------------------------------------

MEDIA_TYPES = [*decoders.DECODERS, *ALIASES, "application/xml", "text/plain", "", "*/*"]
PARAMETERS = st.sampled_from(
    [
        "",
        "; charset=utf-8",
        "; charset=latin-1",
        "; charset=utf-16",
        "; charset=nope",
        "; header=present",
        "; label_size=1",
        "; label_size=x",
        "; label_size=99",
        ";;=;",
        '; a="b',
    ],
)
HEADER_TEXT = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=60)
CONTENT_TYPES = st.one_of(
    st.builds(lambda t, p: t + p, st.sampled_from(MEDIA_TYPES), PARAMETERS), HEADER_TEXT
)
FINITE = st.floats(-1e12, 1e12, allow_nan=False) | st.integers(-(10**6), 10**6)
NUMBERS = st.one_of(FINITE, st.floats(), st.integers(-(10**30), 10**30), st.booleans())
CELLS = st.one_of(  # mostly numbers, written in several ways; some junk
    FINITE.map(str),
    FINITE.map(lambda v: f" {v:.4g} "),
    FINITE.map(lambda v: f'"{v}"'),
    st.sampled_from(["", "abc", "1e400", "nan", "inf", "0x10", "1_0", "-", "\x00", "\r"]),
)
JSON_VALUES = st.recursive(
    st.none() | NUMBERS | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(
            st.sampled_from(["features", "instances", "data", "values", "keys", "shape", "x"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=60,
)
WIDTHS = st.integers(1, 6)
MANY = 300  # rows: enough to pass 4 KB, where the fast paths start


@st.composite
def csv_bodies(draw, width: int) -> bytes:
    cell = draw(st.sampled_from([FINITE.map(str), CELLS]))  # clean numbers, or some junk
    cells = st.lists(cell, min_size=width, max_size=width) | st.lists(cell, max_size=width + 1)
    rows = draw(st.lists(cells, max_size=MANY))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r", "\n\n"]))
    return newline.join(",".join(row) for row in rows).encode()


@st.composite
def json_bodies(draw, width: int) -> bytes:
    numbers = draw(st.sampled_from([FINITE, NUMBERS]))  # finite only, or anything numeric
    row = st.lists(numbers, min_size=width, max_size=width)
    rows = draw(st.lists(row, max_size=MANY))
    shape = draw(st.sampled_from(["instances-features", "instances", "list", "lines", "any"]))
    if shape == "any":
        return json.dumps(draw(JSON_VALUES)).encode()
    if shape == "lines":
        return "\n".join(json.dumps(r) for r in rows).encode()
    records = [{"features": r} for r in rows] if shape == "instances-features" else rows
    text = json.dumps({"instances": records} if shape.startswith("instances") else records)
    if draw(st.booleans()) and text:  # one byte changed: the fast path's structural check
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] + draw(st.sampled_from(list('[]{},:" 1.e-xI'))) + text[at + 1 :]
    return text.encode()


@st.composite
def npy_bodies(draw, width: int) -> bytes:
    shape = st.sampled_from([(width,), (1, width), (7, width)]) | hnp.array_shapes(
        min_dims=0, max_dims=3, max_side=6
    )
    objects = st.one_of(st.none(), st.integers(), st.text(max_size=3))
    array = draw(
        st.one_of(
            hnp.arrays(st.sampled_from([np.float64, np.float32, np.int64, np.uint8]), shape),
            hnp.arrays(hnp.scalar_dtypes(), shape),
            hnp.arrays(np.dtype(object), shape, elements=objects),
        )
    )
    buffer = io.BytesIO()
    if draw(st.integers(0, 5)):
        np.save(buffer, array, allow_pickle=True)  # object arrays pickled: to be refused
    else:
        np.savez(buffer, array, allow_pickle=True)  # an .npz archive (a zip) instead
    data = buffer.getvalue()
    return data if draw(st.booleans()) else data[: draw(st.integers(0, len(data)))]


@st.composite
def recordio_bodies(draw, width: int) -> bytes:
    values = st.lists(st.floats(-1e6, 1e6), min_size=width, max_size=width)
    rows = np.array(draw(st.lists(values, min_size=1, max_size=20)))
    data = bytearray(protobuf_records.body(rows))
    for _ in range(draw(st.integers(0, 3))):  # flip bytes anywhere: lengths, tags, values
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


FORMATS = {  # a body generator and the media types that name it
    "csv": (csv_bodies, ["text/csv", "TEXT/CSV", "application/csv"]),
    "json": (json_bodies, ["application/json", "application/jsonlines", "application/x-ndjson"]),
    "npy": (npy_bodies, ["application/x-npy"]),
    "recordio": (recordio_bodies, ["application/x-recordio-protobuf"]),
}


@st.composite
def requests_of(draw, width: int | None = None) -> tuple[str, bytes, int]:
    """(Content-Type, body, features the model expects): mostly a body of the type its
    header names and of the model's width, sometimes anything at all."""
    features = width or draw(WIDTHS)
    if draw(st.integers(0, 4)) == 0:
        return draw(CONTENT_TYPES), draw(st.binary(max_size=5000)), features
    bodies, types = FORMATS[draw(st.sampled_from(sorted(FORMATS)))]
    body = draw(bodies(features if draw(st.integers(0, 3)) else draw(WIDTHS)))
    content_type = (
        draw(st.sampled_from(types)) + draw(PARAMETERS)
        if draw(st.integers(0, 5))
        else draw(CONTENT_TYPES)
    )
    return content_type, body, features


@st.composite
def readable_requests(draw) -> tuple[str, bytes, int]:
    """(Content-Type, body, features) of a body that holds rows, in the ways clients write
    them: numbers in several spellings, headers, labels, the JSON shapes, .npy dtypes."""
    features = draw(WIDTHS)
    number = st.sampled_from([str, repr, lambda v: f" {v:.4g} ", lambda v: f'"{v}"'])
    rows = draw(
        st.lists(st.lists(FINITE, min_size=features, max_size=features), min_size=1, max_size=MANY)
    )
    kind = draw(st.sampled_from(["csv", "json", "jsonlines", "npy"]))
    if kind == "csv":
        spell = draw(number)
        parameters = draw(st.sampled_from(["", "; header=present", "; label_size=1"]))
        lines = [",".join(spell(v) for v in row) for row in rows]
        if "label" in parameters:
            lines = [f"{index % 3},{line}" for index, line in enumerate(lines)]
        if "header" in parameters:
            lines.insert(0, ",".join(f"f{i}" for i in range(features)))
        newline = draw(st.sampled_from(["\n", "\r\n"]))
        body = (newline.join(lines) + draw(st.sampled_from(["", newline]))).encode()
        return draw(st.sampled_from(FORMATS["csv"][1])) + parameters, body, features
    if kind == "npy":
        dtype = draw(st.sampled_from([np.float64, np.float32]))
        buffer = io.BytesIO()
        array = np.array(rows, dtype)
        np.save(buffer, array[0] if len(rows) == 1 and draw(st.booleans()) else array)
        return "application/x-npy", buffer.getvalue(), features
    shape = draw(st.sampled_from(["instances-features", "instances", "list", "sparse"]))
    if shape == "sparse":
        records = [
            {
                "data": {
                    "features": {"keys": list(range(features)), "values": r, "shape": [features]}
                }
            }
            for r in rows
        ]
    else:
        records = [{"features": r} for r in rows] if shape == "instances-features" else rows
    if kind == "jsonlines":
        body = "\n".join(json.dumps(record) for record in records)
        return draw(st.sampled_from(FORMATS["json"][1][1:])), body.encode(), features
    document = {"instances": records} if shape != "list" else records
    return "application/json", json.dumps(document).encode(), features


# --- properties --------------------------------------------------------------------------


Decode = Callable[[bytes, str, int], np.ndarray]


def check_decoded(decode: Decode, content_type: str, body: bytes, features: int) -> str:
    """`decode`'s answer against the reference parser's (tests/oracles.py) for the formats
    it covers: the same float64 rows, or a refusal of a body it refuses too; for any type,
    finite rows of the model's width or a one-line refusal. Returns the outcome."""
    try:
        rows = decode(body, content_type, features)
    except (decoders.DecodeError, decoders.UnsupportedMediaType) as error:
        assert str(error) and "\n" not in str(error).strip()
        refusal: Exception | None = error
    else:
        refusal = None
        assert isinstance(rows, np.ndarray) and rows.dtype == np.float64
        assert rows.ndim == 2 and rows.shape[0] >= 1 and rows.shape[1] == features
        assert np.isfinite(rows).all()
    outcome = type(refusal).__name__ if refusal else "rows"
    try:
        expected = oracles.reference_rows(body, content_type, features)
    except oracles.Refused as why:
        assert refusal is not None, f"decoded {rows.tolist()} where the reference refuses: {why}"
        assert not isinstance(refusal, decoders.UnsupportedMediaType), refusal
        return outcome
    if expected is None:  # a type the reference does not read (RecordIO, unknown types)
        return outcome + " (no reference)"
    assert refusal is None, f"refused ({refusal}) where the reference reads {expected.tolist()}"
    np.testing.assert_array_equal(rows, expected)
    return outcome


DECODE_REQUESTS = st.one_of(requests_of(), readable_requests())


@FUZZ
@given(request=DECODE_REQUESTS)
def test_decoders_give_the_reference_rows_or_one_line_refusals(
    request: tuple[str, bytes, int],
) -> None:
    content_type, body, features = request
    OUTCOMES["decoders", check_decoded(decoders.decode, content_type, body, features)] += 1
    media = MediaType.parse(content_type)
    if media.essence == "text/csv":  # the one-record path the server tries first
        record = decoders.one_csv_record(body, media, features)
        if record is not None:
            expected = oracles.reference_rows(body, content_type, features)
            assert expected is not None and expected.tolist() == [record], (record, expected)
            OUTCOMES["decoders", "one CSV record"] += 1


def test_the_decoder_check_catches_rows_of_zeros() -> None:
    def zeros(body: bytes, content_type: str, features: int) -> np.ndarray:
        return np.zeros_like(decoders.decode(body, content_type, features))

    assert_caught(lambda request: check_decoded(zeros, *request), DECODE_REQUESTS)


MUTANT_HUNT = settings(FUZZ, phases=[Phase.generate], report_multiple_bugs=False)


def assert_caught(check: Callable, strategy: st.SearchStrategy) -> None:
    """`check`, run on the property's examples with a broken version of the code under
    test, reports a failure (an AssertionError) within the property's sample."""
    caught: list[AssertionError] = []

    @MUTANT_HUNT
    @given(example=strategy)
    def hunt(example) -> None:
        try:
            check(example)
        except AssertionError as error:
            caught.append(error)
            raise

    with pytest.raises(AssertionError):
        hunt()
    assert caught, "the broken version passed every example"


ACCEPTS = st.one_of(
    HEADER_TEXT,
    st.lists(
        st.builds(
            lambda kind, q: kind + q,
            st.sampled_from(
                [*encoders.ENCODERS, "*/*", "text/*", "application/*", "image/png", "x"]
            ),
            st.sampled_from(["", ";q=0", ";q=0.5", ";q=1", ";q=x", ";level=1", ";q=-1"]),
        ),
        max_size=5,
    ).map(", ".join),
)


@FUZZ
@given(header=HEADER_TEXT)
def test_media_types_parse_any_text(header: str) -> None:
    media = MediaType.parse(header)
    assert media.essence == media.essence.strip().lower()
    accepted = parse_accept(header)
    assert all(a.quality > 0 for a in accepted)
    assert [a.quality for a in accepted] == sorted((a.quality for a in accepted), reverse=True)
    OUTCOMES["media types", "parsed"] += 1


# Well-formed Accept headers (RFC 9110's grammar), so that most examples get a verdict.
RANGES = st.sampled_from(
    [*encoders.ENCODERS, "*/*", "text/*", "application/*", "image/png", "text/html"]
)
WEIGHTS = st.sampled_from(["", ";q=0", ";q=0.0", ";q=0.5", ";q=0.25", ";q=1", ";q=1.0", ";q=0.001"])
WELL_FORMED_ACCEPTS = st.lists(
    st.tuples(RANGES, WEIGHTS, st.sampled_from(["", " "])),
    min_size=1,
    max_size=5,
    unique_by=lambda element: element[0],  # each range once: the RFC then decides every case
).map(lambda elements: ", ".join(kind + space + q for kind, q, space in elements))
ACCEPT_REQUESTS = st.tuples(
    st.one_of(ACCEPTS, WELL_FORMED_ACCEPTS, WELL_FORMED_ACCEPTS),  # 2 in 3: a verdict
    st.sampled_from([*MEDIA_TYPES, "x/y"]),
    st.sampled_from(["", *encoders.ENCODERS, "text/html"]),
)
Choose = Callable[[str, str, str], str]


def check_choice(choose: Choose, accept: str, request_type: str, default: str) -> str:
    """`choose`'s answer type against RFC 9110's reading of Accept (tests/oracles.py): the
    weight of a type is that of the most specific range naming it, q=0 refuses it. The
    answer must be one of the most wanted types with a weight above 0, and a refusal
    (406) must mean that Accept wants none. Headers outside the RFC's grammar get no
    verdict beyond "an encoder or a refusal". Returns the outcome."""
    try:
        chosen = choose(accept, request_type, default)
    except encoders.NotAcceptable:
        chosen = None
    assert chosen is None or chosen in encoders.ENCODERS, chosen
    outcome = "NotAcceptable" if chosen is None else "chosen"
    ranges = oracles.parse_accept_strictly(accept)
    if not ranges:  # outside the grammar, or no range at all
        return outcome + " (no verdict)"
    weights = {kind: oracles.acceptability(ranges, kind) for kind in encoders.ENCODERS}
    if None in weights.values():
        return outcome + " (no verdict: a type weighed twice)"
    best = max(weights.values())
    if chosen is None:
        assert best == 0, f"Accept {accept!r} refused, but it weighs {weights}"
    else:
        assert weights[chosen] > 0, f"{chosen} for Accept {accept!r}, which refuses it"
        assert weights[chosen] == best, f"{chosen} for Accept {accept!r}, which weighs {weights}"
    return outcome


@pytest.mark.parametrize(
    "accept, request_type, default",
    [
        ("text/csv;q=0, */*", "text/csv", ""),  # CSV refused, anything else wanted
        ("application/json;q=0, application/*", "text/csv", ""),
        ("application/*, application/x-recordio-protobuf;q=0.5", "*/*", RECORDIO),
    ],
)
def test_a_more_specific_accept_range_overrides_a_wildcard(
    accept: str, request_type: str, default: str
) -> None:
    check_choice(encoders.choose, accept, request_type, default)


@FUZZ
@given(request=ACCEPT_REQUESTS)
def test_accept_picks_the_most_wanted_encoder_or_refuses(request: tuple[str, str, str]) -> None:
    OUTCOMES["accept", check_choice(encoders.choose, *request)] += 1


def test_the_accept_check_catches_a_choice_that_ignores_accept() -> None:
    def deaf(accept: str, request_type: str, default: str) -> str:
        return encoders.choose("", request_type, default)

    assert_caught(lambda request: check_choice(deaf, *request), ACCEPT_REQUESTS)


CODINGS = {"gzip": gzip.compress, "deflate": zlib.compress}
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def zlib_inflated(body: bytes, coding: str) -> bytes | None:
    """zlib's own reading of a body (RFC 9110's codings): gzip is one or more gzip members
    (RFC 1952), deflate one zlib stream (RFC 1950) or, as some clients send it, one raw
    deflate stream; None if the bytes are not that. An empty body holds nothing."""
    parts = []
    while body:
        for wbits in (WBITS[coding], -zlib.MAX_WBITS) if coding == "deflate" else (WBITS[coding],):
            inflater = zlib.decompressobj(wbits)
            try:
                part = inflater.decompress(body) + inflater.flush()
            except zlib.error:
                continue
            if inflater.eof:
                break
        else:
            return None
        parts.append(part)
        body = inflater.unused_data
        if body and coding == "deflate":
            return None  # bytes after the stream's end
    return b"".join(parts)


Inflate = Callable[[bytes, str, int], bytes]


def check_inflated(inflate: Inflate, data: bytes, coding: str, compress: bool, limit: int) -> str:
    """`inflate`'s answer against zlib's: the same bytes when they fit in `limit`; 413 when
    they do not; 400 (or 413) for bytes zlib does not read. Returns the outcome."""
    body = CODINGS[coding](data) if compress else data
    expected = zlib_inflated(body, coding)
    try:
        inflated = inflate(body, coding, limit)
    except predictor.RequestError as error:
        if expected is None:
            assert error.status in (400, 413), error.status
        else:
            assert error.status == 413, f"{error.status} for valid {coding} data: {error}"
            assert len(expected) > limit, f"413 for {len(expected)} bytes, limit {limit}"
        return str(error.status)
    assert expected is not None, f"inflated {inflated[:40]!r} from bytes zlib refuses"
    assert len(expected) <= limit, f"{len(expected)} bytes passed a limit of {limit}"
    assert inflated == expected
    return "inflated"


INFLATE_REQUESTS = st.tuples(
    st.binary(max_size=3000),
    st.sampled_from(sorted(CODINGS)),
    st.booleans(),
    st.integers(1, 4000),
)


@FUZZ
@given(request=INFLATE_REQUESTS)
def test_inflating_is_bounded_and_exact(request: tuple[bytes, str, bool, int]) -> None:
    OUTCOMES["inflate", check_inflated(predictor._inflate, *request)] += 1


def test_the_inflate_check_catches_an_inflater_that_refuses_everything() -> None:
    def refuse(body: bytes, coding: str, limit: int) -> bytes:
        raise predictor.RequestError(413, "request body too large")

    assert_caught(lambda request: check_inflated(refuse, *request), INFLATE_REQUESTS)


@pytest.fixture(scope="module")
def client(trained: Path):
    app = predictor.create_app(
        model_folder.load(trained / "model"), Environment.read({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1"})
    )
    return app.test_client()


class FailedRequests(logging.Handler):
    """Counts the app's `invocation failed` lines: a traceback logged, a 500 sent."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, line: logging.LogRecord) -> None:
        self.count += line.levelno >= logging.ERROR


ENCODINGS = st.sampled_from(["", "", "", "gzip", "deflate", "identity", "br", "gzip, deflate", "x"])


@FUZZ
@given(
    request=requests_of(width=4),  # the model serves iris: 4 features
    accept=st.one_of(st.none(), ACCEPTS),
    coding=ENCODINGS,
    attributes=st.one_of(
        st.none(), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
    ),
)
def test_the_app_answers_anything_with_a_result_or_a_4xx(
    client, request, accept, coding, attributes
) -> None:
    content_type, body, _ = request
    headers = {"Content-Type": content_type}
    if accept is not None:
        headers["Accept"] = accept
    if coding:
        headers["Content-Encoding"] = coding
        if coding in CODINGS:
            body = CODINGS[coding](body)
    if attributes is not None:
        headers["X-Amzn-SageMaker-Custom-Attributes"] = attributes
    failures = FailedRequests()
    logging.getLogger("kmeans.serve").addHandler(failures)
    try:
        response = client.post("/invocations", data=body, headers=headers)
    finally:
        logging.getLogger("kmeans.serve").removeHandler(failures)
    assert failures.count == 0
    if response.status_code == 200:
        OUTCOMES["app", "200"] += 1
        return
    assert response.status_code in (400, 406, 413, 415), response.data[:300]
    assert response.content_type == "application/json"
    error = json.loads(response.data)["error"]
    assert error and "\n" not in error
    OUTCOMES["app", str(response.status_code)] += 1


STREAMED_BODIES = (
    "text/csv",
    "application/jsonlines",
    "application/x-recordio-protobuf",
)


@FUZZ
@given(
    request=requests_of(width=4),
    accept=st.one_of(st.none(), ACCEPTS),
    coding=st.sampled_from(["", "gzip", "deflate"]),
)
def test_the_block_reader_answers_anything_as_the_whole_body_reader_does(
    client, request, accept, coding
) -> None:
    """Every body through the large-body path, cut into blocks of 64 bytes, gets what the
    whole-body path gives it: the same answer, byte for byte, or the same error status."""
    content_type, body, _ = request
    headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}
    if coding:
        headers["Content-Encoding"] = coding
        body = CODINGS[coding](body)
    whole = client.post("/invocations", data=body, headers=headers)
    with mock.patch.multiple(large_bodies, STREAM_ABOVE=0, BLOCK=64):
        blocks = client.post("/invocations", data=body, headers=headers)
    assert blocks.status_code == whole.status_code, (whole.data[:300], blocks.data[:300])
    essence = content_type.partition(";")[0].strip().lower()
    if whole.status_code == 200:
        assert blocks.data == whole.data
        assert blocks.content_type == whole.content_type
        OUTCOMES["blocks", "streamed" if essence in STREAMED_BODIES else "whole"] += 1
    else:
        assert blocks.content_type == "application/json"
        assert "\n" not in json.loads(blocks.data)["error"]


# --- HTTP: schemathesis against openapi.yaml on the running servers --------------------------

schemathesis.serializer.alias("application/jsonlines", "text/plain")
schemathesis.serializer.alias(
    ["application/x-npy", "application/x-recordio-protobuf"], "application/octet-stream"
)
SCHEMA = schemathesis.openapi.from_path(ROOT / "openapi.yaml")
SINGLE_MODEL = SCHEMA.exclude(tag="multi-model")  # what a default `serve` offers
MULTI_MODEL = SCHEMA.include(tag="multi-model")  # the /models API (SAGEMAKER_MULTI_MODEL=true)
# A body the description allows may still hold the wrong number of features for the model
# being served, name a model that is not loaded or a folder that does not exist (the
# description cannot know them): a 400 or 404 is then the right answer.
EXCLUDED = [positive_data_acceptance]
HTTP_FUZZ = settings(
    max_examples=EXAMPLES // 10 or 40,
    derandomize=not EXAMPLES,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


def needs_nginx() -> None:
    if shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin") is None:
        pytest.skip("nginx is not installed (the README's test command installs it)")


def stop_alive(running: Server) -> None:
    """The server still answers /ping, then stops cleanly."""
    assert running.process.poll() is None, running.output()[-3000:]
    assert requests.get(running.url + "/ping", timeout=30).status_code == 200
    assert running.stop() == 0, running.output()[-3000:]


@pytest.fixture(scope="module")
def server(trained: Path, tmp_path_factory: pytest.TempPathFactory):
    needs_nginx()
    running = Server(trained, tmp_path_factory.mktemp("fuzz") / "serve.log")
    yield running.wait_ready()
    stop_alive(running)
    fuzzed = {target for target, _ in OUTCOMES if target.startswith("http ")}
    assert not fuzzed or "http GET /metrics" in fuzzed, fuzzed  # what openapi.yaml lists


@SINGLE_MODEL.parametrize()
@HTTP_FUZZ
def test_the_server_keeps_its_openapi_description(case, server) -> None:
    response = case.call_and_validate(base_url=server.url, excluded_checks=EXCLUDED)
    OUTCOMES[f"http {case.method} {case.path}", str(response.status_code)] += 1


# The multi-model server holds this model (iris) before every case; names are opaque strings.
KNOWN = "iris/v1 β"
IRIS_BODIES = {
    "text/csv": "5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3",
    "application/json": [[5.1, 3.5, 1.4, 0.2]],
}
# What the aimed cases must have reached, for each operation that ran: both sides of each.
AIMED: collections.defaultdict[str, set[str]] = collections.defaultdict(set)  # what they did
REACHED = {
    "POST /models": {"200", "400", "404", "409", "507"},
    "GET /models": {"200", "400"},
    "GET /models/{model_name}": {"200", "404"},
    "DELETE /models/{model_name}": {"200", "404"},
    "POST /models/{model_name}/invoke": {"200", "400", "404"},
}


class MultiModelServer:
    """A running multi-model `serve` whose budget holds many copies of iris (a few KB each)
    but not one of a wide model (k=20, 1,000 features: 160 KB of centres a copy)."""

    def __init__(self, running: Server, folder: Path, wide: Path) -> None:
        self.running, self.url = running, running.url
        self.folder, self.wide = str(folder), str(wide)

    def load(self, name: str) -> requests.Response:
        body = {"model_name": name, "url": self.folder}
        return requests.post(self.url + "/models", json=body, timeout=60)

    def restore(self) -> None:
        """The known model loaded again if a case unloaded it, first unloading all the
        others if the budget is full: cases may load, unload and run out of budget."""
        described = requests.get(f"{self.url}/models/{quote(KNOWN, safe='')}", timeout=30)
        if described.status_code == 200:
            return
        if self.load(KNOWN).status_code == 507:
            for entry in requests.get(self.url + "/models?limit=1000", timeout=30).json()["models"]:
                name = quote(entry["modelName"], safe="")
                assert requests.delete(f"{self.url}/models/{name}", timeout=30).status_code == 200
            assert self.load(KNOWN).status_code == 200, self.running.output()[-3000:]


@pytest.fixture(scope="module")
def multi_model_server(trained: Path, tmp_path_factory: pytest.TempPathFactory):
    needs_nginx()
    base = tmp_path_factory.mktemp("fuzz-mme") / "ml"
    folder = base / "models" / "iris" / "model"  # where the platform unpacks a model
    shutil.copytree(trained / "model", folder)
    rows = np.random.default_rng(12).normal(size=(100, 1000))
    wide = make_job(
        base.parent / "wide",
        {"k": "20"},
        {"train/data.csv": "\n".join(",".join(f"{v:.3f}" for v in row) for row in rows)},
    )
    result = run_train(wide)
    assert result.returncode == 0, result.stdout + result.stderr
    running = Server(
        base,
        base.parent / "serve.log",
        SAGEMAKER_MULTI_MODEL="true",
        SAGEMAKER_MODEL_SERVER_WORKERS="2",
        SAGE_KMEANS_MODEL_MEMORY_MB="0.25",
    ).wait_ready()
    served = MultiModelServer(running, folder, wide / "model")
    served.restore()
    yield served
    stop_alive(running)
    for operation, statuses in REACHED.items():
        seen = AIMED[operation]
        assert not seen or statuses <= seen, f"{operation}: only {sorted(seen)} reached"


def not_a_server_error_but_507(ctx, response, case) -> None:
    """schemathesis's not_a_server_error, except for 507: a load over the memory budget gets
    it, as SageMaker expects (it then unloads idle models and loads again)."""
    if response.status_code != 507:
        not_a_server_error(ctx, response, case)


def aim(case, data: st.DataObject, server: MultiModelServer) -> None:
    """Point some cases at what the server holds, so that they can succeed as well as fail:
    the known model's name, a real model folder (iris, or the wide model that does not fit),
    rows of iris's 4 features. schemathesis re-checks a changed case against the description
    before judging its answer."""
    if "model_name" in case.path_parameters and data.draw(st.booleans(), label="known name"):
        case.path_parameters = {**case.path_parameters, "model_name": KNOWN}
    label = f"{case.method} {case.path}"
    if label == "POST /models":
        load = data.draw(st.sampled_from(["as generated", "iris", "wide", "known name"]))
        if load != "as generated":
            name = KNOWN if load == "known name" else f"{load} {data.draw(st.text(max_size=8))}"
            url = server.wide if load == "wide" else server.folder
            case.body = {"model_name": name, "url": url}
    if label == "POST /models/{model_name}/invoke" and data.draw(st.booleans(), label="iris"):
        case.media_type = data.draw(st.sampled_from(sorted(IRIS_BODIES)), label="type")
        case.body = IRIS_BODIES[case.media_type]


def check_multi_model_case(case, server: MultiModelServer) -> int:
    server.restore()
    response = case.call_and_validate(
        base_url=server.url,
        excluded_checks=[*EXCLUDED, not_a_server_error],
        additional_checks=[not_a_server_error_but_507],
    )
    OUTCOMES[f"http multi-model {case.method} {case.path}", str(response.status_code)] += 1
    return response.status_code


@MULTI_MODEL.parametrize()
@HTTP_FUZZ
def test_the_multi_model_server_keeps_its_openapi_description(case, multi_model_server) -> None:
    """Every phase: the description's examples, its boundaries, undeclared methods, random
    cases. Names and folders are random here: they find no model."""
    check_multi_model_case(case, multi_model_server)


@MULTI_MODEL.parametrize()
@MULTI_MODEL.given(data=st.data())  # schemathesis then runs random cases only
@settings(HTTP_FUZZ, phases=[phase for phase in Phase if phase != Phase.explicit])
def test_the_multi_model_server_keeps_it_with_a_model_loaded(
    case, data, multi_model_server
) -> None:
    aim(case, data, multi_model_server)
    status = check_multi_model_case(case, multi_model_server)
    AIMED[f"{case.method} {case.path}"].add(str(status))

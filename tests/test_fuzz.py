"""Fuzzing: property-based (hypothesis) on every decoder, on Content-Type and Accept
parsing, on the Content-Encoding inflater and on the whole Flask app; then HTTP-level
(schemathesis) on the running server, against openapi.yaml. Whatever comes in, the
answer is a result or a 4xx with one line of JSON: never a traceback, never a 5xx.

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
from pathlib import Path
from urllib.parse import quote

import numpy as np
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

from kmeans import decoders, encoders, model, predictor
from kmeans.content_types import ALIASES, MediaType, parse_accept
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


# --- properties --------------------------------------------------------------------------


@FUZZ
@given(request=requests_of())
def test_decoders_give_finite_rows_or_one_line_refusals(request: tuple[str, bytes, int]) -> None:
    content_type, body, features = request
    try:
        rows = decoders.decode(body, content_type, features)
    except (decoders.DecodeError, decoders.UnsupportedMediaType) as error:
        assert str(error) and "\n" not in str(error).strip()
        OUTCOMES["decoders", type(error).__name__] += 1
        return
    assert isinstance(rows, np.ndarray) and rows.dtype == np.float64
    assert rows.ndim == 2 and rows.shape[0] >= 1 and rows.shape[1] == features
    assert np.isfinite(rows).all()
    OUTCOMES["decoders", "rows"] += 1


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


@FUZZ
@given(
    accept=ACCEPTS,
    request_type=st.sampled_from([*MEDIA_TYPES, "x/y"]),
    default=st.sampled_from(["", *encoders.ENCODERS, "text/html"]),
)
def test_accept_picks_an_encoder_or_refuses(accept: str, request_type: str, default: str) -> None:
    try:
        chosen = encoders.choose(accept, request_type, default)
    except encoders.NotAcceptable:
        OUTCOMES["accept", "NotAcceptable"] += 1
        return
    assert chosen in encoders.ENCODERS
    OUTCOMES["accept", "chosen"] += 1


CODINGS = {"gzip": gzip.compress, "deflate": zlib.compress}


@FUZZ
@given(
    data=st.binary(max_size=3000),
    coding=st.sampled_from(sorted(CODINGS)),
    compress=st.booleans(),
    limit=st.integers(1, 4000),
)
def test_inflating_is_bounded_and_exact(
    data: bytes, coding: str, compress: bool, limit: int
) -> None:
    body = CODINGS[coding](data) if compress else data
    try:
        inflated = predictor._inflate(body, coding, limit)
    except predictor.RequestError as error:
        assert error.status in (400, 413)
        assert error.status == 413 or not compress or not data
        OUTCOMES["inflate", str(error.status)] += 1
        return
    assert len(inflated) <= limit
    if compress:
        assert inflated == data
    OUTCOMES["inflate", "inflated"] += 1


@pytest.fixture(scope="module")
def client(trained: Path):
    app = predictor.create_app(
        model.load(trained / "model"), Environment.read({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1"})
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

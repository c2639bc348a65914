"""The Flask app behind gunicorn: /ping, /invocations, /execution-parameters and /metrics.

Built by create_app() from an already loaded model and the environment snapshot, so
tests build as many as they like and gunicorn loads the model once, before forking;
or, for a multi-model endpoint, from the registry, with the /models API in its place
(kmeans/multi_model.py). Either way one function answers a prediction request.
Every error is JSON {"error": "<one line>"} with its status, never an HTML page.
Request bodies are read by read_body(): gzip and deflate bodies are inflated there, never
past the payload limit, and a request whose client has left is not worked on. Large ones
(kmeans/large_bodies.py) are read, predicted and encoded a block at a time instead. Every
answer is counted for /metrics (kmeans/metrics.py) once it is sent, unless
SAGE_KMEANS_METRICS=false.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from kmeans import decoders, encoders, large_bodies, metrics, multi_model
from kmeans.algorithm import Loaded
from kmeans.content_types import CSV, MediaType
from kmeans.environment import Environment
from kmeans.registry import Registry

log = logging.getLogger("kmeans.serve")

CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
CUSTOM_ATTRIBUTES_KEY = "HTTP_" + CUSTOM_ATTRIBUTES.upper().replace("-", "_")
STDOUT = 1


@functools.lru_cache(maxsize=2)
def _stamp(second: int) -> str:
    """The line prefix, made once a second: formatting the time is the line's dearest part."""
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(second))} [{os.getpid()}]"


def _log_request(
    records: int, size: int, kind: str, answer: int, answer_kind: str, started: float, note: str
) -> None:
    """The one line each invocation logs, written straight to stdout's file descriptor in
    one call: through `logging` it costs a third of what a one-record request costs in
    all, and through sys.stdout a buffer and a flush more. invoke() has it written once
    the answer is sent (gunicorn then closes the response), so no client waits for it;
    its time runs to then."""
    elapsed = (time.perf_counter() - started) * 1000
    os.write(
        STDOUT,
        f"{_stamp(int(time.time()))} INFO invocation: {records} records, {size} bytes "
        f"{kind} -> {answer} bytes {answer_kind} in {elapsed:.1f} ms{note}\n".encode(),
    )


def _addressed(environ: dict) -> str:
    """The inference component and target container a request names, for its log line."""
    component = environ.get(metrics.COMPONENT_KEY)
    container = environ.get(metrics.CONTAINER_KEY)
    if component is None and container is None:
        return ""
    return (f" component={component}" if component is not None else "") + (
        f" container={container}" if container is not None else ""
    )


def invoke(
    loaded: Loaded,
    environ: dict,
    default_accept: str,
    limit: int,
    started: float,
    note: str = "",
    counting: metrics.Metrics | None = None,
) -> Response:
    """One invocation: the body decoded, predicted and encoded as Accept asks, the custom
    attributes echoed, and one line logged once the answer is sent (`note` ends it, then
    the inference component or target container the request names), its records and
    bytes counted then too. Plain dict look-ups in the WSGI environ: this path is paid
    per request."""
    media = MediaType.parse(environ.get("CONTENT_TYPE") or CSV)
    request_type = media.essence
    accept = encoders.choose(environ.get("HTTP_ACCEPT", ""), request_type, default_accept)
    opened = large_bodies.open_body(environ, media, limit)
    if opened is not None and opened.whole is None:
        return _invoke_streamed(loaded, environ, media, accept, opened, started, note, counting)
    body = read_body(environ, limit) if opened is None else _unless_gone(environ, opened.whole)
    predictor = loaded.predictor
    one = decoders.one_csv_record(body, media, loaded.feature_dim) if request_type == CSV else None
    if one is not None and hasattr(predictor, "one"):  # most real-time requests: no arrays
        records = 1
        answer = encoders.encode_one(accept, predictor.columns, predictor.one(one))
    else:
        rows = decoders.decode(body, media, loaded.feature_dim)
        records = len(rows)
        answer = encoders.ENCODERS[accept](predictor.columns, predictor(rows))
    response = Response(answer, 200, content_type=accept)
    sizes = (records, len(body), request_type, len(answer), accept)
    return _answered(response, environ, sizes, started, note, counting)


def _answered(
    response: Response,
    environ: dict,
    sizes: tuple[int, int, str, int, str],
    started: float,
    note: str,
    counting: metrics.Metrics | None,
) -> Response:
    """The answer with the custom attributes echoed, and its log line and counts (`sizes`:
    records, body bytes and type, answer bytes and type) made once it is sent."""
    attributes = environ.get(CUSTOM_ATTRIBUTES_KEY)
    if attributes is not None:
        response.headers[CUSTOM_ATTRIBUTES] = attributes
    note += _addressed(environ)
    response.call_on_close(functools.partial(_log_request, *sizes, started, note))
    if counting is not None:
        response.call_on_close(functools.partial(counting.invocation, *sizes))
    return response


def _invoke_streamed(
    loaded: Loaded,
    environ: dict,
    media: MediaType,
    accept: str,
    body: large_bodies.Body,
    started: float,
    note: str,
    counting: metrics.Metrics | None,
) -> Response:
    """invoke() for a large body, read and answered a block at a time; the answer, spooled
    until the body's end, is sent from its file with its Content-Length."""
    counts = large_bodies.Counts()
    spool = large_bodies.spooled_answer(body, media, loaded.predictor, accept, counts)
    response = Response(iter(lambda: spool.read(large_bodies.BLOCK), b""), 200, content_type=accept)
    response.headers["Content-Length"] = str(counts.answer_bytes)
    response.call_on_close(spool.close)
    sizes = (counts.records, body.size, media.essence, counts.answer_bytes, accept)
    return _answered(response, environ, sizes, started, note, counting)


RequestError = large_bodies.RequestError


def _inflate(body: bytes, coding: str, limit: int) -> bytes:
    """One Content-Encoding undone, stopping as soon as the output passes `limit`: a
    small body that inflates to gigabytes costs no more than `limit` bytes of work."""
    return b"".join(large_bodies.inflated([body], coding, limit))


def _read_raw(environ: dict, limit: int) -> bytes:
    """The body as sent, in one read of Content-Length bytes: werkzeug's get_data asks
    gunicorn for 64 KB at a time, which costs as much CPU as the rest of the stack does
    for a 6 MB body."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        length = -1
    if length > limit:
        raise RequestEntityTooLarge()
    if length < 0:  # no length given (chunked): gunicorn ends the stream for us
        return request.get_data(cache=False)
    return environ["wsgi.input"].read(length)


def _unless_gone(environ: dict, body: bytes) -> bytes:
    """The body read, unless its client has left: checked once the body is read, since
    only then is EOF visible."""
    if _client_gone(environ):
        raise RequestError(
            499, "the client closed the connection before a worker was free; not processed"
        )
    return body


def read_body(environ: dict, limit: int) -> bytes:
    """The request body, with its Content-Encoding (gzip, deflate, identity) undone."""
    body = _unless_gone(environ, _read_raw(environ, limit))
    header = environ.get("HTTP_CONTENT_ENCODING")
    if header is None:
        return body
    for coding in large_bodies.codings(header):
        body = _inflate(body, coding, limit)
    return body


def _client_gone(environ: dict) -> bool:
    """True when nginx has closed the connection: it answered 504 (or its client left)
    while the request waited for a worker, so nobody is waiting for this answer."""
    connection = environ.get("gunicorn.socket")
    if connection is None:
        return False
    try:
        return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False  # open, nothing to read: the usual case
    except OSError:
        return True


def _error(status: int, message: str) -> Response:
    return Response(
        b'{"error":' + _json_string(message) + b"}", status, content_type="application/json"
    )


def _json_string(text: str) -> bytes:
    return orjson.dumps(" ".join(text.split()))


def create_app(loaded: Loaded | Registry, env: Environment) -> Flask:
    app = Flask(__name__)
    counting = metrics.Metrics(env.metrics_dir) if env.metrics else None
    limit = env.max_payload_mb << 20
    app.config["MAX_CONTENT_LENGTH"] = limit
    default_accept = MediaType.parse(env.default_accept).essence if env.default_accept else ""
    execution_parameters = {
        "MaxConcurrentTransforms": env.workers,
        "BatchStrategy": "MULTI_RECORD",
        "MaxPayloadInMB": env.max_payload_mb,
    }

    @app.get("/ping")
    def ping() -> Response:
        return Response(b"", 200, content_type="text/plain")

    @app.get("/execution-parameters")
    def parameters() -> dict[str, object]:
        return execution_parameters

    def predict(served: Loaded, started: float, note: str = "") -> Response:
        """A prediction request, for /invocations and /models/<name>/invoke alike."""
        return invoke(served, request.environ, default_accept, limit, started, note, counting)

    if isinstance(loaded, Registry):
        multi_model.add_routes(app, loaded, predict, _error, counting)
    else:

        @app.post("/invocations")
        def invocations() -> Response:
            return predict(loaded, time.perf_counter())

    if counting is not None:
        _add_metrics(app, counting, loaded, env)

    @app.errorhandler(decoders.DecodeError)
    def bad_body(error: Exception) -> Response:
        log.info("invocation refused (400): %s", error)
        return _error(400, str(error))

    @app.errorhandler(decoders.UnsupportedMediaType)
    def bad_type(error: Exception) -> Response:
        log.info("invocation refused (415): %s", error)
        return _error(415, str(error))

    @app.errorhandler(RequestError)
    def refused(error: RequestError) -> Response:
        log.info("invocation refused (%d): %s", error.status, error)
        return _error(error.status, str(error))

    @app.errorhandler(encoders.NotAcceptable)
    def bad_accept(error: Exception) -> Response:
        log.info("invocation refused (406): %s", error)
        return _error(406, str(error))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        if error.code == 413:
            return _error(413, f"request body too large: the limit is {env.max_payload_mb} MB")
        response = _error(error.code or 500, f"{error.name}: {request.method} {request.path}")
        allowed = getattr(error, "valid_methods", None)  # a 405 says what the path takes
        if allowed:
            response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(Exception)
    def internal_error(error: Exception) -> Response:
        log.exception("invocation failed")
        return _error(500, f"internal error: {type(error).__name__}: {error}")

    return app


def _add_metrics(
    app: Flask, counting: metrics.Metrics, loaded: Loaded | Registry, env: Environment
) -> None:
    """GET /metrics, every answer the app makes counted once it is sent, and the
    model_info series."""
    app.wsgi_app = metrics.timed(app.wsgi_app)
    if isinstance(loaded, Registry):
        metrics.identify(env.algorithm, "", "multi-model endpoint", env.provenance())
        metrics.MODEL_BUDGET.set(loaded.budget)
        metrics.models_changed(*loaded.accounted())
    else:
        algorithm = loaded.metadata.get("algorithm") or env.algorithm
        metrics.identify(algorithm, str(loaded.source), loaded.summary, env.provenance())

    @app.get("/metrics")
    def scrape() -> Response:
        body, media_type = counting.scrape(request.environ.get("HTTP_ACCEPT", ""))
        return Response(body, 200, content_type=media_type)

    @app.after_request
    def counted(response: Response) -> Response:
        rule = request.url_rule
        route = rule.rule if rule is not None else metrics.OTHER
        response.call_on_close(
            functools.partial(
                counting.request,
                request.environ,
                route,
                response.status_code,
                response.content_type,
            )
        )
        return response

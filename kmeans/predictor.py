"""The Flask app behind gunicorn: /ping, /invocations and /execution-parameters.

Built by create_app() from an already loaded model and the environment snapshot, so
tests build as many as they like and gunicorn loads the model once, before forking;
or, for a multi-model endpoint, from the registry, with the /models API in its place
(kmeans/multi_model.py). Either way one function answers a prediction request.
Every error is JSON {"error": "<one line>"} with its status, never an HTML page.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from kmeans import decoders, encoders, model, multi_model
from kmeans.content_types import CSV, MediaType
from kmeans.environment import Environment
from kmeans.registry import Registry

log = logging.getLogger("kmeans.serve")

CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
CUSTOM_ATTRIBUTES_KEY = "HTTP_" + CUSTOM_ATTRIBUTES.upper().replace("-", "_")


@functools.lru_cache(maxsize=2)
def _stamp(second: int) -> str:
    """The line prefix, made once a second: formatting the time is the line's dearest part."""
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(second))} [{os.getpid()}]"


def _log_request(
    records: int, size: int, kind: str, answer: int, answer_kind: str, started: float, note: str
) -> None:
    """The one line each invocation logs, written straight to stdout: through `logging`
    it costs a third of what a one-record request costs in all."""
    elapsed = (time.perf_counter() - started) * 1000
    sys.stdout.write(
        f"{_stamp(int(time.time()))} INFO invocation: {records} records, {size} bytes "
        f"{kind} -> {answer} bytes {answer_kind} in {elapsed:.1f} ms{note}\n"
    )
    sys.stdout.flush()


def _error(status: int, message: str) -> Response:
    return Response(
        b'{"error":' + _json_string(message) + b"}", status, content_type="application/json"
    )


def _json_string(text: str) -> bytes:
    return orjson.dumps(" ".join(text.split()))


def create_app(loaded: model.LoadedModel | Registry, env: Environment) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = env.max_payload_mb << 20
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

    def predict(served: model.LoadedModel, started: float, note: str = "") -> Response:
        """A prediction request, for /invocations and /models/<name>/invoke alike:
        decode the body, assign the rows, encode the answer, echo the custom attributes."""
        environ = request.environ  # plain dict look-ups: this path is paid per record
        media = MediaType.parse(environ.get("CONTENT_TYPE") or CSV)
        request_type = media.essence
        accept = encoders.choose(environ.get("HTTP_ACCEPT", ""), request_type, default_accept)
        body = request.get_data(cache=False)
        rows = decoders.decode(body, media, served.feature_dim)
        labels, distances = served.assign(rows)
        answer = encoders.ENCODERS[accept](labels, distances)
        response = Response(answer, 200, content_type=accept)
        attributes = environ.get(CUSTOM_ATTRIBUTES_KEY)
        if attributes is not None:
            response.headers[CUSTOM_ATTRIBUTES] = attributes
        _log_request(len(rows), len(body), request_type, len(answer), accept, started, note)
        return response

    if isinstance(loaded, Registry):
        multi_model.add_routes(app, loaded, predict, _error)
    else:

        @app.post("/invocations")
        def invocations() -> Response:
            return predict(loaded, time.perf_counter())

    @app.errorhandler(decoders.DecodeError)
    def bad_body(error: Exception) -> Response:
        log.info("invocation refused (400): %s", error)
        return _error(400, str(error))

    @app.errorhandler(decoders.UnsupportedMediaType)
    def bad_type(error: Exception) -> Response:
        log.info("invocation refused (415): %s", error)
        return _error(415, str(error))

    @app.errorhandler(encoders.NotAcceptable)
    def bad_accept(error: Exception) -> Response:
        log.info("invocation refused (406): %s", error)
        return _error(406, str(error))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        if error.code == 413:
            return _error(413, f"request body too large: the limit is {env.max_payload_mb} MB")
        return _error(error.code or 500, f"{error.name}: {request.method} {request.path}")

    @app.errorhandler(Exception)
    def internal_error(error: Exception) -> Response:
        log.exception("invocation failed")
        return _error(500, f"internal error: {type(error).__name__}: {error}")

    return app

"""The /models API of a multi-model endpoint (SAGEMAKER_MULTI_MODEL=true), as SageMaker
drives it. Routes only: loading, sharing between workers and the memory budget live in
the registry (kmeans/registry.py), predictions in predictor.py's one prediction function.

    POST   /models                 {"model_name": ..., "url": ...}: 200, 409, 404, 400, 507
    GET    /models                 {"models": [{"modelName", "modelUrl"}], "nextPageToken"}
    GET    /models/<name>          {"modelName", "modelUrl"}, or 404
    DELETE /models/<name>          200, or 404
    POST   /models/<name>/invoke   as /invocations, with that model; 404 if it is not loaded

Names are opaque strings. In paths they arrive URL-encoded and are decoded here from the
raw request line, so that an encoded slash (%2F) stays part of the name. Routes are matched
on the raw path too: /models/x/invoke is model x's invoke route (POST only), while
/models/x%2Finvoke is the model named "x/invoke".
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable
from urllib.parse import quote, unquote

import orjson
from flask import Flask, Response, request
from werkzeug.routing import PathConverter

from kmeans import metrics
from kmeans.algorithm import Loaded, ModelError
from kmeans.registry import AlreadyLoaded, Entry, FolderNotFound, NotLoaded, OverBudget, Registry

log = logging.getLogger("kmeans.serve")

PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000
TARGET_MODEL_KEY = "HTTP_X_AMZN_SAGEMAKER_TARGET_MODEL"  # the client's TargetModel, for the log
LOAD_BODY = '{"model_name": "<name>", "url": "<model folder>"}'


def _json(value: object) -> Response:
    return Response(orjson.dumps(value), 200, content_type="application/json")


def _described(entry: Entry) -> dict[str, str]:
    return {"modelName": entry.name, "modelUrl": entry.url}


def _page_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode("utf-8", "surrogatepass")).decode()


def _name_after(token: str) -> str:
    try:
        name = base64.b64decode(token, altchars=b"-_", validate=True)
        if name:
            return name.decode("utf-8", "surrogatepass")
    except (binascii.Error, UnicodeError, ValueError):
        pass
    raise ValueError(f"next_page_token {token!r} is not one this server gave")


def _raw_path(environ: dict) -> str | None:
    """The path as the client sent it, still URL-encoded (None when the server keeps no copy)."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    return raw.partition("?")[0] if raw else None


def _path_name(suffix: str = "") -> str:
    """The model name in this request's path: after /models/, before `suffix`, decoded."""
    encoded = (_raw_path(request.environ) or quote(request.path)).removeprefix("/models/")
    return unquote(encoded.removesuffix(suffix), errors="strict")


class _ModelPath(PathConverter):
    """A model name in a raw path: any text, but not ending in /invoke (the invoke route's)."""

    regex = r"[^/].*?(?<!/invoke)"


def _routed_on_raw_path(wsgi_app: Callable) -> Callable:
    """Match /models/... routes on the path as sent: the decoded path cannot tell the
    model named "x/invoke" (sent as x%2Finvoke) from model x's invoke route."""

    def routed(environ: dict, start_response: Callable) -> object:
        raw = _raw_path(environ)
        if raw and raw.startswith("/models/"):
            environ["PATH_INFO"] = raw
        return wsgi_app(environ, start_response)

    return routed


def add_routes(
    app: Flask,
    registry: Registry,
    predict: Callable[[Loaded, float, str], Response],
    error: Callable[[int, str], Response],
    counting: metrics.Metrics | None = None,
) -> None:
    """The /models routes on `app`; `predict` answers a prediction request with a model;
    loads, unloads and refused loads are counted when `counting` is given."""
    app.url_map.converters["model"] = _ModelPath
    app.wsgi_app = _routed_on_raw_path(app.wsgi_app)

    def refused(status: int, action: str, message: str) -> Response:
        log.info("%s refused (%d): %s", action, status, message)
        return error(status, message)

    def load_refused(status: int, reason: str, message: str) -> Response:
        if counting is not None:
            metrics.MODEL_REFUSALS.labels(reason).inc()
        if status == 507:
            return error(status, message)  # the registry has logged it
        return refused(status, "model load", message)

    def changed(event: metrics.Counter) -> None:
        if counting is not None:
            metrics.models_changed(*registry.accounted(), event)

    @app.post("/models")
    def load() -> Response:
        try:
            body = orjson.loads(request.get_data())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            body = {}
        fields = [body.get("model_name"), body.get("url")]
        if not all(isinstance(field, str) and field for field in fields):
            message = f"the body must be {LOAD_BODY}, two non-empty strings"
            return load_refused(400, "bad_request", message)
        name, url = fields
        if not url.startswith("/"):
            message = f"url must be the model folder's absolute path, got {url!r}"
            return load_refused(400, "bad_request", message)
        try:
            entry = registry.load(name, url)
        except AlreadyLoaded as problem:
            return load_refused(409, "already_loaded", str(problem))
        except FolderNotFound as problem:
            return load_refused(404, "folder_not_found", str(problem))
        except ModelError as problem:
            return load_refused(400, "unreadable_model", str(problem))
        except OverBudget as problem:
            return load_refused(507, "over_budget", str(problem))
        changed(metrics.MODEL_LOADS)
        return _json(_described(entry))

    @app.get("/models")
    def listed() -> Response:
        limit = request.args.get("limit", str(PAGE_SIZE))
        if not (limit.isascii() and limit.isdigit() and 1 <= int(limit) <= MAX_PAGE_SIZE):
            message = f"limit must be an integer from 1 to {MAX_PAGE_SIZE}, got {limit!r}"
            return refused(400, "model list", message)
        entries = registry.entries()
        token = request.args.get("next_page_token")
        if token:
            try:
                after = _name_after(token)
            except ValueError as problem:
                return refused(400, "model list", str(problem))
            entries = [entry for entry in entries if entry.name > after]
        page = entries[: int(limit)]
        answer: dict[str, object] = {"models": [_described(entry) for entry in page]}
        if len(entries) > len(page):
            answer["nextPageToken"] = _page_token(page[-1].name)
        return _json(answer)

    @app.route("/models/<model:_>", methods=["GET", "DELETE"])
    def one(_: str) -> Response:
        try:
            name = _path_name()
        except UnicodeDecodeError:
            return refused(400, f"{request.method} model", "the model name is not UTF-8")
        if request.method == "DELETE":
            try:
                entry = registry.unload(name)
            except NotLoaded as problem:
                return refused(404, "model unload", str(problem))
            changed(metrics.MODEL_UNLOADS)
            return _json(_described(entry))
        entry = registry.entry(name)
        if entry is None:
            return refused(404, "model description", f"model {name!r} is not loaded")
        return _json(_described(entry))

    @app.post("/models/<path:_>/invoke")
    def invoke(_: str) -> Response:
        started = time.perf_counter()
        try:
            name = _path_name("/invoke")
        except UnicodeDecodeError:
            return refused(400, "invocation", "the model name is not UTF-8")
        try:
            served = registry.get(name)
        except ModelError as problem:
            log.error("model %r is loaded but this worker cannot read it: %s", name, problem)
            return error(500, f"model {name!r} is loaded but cannot be read: {problem}")
        if served is None:
            return refused(404, "invocation", f"model {name!r} is not loaded")
        target = request.environ.get(TARGET_MODEL_KEY)
        note = f" with model {name!r}" + (f" (target model {target!r})" if target else "")
        return predict(served, started, note)

    @app.post("/invocations")
    def invocations() -> Response:
        message = (
            "this is a multi-model endpoint: load a model with POST /models, then "
            "POST /models/<name>/invoke"
        )
        return refused(404, "invocation", message)

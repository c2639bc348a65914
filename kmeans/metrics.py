"""GET /metrics: what the server has done, in Prometheus's text format, counted across
every gunicorn worker. docs/metrics.md says what each metric means.

prometheus_client's multiprocess mode: each process writes its values to memory-mapped
files of its own in the server's runtime folder (PROMETHEUS_MULTIPROC_DIR, which `serve`
sets, to an empty folder, before any process imports prometheus_client), and a scrape adds
up the files of every process, live or dead, so what a killed worker counted survives it.
Without that folder (an app built in-process) a scrape shows this process's values.

A request pays for one increment and one histogram observation (a prediction three
increments more) on label children cached by its raw header values, made once its answer
is sent, as its log line is: at one client's pace the other worker takes the next request
meanwhile.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder

from kmeans.decoders import DECODERS

PREFIX = "sagekmeans_"
# From a single record (0.3 ms) to an asynchronous request's hour.
BUCKETS = (
    *(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600),
)
MAX_NAMES = 16  # distinct component (or container) names a worker labels; the rest: "other"
NAME_LENGTH = 63  # the longest inference component name SageMaker allows
OTHER = "other"
CACHED = 4096  # label children a worker keeps by raw header values
REQUEST_TYPES = frozenset(DECODERS)

COMPONENT_KEY = "HTTP_X_AMZN_SAGEMAKER_INFERENCE_COMPONENT"
CONTAINER_KEY = "HTTP_X_AMZN_SAGEMAKER_TARGET_CONTAINER_HOSTNAME"
STARTED_KEY = "sagekmeans.started"

_own = CollectorRegistry()  # what a scrape shows without the multiprocess folder
_NAMES = ("component", "container")


def _counter(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
    return Counter(PREFIX + name, documentation, labels, registry=_own)


def _gauge(name: str, documentation: str, mode: str, labels: tuple[str, ...] = ()) -> Gauge:
    return Gauge(PREFIX + name, documentation, labels, registry=_own, multiprocess_mode=mode)


REQUESTS = _counter(
    "requests",
    "HTTP requests the app answered, by route, status, request and answer type",
    ("route", "status", "content_type", "accept", *_NAMES),
)
DURATION = Histogram(
    PREFIX + "request_duration_seconds",
    "Time from the request reaching the app to its answer sent",
    ("route", *_NAMES),
    buckets=BUCKETS,
    registry=_own,
)
RECORDS = _counter("records", "Records predicted (one answer each)", ("content_type", "accept"))
REQUEST_BYTES = _counter(
    "request_bytes", "Prediction request bodies, bytes once inflated", ("content_type",)
)
RESPONSE_BYTES = _counter("response_bytes", "Prediction answers, bytes", ("accept",))
MODEL_LOADS = _counter("model_loads", "Models loaded through POST /models")
MODEL_UNLOADS = _counter("model_unloads", "Models unloaded through DELETE /models/<name>")
MODEL_REFUSALS = _counter("model_load_refusals", "Model loads refused, by reason", ("reason",))
MODELS_LOADED = _gauge("models_loaded", "Models loaded now", "mostrecent")
MODEL_MEMORY = _gauge(
    "model_memory_bytes", "Memory the loaded models take, one copy per worker", "mostrecent"
)
MODEL_BUDGET = _gauge(
    "model_memory_budget_bytes", "What loaded models may take (SAGE_KMEANS_MODEL_MEMORY_MB)", "max"
)
WORKER_TIMEOUTS = _counter("worker_timeouts", "Workers stopped past the model server timeout")
WORKER_RESTARTS = _counter("worker_restarts", "Workers that exited and were replaced")
WORKERS = _gauge("workers", "gunicorn workers running", "livesum")
MODEL_INFO = _gauge(
    "model_info",
    "The served model and the image: always 1, the facts are its labels",
    "max",
    ("algorithm", "source", "summary", "revision", "version", "created", "lock_sha256"),
)


class _Names:
    """Header values as label values: the first MAX_NAMES distinct ones (cut to
    NAME_LENGTH characters), then "other", so the series stay bounded whatever is sent."""

    def __init__(self) -> None:
        self.labels = {"": ""}

    def __call__(self, value: str) -> str:
        label = self.labels.get(value)
        if label is None:
            label = OTHER
            if len(self.labels) <= MAX_NAMES:
                label = self.labels[value] = value[:NAME_LENGTH]
        return label


Add = Callable[[float], None]


def _adder(value: object) -> Add:
    """What adds to one value of a series. In multiprocess mode, the write prometheus_client's
    own inc makes (the sum into this process's memory-mapped file) without the lock and the
    fork check it takes on every call, which were two thirds of a request's counting: the
    series on this path are made in the worker that writes them, after the fork, and a sync
    worker has one thread. prometheus-client is pinned, and tests/test_metrics.py counts
    exactly through this."""
    if not value._multiprocess:
        return value.inc

    def add(amount: float) -> None:
        value._value += amount
        value._file.write_value(value._key, value._value, 0.0)

    return add


def _counter_adder(child: Counter) -> Add:
    return _adder(child._value)


def _observer(child: Histogram) -> Add:
    """Histogram.observe's two writes (its sum, the first bucket that holds the value)."""
    bounds, add_sum = child._upper_bounds, _adder(child._sum)
    buckets = [_adder(bucket) for bucket in child._buckets]

    def observe(amount: float) -> None:
        add_sum(amount)
        buckets[bisect.bisect_left(bounds, amount)](1)

    return observe


class Metrics:
    """This process's label children, cached by their label values; `folder` is the
    multiprocess folder, or "" for this process's values alone."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._requests: dict[tuple, tuple] = {}
        self._invocations: dict[tuple, tuple] = {}
        self._component, self._container = _Names(), _Names()

    def request(self, environ: dict, route: str, status: int, answer_type: str | None) -> None:
        """One answered request, once its answer is sent. Its children are cached by the
        raw header values; labels are worked out only for a new combination."""
        elapsed = time.perf_counter() - environ[STARTED_KEY]
        key = (
            route,
            status,
            environ.get("CONTENT_TYPE"),
            answer_type,
            environ.get(COMPONENT_KEY),
            environ.get(CONTAINER_KEY),
        )
        count, observe = self._requests.get(key) or self._request_children(key)
        count(1)
        observe(elapsed)

    def _request_children(self, key: tuple) -> tuple:
        route, status, content_type, answer_type, component, container = key
        essence = (content_type or "").partition(";")[0].strip().lower()
        request_type = essence if not essence or essence in REQUEST_TYPES else OTHER
        accept = (answer_type or "").partition(";")[0]
        names = (self._component(component or ""), self._container(container or ""))
        children = (
            _counter_adder(REQUESTS.labels(route, str(status), request_type, accept, *names)),
            _observer(DURATION.labels(route, *names)),
        )
        if len(self._requests) < CACHED:  # raw header values are the client's: bounded
            self._requests[key] = children
        return children

    def invocation(self, records: int, size: int, kind: str, answer: int, accept: str) -> None:
        """One prediction's records and bytes, once its answer is sent."""
        children = self._invocations.get((kind, accept))
        if children is None:
            children = self._invocations[(kind, accept)] = (
                _counter_adder(RECORDS.labels(kind, accept)),
                _counter_adder(REQUEST_BYTES.labels(kind)),
                _counter_adder(RESPONSE_BYTES.labels(accept)),
            )
        children[0](records)
        children[1](size)
        children[2](answer)

    def scrape(self, accept: str) -> tuple[bytes, str]:
        """Every process's values, in the format Accept asks for (Prometheus's text
        format 0.0.4 unless it asks for OpenMetrics), and that format's media type."""
        encode, media_type = choose_encoder(accept)
        if not self.folder:
            return encode(_own), media_type
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, self.folder)
        return encode(registry), media_type


def timed(wsgi_app: Callable) -> Callable:
    """The app, noting in each request's environ when it reached the app."""

    def app(environ: dict, start_response: Callable) -> object:
        environ[STARTED_KEY] = time.perf_counter()
        return wsgi_app(environ, start_response)

    return app


def identify(algorithm: str, source: str, summary: str, provenance: dict) -> None:
    """The model_info series: set once, before the workers fork."""
    image = {key: value or "" for key, value in provenance.items()}
    MODEL_INFO.labels(algorithm=algorithm, source=source, summary=summary, **image).set(1)


def models_changed(count: int, used: int, event: Counter | None = None) -> None:
    """A multi-model endpoint's models, after `event` (MODEL_LOADS, MODEL_UNLOADS)."""
    if event is not None:
        event.inc()
    MODELS_LOADED.set(count)
    MODEL_MEMORY.set(used)


def worker_exited(pid: int, folder: str) -> None:
    """In the master, once it has reaped a worker: counted, and its live gauges dropped."""
    WORKER_RESTARTS.inc()
    multiprocess.mark_process_dead(pid, folder)

"""gunicorn settings and hooks for `serve` (started by kmeans/supervisor.py).

Sync workers: a worker takes a connection only when it is free, so a slow request never
holds up the requests queued behind it, and the master kills a worker whose request runs
past the timeout and forks a fresh one (reliability/REPORT.md measures this against
gthread workers). The app is preloaded so the model is loaded once and shared; each
worker uses one BLAS and OpenMP thread, since workers already fill the cores. A `ready`
file tells the supervisor a worker is taking requests. nginx refuses malformed requests before
gunicorn sees them; anything gunicorn still answers itself is JSON, like every error. The
hooks count workers, their timeouts and restarts for /metrics (kmeans/metrics.py).
"""

import gc
import logging
import os
import time
from pathlib import Path

import orjson
from gunicorn import util

from kmeans.environment import Environment

_environment = Environment.read()
_runtime = Path(_environment.runtime_dir or ".")
# Read once, when the preloaded app imports numpy (and scikit-learn): set here, before it,
# they reach every worker without threadpoolctl's import and library scan in each.
for _threads in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_threads] = "1"
# serve has set PROMETHEUS_MULTIPROC_DIR (or, metrics off, removed it) before this import.
_metrics = None
if _environment.metrics_dir:
    from kmeans import metrics as _metrics

bind = f"unix:{_runtime / 'gunicorn.sock'}"
workers = _environment.workers
worker_class = "sync"
# nginx answers 504 at SAGEMAKER_MODEL_SERVER_TIMEOUT; the master kills the worker just
# after (it checks once a second), so nginx never sees its connection drop first.
timeout = _environment.timeout + 1
graceful_timeout = 2  # serve stops gunicorn after nginx has drained: nothing waits on it
# nginx's limits on the request line and headers (8 KB each, 32 KB in all) apply first;
# gunicorn's own (4 KB line, 100 headers) would refuse requests nginx accepted.
limit_request_line = 0
limit_request_fields = 32768
limit_request_field_size = 0
preload_app = True
accesslog = None  # the app logs one line per invocation; nginx logs every request
errorlog = "-"
loglevel = "info"
proc_name = "kmeans-serve"
control_socket_disable = True  # else every server shares one socket in $HOME
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"  # heartbeat files off the disk


def _write_json_error(sock, status_int, reason, mesg) -> None:
    """gunicorn's answer to a request it cannot parse (say, control bytes in a header
    that nginx let through), as JSON instead of its HTML page."""
    message = " ".join(f"{reason}: {mesg}".split()) if mesg else reason
    body = b'{"error":' + orjson.dumps(message) + b"}"
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


util.write_error = _write_json_error


def when_ready(server):
    # The preloaded app's objects never die: keep the collector from walking them in
    # every worker (CPU per request) and from touching their pages (copy-on-write). No
    # collection first: after the imports it finds nothing to free and takes 0.1-0.3 s.
    gc.freeze()


def post_fork(server, worker):
    if _metrics is not None:
        _metrics.WORKERS.set(1)


def child_exit(server, worker):
    if _metrics is not None:
        _metrics.worker_exited(worker.pid, _environment.metrics_dir)


def post_worker_init(worker):
    (_runtime / "ready").touch()


def pre_request(worker, req):
    worker.kmeans_request = (req.method, req.path, time.monotonic())


def worker_abort(worker):
    """The master found this worker stuck past the timeout (SIGABRT); SIGKILL follows."""
    method, path, started = getattr(worker, "kmeans_request", ("-", "-", time.monotonic()))
    logging.getLogger("kmeans.serve").error(
        "worker %d stopped after %.0f s on %s %s: the model server timeout is %d s "
        "(SAGEMAKER_MODEL_SERVER_TIMEOUT); send smaller batches or raise it",
        worker.pid,
        time.monotonic() - started,
        method,
        path,
        _environment.timeout,
    )
    if _metrics is not None:
        _metrics.WORKER_TIMEOUTS.inc()
    os._exit(1)  # at once: unwinding could wait on the very work that is stuck

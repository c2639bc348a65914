"""gunicorn settings and hooks for `serve` (started by kmeans/supervisor.py).

gthread workers keep connections from nginx alive; the app is preloaded so the model is
loaded once and shared; each process uses one BLAS and OpenMP thread, since workers
already fill the cores. A `ready` file tells the supervisor a worker is taking requests.
"""

import gc
import logging
import os
import time
from pathlib import Path

from kmeans.environment import Environment

_environment = Environment.read()
_runtime = Path(_environment.runtime_dir or ".")
# Read once, when the preloaded app imports numpy (and scikit-learn): set here, before it,
# they reach every worker without threadpoolctl's import and library scan in each.
for _threads in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_threads] = "1"

bind = f"unix:{_runtime / 'gunicorn.sock'}"
workers = _environment.workers
worker_class = "gthread"
threads = 1
timeout = _environment.timeout
graceful_timeout = 25  # SageMaker sends SIGKILL 30 s after SIGTERM
keepalive = 75  # longer than nginx's upstream keepalive_timeout (60 s)
preload_app = True
accesslog = None  # the app logs one line per invocation; nginx logs every request
errorlog = "-"
loglevel = "info"
proc_name = "kmeans-serve"
control_socket_disable = True  # else every server shares one socket in $HOME
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"  # heartbeat files off the disk


def when_ready(server):
    # The preloaded app's objects never die: keep the collector from walking them in
    # every worker (CPU per request) and from touching their pages (copy-on-write). No
    # collection first: after the imports it finds nothing to free and takes 0.1-0.3 s.
    gc.freeze()


def post_worker_init(worker):
    (_runtime / "ready").touch()


def pre_request(worker, req):
    worker.kmeans_request = (req.method, req.path, time.monotonic())


def worker_abort(worker):
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

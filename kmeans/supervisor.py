"""What `serve` does: start gunicorn, then nginx in front of it, and watch both.

- Runtime files (gunicorn socket, nginx config, pid and temp folders, the workers' metric
  files) live in a private folder per server, so several servers can share a machine.
- nginx starts only once a gunicorn worker is ready, so it never answers 502 at start-up.
- SIGTERM (or SIGINT): nginx stops accepting and finishes the requests in flight (for at
  most DRAIN_TIMEOUT), then gunicorn stops at once: what its workers still compute has
  no client left (nginx answered it 504, or its client left). Exit 0, well within the
  30 s SageMaker allows. If nginx or gunicorn dies on its own, the other is stopped and
  serve exits non-zero, so the platform replaces the container.

This process imports no scientific library: it stays small and starts at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kmeans.environment import (
    EXIT_NO_MODEL,
    METRICS_DIR_VARIABLE,
    RUNTIME_DIR_VARIABLE,
    Environment,
    SettingError,
)

log = logging.getLogger("kmeans.serve")

PACKAGE = Path(__file__).resolve().parent
START_TIMEOUT = 300  # SageMaker fails an endpoint whose /ping does not pass in minutes
DRAIN_TIMEOUT = 20  # SageMaker sends SIGKILL 30 s after SIGTERM
GUNICORN_STOP_TIMEOUT = 5  # its graceful_timeout (2 s), then SIGKILL


def _die_with_parent(signum: int) -> Callable[[], None] | None:
    """Have a child receive `signum` if serve itself is killed (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    return lambda: libc.prctl(1, signum)  # PR_SET_PDEATHSIG


def _nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise SettingError("nginx not found on PATH or in /usr/sbin: install nginx")
    return found


def _routes(env: Environment) -> str:
    """The routes a 404 names."""
    if env.multi_model:
        routes = ["GET /ping", "GET /execution-parameters"]
        routes.append("the /models API (multi-model endpoint)")
    else:
        routes = ["GET /ping", "POST /invocations", "GET /execution-parameters"]
    if env.metrics:
        routes.insert(-1 if env.multi_model else len(routes), "GET /metrics")
    return ", ".join(routes[:-1]) + " and " + routes[-1]


def write_nginx_config(env: Environment, runtime: Path) -> Path:
    user = "user nobody nogroup;" if os.geteuid() == 0 else ""
    text = (PACKAGE / "nginx.conf").read_text()
    for name, value in {
        "@USER@": user,
        "@RUNTIME@": str(runtime),
        "@HOST@": env.host,
        "@PORT@": str(env.port),
        "@MAX_BODY_MB@": str(env.max_payload_mb),
        "@TIMEOUT@": str(env.timeout),
        "@MULTI_MODEL@": "" if env.multi_model else "# ",
        "@METRICS@": "" if env.metrics else "# ",
        "@ROUTES@": _routes(env),
    }.items():
        text = text.replace(name, value)
    path = runtime / "nginx.conf"
    path.write_text(text)
    return path


def _kill_group(child: subprocess.Popen) -> None:
    """Stop what is left of a child's process group (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)


class Supervisor:
    def __init__(self, env: Environment) -> None:
        self.env = env
        self.stopping = False
        self.runtime = Path(tempfile.mkdtemp(prefix=f"kmeans-serve-{env.port}-"))
        self.runtime.chmod(0o711)  # nginx workers (nobody) reach the socket and temp folders
        self.gunicorn: subprocess.Popen | None = None
        self.nginx: subprocess.Popen | None = None
        self.child_env = {**os.environ, RUNTIME_DIR_VARIABLE: str(self.runtime)}
        self.child_env.pop(METRICS_DIR_VARIABLE, None)
        if env.metrics:  # an empty folder, named before any process imports prometheus_client
            (self.runtime / "metrics").mkdir()
            self.child_env[METRICS_DIR_VARIABLE] = str(self.runtime / "metrics")

    def _stop_requested(self, signum: int, frame: object) -> None:
        log.info("received %s: finishing requests in flight", signal.Signals(signum).name)
        self.stopping = True

    def _start(self, command: list[str], death_signal: int) -> subprocess.Popen:
        return subprocess.Popen(
            command,
            cwd=PACKAGE.parent,
            env=self.child_env,
            start_new_session=True,  # a terminal's Ctrl-C reaches serve only, not its children
            preexec_fn=_die_with_parent(death_signal),
        )

    def _wait_until_ready(self) -> int | None:
        """None once a worker is ready; gunicorn's exit code if it never got there."""
        deadline = time.monotonic() + START_TIMEOUT
        while not (self.runtime / "ready").exists():
            code = self.gunicorn.poll()
            if code is not None:
                if code not in (0, EXIT_NO_MODEL):
                    log.error("gunicorn exited with code %d before serving; see above", code)
                return code if code >= 0 else 1  # not 256 minus a signal
            if self.stopping:
                return 0
            if time.monotonic() > deadline:
                log.error("gunicorn did not become ready within %d s", START_TIMEOUT)
                return 1
            time.sleep(0.002)  # nginx starts the moment a worker is ready
        return None

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop_requested)
        nginx = _nginx_binary()
        config = write_nginx_config(self.env, self.runtime)
        self.gunicorn = self._start(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--config",
                str(PACKAGE / "gunicorn.conf.py"),
                "kmeans.wsgi:app",
            ],
            signal.SIGTERM,
        )
        code = self._wait_until_ready()
        if code is not None:
            self._stop_all()
            return code
        self.nginx = self._start(
            [
                nginx,
                "-e",
                "stderr",
                "-p",
                str(self.runtime),
                "-c",
                str(config),
                "-g",
                "daemon off;",
            ],
            signal.SIGQUIT,
        )
        image = self.env.provenance()
        log.info(
            "image revision %s, version %s, created %s, lock sha256 %s",
            *(image[key] or "unknown" for key in ("revision", "version", "created", "lock_sha256")),
        )
        log.info(
            "serving on %s:%d with %d workers (timeout %d s, body limit %d MB)",
            self.env.host,
            self.env.port,
            self.env.workers,
            self.env.timeout,
            self.env.max_payload_mb,
        )
        while not self.stopping:
            for name, child in (("nginx", self.nginx), ("gunicorn", self.gunicorn)):
                code = child.poll()
                if code is not None:
                    log.error("%s exited unexpectedly with code %d; stopping", name, code)
                    self._stop_all()
                    return code if code > 0 else 1  # not 0, nor 256 minus a signal
            time.sleep(0.1)
        self._stop_all()
        return 0

    def _stop_all(self) -> None:
        """nginx first (it drains the requests in flight), then gunicorn."""
        for name, child, graceful, timeout in (
            ("nginx", self.nginx, signal.SIGQUIT, DRAIN_TIMEOUT),
            ("gunicorn", self.gunicorn, signal.SIGTERM, GUNICORN_STOP_TIMEOUT),
        ):
            if child is None:
                continue
            if child.poll() is not None:
                _kill_group(child)  # a master that died leaves its workers behind
                continue
            child.send_signal(graceful)
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %d s; killing it", name, timeout)
                child.kill()
                child.wait()
            _kill_group(child)
        shutil.rmtree(self.runtime, ignore_errors=True)
        log.info("stopped")


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s [%(process)d] %(levelname)s %(message)s",
        stream=sys.stdout,
    )
    try:
        env = Environment.read()
        _nginx_binary()
    except SettingError as error:
        print(f"serve: cannot start: {error}", file=sys.stderr, flush=True)
        return 2
    return Supervisor(env).run()

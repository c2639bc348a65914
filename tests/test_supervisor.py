"""What kmeans/supervisor.py promises, through the real `serve` with real nginx and gunicorn on
loopback: the stop timeout (SIGTERM with a request in flight that outlasts the drain: exit 0
within SageMaker's 30 s, nginx killed with its log line), the start timeout (a model that
hangs while loading: exit 1 with its log line, nothing left running), SIGTERM while
starting, the death of the gunicorn master (serve stops nginx and exits 1 rather than
answering 502s), and every setting of the environment table refused with one line.

The start timeout is 300 s in the code, and no setting shortens it: that one test runs the
supervisor's own `main()` with START_TIMEOUT set to 3 s, the only difference from
kmeans/serve. The stop timeout is tested at its real 20 s.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import joblib
import numpy as np
import pytest
import requests
from conftest import IRIS, ROOT, SERVE, entrypoint_env, free_port, process_children
from slow_estimator import SLEEP, write_model
from test_serve import alive

from kmeans import supervisor
from kmeans.environment import NUMERIC_SETTINGS

pytestmark = pytest.mark.skipif(
    shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin") is None,
    reason="nginx is not installed (the README's test command installs it)",
)
TESTS = Path(__file__).resolve().parent
SAGEMAKER_STOP_GRACE = 30  # SageMaker sends SIGKILL this long after SIGTERM
ROWS = np.loadtxt(IRIS, delimiter=",")


class HangsWhenLoaded:
    """Unpickled, this is a call to time.sleep(600): a model whose loading never ends."""

    def __reduce__(self):
        return time.sleep, (600,)


@pytest.fixture
def hanging_model(tmp_path: Path) -> Path:
    base = tmp_path / "ml"
    (base / "model").mkdir(parents=True)
    joblib.dump(HangsWhenLoaded(), base / "model" / "model.joblib")
    return base


def descendants(root: int) -> set[int]:
    children, found, frontier = process_children(), set(), [root]
    while frontier:
        below = [pid for parent in frontier for pid, _ in children.get(parent, [])]
        found.update(below)
        frontier = below
    return found


def wait_for_child(parent: int, word: str, timeout: float = 60) -> int:
    """The pid of `parent`'s child whose command line holds `word`, once it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, args in process_children().get(parent, []):
            if word in args:
                return pid
        time.sleep(0.05)
    raise AssertionError(f"no {word} process under {parent} within {timeout} s")


def refused(port: int) -> bool:
    """Nothing listens on the port: a connection is refused."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def runtime_folders(port: int) -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob(f"kmeans-serve-{port}-*"))


def log_lines(output: str, level: str) -> list[str]:
    """serve's own log lines at `level`, without their time and pid."""
    return [
        line.split(f" {level} ", 1)[1]
        for line in output.splitlines()
        if re.match(rf"\d{{4}}-\d\d-\d\d [\d:,]+ \[\d+\] {level} ", line)
    ]


# --- stopping --------------------------------------------------------------------------


def test_sigterm_with_a_request_outlasting_the_drain_kills_nginx_and_exits_0(
    tmp_path, start_server
) -> None:
    """A request that computes for a minute (the default 60 s timeout lets it): on SIGTERM
    nginx stops accepting and drains for DRAIN_TIMEOUT, is then killed, gunicorn stopped,
    and serve exits 0 before SageMaker's SIGKILL. The client gets no answer."""
    base = tmp_path / "ml"
    write_model(base / "model", ROWS)
    server = start_server(base, PYTHONPATH=str(TESTS), SAGEMAKER_MODEL_SERVER_WORKERS="1")
    outcome: list[object] = []

    def slow_request() -> None:
        try:
            outcome.append(
                requests.post(
                    server.url + "/invocations",
                    data=f"{SLEEP + 60},3,1,0.2",
                    headers={"Content-Type": "text/csv"},
                    timeout=90,
                )
            )
        except requests.RequestException as error:
            outcome.append(error)

    client = threading.Thread(target=slow_request)
    client.start()
    time.sleep(1.5)  # the request is with the worker, sleeping
    started_processes = descendants(server.process.pid)
    stopping = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    time.sleep(1.5)
    assert server.process.poll() is None, "serve did not wait for the request in flight"
    assert refused(server.port), "nginx still accepts connections while draining"
    code = server.process.wait(SAGEMAKER_STOP_GRACE + 10)
    took = time.monotonic() - stopping
    client.join(30)
    assert not client.is_alive()
    assert code == 0
    assert supervisor.DRAIN_TIMEOUT <= took < SAGEMAKER_STOP_GRACE, f"stopped in {took:.1f} s"
    assert len(outcome) == 1 and isinstance(outcome[0], requests.ConnectionError), outcome
    output = server.output()
    assert log_lines(output, "WARNING") == [
        f"nginx did not stop within {supervisor.DRAIN_TIMEOUT} s; killing it"
    ]
    said = log_lines(output, "INFO")
    assert "received SIGTERM: finishing requests in flight" in said
    assert said[-1] == "stopped"
    assert log_lines(output, "ERROR") == []
    assert [pid for pid in started_processes if alive(pid)] == []
    assert runtime_folders(server.port) == []


def test_sigterm_while_the_model_loads_stops_gunicorn_and_exits_0(hanging_model, start_server):
    """SIGTERM before gunicorn is ready: serve stops it at once, exit 0, nginx never ran."""
    server = start_server(hanging_model, wait=False)
    gunicorn = wait_for_child(server.process.pid, "gunicorn")
    time.sleep(1.0)  # gunicorn is in the model's loading, which never ends
    assert refused(server.port), "something answers before the model is loaded"
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(supervisor.GUNICORN_STOP_TIMEOUT + 10) == 0
    assert not alive(gunicorn)
    said = log_lines(server.output(), "INFO")  # no "serving on ...": nginx never started
    assert said == ["received SIGTERM: finishing requests in flight", "stopped"]
    assert runtime_folders(server.port) == []


# --- starting --------------------------------------------------------------------------

START_TIMEOUT = 3


def serve_with_start_timeout(base: Path, log: Path, port: int) -> subprocess.Popen:
    """kmeans/serve's main() with START_TIMEOUT shortened, nothing else changed."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); from kmeans import supervisor; "
        f"supervisor.START_TIMEOUT = {START_TIMEOUT}; sys.exit(supervisor.main())"
    )
    env = entrypoint_env(base, SAGEMAKER_BIND_TO_PORT=str(port), SAGEMAKER_BIND_TO_HOST="127.0.0.1")
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        cwd="/",
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def test_a_model_that_never_loads_hits_the_start_timeout(hanging_model, tmp_path) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    started = time.monotonic()
    serve = serve_with_start_timeout(hanging_model, log, port)
    try:
        gunicorn = wait_for_child(serve.pid, "gunicorn")
        code = serve.wait(START_TIMEOUT + supervisor.GUNICORN_STOP_TIMEOUT + 30)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    took = time.monotonic() - started
    output = log.read_text()
    assert code == 1, output
    assert took >= START_TIMEOUT
    assert log_lines(output, "ERROR") == [f"gunicorn did not become ready within {START_TIMEOUT} s"]
    assert log_lines(output, "INFO") == ["stopped"]
    assert not alive(gunicorn)
    assert refused(port)
    assert runtime_folders(port) == []


def test_a_gunicorn_killed_while_loading_stops_serve_with_exit_1(hanging_model, start_server):
    """gunicorn dies before it is ready: one line with its code, and exit 1, not 256 - 9."""
    server = start_server(hanging_model, wait=False)
    gunicorn = wait_for_child(server.process.pid, "gunicorn")
    time.sleep(0.5)
    os.kill(gunicorn, signal.SIGKILL)
    assert server.process.wait(30) == 1
    output = server.output()
    assert log_lines(output, "ERROR") == ["gunicorn exited with code -9 before serving; see above"]
    assert log_lines(output, "INFO") == ["stopped"]
    assert refused(server.port)
    assert runtime_folders(server.port) == []


# --- a child that dies -----------------------------------------------------------------


@pytest.mark.parametrize(
    "signum,code",
    [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 0)],
    ids=["SIGKILL", "SIGTERM"],
)
def test_serve_exits_1_when_the_gunicorn_master_dies(trained, start_server, signum, code) -> None:
    """Killed, or stopped on its own (exit 0): either way serve stops nginx and exits 1,
    so the platform replaces the container instead of nginx answering 502s."""
    server = start_server(trained, SAGEMAKER_MODEL_SERVER_WORKERS="2")
    deadline = time.monotonic() + 30
    while len((pids := server.pids())["workers"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # serve is ready once the first worker is
    assert len(pids["gunicorn"]) == 1 and len(pids["workers"]) == 2 and pids["nginx"], pids
    everything = descendants(server.process.pid)
    os.kill(pids["gunicorn"][0], signum)
    assert server.process.wait(supervisor.DRAIN_TIMEOUT + 10) == 1
    output = server.output()
    assert log_lines(output, "ERROR") == [
        f"gunicorn exited unexpectedly with code {code}; stopping"
    ]
    assert log_lines(output, "INFO")[-1] == "stopped"
    time.sleep(0.5)  # init reaps what serve left to it
    assert [pid for pid in everything if alive(pid)] == []
    assert refused(server.port)
    assert runtime_folders(server.port) == []


# --- settings --------------------------------------------------------------------------

INTEGERS = {  # every integer setting and what it accepts
    "SAGEMAKER_BIND_TO_PORT": "from 1 to 65535",
    "SAGEMAKER_MODEL_SERVER_WORKERS": "≥ 1",
    "MODEL_SERVER_WORKERS": "≥ 1",
    "SAGEMAKER_MODEL_SERVER_TIMEOUT": "≥ 1",
    "MODEL_SERVER_TIMEOUT": "≥ 1",
    "SAGEMAKER_MAX_PAYLOAD_IN_MB": "≥ 1",
}
NUMBERS = {  # every number setting and its unit
    "SAGE_KMEANS_MODEL_MEMORY_MB": "MB",
    "SAGE_KMEANS_PIPE_WAIT_SECONDS": "seconds",
    "SAGE_KMEANS_CHECKPOINT_SECONDS": "seconds",
    "SAGE_KMEANS_JOIN_TIMEOUT_SECONDS": "seconds",
}
FLAGS = ["SAGE_KMEANS_ALLOW_PICKLE", "SAGEMAKER_MULTI_MODEL", "SAGE_KMEANS_METRICS"]
BAD_SETTINGS = (
    [
        (name, value, f"{name} must be an integer {accepted}, got {value!r}")
        for name, accepted in INTEGERS.items()
        for value in ["abc", "0", "-1", "1.5", "1e3", "8 0"]
    ]
    + [
        (
            "SAGEMAKER_BIND_TO_PORT",
            value,
            f"SAGEMAKER_BIND_TO_PORT must be an integer from 1 to 65535, got {value!r}",
        )
        for value in ["65536", "70000"]
    ]
    + [
        (name, value, f"{name} must be a number of {unit} ≥ 0, got {value!r}")
        for name, unit in NUMBERS.items()
        for value in ["x", "-1", "nan", "-inf"]
    ]
    + [
        (name, value, f"{name} must be true or false, got {value!r}")
        for name in FLAGS
        for value in ["maybe", "2"]
    ]
)


def test_the_bad_settings_cover_the_environment_table() -> None:
    """Every setting kmeans/environment.py parses as an integer, number or flag is here."""
    integers = {v for s in NUMERIC_SETTINGS if s.unit is None for v in s.variables}
    numbers = {v for s in NUMERIC_SETTINGS if s.unit is not None for v in s.variables}
    source = (ROOT / "kmeans" / "environment.py").read_text()
    flags = set(re.findall(r'_flag\(env, "(\w+)"', source))
    assert (integers, numbers, flags) == (set(INTEGERS), set(NUMBERS), set(FLAGS))


@pytest.mark.parametrize("name,value,message", BAD_SETTINGS)
def test_a_bad_setting_stops_serve_with_one_line(trained, name, value, message) -> None:
    env = entrypoint_env(trained, SAGEMAKER_BIND_TO_HOST="127.0.0.1")
    env.setdefault("SAGEMAKER_BIND_TO_PORT", str(free_port()))
    if not name.startswith("SAGEMAKER_"):  # an alias counts only without the full name
        env.pop(f"SAGEMAKER_{name}", None)
    env[name] = value
    result = subprocess.run(
        [str(SERVE)], env=env, cwd="/", capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        2,
        "",
        f"serve: cannot start: {message}\n",
    )

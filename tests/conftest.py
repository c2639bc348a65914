"""Shared fixtures: /opt/ml trees in temporary folders, the real entrypoints run the way
SageMaker runs them (as processes, with SAGEMAKER_BASE_DIR pointing at the tree), the image
under test, and .venv-notebook (the SageMaker SDK's own venv)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "kmeans" / "train"
SERVE = ROOT / "kmeans" / "serve"
SAMPLE = ROOT / "local_test" / "test_dir"
IRIS = SAMPLE / "input" / "data" / "train" / "iris.csv"
NOTEBOOK_REQUIREMENTS = ROOT / "requirements-notebook.txt"
NOTEBOOK_VENV = ROOT / ".venv-notebook"
MXNET_REQUIREMENTS = ROOT / "requirements-mxnet.txt"
MXNET_VENV = ROOT / ".venv-mxnet"
# CI sets these to 1 where the tests they guard run (.ci/run, .ci/multiarch.sh,
# .ci/fresh-machine.sh): what would skip (no Docker engine, no SDK or MXNet venv, no tmpfs to
# fill, no arm64 image) fails instead.
REQUIRE_CONTAINER = "SAGE_KMEANS_REQUIRE_CONTAINER"
REQUIRE_NOTEBOOK = "SAGE_KMEANS_REQUIRE_NOTEBOOK"
REQUIRE_TMPFS = "SAGE_KMEANS_REQUIRE_TMPFS"
REQUIRE_ARM64 = "SAGE_KMEANS_REQUIRE_ARM64"
REQUIRE_MXNET = "SAGE_KMEANS_REQUIRE_MXNET"


def skip_or_fail(message: str, *flags: str) -> None:
    """Skip saying why, or fail when one of these environment variables is 1."""
    required = [flag for flag in flags if os.environ.get(flag) == "1"]
    if required:
        pytest.fail(f"{required[0]}=1 but {message}")
    pytest.skip(message)


def entrypoint_env(base: Path, **extra: str) -> dict[str, str]:
    """The environment for a door: this interpreter's bin first, the tree as /opt/ml."""
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), **extra}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def make_job(
    base: Path,
    hyperparameters: dict | None = None,
    files: dict[str, bytes | str] | None = None,
    channels: dict | None = None,
) -> Path:
    """An /opt/ml tree: config files, and data files keyed by their path under input/data."""
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    if hyperparameters is not None:
        (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    if channels is not None:
        (config / "inputdataconfig.json").write_text(json.dumps(channels))
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]})
    )
    for name, content in (files or {}).items():
        path = base / "input" / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    (base / "model").mkdir()
    (base / "output").mkdir()
    return base


def run_train(base: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(TRAIN)],
        env=entrypoint_env(base, **env),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Set by coverage (`make test COVERAGE=1`): the processes the tests start measure themselves.
COVERAGE_IN_SUBPROCESSES = "COVERAGE_PROCESS_CONFIG"


class Server:
    """A running `kmeans/serve` on a loopback port."""

    def __init__(self, base: Path, log: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        environment = entrypoint_env(
            base, SAGEMAKER_BIND_TO_PORT=str(self.port), SAGEMAKER_BIND_TO_HOST="127.0.0.1", **env
        )
        if "SAGE_KMEANS_MODEL_MEMORY_MB" in env:
            # The registry sizes a model by what its load allocates (tracemalloc), which under
            # coverage also counts coverage's own records of the lines that load runs first
            # (117 KB against 256 KB for three workers): a budget is tested unmeasured.
            environment.pop(COVERAGE_IN_SUBPROCESSES, None)
        self.process = subprocess.Popen(
            [str(SERVE)],
            env=environment,
            cwd="/",
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"serve exited with {self.process.returncode}:\n{self.output()}"
                )
            try:
                if requests.get(self.url + "/ping", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"serve not ready in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def pids(self) -> dict[str, list[int]]:
        """gunicorn master and workers, nginx master and workers, by parent."""
        children = process_children()
        found: dict[str, list[int]] = {"gunicorn": [], "workers": [], "nginx": []}
        for pid, args in children.get(self.process.pid, []):
            if "gunicorn" in args:
                found["gunicorn"].append(pid)
                found["workers"] += [child for child, _ in children.get(pid, [])]
            elif "nginx" in args:
                found["nginx"].append(pid)
                found["nginx"] += [child for child, _ in children.get(pid, [])]
        return found


def process_children() -> dict[int, list[tuple[int, str]]]:
    """Every process's children as (pid, command line), read from /proc: a minimal Debian
    has no `ps`. A zombie's empty command line reads as its name in brackets, as ps shows it."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # it exited while we looked
            continue
        name, _, rest = stat.partition(" (")[2].rpartition(")")
        ppid = int(rest.split()[1])  # rest: " state ppid ..."
        args = cmdline.replace(b"\0", b" ").decode(errors="replace").strip() or f"[{name}]"
        children.setdefault(ppid, []).append((int(entry.name), args))
    return children


def sample_job(base: Path, source: Path = SAMPLE) -> Path:
    """A copy of the sample job's input/ only, with empty model/ and output/: whatever a
    local run (`make demo`, which CI runs just before `make test`) left in `source` stays
    out, so no stale file can satisfy a test."""
    shutil.copytree(source / "input", base / "input")
    (base / "model").mkdir()
    (base / "output").mkdir()
    return base


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample job (input/ only, see sample_job), trained once by the real `train`."""
    base = sample_job(tmp_path_factory.mktemp("trained") / "ml")
    result = run_train(base)
    assert result.returncode == 0, result.stdout + result.stderr
    return base


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator:
    """Start servers on free ports; every one is stopped at the end of the test."""
    servers: list[Server] = []

    def start(base: Path, wait: bool = True, **env: str) -> Server:
        server = Server(base, tmp_path / f"serve-{len(servers)}.log", **env)
        servers.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.stop()


# -- the image --------------------------------------------------------------------------


def docker(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def engine_problem() -> str | None:
    """Why no Docker engine can be used, or None when one answers."""
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", timeout=30)
    except FileNotFoundError:
        return "the docker command is not installed"
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if info.returncode != 0:
        said = info.stderr.strip().splitlines() or [f"exit status {info.returncode}"]
        return f"`docker info` failed: {said[-1]}"
    return None


def build(tag: str, context: Path) -> None:
    result = docker("build", "--network", "host", "-t", tag, str(context), timeout=1800)
    assert result.returncode == 0, f"docker build failed:\n{result.stderr[-3000:]}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test on the built image (the `image` fixture) is marked `host` (pyproject.toml)."""
    for item in items:
        if "image" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.host)


@pytest.fixture(scope="session")
def image() -> str:
    """$SAGE_KMEANS_IMAGE as given, else sage-kmeans:test built from this checkout (the
    layer cache makes a rebuild cheap). Skips without a Docker engine, unless
    SAGE_KMEANS_REQUIRE_CONTAINER=1."""
    problem = engine_problem()
    if problem:
        skip_or_fail(f"no Docker engine reachable ({problem})", REQUIRE_CONTAINER)
    if "SAGE_KMEANS_IMAGE" in os.environ:
        tag = os.environ["SAGE_KMEANS_IMAGE"]
        found = docker("image", "inspect", tag)
        assert found.returncode == 0, f"SAGE_KMEANS_IMAGE={tag} is not a local image"
        return tag
    build("sage-kmeans:test", ROOT)
    return "sage-kmeans:test"


def local_mode_problem() -> str | None:
    """What SDK local mode needs beyond a Docker engine, and is missing (None: nothing)."""
    compose = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, check=False
    )
    if compose.returncode != 0:  # no compose v2: the SDK falls back to docker-compose
        if shutil.which("docker-compose") is None:
            return "docker compose is not installed (Debian: apt-get install docker-compose)"
        compose = subprocess.run(
            ["docker-compose", "version"], capture_output=True, text=True, check=False
        )
        if compose.returncode != 0:
            said = (compose.stderr.strip().splitlines() or ["no output"])[-1]
            return f"`docker-compose version` fails: {said}"
    if shutil.which("pgrep") is None:
        return (
            "pgrep is not installed: the SDK stops local endpoints with it (apt-get install procps)"
        )
    return None


# -- the SageMaker SDK's venv -----------------------------------------------------------


def notebook_python(*flags: str) -> Path:
    """.venv-notebook's Python with requirements-notebook.txt installed. The SDK cannot share
    .venv: see requirements-notebook.txt."""
    return venv_python(NOTEBOOK_VENV, NOTEBOOK_REQUIREMENTS, *flags)


def mxnet_python(*flags: str) -> Path:
    """.venv-mxnet's Python with MXNet, the tests' second reader and writer of model_algo-1
    (requirements/mxnet.in says why it has a venv of its own)."""
    return venv_python(MXNET_VENV, MXNET_REQUIREMENTS, *flags)


def venv_python(venv: Path, requirements: Path, *flags: str) -> Path:
    """`venv`'s Python with the lock `requirements` installed, (re)installed when that file
    changes. When the install fails: skip, or fail when one of `flags` is 1."""
    python, stamp = venv / "bin" / "python", venv / ".requirements"
    want = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == want:
        return python
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    steps = [[sys.executable, "-m", "venv", "--clear", str(venv)]]
    steps = steps if not python.exists() else []
    steps.append([*pip, "--require-hashes", "-r", str(requirements)])
    for step in steps:
        problem = None
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900, check=False)
            if done.returncode != 0:
                last_lines = "\n".join(done.stderr.strip().splitlines()[-5:])
                problem = f"`{' '.join(step[:4])}` failed:\n{last_lines[-2000:]}"
        except subprocess.TimeoutExpired:
            problem = f"`{' '.join(step[:4])}` took over 15 minutes"
        if problem:
            message = f"cannot install {requirements.name} into {venv.name}: {problem}"
            skip_or_fail(message, *flags)
    stamp.write_text(want)
    return python


def run_in_process_group(command: list[str], timeout: float, **kwargs) -> tuple[int, str, str]:
    """Run a harness that starts processes and containers of its own: on timeout (or an
    interrupted test) SIGTERM its whole group, so it stops what it started, then SIGKILL.
    Returns exit status, stdout and stderr."""
    harness = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,
    )
    try:
        out, err = harness.communicate(timeout=timeout)
    finally:
        if harness.poll() is None:
            os.killpg(harness.pid, signal.SIGTERM)
            try:
                harness.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(harness.pid, signal.SIGKILL)
                harness.wait()
    return harness.returncode, out, err

"""Shared fixtures: /opt/ml trees in temporary folders, and the real entrypoints run the
way SageMaker runs them (as processes, with SAGEMAKER_BASE_DIR pointing at the tree)."""

from __future__ import annotations

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
    (base / "model").mkdir(exist_ok=True)
    (base / "output").mkdir(exist_ok=True)
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


class Server:
    """A running `kmeans/serve` on a loopback port."""

    def __init__(self, base: Path, log: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process = subprocess.Popen(
            [str(SERVE)],
            env=entrypoint_env(
                base,
                SAGEMAKER_BIND_TO_PORT=str(self.port),
                SAGEMAKER_BIND_TO_HOST="127.0.0.1",
                **env,
            ),
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
        table = subprocess.run(
            ["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True
        ).stdout
        children: dict[int, list[tuple[int, str]]] = {}
        for line in table.splitlines():
            pid, ppid, args = line.split(None, 2)
            children.setdefault(int(ppid), []).append((int(pid), args))
        found: dict[str, list[int]] = {"gunicorn": [], "workers": [], "nginx": []}
        for pid, args in children.get(self.process.pid, []):
            if "gunicorn" in args:
                found["gunicorn"].append(pid)
                found["workers"] += [child for child, _ in children.get(pid, [])]
            elif "nginx" in args:
                found["nginx"].append(pid)
                found["nginx"] += [child for child, _ in children.get(pid, [])]
        return found


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample job, trained once by the real `train`."""
    base = tmp_path_factory.mktemp("trained") / "ml"
    shutil.copytree(SAMPLE, base)
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

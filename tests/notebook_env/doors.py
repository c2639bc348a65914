"""Run the project's real `kmeans/train` and `kmeans/serve` the way SageMaker would.

Each run gets its own /opt/ml stand-in (SAGEMAKER_BASE_DIR) under a scratch folder.
The doors run with the project's runtime venv (its bin/ first on PATH), not with the
notebook's, and see none of the notebook's AWS settings.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESOURCE_CONFIG = {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unpack(archive: bytes, folder: Path) -> None:
    """Unpack a model archive as SageMaker does, taking only files and folders, and only
    inside `folder`. (tarfile's extraction filters need Python 3.11.4; Debian 12 has 3.11.2.)"""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar:
            target = (folder / member.name).resolve()
            if not target.is_relative_to(folder.resolve()):
                raise ValueError(f"model archive member {member.name!r} points outside it")
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
            else:
                raise ValueError(f"model archive member {member.name!r} is not a file or folder")


class Doors:
    def __init__(self, scratch: Path, runtime_bin: Path) -> None:
        self.scratch = scratch
        self.path = f"{runtime_bin}:/usr/sbin:/usr/local/sbin:{os.environ['PATH']}"
        self.servers: list[subprocess.Popen] = []

    def _env(self, base: Path, extra: dict[str, str]) -> dict[str, str]:
        # The container sees only what SageMaker gives it, not the notebook's AWS settings.
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_"))}
        return {**keep, "PATH": self.path, "SAGEMAKER_BASE_DIR": str(base), **extra}

    def train(
        self, name: str, hyperparameters: dict, channels: dict, env: dict, timeout: float
    ) -> tuple[int, str, Path]:
        """`train` on a prepared /opt/ml; channels map names to inputdataconfig entries.

        The caller has put each channel's files under input/data/<channel>/ already.
        Returns exit code, combined log and the base folder.
        """
        base = self.scratch / name
        config = base / "input" / "config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
        (config / "inputdataconfig.json").write_text(json.dumps(channels))
        (config / "resourceconfig.json").write_text(json.dumps(RESOURCE_CONFIG))
        (base / "model").mkdir(exist_ok=True)
        (base / "output" / "data").mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [str(ROOT / "kmeans" / "train")],
            env=self._env(base, env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return done.returncode, done.stdout + done.stderr, base

    def serve(self, name: str, model_tar: bytes, env: dict[str, str]) -> int:
        """Unpack the model archive into model/, start `serve`, wait for /ping; the port."""
        base = self.scratch / name
        (base / "model").mkdir(parents=True)
        unpack(model_tar, base / "model")
        port = free_port()
        extra = {"SAGEMAKER_BIND_TO_HOST": "127.0.0.1", "SAGEMAKER_BIND_TO_PORT": str(port)}
        with open(base / "serve.log", "wb") as log:
            server = subprocess.Popen(
                [str(ROOT / "kmeans" / "serve")],
                env=self._env(base, {**env, **extra}),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.servers.append(server)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"serve exited {server.returncode}: {base / 'serve.log'}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    return port
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"serve did not answer /ping within 60 s: {base / 'serve.log'}")

    def serve_logs(self) -> str:
        return "\n".join(
            f"--- {log}\n{log.read_text(errors='replace')[-3000:]}"
            for log in sorted(self.scratch.glob("*/serve.log"))
        )

    def stop(self) -> None:
        for server in self.servers:
            server.terminate()
        for server in self.servers:
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

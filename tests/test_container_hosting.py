"""The image in the hosting modes that constrain its container.

Serverless inference: a non-root user, a read-only root file system
with a tmpfs on /tmp, the model folder mounted read-only, one worker, 1,024 MB of memory and
no swap. It answers its first /ping (timed from `docker run`, under that limit), predicts
payload.csv and a body near serverless's 4 MB limit, and stops cleanly; `train` in such a
container says in one line which folder it cannot write, and trains when its folders are
writable.

A multi-container endpoint: two containers of the image on one host, each on the port
SageMaker gives it (SAGEMAKER_BIND_TO_PORT), each answering for its own model.

Skipped without a Docker engine, unless SAGE_KMEANS_REQUIRE_CONTAINER=1 (CI)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import docker
from figures import record
from test_container import PAYLOAD, ROOT, free_port, fresh_test_dir, trained  # noqa: F401

SERVERLESS = ("--read-only", "--tmpfs", "/tmp", "--user", "1000:1000")
MEMORY = ("--memory", "1g", "--memory-swap", "1g")


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    headers = {"Content-Type": "text/csv", "Accept": "text/csv", **(headers or {})}
    request = urllib.request.Request(f"{url}/invocations", body, headers)
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status == 200
        return answer.read()


def _closest(model: Path, rows: np.ndarray) -> np.ndarray:
    """The oracle: each row's closest centre, from model.npz's centres with numpy."""
    with np.load(model / "model.npz") as arrays:
        centres = arrays["centres"]
    distances = ((rows[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    return distances.argmin(axis=1)


def _first_ping(url: str, name: str, seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as answer:
                if answer.status == 200:
                    return time.monotonic()
        except OSError:
            pass
        running = docker("inspect", "--format", "{{.State.Running}}", name)
        assert running.stdout.strip() != "false", docker("logs", name).stdout[-3000:]
        time.sleep(0.05)
    pytest.fail(f"{url}/ping did not answer 200 within {seconds} s")


def test_serves_read_only_as_another_user_in_one_gigabyte(image: str, trained) -> None:  # noqa: F811
    base, result = trained
    assert result.returncode == 0, result.stderr
    port, name = free_port(), f"sage-kmeans-serverless-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    run = docker(
        "run", "--detach", "--name", name, "--network", "host", *SERVERLESS, *MEMORY,
        "-e", "SAGEMAKER_BIND_TO_HOST=127.0.0.1", "-e", f"SAGEMAKER_BIND_TO_PORT={port}",
        "-e", "SAGEMAKER_MODEL_SERVER_WORKERS=1",
        "-v", f"{base / 'model'}:/opt/ml/model:ro",
        image, "serve",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    try:
        url = f"http://127.0.0.1:{port}"
        ready = _first_ping(url, name, 180)  # serverless's limit for a cold start
        record("serverless first ping", seconds=ready - started)
        print(f"serverless: first /ping 200 after {ready - started:.2f} s from docker run")

        answer = subprocess.run(
            [str(ROOT / "predict.sh"), url, str(PAYLOAD), "text/csv"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert answer.returncode == 0, answer.stderr
        rows = np.loadtxt(PAYLOAD, delimiter=",", ndmin=2)
        clusters = [int(line.split(",")[0]) for line in answer.stdout.splitlines()]
        assert clusters == _closest(base / "model", rows).tolist(), answer.stdout

        # Close to serverless's 4 MB payload limit: the default limit here is 6 MB.
        generator = np.random.default_rng(7)
        big = generator.normal(size=(120_000, rows.shape[1])).round(5)
        text = io.StringIO()
        np.savetxt(text, big, delimiter=",", fmt="%.5f")
        body = text.getvalue().encode()
        assert 3.5e6 < len(body) < 4 << 20
        lines = _post(url, body).decode().splitlines()
        assert [int(line.split(",")[0]) for line in lines] == _closest(base / "model", big).tolist()

        state = docker("inspect", "--format", "{{.State.OOMKilled}} {{.HostConfig.Memory}}", name)
        assert state.stdout.split() == ["false", str(1 << 30)], state.stdout
        stopping = time.monotonic()
        assert docker("stop", "--time", "30", name, timeout=60).returncode == 0
        assert time.monotonic() - stopping < 30
        exit_code = docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        logs = docker("logs", name)
        assert exit_code == "0", logs.stdout[-3000:] + logs.stderr[-3000:]
        said = logs.stdout + logs.stderr
        for complaint in ("Read-only file system", "Permission denied", "Traceback"):
            assert complaint not in said, said[-3000:]
    finally:
        docker("rm", "--force", name)


def _train(image: str, base: Path, *args: str) -> subprocess.CompletedProcess:
    return docker(
        "run", "--rm", "--network", "host", *SERVERLESS, *args, "-v", f"{base}:/opt/ml",
        image, "train", timeout=600,
    )  # fmt: skip


def _failure_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stdout.splitlines() if "training failed:" in line]


def test_train_says_which_folder_it_cannot_write(image: str, tmp_path: Path) -> None:
    base = fresh_test_dir(tmp_path)  # owned by the test's user, not by user 1000
    os.chmod(base / "output", 0o777)  # the failure file can be written, the model cannot
    result = _train(image, base)
    assert result.returncode == 1, result.stdout + result.stderr
    reason = (
        "cannot write /opt/ml/model (permission denied) as user 1000: train writes the model "
        "to /opt/ml/model and its output to /opt/ml/output; mount them writable (SageMaker "
        "does) or run as their owner"
    )
    assert [line.split("training failed: ", 1)[1] for line in _failure_lines(result)] == [reason]
    assert "Traceback" not in result.stdout + result.stderr
    assert "reading channel" not in result.stdout  # refused before any data is read
    assert (base / "output" / "failure").read_text().splitlines()[0] == reason
    assert sorted(p.name for p in (base / "model").iterdir()) == []


def test_train_refuses_a_read_only_model_mount_in_one_line(image: str, tmp_path: Path) -> None:
    base = fresh_test_dir(tmp_path)
    for folder in ("model", "output"):
        os.chmod(base / folder, 0o777)
    result = _train(image, base, "-v", f"{base / 'model'}:/opt/ml/model:ro")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = _failure_lines(result)
    assert len(lines) == 1 and "cannot write /opt/ml/model (read-only file system)" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_train_runs_read_only_when_its_folders_are_writable(image: str, tmp_path: Path) -> None:
    base = fresh_test_dir(tmp_path)
    for folder in ("model", "output"):
        os.chmod(base / folder, 0o777)
    result = _train(image, base)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {"model.npz", "model.json"} <= {p.name for p in (base / "model").iterdir()}
    assert (base / "output" / "data" / "summary.json").is_file()
    shutil.rmtree(base)


def test_two_containers_share_a_host_on_the_ports_they_are_given(image: str, trained) -> None:  # noqa: F811
    """Multi-container endpoints (and serial inference pipelines) run the containers on one
    host and tell each its port; the image's accept-bind-to-port label says it listens there."""
    base, result = trained
    assert result.returncode == 0, result.stderr
    second = base.parent / "second_model"
    shutil.rmtree(second, ignore_errors=True)
    shutil.copytree(base / "model", second)
    with np.load(second / "model.npz") as arrays:  # the same model with its centres reversed
        saved = {name: arrays[name] for name in arrays.files}
    saved["centres"] = saved["centres"][::-1].copy()
    np.savez(second / "model.npz", **saved)
    (second / "model.joblib").unlink()

    containers = {}
    try:
        for model in (base / "model", second):
            port, name = free_port(), f"sage-kmeans-mce-{uuid.uuid4().hex[:8]}"
            run = docker(
                "run", "--detach", "--name", name, "--network", "host", *SERVERLESS,
                "-e", "SAGEMAKER_BIND_TO_HOST=127.0.0.1", "-e", f"SAGEMAKER_BIND_TO_PORT={port}",
                "-e", "SAGEMAKER_MODEL_SERVER_WORKERS=1", "-v", f"{model}:/opt/ml/model:ro",
                image, "serve",
            )  # fmt: skip
            assert run.returncode == 0, run.stderr
            containers[name] = (f"http://127.0.0.1:{port}", model)
        rows = np.loadtxt(PAYLOAD, delimiter=",", ndmin=2)
        for name, (url, model) in containers.items():
            _first_ping(url, name, 180)
            target = {"X-Amzn-SageMaker-Target-Container-Hostname": name}
            lines = _post(url, PAYLOAD.read_bytes(), target).decode().splitlines()
            clusters = [int(line.split(",")[0]) for line in lines]
            assert clusters == _closest(model, rows).tolist(), (name, lines)
        for name, (url, _) in containers.items():  # the log line names the container
            logged = [
                line for line in docker("logs", name).stdout.splitlines() if "invocation:" in line
            ]
            assert len(logged) == 1 and logged[0].endswith(f" container={name}"), logged
            with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
                scraped = answer.read().decode()
            assert f'container="{name}"' in scraped
        first, second_answer = (_post(url, PAYLOAD.read_bytes()) for url, _ in containers.values())
        assert first != second_answer  # each port is its own container's model
    finally:
        for name in containers:
            docker("rm", "--force", name)

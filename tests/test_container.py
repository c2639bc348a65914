"""The real image, run the way SageMaker runs it: `train` and `serve` with a mounted /opt/ml,
through local_test/train_local.sh, serve_local.sh and predict.sh.

Image: the `image` fixture (conftest.py): $SAGE_KMEANS_IMAGE, else sage-kmeans:test built
from this checkout. Skipped when no Docker engine is reachable, unless
SAGE_KMEANS_REQUIRE_CONTAINER=1 (CI), which turns the skip into a failure.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import build, docker

ROOT = Path(__file__).resolve().parent.parent
TEST_DIR = ROOT / "local_test" / "test_dir"
PAYLOAD = ROOT / "payload.csv"
QUALITY_METRIC = re.compile(r"#quality_metric: host=algo-1, train msd <loss>=(\S+)")


def fresh_test_dir(parent: Path) -> Path:
    """A copy of local_test/test_dir without any model or output from earlier runs."""
    target = parent / "opt_ml"
    shutil.copytree(TEST_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    for folder in ("model", "output"):
        shutil.rmtree(target / folder, ignore_errors=True)
        (target / folder).mkdir()
    return target


def run_with_opt_ml(image: str, base: Path, timeout: float) -> subprocess.CompletedProcess:
    """`docker run IMAGE` with no command, `base` mounted as /opt/ml (SDK v3 local mode)."""
    return docker(
        "run", "--rm", "--network", "host", "-v", f"{base}:/opt/ml", image, timeout=timeout
    )


def train(image: str, base: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / "local_test" / "train_local.sh"), image, str(base)],
        env={**os.environ, "DOCKER_RUN_ARGS": "--network host"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def trained(image: str, tmp_path_factory: pytest.TempPathFactory):
    base = fresh_test_dir(tmp_path_factory.mktemp("trained"))
    return base, train(image, base)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_ping(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.poll() is None, f"serve exited early: {server.communicate()}"
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url}/ping did not answer 200 within {seconds} s")


def test_train_writes_the_model_and_reports_the_metric(trained) -> None:
    base, result = trained
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert (base / "model" / "model.joblib").is_file()
    assert (base / "model" / "model.json").is_file()
    assert not (base / "output" / "failure").exists()
    assert QUALITY_METRIC.search(log), log


@pytest.mark.parametrize("user", ["root", "65534:65534"])
def test_serve_predicts_and_stops_cleanly(image: str, trained, user: str) -> None:
    base, result = trained
    assert result.returncode == 0, result.stderr
    serve_predict_and_stop(image, base, user)


def serve_predict_and_stop(
    image: str, base: Path, user: str = "root", ping_seconds: float = 120, columns: int | None = 2
) -> None:
    """serve_local.sh serves the model in `base`, predict.sh gets one answer line per row of
    payload.csv (of `columns` values, K-Means's two by default; None: any one count), and
    `docker stop` ends it with exit status 0 well within its grace period."""
    port, name = free_port(), f"sage-kmeans-test-{uuid.uuid4().hex[:8]}"
    run_args = f"--network host -e SAGEMAKER_BIND_TO_HOST=127.0.0.1 --name {name}"
    server = subprocess.Popen(
        [str(ROOT / "local_test" / "serve_local.sh"), image, str(base)],
        env={
            **os.environ,
            "PORT": str(port),
            "DOCKER_RUN_ARGS": f"{run_args} --user {user}",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_ping(url, server, ping_seconds)
        answer = subprocess.run(
            [str(ROOT / "predict.sh"), url, str(PAYLOAD), "text/csv"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert answer.returncode == 0, answer.stderr
        rows = PAYLOAD.read_text().splitlines()
        lines = answer.stdout.splitlines()
        assert len(lines) == len(rows), answer.stdout
        counts = {len(line.split(",")) for line in lines}
        assert counts == {columns} if columns else len(counts) == 1, answer.stdout

        started = time.monotonic()
        docker("stop", "--time", "30", name, timeout=60)
        assert server.wait(timeout=40) == 0, server.communicate()
        assert time.monotonic() - started < 30
    finally:
        docker("rm", "--force", name)
        if server.poll() is None:
            server.kill()
        server.communicate(timeout=30)


def test_no_argument_trains_when_a_training_config_is_mounted(image: str, tmp_path: Path) -> None:
    base = fresh_test_dir(tmp_path)
    result = run_with_opt_ml(image, base, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "so: train" in result.stderr
    assert (base / "model" / "model.joblib").is_file()


def test_no_argument_serves_otherwise(image: str, tmp_path: Path) -> None:
    """No config: it serves; with no model either, serve says so in one line and exits."""
    result = run_with_opt_ml(image, tmp_path, timeout=120)
    assert result.returncode != 0
    assert "so: serve" in result.stderr
    assert "model" in result.stderr.strip().splitlines()[-1]


def test_any_other_command_runs_as_given(image: str) -> None:
    result = docker("run", "--rm", "--network", "host", image, "python3", "-c", "print('hi')")
    assert (result.returncode, result.stdout) == (0, "hi\n"), result.stderr


def test_failed_training_writes_the_failure_file(image: str, tmp_path: Path) -> None:
    base = fresh_test_dir(tmp_path)
    config = base / "input" / "config" / "hyperparameters.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "k": "0"}))
    result = train(image, base)
    assert result.returncode != 0
    failure = (base / "output" / "failure").read_text()
    assert "k" in failure, failure
    assert not (base / "model" / "model.joblib").exists()


def test_labels_entrypoint_and_environment(image: str) -> None:
    result = docker("image", "inspect", "--format", "{{json .Config}}", image)
    config = json.loads(result.stdout)
    labels = config["Labels"] or {}
    assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert config["Entrypoint"] == ["/opt/program/kmeans/entrypoint"]
    assert "PYTHONUNBUFFERED=1" in config["Env"]


def test_doors_run_whatever_the_checkout_did_to_them(image: str, tmp_path: Path) -> None:
    """Mode 644 and CRLF line endings on the doors (a Windows or odd git checkout) still work."""
    context = tmp_path / "context"
    shutil.copytree(
        ROOT / "kmeans",
        context / "kmeans",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for name in ("Dockerfile", ".dockerignore", "requirements.txt"):
        shutil.copy(ROOT / name, context / name)
    for door in ("train", "serve", "entrypoint"):
        path = context / "kmeans" / door
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
        path.chmod(0o644)
    tag = f"sage-kmeans:test-doors-{uuid.uuid4().hex[:8]}"
    build(tag, context)
    try:
        modes = docker(
            "run",
            "--rm",
            tag,
            "stat",
            "-c",
            "%a %n",
            "/opt/program/kmeans/train",
            "/opt/program/kmeans/serve",
            "/opt/program/kmeans/entrypoint",
        )
        assert modes.stdout.split()[::2] == ["755", "755", "755"], modes.stderr
        base = fresh_test_dir(tmp_path)
        result = run_with_opt_ml(tag, base, timeout=600)
        assert result.returncode == 0, result.stderr
        assert (base / "model" / "model.joblib").is_file()
    finally:
        docker("rmi", tag)

"""The real image as a multi-model endpoint: it declares the capability, and `serve` with
SAGEMAKER_MULTI_MODEL=true loads, lists, invokes and unloads models the image's own
`train` made, unpacked under /opt/ml/models/<name>/model as the platform unpacks them.

Same image and skip rules as tests/test_container.py, whose `trained` fixture it shares.
"""

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import joblib
import numpy as np
import test_container
from conftest import docker, free_port
from test_container import PAYLOAD, fresh_test_dir, train, wait_for_ping

trained = test_container.trained  # its module fixture, shared (`image` is conftest's)


def call(method: str, url: str, body: bytes | None = None, **headers: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, body, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_the_image_declares_multi_model_support(image: str) -> None:
    result = docker("image", "inspect", "--format", "{{json .Config.Labels}}", image)
    labels = json.loads(result.stdout)
    assert labels["com.amazonaws.sagemaker.capabilities.multi-models"] == "true"


def test_serve_as_a_multi_model_endpoint(image: str, trained, tmp_path: Path) -> None:
    iris, result = trained
    assert result.returncode == 0, result.stderr
    other = fresh_test_dir(tmp_path / "k5")
    config = other / "input" / "config" / "hyperparameters.json"
    config.write_text(json.dumps({"k": "5"}))
    assert train(image, other).returncode == 0
    base = tmp_path / "opt_ml"
    names = {"iris k3": iris / "model", "iris/k5 β": other / "model"}
    for number, source in enumerate(names.values()):
        shutil.copytree(source, base / "models" / f"m{number}" / "model")
    port, container = free_port(), f"sage-kmeans-mme-test-{uuid.uuid4().hex[:8]}"
    server = subprocess.Popen(
        [
            *("docker", "run", "--rm", "--network", "host", "--name", container),
            *("-e", "SAGEMAKER_MULTI_MODEL=true", "-e", "SAGEMAKER_BIND_TO_HOST=127.0.0.1"),
            *("-e", f"SAGEMAKER_BIND_TO_PORT={port}", "-v", f"{base}:/opt/ml", image, "serve"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_ping(url, server)
        for number, name in enumerate(names):
            load = json.dumps({"model_name": name, "url": f"/opt/ml/models/m{number}/model"})
            assert call("POST", f"{url}/models", load.encode())[0] == 200
        status, listed = call("GET", f"{url}/models")
        assert [entry["modelName"] for entry in json.loads(listed)["models"]] == sorted(names)
        rows = PAYLOAD.read_bytes()
        for name, folder in names.items():
            path = f"{url}/models/{urllib.parse.quote(name, safe='')}/invoke"
            status, answer = call("POST", path, rows, **{"Content-Type": "text/csv"})
            assert status == 200, answer
            labels = [int(float(line.split(",")[0])) for line in answer.decode().splitlines()]
            expected = joblib.load(folder / "model.joblib").predict(
                np.loadtxt(PAYLOAD, delimiter=",")
            )
            assert labels == expected.tolist(), name
        gone = urllib.parse.quote("iris k3", safe="")
        assert call("DELETE", f"{url}/models/{gone}")[0] == 200
        assert (
            call("POST", f"{url}/models/{gone}/invoke", rows, **{"Content-Type": "text/csv"})[0]
            == 404
        )
        docker("stop", "--time", "30", container, timeout=60)
        assert server.wait(timeout=40) == 0
    finally:
        docker("rm", "--force", container)
        if server.poll() is None:
            server.kill()
        log = server.communicate(timeout=30)[0]
    assert "loaded model 'iris k3'" in log and "unloaded model 'iris k3'" in log, log

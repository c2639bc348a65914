"""Every algorithm of kmeans/algorithms/ other than the default, in its own image: built
with `--build-arg ALGORITHM=<name>` from this checkout, it trains on the algorithm's sample
job (local_test/<name>) through train_local.sh, serves through serve_local.sh, answers
predict.sh with payload.csv, stops cleanly; and under the SDK's local mode it trains with
one instance, serves an endpoint, and refuses two instances in one line when the
algorithm trains on one host.

(The default algorithm's image is tests/test_container.py's and tests/test_sdk_local.py's.)
Skipped without a Docker engine, unless SAGE_KMEANS_REQUIRE_CONTAINER=1 (CI)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from conftest import (
    REQUIRE_CONTAINER,
    ROOT,
    docker,
    engine_problem,
    local_mode_problem,
    notebook_python,
    skip_or_fail,
)
from test_container import PAYLOAD, serve_predict_and_stop, train
from test_sdk_local import LocalMode, tail

from kmeans import algorithms

OTHERS = [name for name in algorithms.available() if name != algorithms.DEFAULT]
pytestmark = pytest.mark.host


@pytest.fixture(scope="module", params=OTHERS)
def built(request) -> tuple[str, str]:
    """(algorithm, image): the image built with its build argument (the layer cache
    makes it cheap after the default image's build)."""
    problem = engine_problem()
    if problem:
        skip_or_fail(f"no Docker engine reachable ({problem})", REQUIRE_CONTAINER)
    name = request.param
    tag = f"sage-kmeans:test-{name.replace('_', '-')}"
    result = docker(
        "build",
        "--network",
        "host",
        "--build-arg",
        f"ALGORITHM={name}",
        "-t",
        tag,
        str(ROOT),
        timeout=1800,
    )
    assert result.returncode == 0, f"docker build failed:\n{result.stderr[-3000:]}"
    return name, tag


def sample_job(name: str, parent: Path) -> Path:
    target = parent / "opt_ml"
    shutil.copytree(ROOT / "local_test" / name / "input", target / "input")
    (target / "model").mkdir()
    (target / "output").mkdir()
    return target


def test_the_image_trains_serves_and_answers_predict_sh(built, tmp_path: Path) -> None:
    name, image = built
    base = sample_job(name, tmp_path)
    result = train(image, base)
    assert result.returncode == 0, result.stdout + result.stderr
    metadata = json.loads((base / "model" / "model.json").read_text())
    assert metadata["algorithm"] == name
    config = docker("image", "inspect", "--format", "{{json .Config.Env}}", image)
    assert f"SAGE_KMEANS_ALGORITHM={name}" in json.loads(config.stdout)
    serve_predict_and_stop(image, base, "65534:65534", columns=None)


@pytest.fixture(scope="module")
def local_mode(tmp_path_factory: pytest.TempPathFactory):
    problem = local_mode_problem()
    if problem:
        skip_or_fail(f"SDK local mode cannot run: {problem}", REQUIRE_CONTAINER)
    return notebook_python(REQUIRE_CONTAINER), tmp_path_factory.mktemp("sdk-local")


def test_sdk_local_mode_trains_serves_and_refuses_what_it_cannot(built, local_mode) -> None:
    name, image = built
    python, scratch = local_mode
    sdk = LocalMode(python, image, scratch)
    config = ROOT / "local_test" / name / "input" / "config"
    hyperparameters = json.loads((config / "hyperparameters.json").read_text())
    content_type = json.loads((config / "inputdataconfig.json").read_text())["train"]["ContentType"]
    channels = {"train": (ROOT / "local_test" / name / "input" / "data" / "train", content_type)}
    training = sdk.train(hyperparameters, channels)
    assert training.error is None, tail(training.log)
    assert json.loads(training.model_files()["model.json"])["algorithm"] == name

    body = PAYLOAD.read_text()
    report = sdk.serve(
        "endpoint",
        training.model_tar,
        requests=[{"body": body, "content_type": "text/csv", "accept": "text/csv"}],
    )
    (answer,) = report["answers"]
    assert answer["status"] == 200, answer
    rows = list(csv.reader(io.StringIO(answer["body"])))
    assert len(rows) == len(body.splitlines())

    if not algorithms.named(name).several_hosts:
        two = sdk.train(hyperparameters, channels, instance_count=2)
        assert two.error is not None, tail(two.log)
        failure = two.output_files()["failure"].decode().splitlines()
        assert failure == [
            f"algorithm {name} trains on one host, and this job has 2: set InstanceCount to 1"
        ], failure

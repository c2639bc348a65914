"""The image driven by the real SageMaker SDK in local mode, the way most users first try it.

SDK v3 `ModelTrainer(training_mode=Mode.LOCAL_CONTAINER)` trains (it starts the image with
no argument, through docker-compose), and sagemaker-core's `LocalSession` deploys an
endpoint, invokes it, deletes it and runs a batch transform, all against the `image`
fixture (conftest.py). The SDK runs in .venv-notebook (tests/notebook_env/local_mode.py;
it cannot share .venv with the runtime pins); the answers are judged here against the
model itself. Needs a Docker engine with bridge networking, docker compose (Debian's
docker-compose 1.29 with its own python3-docker, or compose v2) and pgrep (the SDK stops
endpoints with it); skipped, saying which is missing, unless SAGE_KMEANS_REQUIRE_CONTAINER=1.

`LocalMode.train(instance_count=N)` is the harness for several hosts too: the SDK then
starts N containers, algo-1..algo-N, on its `sagemaker-local` network.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pytest
from conftest import (
    IRIS,
    REQUIRE_CONTAINER,
    REQUIRE_NOTEBOOK,
    ROOT,
    free_port,
    local_mode_problem,
    notebook_python,
    run_in_process_group,
    skip_or_fail,
)

DRIVER = ROOT / "tests" / "notebook_env" / "local_mode.py"
TRAIN_FOLDER = IRIS.parent
ROWS = np.loadtxt(IRIS, delimiter=",")[::7]
CSV_BODY = "\n".join(",".join(f"{v:g}" for v in row) for row in ROWS)


@dataclass
class Training:
    """What a local training job left: the archives the SDK assembled, or its error."""

    model_tar: Path
    output_tar: Path
    error: str | None
    containers: list[dict]  # one per host: name, running, exit_code
    log: str

    def model_files(self) -> dict[str, bytes]:
        return archive_files(self.model_tar)

    def output_files(self) -> dict[str, bytes]:
        return archive_files(self.output_tar)


def tail(log: str) -> str:
    """The end of each part of a log: what the containers printed, and the SDK."""
    containers, _, sdk = log.partition("\n--- the SDK (stderr):\n")
    return f"{containers[-3000:]}\n--- the SDK (stderr), its end:\n{sdk[-3000:]}"


def archive_files(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


class LocalMode:
    """Runs local_mode.py's actions in .venv-notebook, each in its own folder."""

    def __init__(self, python: Path, image: str, scratch: Path) -> None:
        self.python, self.image, self.scratch = python, image, scratch

    def run(self, action: str, timeout: float = 600, **spec) -> tuple[dict, str]:
        """Report and log of one action; the folder name is unique, as docker-compose names
        its project (and so its containers) after it."""
        root = self.scratch / f"sage-kmeans-{action}-{uuid.uuid4().hex[:8]}"
        root.mkdir()
        spec = {"action": action, "image": self.image, "root": str(root), **spec}
        (root / "spec.json").write_text(json.dumps(spec))
        status, out, err = run_in_process_group(
            [str(self.python), str(DRIVER), str(root / "spec.json"), str(root / "report.json")],
            timeout=timeout,
            cwd=ROOT,
        )
        log = f"--- the containers (stdout):\n{out}\n--- the SDK (stderr):\n{err}"
        assert status == 0, f"local_mode.py {action} exited {status}:\n{tail(log)}"
        return json.loads((root / "report.json").read_text()), log

    def train(
        self,
        hyperparameters: dict,
        channels: dict[str, tuple[Path, str | None]] | None = None,
        instance_count: int = 1,
    ) -> Training:
        """ModelTrainer in local mode; channels map names to (folder, content type)."""
        channels = channels or {"train": (TRAIN_FOLDER, "text/csv")}
        report, log = self.run(
            "train",
            instance_count=instance_count,
            hyperparameters=hyperparameters,
            channels={name: [str(folder), kind] for name, (folder, kind) in channels.items()},
        )
        return Training(
            Path(report["model"]),
            Path(report["output"]),
            report.get("error"),
            report["containers"],
            log,
        )

    def serve(self, action: str, model_tar: Path, **spec) -> dict:
        """An endpoint or transform action on this model, on a free loopback port."""
        report, log = self.run(action, model=str(model_tar), port=free_port(), **spec)
        if "error" in report:
            pytest.fail(f"{report['error']}\ncontainers: {report['containers']}\n{tail(log)}")
        return report


@pytest.fixture(scope="module")
def local_mode(image: str, tmp_path_factory: pytest.TempPathFactory) -> LocalMode:
    problem = local_mode_problem()
    if problem:
        skip_or_fail(f"SDK local mode cannot run: {problem}", REQUIRE_CONTAINER)
    python = notebook_python(REQUIRE_CONTAINER, REQUIRE_NOTEBOOK)
    return LocalMode(python, image, tmp_path_factory.mktemp("sdk-local"))


@pytest.fixture(scope="module")
def trained(local_mode: LocalMode) -> Training:
    training = local_mode.train({"k": 3, "eval_metrics": ["msd", "ssd"]})
    assert training.error is None, tail(training.log)
    return training


def expected(training: Training, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cluster and distance for each row, from the trained estimator itself."""
    estimator = joblib.load(io.BytesIO(training.model_files()["model.joblib"]))
    return estimator.predict(rows), estimator.transform(rows).min(axis=1)


def assert_stopped_cleanly(containers: list[dict]) -> None:
    """The SDK's delete stops the serving container with SIGTERM: serve must exit 0."""
    assert containers, "no serving container was found"
    for container in containers:
        assert not container["running"], f"{container['name']} still runs"
        assert container["exit_code"] == 0, f"{container['name']} exited {container['exit_code']}"


@pytest.mark.parametrize("instance_count", [1])
def test_model_trainer_in_local_mode_trains(local_mode: LocalMode, instance_count: int) -> None:
    training = local_mode.train(
        {"k": 3, "eval_metrics": ["msd", "ssd"]}, instance_count=instance_count
    )
    assert training.error is None, tail(training.log)
    assert [c["exit_code"] for c in training.containers] == [0] * instance_count
    assert "no command given" in training.log and "so: train" in training.log
    assert "#quality_metric: host=algo-1, train msd <loss>=" in training.log
    model = training.model_files()
    assert set(model) == {"model.joblib", "model.json", "model.npz", "model_algo-1"}
    assert json.loads(model["model.json"])["k"] == 3
    output = training.output_files()
    assert {"data/centers.csv", "data/summary.json"} <= set(output), sorted(output)
    assert "failure" not in output
    labels, _ = expected(training, np.loadtxt(IRIS, delimiter=","))
    assert set(labels) == {0, 1, 2}


def test_a_failing_job_fails_in_the_sdk_with_the_reason(local_mode: LocalMode) -> None:
    training = local_mode.train({"k": 1})
    assert training.error is not None, tail(training.log)
    assert "exited with code: 1" in training.error, training.error
    failure = training.output_files()["failure"].decode()
    assert failure.startswith("k must be an integer ≥ 2, got '1'"), failure
    assert training.model_files() == {}


def test_local_endpoint_answers_each_format_and_echoes_custom_attributes(
    local_mode: LocalMode, trained: Training
) -> None:
    labels, distances = expected(trained, ROWS)
    json_body = json.dumps({"instances": [{"features": row.tolist()} for row in ROWS]})
    requests = [
        {"body": CSV_BODY, "content_type": "text/csv", "accept": "application/json"},
        {"body": CSV_BODY, "content_type": "text/csv", "accept": "text/csv"},
        {"body": json_body, "content_type": "application/json", "accept": "application/json"},
        {
            "body": CSV_BODY,
            "content_type": "text/csv; charset=utf-8",
            "custom_attributes": "trace=sage-kmeans-42",
        },
        {"body": "1,2,3", "content_type": "text/csv", "accept": "application/json"},
    ]
    report = local_mode.serve("endpoint", trained.model_tar, requests=requests)
    assert report["status"] == "InService"
    csv_to_json, csv_to_csv, json_to_json, with_attributes, bad = report["answers"]

    for answer in (csv_to_json, json_to_json):
        assert (answer["status"], answer["content_type"]) == (200, "application/json"), answer
        predictions = json.loads(answer["body"])["predictions"]
        assert [p["closest_cluster"] for p in predictions] == labels.tolist()
        np.testing.assert_allclose([p["distance_to_cluster"] for p in predictions], distances)

    assert (csv_to_csv["status"], csv_to_csv["content_type"]) == (200, "text/csv"), csv_to_csv
    scores = np.loadtxt(io.StringIO(csv_to_csv["body"]), delimiter=",", ndmin=2)
    assert len(csv_to_csv["body"].splitlines()) == len(ROWS)
    assert scores[:, 0].astype(int).tolist() == labels.tolist()
    np.testing.assert_allclose(scores[:, 1], distances)

    assert with_attributes["status"] == 200, with_attributes
    assert with_attributes["custom_attributes"] == "trace=sage-kmeans-42"
    assert with_attributes["body"] == csv_to_csv["body"]  # no Accept: CSV answers CSV

    assert bad["status"] == 400, bad
    assert "expected 4 features, got 3" in json.loads(bad["body"])["error"], bad
    assert_stopped_cleanly(report["containers"])


def test_local_batch_transform_splits_a_large_file_into_1_mb_requests(
    local_mode: LocalMode, trained: Training, tmp_path: Path
) -> None:
    """MultiRecord, MaxPayloadInMB=1, SplitType=Line, AssembleWith=Line on a 1.3 MB file:
    several requests of whole lines, and one output line per input line, in order."""
    iris = np.loadtxt(IRIS, delimiter=",")
    noise = np.random.default_rng(7).normal(0, 0.05, size=(45_000, iris.shape[1]))
    rows = np.round(iris[np.arange(len(noise)) % len(iris)] + noise, 4)
    (tmp_path / "input").mkdir()
    source = tmp_path / "input" / "rows.csv"
    np.savetxt(source, rows, delimiter=",", fmt="%.4f")
    assert source.stat().st_size > 1.2 * 2**20

    settings = {
        "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": 1,
        "SplitType": "Line",
        "AssembleWith": "Line",
        "ContentType": "text/csv",
        "Accept": "text/csv",
    }
    report = local_mode.serve(
        "transform",
        trained.model_tar,
        input=str(tmp_path / "input"),
        output=str(tmp_path / "output"),
        settings=settings,
    )
    assert report["status"] == "Completed", report
    sizes = report["request_sizes"]
    assert len(sizes) >= 2 and max(sizes) <= 2**20, f"expected ≤ 1 MB requests, sent {sizes}"
    assert sum(sizes) == source.stat().st_size
    lines = (tmp_path / "output" / "rows.csv.out").read_text().splitlines()
    assert len(lines) == len(rows)
    scores = np.loadtxt(lines, delimiter=",", ndmin=2)
    labels, distances = expected(trained, rows)
    assert scores[:, 0].astype(int).tolist() == labels.tolist()
    np.testing.assert_allclose(scores[:, 1], distances, rtol=1e-6)
    assert_stopped_cleanly(report["containers"])


# --- several hosts ------------------------------------------------------------------------


def inertia(training: Training, rows: np.ndarray) -> float:
    """The sum of squared distances of `rows` to their closest centre of the trained model."""
    _, distances = expected(training, rows)
    return float(np.sum(distances**2))


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """60,000 rows of 6 features around 5 centres, in 2 CSV files of unequal size: fewer
    files than 3 hosts, so byte ranges of a file are split too."""
    rng = np.random.default_rng(11)
    centres = rng.uniform(-20, 20, size=(5, 6))
    rows = np.round(centres[rng.integers(0, 5, 60_000)] + rng.normal(size=(60_000, 6)), 4)
    folder = tmp_path_factory.mktemp("blobs")
    np.savetxt(folder / "a.csv", rows[:38_000], delimiter=",", fmt="%.4f")
    np.savetxt(folder / "b.csv", rows[38_000:], delimiter=",", fmt="%.4f")
    return folder, rows


@pytest.fixture(scope="module")
def one_host(local_mode: LocalMode, blobs: tuple[Path, np.ndarray]) -> Training:
    training = local_mode.train({"k": 5, "seed": 3}, {"train": (blobs[0], "text/csv")})
    assert training.error is None, tail(training.log)
    return training


@pytest.mark.parametrize("instance_count", [2, 3])
def test_model_trainer_with_several_instances_trains_one_model_on_every_row(
    local_mode: LocalMode,
    blobs: tuple[Path, np.ndarray],
    one_host: Training,
    instance_count: int,
) -> None:
    """compute=Compute(instance_count=N): N containers on the SDK's network train one
    model together, each row once; every container exits 0; the model is as good as one
    host's on the same data."""
    folder, rows = blobs
    training = local_mode.train(
        {"k": 5, "seed": 3}, {"train": (folder, "text/csv")}, instance_count=instance_count
    )
    assert training.error is None, tail(training.log)
    assert len(training.containers) == instance_count, training.containers
    assert [c["exit_code"] for c in training.containers] == [0] * instance_count, tail(training.log)
    names = [f"algo-{n}" for n in range(1, instance_count + 1)]
    assert set(training.model_files()) == {
        "model.joblib",
        "model.json",
        "model.npz",
        "model_algo-1",
    }
    model_json = json.loads(training.model_files()["model.json"])
    assert model_json["hosts"] == names and model_json["rows"] == len(rows)
    summary = json.loads(training.output_files()["data/summary.json"])
    assert summary["hosts"] == names and summary["rows"] == len(rows)
    for name in names:  # every host read its share of the files
        assert f"host {name}: " in training.log and " of channel 'train' in " in training.log
    metric_hosts = set(re.findall(r"#quality_metric: host=(algo-\d+)", training.log))
    assert metric_hosts == {"algo-1"}, "metric lines must come from the leader only"
    ours, single = inertia(training, rows), inertia(one_host, rows)
    assert abs(ours - single) <= 0.01 * single, (ours, single)

"""The decision tree (kmeans/algorithms/decision_tree/) through the real `train` and
`serve`: trained on its sample job (iris, the species in the first CSV column), it answers
what scikit-learn's own predict and predict_proba answer on the same rows; its
hyperparameters reach the estimator; the seed's flow (`predict.sh URL payload.csv
text/csv`) works; its pickled model is refused where unpickling is forbidden."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import joblib
import numpy as np
import pytest
import requests
from conftest import ROOT, make_job, run_train, sample_job
from test_model_files import one_line, run_serve

from kmeans.environment import EXIT_NO_MODEL

SAMPLE = ROOT / "local_test" / "decision_tree"
TREE = {"SAGE_KMEANS_ALGORITHM": "decision_tree"}
IRIS = SAMPLE / "input" / "data" / "train" / "iris.csv"
LINES = IRIS.read_text().splitlines()
FEATURES = np.array([line.split(",")[1:] for line in LINES], np.float64)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    base = sample_job(tmp_path_factory.mktemp("tree") / "ml", SAMPLE)
    result = run_train(base, **TREE)
    assert result.returncode == 0, result.stdout + result.stderr
    return base


def test_answers_are_scikit_learns_own(tree: Path, start_server) -> None:
    estimator = joblib.load(tree / "model" / "model.joblib")
    server = start_server(tree, **TREE)
    body = "\n".join(",".join(line.split(",")[1:]) for line in LINES)
    answer = requests.post(
        server.url + "/invocations", data=body, headers={"Accept": "application/json"}
    )
    assert answer.status_code == 200, answer.text
    predictions = json.loads(answer.content)["predictions"]
    names = estimator.classes_.tolist()
    assert list(predictions[0]) == ["predicted_label", *(f"probability_{n}" for n in names)]
    assert [p["predicted_label"] for p in predictions] == estimator.predict(FEATURES).tolist()
    probabilities = np.array([[p[f"probability_{n}"] for n in names] for p in predictions])
    np.testing.assert_array_equal(
        probabilities.astype(np.float32), estimator.predict_proba(FEATURES).astype(np.float32)
    )
    species = [line.split(",")[0] for line in LINES]
    accuracy = np.mean(
        [p["predicted_label"] == s for p, s in zip(predictions, species, strict=True)]
    )
    metadata = json.loads((tree / "model" / "model.json").read_text())
    assert metadata["algorithm"] == "decision_tree"
    assert metadata["metrics"]["train"]["accuracy"] == pytest.approx(accuracy)


def test_hyperparameters_reach_the_tree(tree: Path, tmp_path: Path) -> None:
    assert joblib.load(tree / "model" / "model.joblib").get_n_leaves() == 5  # max_leaf_nodes
    base = sample_job(tmp_path / "ml", SAMPLE)
    (base / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps({"max_depth": "1", "criterion": '"entropy"'})
    )
    assert run_train(base, **TREE).returncode == 0
    estimator = joblib.load(base / "model" / "model.joblib")
    assert (estimator.get_depth(), estimator.criterion) == (1, "entropy")
    bad = sample_job(tmp_path / "bad", SAMPLE)
    (bad / "input" / "config" / "hyperparameters.json").write_text(json.dumps({"max_depth": "0"}))
    assert run_train(bad, **TREE).returncode == 1
    assert (bad / "output" / "failure").read_text() == "max_depth must be an integer ≥ 1, got '0'\n"


def test_integer_classes_answer_integers(tmp_path: Path, start_server) -> None:
    species = sorted({line.split(",")[0] for line in LINES})
    text = "\n".join(
        ",".join([str(species.index(line.split(",")[0])), *line.split(",")[1:]]) for line in LINES
    )
    base = make_job(
        tmp_path / "ml",
        {},
        {"train/iris.csv": text},
        {"train": {"ContentType": "text/csv;label_size=1"}},
    )
    assert run_train(base, **TREE).returncode == 0
    server = start_server(base)  # model.json says decision_tree: no setting needed
    answer = requests.post(server.url + "/invocations", data="5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3")
    rows = list(csv.reader(io.StringIO(answer.text)))
    assert [row[0] for row in rows] == ["0", "2"]
    assert rows[0][1:] == ["1.0", "0.0", "0.0"]


def test_the_seed_flow_with_predict_sh(tree: Path, start_server) -> None:
    server = start_server(tree, **TREE)
    done = subprocess.run(
        [str(ROOT / "predict.sh"), server.url, str(ROOT / "payload.csv"), "text/csv"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    payload = (ROOT / "payload.csv").read_text().splitlines()
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert len(rows) == len(payload)
    estimator = joblib.load(tree / "model" / "model.joblib")
    asked = np.array([line.split(",") for line in payload], np.float64)
    assert [row[0] for row in rows] == estimator.predict(asked).tolist()


def test_a_forbidden_pickle_is_refused_in_one_line(tree: Path) -> None:
    result = run_serve(tree, SAGE_KMEANS_ALLOW_PICKLE="false", **TREE)
    assert result.returncode == EXIT_NO_MODEL
    path = tree / "model" / "model.joblib"
    assert one_line(result) == (
        f"serve: cannot start: model file {path} is a pickle, which SAGE_KMEANS_ALLOW_PICKLE=false "
        "forbids loading; the decision tree has no other model file"
    )

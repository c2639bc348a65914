"""algorithm.json, the CreateAlgorithm body: committed as the generator prints it, valid
for botocore's own model of the request, and true to what `train` accepts and prints.

Validation runs botocore in .venv-notebook (conftest.notebook_python, built on first use);
the test is not marked `host`, so CI runs it in the fresh-machine stream, where
SAGE_KMEANS_REQUIRE_NOTEBOOK=1 makes a failed install fail it instead of skipping it."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from conftest import (
    IRIS,
    REQUIRE_NOTEBOOK,
    ROOT,
    make_job,
    notebook_python,
    run_train,
    sample_job,
)
from oracles import FULL_BATCH, model_metrics

from kmeans import algorithms, channels, formats
from kmeans.algorithm_spec import PLACEHOLDER_IMAGE, request
from kmeans.content_types import MediaType
from kmeans.hyperparameters import HyperparameterError, Table

ALGORITHM_JSON = ROOT / "algorithm.json"
VALIDATOR = ROOT / "tests" / "notebook_env" / "validate_algorithm.py"
TREE_SAMPLE = ROOT / "local_test" / "decision_tree"
NAMES = algorithms.available()


def generate(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "kmeans.algorithm_spec", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def hyperparameters(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries = body["TrainingSpecification"]["SupportedHyperParameters"]
    found = {entry["Name"]: entry for entry in entries}
    assert len(found) == len(entries), "a name listed twice"
    return found


def test_the_committed_algorithm_json_is_what_the_generator_prints() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "kmeans.algorithm_spec"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert ALGORITHM_JSON.read_text() == printed, (
        "algorithm.json is stale: python -m kmeans.algorithm_spec > algorithm.json"
    )


def test_the_image_fills_both_specifications() -> None:
    uri = "111122223333.dkr.ecr.eu-west-1.amazonaws.com/sage-kmeans:v1"
    body = generate("--image", uri)
    assert body["TrainingSpecification"]["TrainingImage"] == uri
    assert body["InferenceSpecification"]["Containers"] == [{"Image": uri}]
    assert PLACEHOLDER_IMAGE not in json.dumps(body)
    assert generate("--algorithm", "decision_tree")["AlgorithmName"] == "sage-kmeans-decision-tree"


def validate(tmp_path: Path, bodies: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    python = notebook_python(REQUIRE_NOTEBOOK)
    paths = []
    for name, body in bodies.items():
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(body))
    done = subprocess.run(
        [str(python), str(VALIDATOR), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {Path(path).stem: problems for path, problems in json.loads(done.stdout).items()}


def test_every_body_is_valid_for_botocore_and_the_services_enums(tmp_path: Path) -> None:
    bodies = {name: request(algorithms.named(name)) for name in NAMES}
    bodies |= {f"{name}-arm64": request(algorithms.named(name), arm64=True) for name in NAMES}
    bodies["committed"] = json.loads(ALGORITHM_JSON.read_text())
    broken = json.loads(ALGORITHM_JSON.read_text())
    broken["AlgorithmName"] = "sage_kmeans"
    broken["TrainingSpecification"]["SupportedTrainingInstanceTypes"].append("ml.m5.huge")
    broken["InferenceSpecification"]["SupportedRealtimeInferenceInstanceTypes"] = ["ml.p9.large"]
    del broken["TrainingSpecification"]["TrainingChannels"]
    first = broken["TrainingSpecification"]["SupportedHyperParameters"][0]
    first["Range"] = {"CategoricalParameterRangeSpecification": {"Values": ["x"] * 31}}
    bodies["broken"] = broken
    report = validate(tmp_path, bodies)
    assert {name: problems for name, problems in report.items() if name != "broken"} == {
        name: [] for name in bodies if name != "broken"
    }
    said = "\n".join(report["broken"])
    assert 'Missing required parameter in TrainingSpecification: "TrainingChannels"' in said
    for wrong in ("'sage_kmeans' does not match", "'ml.m5.huge' is not one of", "ml.p9.large"):
        assert wrong in said
    assert "Values: 31 items, at most 30" in said
    assert len(report["broken"]) == 5, said


# --- the hyperparameters, against the table train parses them with ------------------------


def _inside(entry: dict[str, Any]) -> str | None:
    """A value inside the entry's range: its minimum, or its first category (FreeText: its
    default, if it has one)."""
    bounds = entry.get("Range", {})
    if "CategoricalParameterRangeSpecification" in bounds:
        return bounds["CategoricalParameterRangeSpecification"]["Values"][0]
    for numeric in bounds.values():
        return numeric["MinValue"]
    return entry.get("DefaultValue")


def _required(table: Table, body: dict[str, Any], name: str = "") -> dict[str, str]:
    """Every required setting inside its range, by its canonical name, but the one `name`
    names."""
    listed = hyperparameters(body)
    return {
        spec.names[0]: str(_inside(listed[spec.names[0]]))
        for spec in table.specs.values()
        if spec.required and name not in spec.names
    }


def _job(table: Table, body: dict[str, Any], name: str, value: str) -> dict[str, str]:
    """hyperparameters.json setting `name` to `value`, and the other required settings."""
    return _required(table, body, name) | {name: value}


def _entries() -> list[tuple[str, str]]:
    return [
        (algorithm, name)
        for algorithm in NAMES
        for name in hyperparameters(request(algorithms.named(algorithm)))
    ]


@pytest.mark.parametrize(("algorithm", "name"), _entries())
def test_the_range_holds_what_train_accepts_and_not_what_it_refuses(
    algorithm: str, name: str
) -> None:
    table = algorithms.named(algorithm).hyperparameters
    body = request(algorithms.named(algorithm))
    entry = hyperparameters(body)[name]
    kind, bounds = entry["Type"], entry.get("Range", {})
    parse = table.parse

    if kind in ("Integer", "Continuous"):
        (numeric,) = bounds.values()
        low, high = numeric["MinValue"], numeric["MaxValue"]
        parse(_job(table, body, name, low))
        parse(_job(table, body, name, high))
        below = str(int(low) - 1) if kind == "Integer" else repr(math.nextafter(float(low), -1))
        assert float(below) < float(low)  # outside the range, and refused by train:
        with pytest.raises(HyperparameterError, match=f"^{re.escape(name)} must be "):
            parse(_job(table, body, name, below))
    elif kind == "Categorical":
        values = bounds["CategoricalParameterRangeSpecification"]["Values"]
        for value in values:
            parse(_job(table, body, name, value))
        assert "no-such-value" not in values
        with pytest.raises(HyperparameterError, match=f"^{re.escape(name)} must be "):
            parse(_job(table, body, name, "no-such-value"))
    else:
        assert kind == "FreeText" and not bounds and not entry["IsTunable"]

    if "DefaultValue" in entry:
        key = table.known.get(name)
        settings = parse(_job(table, body, name, entry["DefaultValue"])).as_dict()
        assert settings[key] == parse(_required(table, body)).as_dict()[key]
    elif name in table.ignored_names:
        parse(_job(table, body, name, "anything at all"))  # accepted, and nothing more


@pytest.mark.parametrize("algorithm", NAMES)
def test_every_accepted_name_is_listed(algorithm: str) -> None:
    table = algorithms.named(algorithm).hyperparameters
    listed = hyperparameters(request(algorithms.named(algorithm)))
    assert set(listed) == set(table.known) | set(table.ignored_names)
    body = request(algorithms.named(algorithm))
    for name, entry in listed.items():
        value = _inside(entry)
        if name not in table.ignored_names and value is not None:
            table.parse(_job(table, body, name, value))


def test_k_is_required_and_tunable_the_bookkeeping_is_not() -> None:
    listed = hyperparameters(json.loads(ALGORITHM_JSON.read_text()))
    assert [name for name, entry in listed.items() if entry["IsRequired"]] == ["k"]
    tunable = {name for name, entry in listed.items() if entry["IsTunable"]}
    assert {"k", "n_clusters", "init_method", "local_lloyd_max_iter", "local_lloyd_tol"} <= tunable
    assert {"mini_batch_size", "epochs"} <= tunable
    assert not tunable & {"feature_dim", "seed", "random_state", "eval_metrics", "force_dense"}
    # A default only where the setting has one name: filled in for `init_method`, a job
    # that sets `init` would hold two values that disagree.
    assert listed["epochs"]["DefaultValue"] == "1"
    assert listed["eval_metrics"]["DefaultValue"] == '["msd"]'
    assert listed["standardize"]["DefaultValue"] == "false"
    assert "DefaultValue" not in listed["init_method"] and "DefaultValue" not in listed["init"]
    assert listed["init"]["Description"].endswith(
        "the same setting as init_method; default k-means++"
    )


def test_the_messages_are_unchanged() -> None:
    table = algorithms.named("kmeans").hyperparameters
    expected = {
        "k": ("1", "k must be an integer ≥ 2, got '1'"),
        "tol": ("-1", "tol must be a number ≥ 0, got '-1'"),
        "init": ("x", "init must be one of 'kmeans++', 'k-means++', 'random', got 'x'"),
        "standardize": ("maybe", "standardize must be true or false, got 'maybe'"),
        "n_init": ("0", "n_init must be 'auto' or an integer ≥ 1, got '0'"),
        "eval_metrics": (
            '["mse"]',
            "eval_metrics must be a list drawn from ['msd', 'ssd'] (or one name), got '[\"mse\"]'",
        ),
    }
    for name, (value, message) in expected.items():
        with pytest.raises(HyperparameterError) as refused:
            table.parse({"k": "3", name: value})
        assert str(refused.value) == message


# --- channels, modes, hosts: what train takes -------------------------------------------


@pytest.mark.parametrize("algorithm", NAMES)
def test_channels_modes_and_hosts_are_what_train_takes(algorithm: str, tmp_path: Path) -> None:
    chosen = algorithms.named(algorithm)
    training = request(chosen)["TrainingSpecification"]
    hp = chosen.hyperparameters.parse({"k": "3"} if algorithm == "kmeans" else {})
    for channel in training["TrainingChannels"]:
        for mode in ("File", "FastFile", "Pipe"):
            found = channels.Channel(channel["Name"], tmp_path, mode)
            refused = chosen.refusal(chosen.streams(hp, found), 1, found, test=True)
            assert (refused is None) == (mode in channel["SupportedInputModes"]), (mode, refused)
        for content_type in channel["SupportedContentTypes"]:
            reading = formats.Reading(channel["Name"], MediaType.parse(content_type))
            assert formats.format_of(IRIS, reading) in (
                formats.CSV,
                formats.PARQUET,
                formats.RECORDIO,
            )
        assert channel["SupportedCompressionTypes"] == ["None", "Gzip"]
    assert [c["Name"] for c in training["TrainingChannels"]] == ["train", "test"]
    assert [c["IsRequired"] for c in training["TrainingChannels"]] == [True, False]
    several = chosen.refusal(False, 2, channels.Channel("train", tmp_path)) is None
    assert training["SupportsDistributedTraining"] is several


# --- the metric definitions, against a real train run -----------------------------------


def metrics_printed(log: str, body: dict[str, Any]) -> dict[str, float]:
    """Each metric definition's regex applied to the log, as SageMaker does: one match each,
    and every #quality_metric line matched by exactly one definition."""
    definitions = body["TrainingSpecification"]["MetricDefinitions"]
    lines = [line for line in log.splitlines() if line.startswith("#quality_metric")]
    found = {}
    for definition in definitions:
        matches = [m for line in lines if (m := re.search(definition["Regex"], line))]
        assert len(matches) == 1, (definition, lines)
        found[definition["Name"]] = float(matches[0].group(1))
    for line in lines:
        assert sum(bool(re.search(d["Regex"], line)) for d in definitions) == 1, line
    objectives = body["TrainingSpecification"]["SupportedTuningJobObjectiveMetrics"]
    assert {objective["MetricName"] for objective in objectives} <= set(found)
    return found


def test_the_kmeans_regexes_capture_what_train_prints(tmp_path: Path) -> None:
    rows = np.loadtxt(IRIS, delimiter=",")
    held_out = "\n".join(IRIS.read_text().splitlines()[::5]) + "\n"
    base = make_job(
        tmp_path,
        {"k": "3", "eval_metrics": '["msd", "ssd"]'},
        {"train/iris.csv": IRIS.read_text(), "test/holdout.csv": held_out},
        {"train": {"TrainingInputMode": "File"}, "test": {"TrainingInputMode": "File"}},
    )
    result = run_train(base)
    assert result.returncode == 0, result.stdout + result.stderr
    body = json.loads(ALGORITHM_JSON.read_text())
    found = metrics_printed(result.stdout, body)
    expected = {
        **{f"train:{name}": value for name, value in model_metrics(base / "model", rows).items()},
        **{
            f"test:{name}": value
            for name, value in model_metrics(base / "model", rows[::5]).items()
        },
    }
    assert found == pytest.approx(expected, rel=FULL_BATCH)
    objectives = body["TrainingSpecification"]["SupportedTuningJobObjectiveMetrics"]
    assert objectives == [
        {"Type": "Minimize", "MetricName": "test:msd"},
        {"Type": "Minimize", "MetricName": "test:ssd"},
    ]


def test_the_tree_regexes_capture_its_accuracy(tmp_path: Path) -> None:
    base = sample_job(tmp_path / "ml", TREE_SAMPLE)
    lines = (base / "input" / "data" / "train" / "iris.csv").read_text().splitlines()
    (base / "input" / "data" / "test").mkdir()
    (base / "input" / "data" / "test" / "holdout.csv").write_text("\n".join(lines[::7]) + "\n")
    config = base / "input" / "config" / "inputdataconfig.json"
    setup = json.loads(config.read_text())
    setup["train"]["TrainingInputMode"] = "FastFile"
    setup["test"] = setup["train"]
    config.write_text(json.dumps(setup))
    result = run_train(base, SAGE_KMEANS_ALGORITHM="decision_tree")
    assert result.returncode == 0, result.stdout + result.stderr
    body = request(algorithms.named("decision_tree"))
    found = metrics_printed(result.stdout, body)
    tree = joblib.load(base / "model" / "model.joblib")

    def accuracy(rows: list[str]) -> float:
        labels = np.array([row.split(",")[0] for row in rows])
        features = np.array([row.split(",")[1:] for row in rows], np.float64)
        return float(np.mean(tree.predict(features) == labels))

    expected = {"train:accuracy": accuracy(lines), "test:accuracy": accuracy(lines[::7])}
    assert found == pytest.approx(expected, rel=FULL_BATCH)
    assert body["TrainingSpecification"]["SupportedTuningJobObjectiveMetrics"] == [
        {"Type": "Maximize", "MetricName": "test:accuracy"}
    ]

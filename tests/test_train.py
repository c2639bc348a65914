"""`kmeans/train` run as SageMaker runs it, against temporary /opt/ml trees: SDK
encodings, input formats, failures, and the metric lines checked against msd and ssd
computed here from the saved centres and the data."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import IRIS, make_job, run_train
from oracles import assert_metric_lines, model_metrics

IRIS_ROWS = np.loadtxt(IRIS, delimiter=",")
CSV_CHANNEL = {"train": {"TrainingInputMode": "File", "ContentType": "text/csv"}}


def csv_text(rows: np.ndarray) -> str:
    return "\n".join(",".join(f"{v:g}" for v in row) for row in rows) + "\n"


def parquet_bytes(rows: np.ndarray) -> bytes:
    table = pa.table({f"f{i}": rows[:, i].astype(np.float32) for i in range(rows.shape[1])})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def model_files(base: Path) -> list[str]:
    return sorted(p.name for p in (base / "model").iterdir())


@pytest.mark.parametrize(
    "hyperparameters",
    [
        # SDK v2 Estimator: str(value)
        {"k": "3", "init_method": "kmeans++", "standardize": "True", "epochs": "1"},
        # SDK v2 with source_dir: json.dumps(value)
        {"k": "3", "init_method": '"k-means++"', "standardize": "true", "sagemaker_program": '"x"'},
        # SDK v3 ModelTrainer: strings as is, the rest through json.dumps
        {"n_clusters": "3", "init": "k-means++", "standardize": "true", "eval_metrics": '["msd"]'},
    ],
    ids=["sdk-v2-str", "sdk-v2-json", "sdk-v3"],
)
def test_every_sdk_encoding_trains_the_same_model(tmp_path: Path, hyperparameters: dict) -> None:
    base = make_job(tmp_path, hyperparameters, {"train/iris.csv": IRIS.read_text()}, CSV_CHANNEL)
    result = run_train(base)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (base / "output" / "failure").exists()
    assert model_files(base) == ["model.joblib", "model.json", "model.npz"]
    metadata = json.loads((base / "model" / "model.json").read_text())
    assert metadata["k"] == 3 and metadata["feature_dim"] == 4
    assert metadata["hyperparameters"]["init"] == "k-means++"
    assert metadata["hyperparameters"]["standardize"] is True
    assert set(metadata["versions"]) == {"python", "scikit-learn", "numpy", "joblib"}
    assert_metric_lines(result.stdout, base / "model", IRIS_ROWS, host="algo-1")
    assert metadata["metrics"]["train"] == pytest.approx(model_metrics(base / "model", IRIS_ROWS))
    assert (base / "output" / "data" / "centers.csv").read_text().count("\n") == 3
    summary = json.loads((base / "output" / "data" / "summary.json").read_text())
    assert sum(summary["cluster_sizes"]) == 150


def test_nested_csv_gzip_and_parquet_with_a_test_channel(tmp_path: Path) -> None:
    parts = np.array_split(IRIS_ROWS, 3)
    files = {
        "train/2024/01/part-0.csv": csv_text(parts[0]),
        "train/2024/02/part-1.csv.gz": gzip.compress(csv_text(parts[1]).encode()),
        "train/2024/03/part-2.parquet": parquet_bytes(parts[2]),
        "train/.hidden/ignored.csv": "not,numbers\n",
        "train/2024/marker": b"",
        "test/holdout.csv": "sepal_length,sepal_width,petal_length,petal_width\n"
        + csv_text(IRIS_ROWS[::10]),
    }
    base = make_job(tmp_path, {"k": "3", "eval_metrics": '["msd", "ssd"]'}, files, channels=None)
    result = run_train(base)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "loaded 150 rows x 4 features" in result.stdout
    assert "read as a header" in result.stdout  # the test file's header line
    model, test = base / "model", IRIS_ROWS[::10]
    assert_metric_lines(result.stdout, model, IRIS_ROWS, test, ("msd", "ssd"), host="algo-1")
    # The check refuses a metric printed from another value: here, ssd over n - 1 rows.
    ssd = model_metrics(model, IRIS_ROWS)["ssd"]
    shifted = "\n".join(
        f"#quality_metric: host=algo-1, train msd <loss>={ssd / 149:.6g}"
        if "train msd" in line
        else line
        for line in result.stdout.splitlines()
    )
    with pytest.raises(AssertionError):
        assert_metric_lines(shifted, model, IRIS_ROWS, test, ("msd", "ssd"), host="algo-1")
    assert ssd / 149 == pytest.approx(ssd / 150, rel=0.01)  # off by under 1 %: a near miss


def test_label_columns_and_declared_header_are_dropped(tmp_path: Path) -> None:
    labelled = "species,a,b,c,d\n" + "".join(
        f"{i % 3}," + ",".join(f"{v:g}" for v in row) + "\n" for i, row in enumerate(IRIS_ROWS)
    )
    channels = {"train": {"ContentType": "text/csv;label_size=1;header=present"}}
    base = make_job(tmp_path, {"k": "3", "feature_dim": "4"}, {"train/x.csv": labelled}, channels)
    result = run_train(base)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "loaded 150 rows x 4 features" in result.stdout


def test_model_loads_with_plain_joblib_in_a_fresh_process(tmp_path: Path) -> None:
    base = make_job(tmp_path, {"k": "3"}, {"train/iris.csv": IRIS.read_text()}, CSV_CHANNEL)
    assert run_train(base).returncode == 0
    script = (
        "import joblib, numpy as np, sys\n"
        "m = joblib.load(sys.argv[1])\n"
        "x = np.loadtxt(sys.argv[2], delimiter=',')\n"
        "print(np.bincount(m.predict(x)).tolist())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(base / "model" / "model.joblib"), str(IRIS)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    summary = json.loads((base / "output" / "data" / "summary.json").read_text())
    assert json.loads(out) == summary["cluster_sizes"]


GOOD = {"train/iris.csv": IRIS.read_text()}
FAILURES = [
    ("no-hyperparameters", None, GOOD, CSV_CHANNEL, "missing hyperparameters file"),
    ("missing-k", {"init": "random"}, GOOD, CSV_CHANNEL, "k is required"),
    ("k-too-small", {"k": "1"}, GOOD, CSV_CHANNEL, "k must be an integer ≥ 2, got '1'"),
    ("k-not-a-number", {"k": "three"}, GOOD, CSV_CHANNEL, "k must be an integer ≥ 2, got 'three'"),
    (
        "unknown-key",
        {"k": "3", "n_cluster": "3"},
        GOOD,
        CSV_CHANNEL,
        "unknown hyperparameter 'n_cluster'; did you mean 'n_clusters'?",
    ),
    (
        "aliases-disagree",
        {"k": "3", "n_clusters": "4"},
        GOOD,
        CSV_CHANNEL,
        "k and n_clusters name the same setting but disagree: '3' vs '4'",
    ),
    (
        "bad-init",
        {"k": "3", "init_method": "best"},
        GOOD,
        CSV_CHANNEL,
        "init_method must be one of 'kmeans++', 'k-means++', 'random', got 'best'",
    ),
    (
        "no-training-channel",
        {"k": "3"},
        {"validation/iris.csv": IRIS.read_text()},
        {"validation": {}},
        "no training channel: expected 'train' or 'training', found 'validation'",
    ),
    (
        "empty-channel",
        {"k": "3"},
        {"train/empty.csv": b"", "train/.keep": b"x"},
        CSV_CHANNEL,
        "channel 'train' is empty",
    ),
    (
        "unreadable-gzip",
        {"k": "3"},
        {"train/broken.csv.gz": b"\x1f\x8b\x08\x00garbage"},
        CSV_CHANNEL,
        "broken.csv.gz: cannot be read",
    ),
    (
        "unreadable-parquet",
        {"k": "3"},
        {"train/broken.parquet": b"PAR1garbage"},
        {"train": {}},
        "broken.parquet: not a readable Parquet file",
    ),
    (
        "non-numeric-cell",
        {"k": "2"},
        {"train/a.csv": "1,2\n3,4\n5,abc\n"},
        CSV_CHANNEL,
        "a.csv line 3, column 2: 'abc' is not a number",
    ),
    (
        "ragged-rows",
        {"k": "2"},
        {"train/a.csv": "1,2\n3,4\n5,6,7\n8,9\n"},
        CSV_CHANNEL,
        "a.csv line 3: 3 columns, expected 2",
    ),
    (
        "feature-dim-mismatch",
        {"k": "3", "feature_dim": "5"},
        GOOD,
        CSV_CHANNEL,
        "feature_dim is 5 but channel 'train' has 4 feature columns",
    ),
    (
        "fewer-rows-than-k",
        {"k": "5"},
        {"train/a.csv": "1,2\n3,4\n5,6\n"},
        CSV_CHANNEL,
        "k is 5 but channel 'train' has only 3 rows",
    ),
    (
        "nan-and-inf",
        {"k": "2"},
        {"train/a.csv": "1,2\n3,4\n5,nan\n7,8\n9,inf\n1,\n"},
        CSV_CHANNEL,
        "3 rows hold missing, NaN or infinite values; first at a.csv line 3, feature column 2",
    ),
    (
        "unknown-input-mode",
        {"k": "3"},
        GOOD,
        {"train": {"TrainingInputMode": "Stream"}},
        "channel 'train': TrainingInputMode 'Stream' is not one of 'File', 'FastFile', 'Pipe'",
    ),
    (
        "test-channel-width",
        {"k": "3"},
        {**GOOD, "test/a.csv": "1,2,3\n4,5,6\n"},
        {**CSV_CHANNEL, "test": {}},
        "channel 'test' has 3 feature columns (a.csv), the training data 4",
    ),
    (
        "unsupported-content-type",
        {"k": "3"},
        GOOD,
        {"train": {"ContentType": "image/jpeg"}},
        "channel 'train': ContentType 'image/jpeg' is not supported",
    ),
]


@pytest.mark.parametrize(
    "hyperparameters,files,channels,reason", [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES]
)
def test_failures_write_one_clear_line_and_no_model(
    tmp_path: Path, hyperparameters: dict | None, files: dict, channels: dict, reason: str
) -> None:
    base = make_job(tmp_path, hyperparameters, files, channels)
    result = run_train(base)
    assert result.returncode == 1, result.stdout + result.stderr
    failure = (base / "output" / "failure").read_text()
    assert failure.splitlines()[0].startswith(reason), failure
    assert reason in result.stdout
    assert model_files(base) == []

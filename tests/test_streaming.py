"""Mini-batch training, Pipe mode, checkpoints and SIGTERM, with `kmeans/train` run as
SageMaker runs it. Pipe mode is emulated as SageMaker does it: a FIFO per pass
(`train_0`, `train_1`, ...) created and written by another process, in small writes
with pauses, records split across writes. Every job's metric lines are checked against
msd and ssd computed from the saved centres and the data (tests/oracles.py)."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import pytest
from conftest import TRAIN, entrypoint_env, make_job, run_train
from oracles import (
    FULL_BATCH,
    LAST_PASS,
    assert_metric_lines,
    matched_centre_distances,
    metric_lines,
    model_metrics,
)

CENTRES = np.array([[0, 0, 0], [10, 10, 10], [0, 10, 0], [10, 0, 10]], dtype=float)

WRITER = r"""
import os, sys, time
folder, channel, epochs, source = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
data = open(source, "rb").read()
for epoch in range(epochs):
    fifo = os.path.join(folder, f"{channel}_{epoch}")
    os.mkfifo(fifo)
    with open(fifo, "wb", buffering=0) as pipe:
        for start in range(0, len(data), 7919):  # a prime: records split across writes
            pipe.write(data[start:start + 7919])
            if start % (7919 * 20) == 0:
                time.sleep(0.01)
    print(f"wrote {channel}_{epoch}", flush=True)
"""


def blobs(rows: int, seed: int = 0, features: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.resize(CENTRES, (len(CENTRES), features))
    return centres[rng.integers(0, len(centres), rows)] + rng.normal(0, 1, (rows, features))


def csv_bytes(rows: np.ndarray) -> bytes:
    buffer = "\n".join(",".join(f"{v:.4f}" for v in row) for row in rows)
    return (buffer + "\n").encode()


def as_written(rows: np.ndarray) -> np.ndarray:
    """The rows as csv_bytes writes them (4 decimals): what training reads."""
    return np.loadtxt(io.BytesIO(csv_bytes(rows)), delimiter=",", ndmin=2)


def start_writer(base: Path, channel: str, epochs: int, payload: bytes) -> subprocess.Popen:
    source = base / f"{channel}.payload"
    source.write_bytes(payload)
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            WRITER,
            str(base / "input" / "data"),
            channel,
            str(epochs),
            str(source),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def summary(base: Path) -> dict:
    return json.loads((base / "output" / "data" / "summary.json").read_text())


def inertia(base: Path, rows: np.ndarray) -> float:
    estimator = joblib.load(base / "model" / "model.joblib")
    return float(-estimator.score(rows))


def assert_the_centres_found(found: np.ndarray, within: float = 0.5) -> None:
    """Each of CENTRES has its own found centre within `within` (one-to-one)."""
    distances = matched_centre_distances(found, CENTRES)
    assert distances.max() < within, (distances, found)


def test_the_centre_check_refuses_a_cluster_found_twice() -> None:
    """Two clusters each found twice: every column, sorted alone, is the expected one
    (what this file once compared), but two expected centres are left without a match."""
    degenerate = CENTRES[[0, 0, 1, 1]] + 0.01
    np.testing.assert_allclose(np.sort(degenerate, axis=0), np.sort(CENTRES, axis=0), atol=0.3)
    with pytest.raises(AssertionError):
        assert_the_centres_found(degenerate)
    assert_the_centres_found(CENTRES[[3, 1, 0, 2]] + 0.01)  # any order, close: found


PIPE = {"train": {"TrainingInputMode": "Pipe", "ContentType": "text/csv"}}


def test_pipe_mode_reads_one_fifo_per_epoch(tmp_path: Path) -> None:
    rows = blobs(20000)
    (tmp_path / "input" / "data").mkdir(parents=True)
    writer = start_writer(tmp_path, "train", 3, csv_bytes(rows))
    base = make_job(tmp_path, {"k": "4", "epochs": "3", "mini_batch_size": "1000"}, channels=PIPE)
    result = run_train(base, SAGE_KMEANS_PIPE_WAIT_SECONDS="20")
    assert result.returncode == 0, result.stdout + result.stderr
    assert writer.wait(10) == 0
    assert writer.stdout.read().split() == [
        "wrote",
        "train_0",
        "wrote",
        "train_1",
        "wrote",
        "train_2",
    ]
    for epoch in (1, 2, 3):
        assert f"epoch {epoch}/3 done: 20000 rows" in result.stdout
    found = joblib.load(base / "model" / "model.joblib").cluster_centers_
    assert_the_centres_found(found)
    assert summary(base)["rows"] == 20000
    assert_metric_lines(result.stdout, base / "model", as_written(rows), train_rel=LAST_PASS)


def test_pipe_mode_gzip_and_a_test_channel(tmp_path: Path) -> None:
    import gzip

    rows, held_out = blobs(5000), blobs(1000, seed=1)
    (tmp_path / "input" / "data").mkdir(parents=True)
    writers = [
        start_writer(tmp_path, "train", 1, gzip.compress(csv_bytes(rows))),
        start_writer(tmp_path, "test", 1, b"a,b,c\n" + csv_bytes(held_out)),
    ]
    channels = {**PIPE, "test": {"TrainingInputMode": "Pipe"}}
    base = make_job(tmp_path, {"k": "4", "eval_metrics": "ssd"}, channels=channels)
    result = run_train(base, SAGE_KMEANS_PIPE_WAIT_SECONDS="20")
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(writer.wait(10) == 0 for writer in writers)
    metrics = metric_lines(result.stdout)
    assert set(metrics) == {"train msd", "train ssd", "test ssd"}, metrics
    expected = model_metrics(base / "model", as_written(held_out))["ssd"]
    assert metrics["test ssd"] == pytest.approx(expected, rel=FULL_BATCH)
    # One pass: its chunks were scored while the model was still learning, so the train
    # metrics have no final-centres equivalent; they still describe the same 5,000 rows.
    assert metrics["train ssd"] == pytest.approx(metrics["train msd"] * 5000, rel=FULL_BATCH)


def test_a_missing_next_fifo_fails_after_the_bound(tmp_path: Path) -> None:
    (tmp_path / "input" / "data").mkdir(parents=True)
    writer = start_writer(tmp_path, "train", 2, csv_bytes(blobs(3000)))
    base = make_job(tmp_path, {"k": "4", "epochs": "3"}, channels=PIPE)
    started = time.monotonic()
    result = run_train(base, SAGE_KMEANS_PIPE_WAIT_SECONDS="2")
    assert result.returncode == 1
    assert 2 <= time.monotonic() - started < 30
    assert writer.wait(10) == 0
    failure = (base / "output" / "failure").read_text().splitlines()[0]
    assert failure.startswith("Pipe mode: train_2 did not appear within 2 s")
    assert sorted(p.name for p in (base / "model").iterdir()) == []


def test_streaming_memory_is_bounded_by_the_chunk_not_the_data(tmp_path: Path) -> None:
    """1.5 M rows x 16 features: 92 MB as float32, in 5,000-row chunks. The streaming
    run's peak RSS stays within 80 MB of a 150-row job's (pyarrow's read-ahead of 1 MB
    blocks plus one chunk); the full-batch run's holds the data."""
    rows = blobs(1000, features=16)
    data = csv_bytes(rows) * 1500  # 1.5 M rows, quick to write
    data_mb = 1_500_000 * 16 * 4 / 2**20
    peaks = {}
    for mode, hyperparameters in {
        "tiny": {"k": "4"},
        "streaming": {"k": "4", "mini_batch_size": "5000"},
        "full": {"k": "4", "max_iter": "5"},
    }.items():
        files = {"train/a.csv": data if mode != "tiny" else csv_bytes(rows[:150])}
        base = make_job(tmp_path / mode, hyperparameters, files)
        result = run_train(base, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        peaks[mode] = summary(base)["peak_rss_mb"]
    assert peaks["streaming"] < peaks["tiny"] + 80, peaks
    assert peaks["full"] > peaks["tiny"] + 0.9 * data_mb, peaks


def test_sigterm_checkpoints_and_a_new_job_resumes(tmp_path: Path) -> None:
    rows = blobs(100_000, features=8)
    data = csv_bytes(rows)
    hyperparameters = {"k": "4", "mini_batch_size": "500", "epochs": "12", "seed": "3"}

    reference = make_job(tmp_path / "reference", hyperparameters, {"train/a.csv": data})
    assert run_train(reference, timeout=300).returncode == 0

    base = make_job(tmp_path / "job", hyperparameters, {"train/a.csv": data})
    (base / "checkpoints").mkdir()
    environment = entrypoint_env(base, SAGE_KMEANS_CHECKPOINT_SECONDS="0")  # every chunk
    job = subprocess.Popen(
        [str(TRAIN)], env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    while not (base / "checkpoints" / "kmeans-checkpoint.joblib").exists():
        assert time.monotonic() < deadline and job.poll() is None, job.stdout.read()
        time.sleep(0.01)
    job.send_signal(signal.SIGTERM)  # at the first checkpoint: long before the 12th pass
    output = job.communicate(timeout=60)[0]
    assert job.returncode != 0, output
    failure = (base / "output" / "failure").read_text().splitlines()[0]
    assert failure.startswith("training stopped by SIGTERM"), failure
    assert "checkpoint saved" in failure
    assert sorted(p.name for p in (base / "model").iterdir()) == []

    resumed = run_train(base, timeout=300)
    assert resumed.returncode == 0, resumed.stdout
    assert "resumed from checkpoint" in resumed.stdout
    assert not (base / "output" / "failure").exists()
    # Mini-batch k-means is not bit-for-bit repeatable across a restart: within 2 %.
    assert inertia(base, rows) == pytest.approx(inertia(reference, rows), rel=0.02)


def test_a_checkpoint_from_other_hyperparameters_is_refused(tmp_path: Path) -> None:
    data = {"train/a.csv": csv_bytes(blobs(3000))}
    base = make_job(tmp_path, {"k": "4", "mini_batch_size": "500"}, data)
    (base / "checkpoints").mkdir()
    assert run_train(base).returncode == 0
    assert (base / "checkpoints" / "kmeans-checkpoint.joblib").exists()
    (base / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps({"k": "5", "mini_batch_size": "500"})
    )
    result = run_train(base)
    assert result.returncode == 1
    failure = (base / "output" / "failure").read_text().splitlines()[0]
    assert "was written with other hyperparameters (k: 4 there, 5 here)" in failure


def test_a_checkpoint_for_another_feature_count_is_refused(tmp_path: Path) -> None:
    base = make_job(
        tmp_path, {"k": "4", "mini_batch_size": "500"}, {"train/a.csv": csv_bytes(blobs(3000))}
    )
    (base / "checkpoints").mkdir()
    assert run_train(base).returncode == 0
    (base / "input" / "data" / "train" / "a.csv").write_bytes(csv_bytes(blobs(3000, features=5)))
    (base / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps({"k": "4", "mini_batch_size": "500", "epochs": "2"})
    )
    result = run_train(base)
    assert result.returncode == 1
    failure = (base / "output" / "failure").read_text().splitlines()[0]
    assert failure.startswith("the checkpoint was written for 3 features but a.csv has 5")


def test_file_mode_streaming_matches_full_batch_quality(tmp_path: Path) -> None:
    rows, held_out = blobs(30000), blobs(3000, seed=9)
    files = {"train/a.csv": csv_bytes(rows), "test/b.csv": csv_bytes(held_out)}
    stream = make_job(tmp_path / "s", {"k": "4", "mini_batch_size": "1000", "epochs": "2"}, files)
    full = make_job(tmp_path / "f", {"k": "4"}, files)
    for base, rel in ((stream, LAST_PASS), (full, FULL_BATCH)):
        result = run_train(base)
        assert result.returncode == 0, result.stdout
        model, train, test = base / "model", as_written(rows), as_written(held_out)
        assert_metric_lines(result.stdout, model, train, test, train_rel=rel)
    assert inertia(stream, held_out) == pytest.approx(inertia(full, held_out), rel=0.02)


def test_mini_batch_with_standardize_reports_metrics_on_the_model_s_scale(tmp_path: Path) -> None:
    """Features on scales 1, 10 and 100: the metrics are distances between standardized
    rows (the scaler fitted on the first chunk) and the centres, as the model serves."""
    rows, held_out = blobs(20000) * [1, 10, 100], blobs(2000, seed=4) * [1, 10, 100]
    files = {"train/a.csv": csv_bytes(rows), "test/b.csv": csv_bytes(held_out)}
    hyperparameters = {"k": "4", "mini_batch_size": "1000", "epochs": "2", "standardize": "true"}
    base = make_job(tmp_path, hyperparameters | {"eval_metrics": '["msd", "ssd"]'}, files)
    result = run_train(base)
    assert result.returncode == 0, result.stdout + result.stderr
    model, train, test = base / "model", as_written(rows), as_written(held_out)
    assert "mean" in np.load(model / "model.npz").files
    assert_metric_lines(result.stdout, model, train, test, ("msd", "ssd"), train_rel=LAST_PASS)
    saved = np.load(model / "model.npz")
    assert_the_centres_found((saved["centres"] * saved["scale"] + saved["mean"]) / [1, 10, 100])


def test_every_progress_line_gives_the_mean_squared_distance(tmp_path: Path) -> None:
    files = {"train/a.csv": csv_bytes(blobs(12000))}
    base = make_job(tmp_path, {"k": "4", "mini_batch_size": "500", "epochs": "3"}, files)
    result = run_train(base)
    assert result.returncode == 0, result.stdout
    assert "nan" not in result.stdout.lower()
    progress = [line for line in result.stdout.splitlines() if " INFO epoch " in line]
    done = [line for line in progress if " done:" in line]
    assert len(done) == 3, progress
    rows = as_written(blobs(12000))
    assert_metric_lines(result.stdout, base / "model", rows, train_rel=LAST_PASS)
    # The last pass's line measures what the train msd measures, the same way.
    last_pass_msd = float(done[-1].rpartition("msd of its batches ")[2])
    assert last_pass_msd == pytest.approx(metric_lines(result.stdout)["train msd"], rel=FULL_BATCH)


def test_sigterm_stops_a_full_batch_job_promptly(tmp_path: Path) -> None:
    base = make_job(
        tmp_path, {"k": "4"}, {"train/a.csv": csv_bytes(blobs(1000, features=16)) * 3000}
    )
    job = subprocess.Popen(
        [str(TRAIN)], env=entrypoint_env(base), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    while b"hyperparameters:" not in job.stdout.readline():  # imported: reading 3 M rows
        assert job.poll() is None
    time.sleep(0.5)
    assert job.poll() is None
    job.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    job.communicate(timeout=60)
    assert job.returncode == 143
    assert time.monotonic() - stopped < 10
    failure = (base / "output" / "failure").read_text().splitlines()[0]
    assert failure.startswith("training stopped by SIGTERM")
    assert sorted(p.name for p in (base / "model").iterdir()) == []

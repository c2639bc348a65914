"""RecordIO-protobuf, the built-in algorithms' format: our reader against Google's
protobuf library, and `train` on RecordIO files and Pipe-mode streams."""

from __future__ import annotations

import json

import numpy as np
import protobuf_records as pr
import pytest
from conftest import make_job, run_train
from test_streaming import PIPE, blobs, start_writer

from kmeans import recordio

ROWS = np.array([[1.5, -2.0, 0.0, 4.25], [0.0, 0.0, 3.0, -1.0], [7.0, 8.0, 9.0, 10.0]])


@pytest.mark.parametrize("kind", ["float32_tensor", "float64_tensor", "int32_tensor"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_reader_agrees_with_the_protobuf_library(kind: str, sparse: bool) -> None:
    rows = np.trunc(ROWS) if kind == "int32_tensor" else ROWS
    payloads, _ = recordio.frames(pr.body(rows, kind, sparse))
    np.testing.assert_array_equal(recordio.rows(payloads, 4), rows)


def test_multipart_records_are_joined() -> None:
    payload = pr.record(ROWS[0])
    split = len(payload) // 2
    data = (
        pr.frame(payload[:split], 1) + pr.frame(payload[split:], 3) + pr.frame(pr.record(ROWS[1]))
    )
    payloads, used = recordio.frames(data)
    assert used == len(data)
    np.testing.assert_array_equal(recordio.rows(payloads), ROWS[:2])


def test_a_cut_off_record_waits_for_more_bytes_or_fails() -> None:
    data = pr.body(ROWS)
    payloads, used = recordio.frames(data[:-3], complete=False)
    assert len(payloads) == 2 and used < len(data) - 3
    with pytest.raises(recordio.RecordIOError, match="record 3: cut off"):
        recordio.frames(data[:-3])


def test_labels_are_written_as_the_built_in_algorithm_writes_them() -> None:
    encoded = recordio.encode_labels(
        {"closest_cluster": np.array([2, 0]), "distance_to_cluster": np.array([0.5, 1.25])}
    )
    assert pr.labels(encoded) == [
        {"closest_cluster": 2.0, "distance_to_cluster": 0.5},
        {"closest_cluster": 0.0, "distance_to_cluster": 1.25},
    ]


def test_train_on_recordio_files(tmp_path) -> None:
    rows = blobs(3000)
    channels = {"train": {"ContentType": "application/x-recordio-protobuf"}}
    files = {
        "train/part-0.pbr": pr.body(rows[:1000]),
        "train/part-1": pr.body(rows[1000:], "float64_tensor"),
    }
    base = make_job(tmp_path, {"k": "4", "feature_dim": "3"}, files, channels)
    result = run_train(base)
    assert result.returncode == 0, result.stdout
    assert "loaded 3000 rows x 3 features" in result.stdout


def test_train_on_a_recordio_pipe(tmp_path) -> None:
    (tmp_path / "input" / "data").mkdir(parents=True)
    writer = start_writer(tmp_path, "train", 2, pr.body(blobs(4000)))
    channels = {"train": {**PIPE["train"], "ContentType": "application/x-recordio-protobuf"}}
    base = make_job(
        tmp_path, {"k": "4", "epochs": "2", "mini_batch_size": "500"}, channels=channels
    )
    result = run_train(base, SAGE_KMEANS_PIPE_WAIT_SECONDS="20")
    assert result.returncode == 0, result.stdout
    assert writer.wait(10) == 0
    assert "epoch 2/2 done: 4000 rows" in result.stdout
    assert json.loads((base / "model" / "model.json").read_text())["feature_dim"] == 3


def test_a_broken_recordio_file_names_the_record(tmp_path) -> None:
    data = pr.body(ROWS[:2]) + b"\x0a\x23\xd7\xce\xff\xff\x00\x00garbage"
    channels = {"train": {"ContentType": "application/x-recordio-protobuf"}}
    base = make_job(tmp_path, {"k": "2"}, {"train/a.rec": data}, channels)
    result = run_train(base)
    assert result.returncode == 1
    failure = (base / "output" / "failure").read_text().splitlines()[0]
    assert failure.startswith("a.rec: record 3: cut off"), failure


def test_a_map_key_sent_as_a_number_is_a_malformed_record() -> None:
    """Found by fuzzing: a features-map entry whose key (field 1) is a varint, not a string."""
    payload = b"\n\x16\n\x06values\x05\x0c\x12\n\n\x08\x00\x00\x00\x00\x00\x00\x00\x00"
    with pytest.raises(recordio.RecordIOError, match=r"^record 1: malformed protobuf"):
        recordio.rows([payload], 2)

"""Labels in the data layer: channels.load_labelled reads each row's labels beside its
features -- CSV's (plain, gzip, with a header, quoted) and Parquet's first `label_size`
columns, RecordIO-protobuf's `label` map -- checked against Python's csv module and
protobuf's own reader; channels.load still drops them; every way labels can be missing
is one line naming where."""

from __future__ import annotations

import csv
import gzip
import io
import os
import threading
from pathlib import Path

import numpy as np
import protobuf_records
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kmeans import channels
from kmeans.content_types import MediaType

RNG = np.random.default_rng(11)
NAMES = ["setosa", "versi,color", 'vir"ginica', "ünïcode"]


def labelled_rows(count: int) -> tuple[list[str], np.ndarray]:
    names = [NAMES[i] for i in RNG.integers(0, len(NAMES), count)]
    return names, RNG.normal(size=(count, 3)).astype(np.float32)


def csv_of(labels: list, rows: np.ndarray, header: bool = False) -> str:
    sink = io.StringIO()
    writer = csv.writer(sink, lineterminator="\n")
    if header:
        writer.writerow(["species", "a", "b", "c"])
    for label, row in zip(labels, rows, strict=True):
        writer.writerow([label, *(f"{v:.9g}" for v in row)])
    return sink.getvalue()


def channel(folder: Path, files: dict[str, bytes], content_type: str, mode: str = "File"):
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return channels.Channel("train", folder, mode, MediaType.parse(content_type))


def oracle(text: str, header: bool = False) -> tuple[list[str], np.ndarray]:
    """Labels and features as Python's csv module reads the same text."""
    rows = list(csv.reader(io.StringIO(text)))[int(header) :]
    return [r[0] for r in rows], np.array([r[1:] for r in rows], np.float32)


@pytest.mark.parametrize("shape", ["plain", "gzip", "header", "several files"])
def test_csv_labels_are_the_first_label_size_columns(tmp_path: Path, shape: str) -> None:
    names, rows = labelled_rows(3000)
    text = csv_of(names, rows, header=shape == "header")
    if shape == "gzip":
        files = {"a.csv.gz": gzip.compress(text.encode())}
    elif shape == "several files":
        lines = text.splitlines(keepends=True)
        files = {"a.csv": "".join(lines[:1000]).encode(), "b.csv": "".join(lines[1000:]).encode()}
    else:
        files = {"a.csv": text.encode()}
    found = channels.load_labelled(channel(tmp_path, files, "text/csv;label_size=1"))
    expected_labels, expected_rows = oracle(text, header=shape == "header")
    assert found.labels.shape == (3000, 1) and found.labels.dtype == object
    assert found.labels[:, 0].tolist() == expected_labels
    np.testing.assert_array_equal(found.rows, expected_rows)
    assert found.rows.flags.c_contiguous and found.rows.dtype == np.float32
    plain = channels.load(channel(tmp_path / "again", files, "text/csv;label_size=1"))
    np.testing.assert_array_equal(plain, expected_rows)  # unsupervised: labels dropped


def test_numeric_labels_are_numbers_and_two_label_columns_both_kept(tmp_path: Path) -> None:
    rows = RNG.normal(size=(200, 2))
    lines = [f"{i % 3},{i * 0.5},{a:.6g},{b:.6g}" for i, (a, b) in enumerate(rows)]
    found = channels.load_labelled(
        channel(tmp_path, {"a.csv": "\n".join(lines).encode()}, "text/csv;label_size=2")
    )
    assert found.labels.dtype == np.float64
    assert found.labels[:, 0].tolist() == [float(i % 3) for i in range(200)]
    assert found.labels[:, 1].tolist() == [i * 0.5 for i in range(200)]
    assert found.rows.shape == (200, 2)


def test_parquet_labels_are_its_first_columns_of_any_type(tmp_path: Path) -> None:
    names, rows = labelled_rows(500)
    table = pa.table(
        {"species": names, "code": np.arange(500) % 4, **{f"f{i}": rows[:, i] for i in range(3)}}
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=128)
    found = channels.load_labelled(
        channel(tmp_path, {"a.parquet": sink.getvalue()}, "application/x-parquet;label_size=2")
    )
    assert found.labels[:, 0].tolist() == names
    assert found.labels[:, 1].tolist() == [str(i % 4) for i in range(500)]  # mixed: as text
    np.testing.assert_array_equal(found.rows, rows)


def recordio_body(labels: list[float] | None, rows: np.ndarray, key: str = "values") -> bytes:
    out = []
    for index, row in enumerate(rows):
        message = protobuf_records.Record()
        message.features["values"].float32_tensor.values.extend(row.tolist())
        if labels is not None and labels[index] is not None:
            message.label[key].float32_tensor.values.append(labels[index])
        out.append(protobuf_records.frame(message.SerializeToString()))
    return b"".join(out)


@pytest.mark.parametrize("key", ["values", "class"])
def test_recordio_labels_come_from_the_label_map(tmp_path: Path, key: str) -> None:
    _, rows = labelled_rows(700)
    labels = [float(i % 5) for i in range(700)]
    found = channels.load_labelled(
        channel(
            tmp_path, {"a.rec": recordio_body(labels, rows, key)}, "application/x-recordio-protobuf"
        )
    )
    assert found.labels[:, 0].tolist() == labels
    np.testing.assert_array_equal(found.rows, rows)


def test_labels_stream_from_a_pipe_mode_fifo(tmp_path: Path) -> None:
    names, rows = labelled_rows(400)
    text = csv_of(names, rows)
    folder = tmp_path / "train"
    folder.mkdir()
    fifo = tmp_path / "train_0"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text(text))
    writer.start()
    pipe = channels.Channel("train", folder, "Pipe", MediaType.parse("text/csv;label_size=1"))
    reading = channels.formats.Reading("train", pipe.content_type, keep_labels=True)
    blocks = list(channels.formats.pipe_blocks(fifo, reading, 10, 1 << 12))
    writer.join(10)
    assert not writer.is_alive()
    assert np.concatenate([b.labels for b in blocks])[:, 0].tolist() == oracle(text)[0]


@pytest.mark.parametrize(
    ("files", "content_type", "message"),
    [
        (
            {"a.csv": b"1,2,3\n4,5,6\n"},
            "text/csv",
            "channel 'train' (a.csv): this algorithm trains on labels; give the channel's "
            "ContentType a label_size (text/csv;label_size=1: the first column)",
        ),
        (
            {"a.csv": b"setosa,1,2\n,3,4\nsetosa,5,6\n"},
            "text/csv;label_size=1",
            "channel 'train': 1 rows have no label; first at a.csv line 2, label column 1",
        ),
        (
            {"a.csv": b"setosa,1,2\nsetosa,oops,4\n"},
            "text/csv;label_size=1",
            "a.csv line 2, column 2: 'oops' is not a number",
        ),
    ],
)
def test_missing_labels_are_one_line_naming_where(
    tmp_path: Path, files: dict, content_type: str, message: str
) -> None:
    with pytest.raises(channels.DataError) as raised:
        channels.load_labelled(channel(tmp_path, files, content_type))
    assert str(raised.value) == message


def test_a_recordio_record_without_a_label_is_named(tmp_path: Path) -> None:
    _, rows = labelled_rows(5)
    body = recordio_body([1.0, 2.0, None, 1.0, 0.0], rows)
    with pytest.raises(channels.DataError) as raised:
        channels.load_labelled(
            channel(tmp_path, {"a.rec": body}, "application/x-recordio-protobuf")
        )
    assert str(raised.value) == (
        "a.rec: record 3: it has no label; a label goes in the label map's 'values' entry"
    )

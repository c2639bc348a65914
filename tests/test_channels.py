"""The training loader in-process: the parallel reader of large CSV files gives exactly
what the one-reader path gives, whatever the file's shape, and the same messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kmeans import channels

RNG = np.random.default_rng(3)
ROWS = RNG.normal(size=(5000, 5)).astype(np.float32)


def write(folder: Path, text: str) -> channels.Channel:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.csv").write_text(text)
    return channels.Channel("train", folder)


def csv_text(rows: np.ndarray) -> str:
    return "\n".join(",".join(f"{v:.6g}" for v in row) for row in rows)


@pytest.fixture(params=["one reader", "parallel"])
def parallel(request, monkeypatch) -> bool:
    if request.param == "parallel":
        monkeypatch.setattr(channels, "PARALLEL_MIN_BYTES", 0)
        monkeypatch.setattr(channels, "PARALLEL_PARTS", 3)
    return request.param == "parallel"


@pytest.mark.parametrize(
    "shape",
    ["plain", "trailing-newline", "header", "blank-lines", "crlf", "labels"],
)
def test_both_readers_give_the_same_matrix(tmp_path: Path, parallel: bool, shape: str) -> None:
    text = csv_text(ROWS)
    expected = np.array([[float(f"{v:.6g}") for v in row] for row in ROWS], np.float32)
    content_type = None
    if shape == "trailing-newline":
        text += "\n"
    elif shape == "header":
        text = "a,b,c,d,e\n" + text
    elif shape == "blank-lines":
        lines = text.split("\n")
        text = "\n".join(line + ("\n" if i % 997 == 0 else "") for i, line in enumerate(lines))
    elif shape == "crlf":
        text = text.replace("\n", "\r\n")
    elif shape == "labels":
        text = "\n".join("9," + line for line in text.split("\n"))
        content_type = channels.MediaType.parse("text/csv;label_size=1")
    channel = write(tmp_path, text)
    channel = channels.Channel("train", channel.folder, content_type=content_type)
    data = channels.load(channel)
    assert data.flags["C_CONTIGUOUS"] and data.dtype == np.float32
    np.testing.assert_array_equal(data, expected)


@pytest.mark.parametrize(
    "lines,message",
    [
        ({4321: "1,2,x,4,5"}, "a.csv line 4322, column 3: 'x' is not a number"),
        ({4321: "1,2,3,4"}, "a.csv line 4322: 4 columns, expected 5"),
        ({4321: "1,2,nan,4,5", 4400: "inf,1,1,1,1"}, "2 rows hold missing, NaN or infinite"),
    ],
)
def test_both_readers_locate_bad_cells(tmp_path: Path, parallel: bool, lines, message) -> None:
    text = csv_text(ROWS).split("\n")
    for index, line in lines.items():
        text[index] = line
    with pytest.raises(channels.DataError) as raised:
        channels.load(write(tmp_path, "\n".join(text)))
    assert str(raised.value).startswith(message)
    if "NaN" in message:
        assert "a.csv line 4322, feature column 3" in str(raised.value)

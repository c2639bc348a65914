"""The training loader in-process: the parallel reader of large CSV files gives exactly
what the one-reader path gives, whatever the file's shape, and the same messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kmeans import channels, formats

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
        monkeypatch.setattr(formats, "PARALLEL_MIN_BYTES", 0)
        monkeypatch.setattr(formats, "PARALLEL_PARTS", 3)
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


# --- several hosts: each row is read by exactly one host -----------------------------------


def union_of_shares(channel: channels.Channel, hosts: int) -> np.ndarray:
    """Every host's share loaded as that host would, stacked in host order."""
    loaded = [channels.load(channel, channels.share(channel, h, hosts)) for h in range(hosts)]
    return np.concatenate([rows for rows in loaded if len(rows)])


def fully_replicated(folder: Path, files: dict[str, bytes], content_type: str | None = None):
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    media = channels.MediaType.parse(content_type) if content_type else None
    return channels.Channel("train", folder, content_type=media)


def sorted_rows(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort(rows.T[::-1])]


@pytest.mark.parametrize("hosts", [2, 3, 4, 7])
@pytest.mark.parametrize(
    "layout", ["one csv", "header and crlf", "labels", "many files", "gzip and parquet"]
)
def test_fully_replicated_hosts_read_every_row_once(
    tmp_path: Path, parallel: bool, hosts: int, layout: str
) -> None:
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    text = csv_text(ROWS)
    expected = np.array([[float(f"{v:.6g}") for v in row] for row in ROWS], np.float32)
    content_type = None
    if layout == "one csv":
        files = {"a.csv": text.encode()}
    elif layout == "header and crlf":
        files = {"a.csv": ("a,b,c,d,e\r\n" + text.replace("\n", "\r\n") + "\r\n").encode()}
    elif layout == "labels":
        files = {"a.csv": "\n".join("7," + line for line in text.split("\n")).encode()}
        content_type = "text/csv;label_size=1"
    elif layout == "many files":
        lines = text.split("\n")
        files = {f"part/{i:02d}.csv": "\n".join(lines[i::9]).encode() for i in range(9)}
    else:  # files that cannot be cut: fewer than hosts are shared row by row
        lines = text.split("\n")
        table = pa.table({f"c{i}": expected[2500:, i] for i in range(5)})
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, row_group_size=700)
        files = {
            "a.csv.gz": gzip.compress("\n".join(lines[:2500]).encode()),
            "b.parquet": buffer.getvalue().to_pybytes(),
        }
    channel = fully_replicated(tmp_path / "train", files, content_type)
    union = union_of_shares(channel, hosts)
    assert union.shape == expected.shape
    np.testing.assert_array_equal(sorted_rows(union), sorted_rows(expected))


def test_sharded_hosts_read_their_own_files_and_may_have_none(tmp_path: Path) -> None:
    folder = tmp_path / "train"
    channel = channels.Channel("train", folder, distribution=channels.SHARDED)
    assert channels.share(channel, 1, 3) == []
    assert channels.load(channel, []).shape[0] == 0
    folder.mkdir()
    (folder / "mine.csv").write_text("1,2\n3,4\n")
    assert [part.path.name for part in channels.share(channel, 1, 3)] == ["mine.csv"]


def test_a_bad_cell_in_a_host_share_names_its_real_line(tmp_path: Path) -> None:
    text = csv_text(ROWS).split("\n")
    text[4321] = "1,2,nan,4,5"
    channel = fully_replicated(tmp_path / "train", {"a.csv": "\n".join(text).encode()})
    with pytest.raises(channels.DataError) as raised:
        union_of_shares(channel, 2)
    assert "a.csv line 4322, feature column 3" in str(raised.value)

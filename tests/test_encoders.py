"""Response encoders in-process: every format writes each distance as the float64 distance
rounded to float32, in text as the shortest number that reads back as that float32, with
one record per row, in order, on both the small-body and the large-body path."""

from __future__ import annotations

import json
import re

import numpy as np
import protobuf_records
import pytest

from kmeans import encoders
from kmeans.algorithms.kmeans.centres import COLUMNS

RNG = np.random.default_rng(11)


def predictions(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels, and float64 distances over many magnitudes, with awkward values mixed in."""
    distances = RNG.uniform(0, 10, count) * 10.0 ** RNG.integers(-30, 31, count)
    special = [0.0, 1.0, 2.5, 0.1, 1 / 3, 16777217.0, 3.4028234e38, 1e-45, 0.14135058347833668]
    distances[: min(count, len(special))] = special[:count]
    return RNG.integers(0, 40, count), distances


def parse(kind: str, body: bytes) -> tuple[list[int], list[str]]:
    """Labels as written, and each distance's text exactly as written."""
    text = body.decode()
    if kind == "text/csv":
        assert not text.endswith("\n")
        rows = [line.split(",") for line in text.split("\n")]
        return [int(label) for label, _ in rows], [distance for _, distance in rows]
    if kind == "application/jsonlines":
        assert not text.endswith("\n")
        objects = text.split("\n")
    else:
        assert json.loads(text).keys() == {"predictions"}
        objects = re.findall(r"\{[^{}]*\}", text.removeprefix('{"predictions":['))
    labels, distances = [], []
    for line in objects:
        record = json.loads(line)
        assert record.keys() == {"closest_cluster", "distance_to_cluster"}
        labels.append(record["closest_cluster"])
        distances.append(re.search(r'"distance_to_cluster":([^,}]*)', line).group(1))
    return labels, distances


def digits(number: str) -> str:
    """The significant digits of a decimal number's text."""
    mantissa = re.split("[eE]", number.lstrip("-"))[0]
    return mantissa.replace(".", "").strip("0")


TEXT_FORMATS = ["text/csv", "application/json", "application/jsonlines"]


@pytest.mark.parametrize("count", [1, 7, 999, 1000, 5000])  # both sides of the vector path
@pytest.mark.parametrize("kind", TEXT_FORMATS)
def test_text_distances_are_float32_written_shortest(kind: str, count: int) -> None:
    labels, distances = predictions(count)
    written_labels, written = parse(kind, encoders.ENCODERS[kind](COLUMNS, (labels, distances)))
    assert written_labels == labels.tolist()
    rounded = distances.astype(np.float32)
    assert np.array_equal(np.array(written, dtype=np.float64).astype(np.float32), rounded)
    for text, value in zip(written, rounded, strict=True):
        shortest = np.format_float_scientific(value, unique=True)  # numpy's shortest float32
        assert len(digits(text)) == len(digits(shortest)), (text, shortest)


def test_recordio_distances_are_float32() -> None:
    labels, distances = predictions(50)
    records = protobuf_records.labels(encoders.encode_recordio(COLUMNS, (labels, distances)))
    assert [record["closest_cluster"] for record in records] == labels.tolist()
    written = np.array([record["distance_to_cluster"] for record in records])
    assert np.array_equal(written, distances.astype(np.float32).astype(np.float64))


@pytest.mark.parametrize("count", [3, 2000])
@pytest.mark.parametrize("kind", TEXT_FORMATS)
def test_distances_beyond_float32_are_null(kind: str, count: int) -> None:
    labels, distances = predictions(count)
    distances[1] = 1e39  # finite in float64, beyond float32
    _, written = parse(kind, encoders.ENCODERS[kind](COLUMNS, (labels, distances)))
    assert written[1] == "null"
    assert "null" not in written[2:]


def test_recordio_distances_beyond_float32_are_infinite() -> None:
    labels, distances = predictions(3)
    distances[1] = 1e39  # finite in float64, beyond float32: it used to raise OverflowError
    records = protobuf_records.labels(encoders.encode_recordio(COLUMNS, (labels, distances)))
    assert [record["distance_to_cluster"] for record in records][1:] == [np.inf, distances[2]]


@pytest.mark.parametrize("kind", list(encoders.ENCODERS))
def test_one_record_is_written_as_the_arrays_path_writes_it(kind: str) -> None:
    """encode_one, the single-record path, writes the very bytes of ENCODERS' one-row
    answer, over many magnitudes and around the edge of float32's range."""
    labels, distances = predictions(2000)
    edge = 3.4028235677973366e38  # the first float64 that rounds to float32's infinity
    below, above = np.nextafter(edge, [0.0, np.inf]).tolist()
    cases = zip([*labels.tolist(), 1, 2, 3], [*distances.tolist(), below, edge, above], strict=True)
    for label, distance in cases:
        expected = encoders.ENCODERS[kind](COLUMNS, (np.array([label]), np.array([distance])))
        assert encoders.encode_one(kind, COLUMNS, (label, distance)) == expected, (label, distance)


def test_every_encoder_is_tested() -> None:
    assert set(encoders.ENCODERS) == {*TEXT_FORMATS, "application/x-recordio-protobuf"}

"""Answers as named columns: K-Means's answers byte for byte what they were before the
encoders became generic (tests/reference_encoders.py, the old module kept verbatim), in
every format, small and large (the Arrow path); and any algorithm's columns -- integers
outside 0..k-1, strings that need quoting, several float columns -- against oracles
written from the format's definition."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import protobuf_records
import pytest
import reference_encoders
from hypothesis import given, settings
from hypothesis import strategies as st

from kmeans import encoders
from kmeans.algorithm import Column
from kmeans.algorithms.kmeans.centres import COLUMNS
from kmeans.content_types import CSV, JSON, JSONLINES, RECORDIO

FORMATS = [CSV, JSON, JSONLINES, RECORDIO]
ROWS = [1, 2, 999, 1000, 1001, 4096]


def kmeans_answer(rows: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, rows)
    distances = rng.exponential(3.0, rows) * 10.0 ** rng.integers(-8, 8, rows)
    distances[rng.random(rows) < 0.01] = 1e39  # beyond float32: null in text
    return labels, distances


@pytest.mark.parametrize("kind", FORMATS)
@pytest.mark.parametrize("rows", ROWS)
def test_kmeans_answers_are_byte_for_byte_what_they_were(kind: str, rows: int) -> None:
    for k, seed in ((2, 1), (7, 2), (300, 3)):
        labels, distances = kmeans_answer(rows, k, seed)
        labels[0] = k - 1  # the largest label is present (the old fast path needs it)
        old = reference_encoders.ENCODERS[kind](labels, distances)
        assert encoders.ENCODERS[kind](COLUMNS, (labels, distances)) == old, (kind, rows, k)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(FORMATS),
    st.integers(0, 10**6),
    st.floats(0, 3.5e38, allow_nan=False) | st.sampled_from([0.0, 1e-45, 3.4028235e38, 1e300]),
)
def test_one_kmeans_record_is_what_it_was(kind: str, label: int, distance: float) -> None:
    old = reference_encoders.encode_one(kind, label, distance)
    assert encoders.encode_one(kind, COLUMNS, (label, distance)) == old


def float32_text(value: float) -> str:
    """The shortest text reading back as the float32, null beyond its range (oracle)."""
    single = np.float32(value) if abs(value) < 3.4028235677973366e38 else np.float32(np.inf)
    return "null" if not np.isfinite(single) else repr(float(single)).replace("e+", "e")


def oracle_rows(columns: tuple[Column, ...], values: list[np.ndarray]) -> list[list[object]]:
    """Each row's values as Python objects: what a reader of the answer must get back."""
    rows = []
    for row in zip(*(v.tolist() for v in values), strict=True):
        out: list[object] = []
        for column, value in zip(columns, row, strict=True):
            if column.kind == "float32":
                text = float32_text(value)
                out.append(None if text == "null" else float(np.float32(value)))
            else:
                out.append(value)
        rows.append(out)
    return rows


SEVERAL = (
    Column("predicted_label", "str"),
    Column("score", "float32"),
    Column("rank", "int"),
    Column("other", "float32"),
)
LABELS = np.array(["setosa", "versi,color", 'vir"ginica', "line\nbreak", "ünï"], dtype=object)


def several_values(rows: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        LABELS[rng.integers(0, len(LABELS), rows)],
        rng.normal(0, 1e3, rows),
        rng.integers(-(10**12), 10**12, rows),  # far outside 0..k-1: the old fast path's bug
        rng.exponential(1.0, rows),
    ]


def read_back(kind: str, body: bytes, columns: tuple[Column, ...]) -> list[list[object]]:
    """Parse an answer with the standard library (protobuf for RecordIO)."""
    if kind == CSV:
        rows = list(csv.reader(io.StringIO(body.decode(), newline="")))
        out = []
        for row in rows:
            parsed: list[object] = []
            for column, cell in zip(columns, row, strict=True):
                if column.kind == "int":
                    parsed.append(int(cell))
                elif column.kind == "float32":
                    parsed.append(None if cell == "null" else float(np.float32(cell)))
                else:
                    parsed.append(cell)
            out.append(parsed)
        return out
    if kind == JSON:
        records = json.loads(body)["predictions"]
    elif kind == JSONLINES:
        records = [json.loads(line) for line in body.decode().split("\n")]
    else:
        raise AssertionError(kind)
    assert all(list(record) == [c.name for c in columns] for record in records)

    def value(column: Column, read: object) -> object:
        if column.kind == "float32" and read is not None:
            return float(np.float32(read))  # the text is the float32's shortest form
        return read

    return [[value(c, record[c.name]) for c in columns] for record in records]


@pytest.mark.parametrize("kind", [CSV, JSON, JSONLINES])
@pytest.mark.parametrize("rows", ROWS)
def test_any_columns_read_back_as_they_were(kind: str, rows: int) -> None:
    values = several_values(rows, rows)
    body = encoders.ENCODERS[kind](SEVERAL, values)
    assert read_back(kind, body, SEVERAL) == oracle_rows(SEVERAL, values)
    if kind != JSON:
        assert body.count(b"\n") >= rows - 1 and not body.endswith(b"\n")


@pytest.mark.parametrize("kind", [CSV, JSON, JSONLINES])
def test_integer_labels_outside_zero_to_k(kind: str) -> None:
    """Labels of -1 (an outlier) or of any size, small bodies and large alike."""
    for rows in (10, 1000, 3000):
        labels = np.resize(np.array([-1, 5, 0, 123456789]), rows)
        distances = np.linspace(0, 2, rows)
        body = encoders.ENCODERS[kind](COLUMNS, (labels, distances))
        back = read_back(kind, body, COLUMNS)
        assert [row[0] for row in back] == labels.tolist()


def test_one_record_of_any_columns_equals_the_array_path() -> None:
    values = several_values(50, 9)
    for kind in FORMATS:
        for row in range(50):
            one = tuple(v[row] for v in values)
            whole = encoders.ENCODERS[kind](SEVERAL, [v[row : row + 1] for v in values])
            assert encoders.encode_one(kind, SEVERAL, one) == whole, (kind, row)


def test_recordio_holds_every_column_by_name() -> None:
    values = several_values(30, 4)
    body = encoders.encode_recordio(SEVERAL, values)
    records = protobuf_records.label_values(body)
    assert len(records) == 30
    for record, row in zip(records, oracle_rows(SEVERAL, values), strict=True):
        assert sorted(record) == sorted(c.name for c in SEVERAL)  # a map: no order
        label, score, rank, other = (record[c.name] for c in SEVERAL)
        assert label == row[0]
        assert score == pytest.approx(np.float32(row[1]))
        assert rank == np.float32(row[2])  # integers as float32 tensors, as the built-in
        assert other == pytest.approx(np.float32(row[3]))

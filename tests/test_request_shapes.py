"""The JSON request shapes the README lists for `application/json`, through the real serve
(nginx and gunicorn, on loopback): the built-in algorithm's nested form
`{"instances": [{"data": {"features": {"values", "keys", "shape"}}}]}`, dense and sparse,
small and large; a bare `{"features": [...]}` record and a bare list of numbers. Each is
answered byte for byte as the dense `{"instances": [[...], ...]}` request for the same rows
(and that one as the saved model itself says); malformed sparse records get 400 with one
line of JSON naming the record and what is accepted.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import IRIS, Server
from test_serve import invoke, model_says

pytestmark = pytest.mark.skipif(
    shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin") is None,
    reason="nginx is not installed (the README's test command installs it)",
)

FEATURES = 4
SMALL_BODY = 4096  # bodies from this size take the decoders' fast path


def rows_with_zeros() -> np.ndarray:
    """Iris rows where some cells are 0 (one row entirely), so that a sparse record leaves
    keys out: 0 in one column, then two columns, then none, in turn."""
    rows = np.loadtxt(IRIS, delimiter=",")[::5].copy()
    for index, row in enumerate(rows):
        if index % 3 == 0:
            row[index % FEATURES] = 0.0
        elif index % 3 == 1:
            row[[(index + 1) % FEATURES, (index + 2) % FEATURES]] = 0.0
    rows[7] = 0.0
    return rows


ROWS = rows_with_zeros()


def sparse(row: np.ndarray, shape: bool = True, reverse: bool = False) -> dict:
    """The built-in's sparse record: the non-zero cells, by key."""
    keys = [int(key) for key in np.flatnonzero(row)]
    if reverse:
        keys.reverse()
    features = {"values": [float(row[key]) for key in keys], "keys": keys}
    if shape:
        features["shape"] = [FEATURES]
    return {"data": {"features": features}}


def nested_dense(row: np.ndarray) -> dict:
    return {"data": {"features": {"values": row.tolist()}}}


def mixed(index: int, row: np.ndarray) -> dict | list:
    """Each of the README's record forms in turn, in one request."""
    forms = (sparse, nested_dense, lambda row: {"features": row.tolist()}, np.ndarray.tolist)
    return forms[index % len(forms)](row)


SHAPES = {
    "sparse-with-shape": lambda rows: [sparse(row) for row in rows],
    "sparse-without-shape": lambda rows: [sparse(row, shape=False) for row in rows],
    "sparse-keys-in-reverse": lambda rows: [sparse(row, reverse=True) for row in rows],
    "nested-dense": lambda rows: [nested_dense(row) for row in rows],
    "nested-dense-with-shape": lambda rows: [
        {"data": {"features": {"values": row.tolist(), "shape": [FEATURES]}}} for row in rows
    ],
    "mixed": lambda rows: [mixed(index, row) for index, row in enumerate(rows)],
}


@pytest.fixture(scope="module")
def server(trained: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("shapes") / "serve.log"
    running = Server(trained, log, SAGEMAKER_MODEL_SERVER_WORKERS="1").wait_ready()
    yield running
    assert running.stop() == 0


def dense_answer(server: Server, rows: np.ndarray) -> bytes:
    """The answer to the dense request for `rows`, checked against the model itself."""
    response = invoke(server, json.dumps({"instances": rows.tolist()}), "application/json")
    assert response.status_code == 200, response.text
    return response.content


def assert_model_says(trained: Path, response: requests.Response, rows: np.ndarray) -> None:
    labels, distances = model_says(trained, rows)
    predictions = response.json()["predictions"]
    assert [p["closest_cluster"] for p in predictions] == labels.tolist()
    answered = np.array([p["distance_to_cluster"] for p in predictions], np.float32)
    np.testing.assert_array_equal(answered, distances.astype(np.float32))


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_nested_and_sparse_records_answer_as_dense_ones(server, trained, name, size) -> None:
    rows = ROWS if size == "small" else np.tile(ROWS, (30, 1))
    body = json.dumps({"instances": SHAPES[name](rows)})
    assert (len(body) >= SMALL_BODY) == (size == "large")
    response = invoke(server, body, "application/json")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.content == dense_answer(server, rows)
    assert_model_says(trained, response, rows)


def test_sparse_records_in_json_lines_answer_as_dense_ones(server, trained) -> None:
    body = "\n".join(json.dumps(sparse(row)) for row in ROWS)
    response = invoke(server, body, "application/jsonlines", "application/json")
    assert response.status_code == 200, response.text
    assert response.content == dense_answer(server, ROWS)


def test_a_bare_features_object_is_one_record(server, trained) -> None:
    """The README's `{"features": [...]}`: the same answer as that row in a batch."""
    for row in ROWS[:5]:
        response = invoke(server, json.dumps({"features": row.tolist()}), "application/json")
        assert response.status_code == 200, response.text
        assert response.content == dense_answer(server, row[np.newaxis])
        assert len(response.json()["predictions"]) == 1
        assert_model_says(trained, response, row[np.newaxis])


def test_a_bare_list_of_numbers_is_one_record(server, trained) -> None:
    """`[5.1, 3.5, 1.4, 0.2]` alone is one record (a list of lists is a batch)."""
    row = ROWS[1]
    response = invoke(server, json.dumps(row.tolist()), "application/json")
    assert response.status_code == 200, response.text
    assert response.content == dense_answer(server, row[np.newaxis])
    assert_model_says(trained, response, row[np.newaxis])


def sparse_body(*features: dict) -> str:
    return json.dumps(
        {"instances": [sparse(ROWS[0])] + [{"data": {"features": f}} for f in features]}
    )


MALFORMED = {
    "key past the last feature": (
        sparse_body({"values": [1.0, 2.0], "keys": [0, 4], "shape": [4]}),
        "instance 2: sparse key 4 is outside 0..3",
    ),
    "negative key": (
        sparse_body({"values": [1.0], "keys": [-1]}),
        "instance 2: sparse key -1 is outside 0..3",
    ),
    "key not an integer": (
        sparse_body({"values": [1.0], "keys": [1.5]}),
        "instance 2: sparse key 1.5 is outside 0..3",
    ),
    "key a string": (
        sparse_body({"values": [1.0], "keys": ["1"]}),
        "instance 2: sparse key '1' is outside 0..3",
    ),
    "key a boolean": (
        sparse_body({"values": [1.0], "keys": [True]}),
        "instance 2: sparse key True is outside 0..3",
    ),
    "more keys than values": (
        sparse_body({"values": [1.0], "keys": [0, 1]}),
        "instance 2: sparse features need 'keys' and 'values' of equal length",
    ),
    "keys not a list": (
        sparse_body({"values": [1.0], "keys": 0}),
        "instance 2: sparse features need 'keys' and 'values' of equal length",
    ),
    "values missing": (
        sparse_body({"keys": [0, 1], "shape": [4]}),
        "instance 2: data.features has no 'values' (a list of numbers)",
    ),
    "values missing, no keys": (
        sparse_body({"shape": [4]}),
        "instance 2: data.features has no 'values' (a list of numbers)",
    ),
    "value not a number": (
        sparse_body({"values": [1.0, "x"], "keys": [0, 2]}),
        "instance 2, feature 3: 'x' is not a number",
    ),
    "shape wider than the model": (
        sparse_body({"values": [1.0], "keys": [0], "shape": [5]}),
        "instance 2: 'shape' must be [4] (the model's feature count), got [5]",
    ),
    "shape narrower than the model": (
        sparse_body({"values": [1.0, 2.0, 3.0], "shape": [3]}),
        "instance 2: 'shape' must be [4] (the model's feature count), got [3]",
    ),
    "shape of a matrix": (
        sparse_body({"values": [1.0], "keys": [0], "shape": [1, 4]}),
        "instance 2: 'shape' must be [4] (the model's feature count), got [1, 4]",
    ),
    "shape not a list": (
        sparse_body({"values": [1.0], "keys": [0], "shape": 4}),
        "instance 2: 'shape' must be [4] (the model's feature count), got 4",
    ),
    "dense values too few": (
        sparse_body({"values": [1.0, 2.0, 3.0]}),
        "expected 4 features, got 3 in instance 2",
    ),
    "dense values not a list": (
        sparse_body({"values": "1,2,3,4"}),
        "instance 2: expected a list of numbers, got str",
    ),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_nested_records_get_400_with_one_line(server, name) -> None:
    body, message = MALFORMED[name]
    response = invoke(server, body, "application/json")
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"error": message}


def test_a_nested_record_under_another_content_type_is_refused(server) -> None:
    """The nested form is JSON only: as CSV its cells are counted, under XML nothing reads it."""
    body = json.dumps(
        {"instances": [{"data": {"features": {"values": [1.0, 2.0], "keys": [0, 2]}}}]}
    )
    as_csv = invoke(server, body, "text/csv")
    assert as_csv.status_code == 400
    cell = '{"instances": [{"data": {"features": {"values": [1.0'
    assert as_csv.json() == {"error": f"row 1, column 1: {cell!r} is not a number"}
    unsupported = invoke(server, body, "application/xml")
    assert unsupported.status_code == 415
    assert unsupported.json() == {
        "error": "Content-Type 'application/xml' is not supported; use one of text/csv, "
        "application/json, application/jsonlines, application/x-npy, "
        "application/x-recordio-protobuf"
    }
